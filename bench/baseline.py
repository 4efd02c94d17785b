"""The trivial baselines: a workflow that runs N no-op activities (with the stand-ins' latencies,
the same timeouts and retry policy) and, like provisioning, may wait for one signal; and an
entity whose Update runs one database activity (for the org entity's commands)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.lifecycle import OrgLifecycleActivities
    from bench.standins import BaselineInput, NoopInput
    from domain.org_entity import OrgTransition
    from domain.provision_workspace import AgentRegistration
    from workflows.common import CALL_TIMEOUT, CLEANUP_DEADLINE, RETRY, STEP_DEADLINE, run_activity


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
            await workflow.execute_activity(
                "bench_noop",
                NoopInput(latency=latency, signal_workflow_id=sig),
                start_to_close_timeout=CALL_TIMEOUT,
                schedule_to_close_timeout=STEP_DEADLINE,
                retry_policy=RETRY,
            )
        return len(inp.latencies)


@workflow.defn
class BaselineEntityWorkflow:
    """The trivial entity: parked forever; its one Update (no validator) runs the org entity's own
    database activity, ``transition_org``, with the options the entity uses, on a row of its own."""

    def __init__(self) -> None:
        self._commands = 0

    @workflow.update
    async def command(self, change: OrgTransition) -> int:
        await run_activity(OrgLifecycleActivities.transition_org, change, "bench", deadline=CLEANUP_DEADLINE)
        self._commands += 1
        return self._commands

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)
