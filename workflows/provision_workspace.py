"""ProvisionWorkspaceWorkflow: one EC2 instance running a registered, answering A2A agent.

take slot -> launch instance (one-time token + boot script + RunInstances) -> wait until running
-> wait for the agent's registration signal (with a timeout) -> check its A2A card -> running.
On a timeout, a permanent failure or cancellation it terminates the instance, waits until it is
terminated, gives the slot back and stores the reason: a workspace never stays "provisioning".
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.a2a import AgentActivities
    from activities.instances import InstanceActivities
    from activities.workspace_store import WorkspaceStoreActivities
    from domain.provision_workspace import (
        AgentCardCheck,
        AgentRegistration,
        InstanceRef,
        ProvisionWorkspaceInput,
        ProvisionWorkspaceResult,
        WorkspaceFailure,
    )
    from domain.refs import WorkspaceRef
    from domain.status import WorkspaceStatus
    from workflows.common import CLEANUP_DEADLINE, FINISH_FIRST, Tracked, failure_reason, run_activity

STEPS = ["take_slot", "launch_instance", "wait_running", "wait_registration", "check_agent", "activate"]


class _StepFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@workflow.defn
class ProvisionWorkspaceWorkflow(Tracked):
    def __init__(self) -> None:
        super().__init__("provision", STEPS, WorkspaceStatus.provisioning.value)
        self._registration: AgentRegistration | None = None

    @workflow.signal
    def agent_registered(self, registration: AgentRegistration) -> None:
        """Sent by the API when the agent spends its one-time token; wakes the workflow at once."""
        if self._registration is None:
            self._registration = registration

    @workflow.run
    async def run(self, inp: ProvisionWorkspaceInput) -> ProvisionWorkspaceResult:
        ws = WorkspaceRef(workspace_id=inp.workspace_id)
        result = ProvisionWorkspaceResult(workspace_id=inp.workspace_id, status=WorkspaceStatus.provisioning)
        step = STEPS[0]
        try:
            self._tracker.enter(step := "take_slot")
            await run_activity(WorkspaceStoreActivities.confirm_workspace_slot, ws, "confirm quota slot")

            self._tracker.enter(step := "launch_instance")
            # Waits for a cancelled launch to finish, so cleanup sees any instance it started.
            launched = await run_activity(
                InstanceActivities.launch_instance,
                inp,
                f"launch {inp.instance_type} in {inp.subnet_id}",
                cancellation_type=FINISH_FIRST,
            )
            result.instance_id = launched.instance_id

            self._tracker.enter(step := "wait_running")
            await run_activity(
                InstanceActivities.wait_instance_running, launched, f"wait for {launched.instance_id}", waits=True
            )

            self._tracker.enter(step := "wait_registration")
            timeout = inp.registration_timeout_seconds
            try:
                await workflow.wait_condition(
                    lambda: self._registration is not None, timeout=timedelta(seconds=timeout)
                )
            except TimeoutError:
                raise _StepFailed(f"wait_registration: agent did not register within {timeout:g}s") from None
            assert self._registration is not None
            # The address the platform derived from the instance, never one the agent chose (runs
            # that launched before the change carry no derived address and keep the old way).
            derived = launched.agent_url if workflow.patched("agent-url-from-private-ip") else None
            result.agent_url = derived or self._registration.agent_url
            if result.agent_url is None:
                raise _StepFailed("wait_registration: no address to reach the agent at")

            self._tracker.enter(step := "check_agent")
            await run_activity(
                AgentActivities.check_agent_card,
                AgentCardCheck(
                    workspace_id=inp.workspace_id,
                    name=inp.name,
                    agent_url=result.agent_url,
                    agent_cert_sha256=self._registration.agent_cert_sha256,
                ),
                "fetch and check the A2A agent card",
                deadline=timedelta(seconds=inp.agent_check_timeout_seconds),
                attempt_timeout=timedelta(seconds=15),
            )

            self._tracker.enter(step := "activate")
            await run_activity(WorkspaceStoreActivities.mark_workspace_running, ws, "mark workspace running")
        except (ActivityError, _StepFailed) as err:
            reason = err.reason if isinstance(err, _StepFailed) else failure_reason(step, err)
            await self._clean_up(inp, result, reason, step)
            raise ApplicationError(
                f"workspace {inp.workspace_id} failed: {reason}", type="WorkspaceFailed", non_retryable=True
            ) from err
        except asyncio.CancelledError:
            await self._clean_up(inp, result, f"{step}: provisioning cancelled", step)
            raise

        result.status = WorkspaceStatus.running
        self._tracker.finish(WorkspaceStatus.running.value)
        workflow.logger.info("workspace running", extra={"org_slug": inp.org_slug, "workspace_id": inp.workspace_id})
        return result

    async def _clean_up(
        self, inp: ProvisionWorkspaceInput, result: ProvisionWorkspaceResult, reason: str, step: str
    ) -> None:
        """Terminate (and wait for) any instance, then fail the workspace and free its slot."""
        workflow.logger.warning(
            "workspace failed, cleaning up",
            extra={"org_slug": inp.org_slug, "workspace_id": inp.workspace_id, "reason": reason},
        )
        self._tracker.finish(WorkspaceStatus.failed.value, reason, step=f"cleaning up after {step}")
        result.status, result.failure_reason = WorkspaceStatus.failed, reason
        instance = InstanceRef(
            workspace_id=inp.workspace_id, org_id=inp.org_id, org_slug=inp.org_slug, instance_id=result.instance_id
        )
        await run_activity(
            InstanceActivities.terminate_instances,
            instance,
            "terminate and wait",
            deadline=CLEANUP_DEADLINE,
            waits=True,
        )
        await run_activity(
            WorkspaceStoreActivities.mark_workspace_failed,
            WorkspaceFailure(workspace_id=inp.workspace_id, reason=reason),
            "mark failed, free slot",
            deadline=CLEANUP_DEADLINE,
        )
        self._tracker.finish(WorkspaceStatus.failed.value, reason, step=step)
