"""The trivial baseline: a workflow that runs N no-op activities (with the stand-ins' latencies,
the same timeouts and retry policy) and, like provisioning, may wait for one signal."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bench.standins import BaselineInput, NoopInput
    from domain.models import AgentRegistration
    from workflows.common import CALL_TIMEOUT, RETRY, STEP_DEADLINE


@workflow.defn
class BaselineWorkflow:
    def __init__(self) -> None:
        self._signalled = False

    @workflow.signal
    def agent_registered(self, registration: AgentRegistration) -> None:
        self._signalled = True

    @workflow.run
    async def run(self, inp: BaselineInput) -> int:
        for i, latency in enumerate(inp.latencies):
            if inp.signal_after is not None and i == inp.signal_after:
                await workflow.wait_condition(lambda: self._signalled)
            sig = workflow.info().workflow_id if i == (inp.signal_after or 0) - 1 else None
            await workflow.execute_activity("bench_noop", NoopInput(latency=latency, signal_workflow_id=sig),
                                            start_to_close_timeout=CALL_TIMEOUT, schedule_to_close_timeout=STEP_DEADLINE,
                                            retry_policy=RETRY)
        return len(inp.latencies)
