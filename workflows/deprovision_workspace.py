"""DeprovisionWorkspaceWorkflow: stop any provisioning, terminate the instance, wait, free the slot."""

from __future__ import annotations

from typing import Any, Callable

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.instances import InstanceActivities
    from activities.workflow_control import WorkflowControlActivities
    from activities.workspace_store import WorkspaceStoreActivities
    from domain.models import DeprovisionWorkspaceInput, InstanceRef, Progress, WorkflowToStop, WorkspaceRef
    from workflows.common import CALL_TIMEOUT, CLEANUP_DEADLINE, RETRY, STEP_DEADLINE, ProgressTracker

STEPS = ["mark_deleting", "stop_provisioning", "terminate_instance", "release"]


def provision_workflow_id(workspace_id: str) -> str:
    return f"ws-provision:{workspace_id}"


@workflow.defn
class DeprovisionWorkspaceWorkflow:
    def __init__(self) -> None:
        self._tracker = ProgressTracker("deprovision", STEPS, "deleting")

    @workflow.query
    def progress(self) -> Progress:
        return self._tracker.progress

    async def _act(self, method: Callable, arg: Any, summary: str, **options: Any) -> Any:
        options.setdefault("start_to_close_timeout", CALL_TIMEOUT)
        return await workflow.execute_activity_method(method, arg, summary=summary, retry_policy=RETRY,
                                                      schedule_to_close_timeout=CLEANUP_DEADLINE, **options)

    @workflow.run
    async def run(self, inp: DeprovisionWorkspaceInput) -> None:
        ws = WorkspaceRef(workspace_id=inp.workspace_id)
        self._tracker.enter("mark_deleting")
        await self._act(WorkspaceStoreActivities.mark_workspace_deleting, ws, "mark workspace deleting")

        self._tracker.enter("stop_provisioning")
        await self._act(WorkflowControlActivities.cancel_and_wait,
                        WorkflowToStop(workflow_id=provision_workflow_id(inp.workspace_id)),
                        "cancel provisioning and wait for its cleanup",
                        start_to_close_timeout=STEP_DEADLINE, heartbeat_timeout=CALL_TIMEOUT / 2)

        self._tracker.enter("terminate_instance")
        await self._act(InstanceActivities.terminate_instances,
                        InstanceRef(workspace_id=inp.workspace_id, org_id=inp.org_id, org_slug=inp.org_slug),
                        "terminate and wait until terminated",
                        start_to_close_timeout=STEP_DEADLINE, heartbeat_timeout=CALL_TIMEOUT / 2)

        self._tracker.enter("release")
        await self._act(WorkspaceStoreActivities.mark_workspace_deleted, ws, "mark deleted, free slot")
        self._tracker.finish("deleted")
        workflow.logger.info("workspace deleted", extra={"org_slug": inp.org_slug, "workspace_id": inp.workspace_id})
