"""DeprovisionWorkspaceWorkflow: stop any provisioning, terminate the instance, wait, free the slot."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.instances import InstanceActivities
    from activities.workflow_control import WorkflowControlActivities
    from activities.workspace_store import WorkspaceStoreActivities
    from domain.deprovision_workspace import DeprovisionWorkspaceInput
    from domain.operations import provision_workflow_id
    from domain.provision_workspace import InstanceRef
    from domain.refs import WorkflowToStop, WorkspaceRef
    from domain.status import WorkspaceStatus
    from workflows.common import CLEANUP_DEADLINE, Tracked, run_activity

STEPS = ["mark_deleting", "stop_provisioning", "terminate_instance", "release"]


@workflow.defn
class DeprovisionWorkspaceWorkflow(Tracked):
    def __init__(self) -> None:
        super().__init__("deprovision", STEPS, WorkspaceStatus.deleting.value)

    @workflow.run
    async def run(self, inp: DeprovisionWorkspaceInput) -> None:
        ws = WorkspaceRef(workspace_id=inp.workspace_id)
        self._tracker.enter("mark_deleting")
        await run_activity(
            WorkspaceStoreActivities.mark_workspace_deleting, ws, "mark workspace deleting", deadline=CLEANUP_DEADLINE
        )

        self._tracker.enter("stop_provisioning")
        await run_activity(
            WorkflowControlActivities.cancel_and_wait,
            WorkflowToStop(workflow_id=provision_workflow_id(inp.workspace_id)),
            "cancel provisioning and wait for its cleanup",
            deadline=CLEANUP_DEADLINE,
            waits=True,
        )

        self._tracker.enter("terminate_instance")
        await run_activity(
            InstanceActivities.terminate_instances,
            InstanceRef(workspace_id=inp.workspace_id, org_id=inp.org_id, org_slug=inp.org_slug),
            "terminate and wait until terminated",
            deadline=CLEANUP_DEADLINE,
            waits=True,
        )

        self._tracker.enter("release")
        await run_activity(
            WorkspaceStoreActivities.mark_workspace_deleted, ws, "mark deleted, free slot", deadline=CLEANUP_DEADLINE
        )
        self._tracker.finish("deleted")
        workflow.logger.info("workspace deleted", extra={"org_slug": inp.org_slug, "workspace_id": inp.workspace_id})
