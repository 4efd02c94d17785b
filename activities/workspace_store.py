"""Workspace records, written by the provisioning and deprovisioning workflows' steps."""

from __future__ import annotations

from temporalio import activity

from activities.errors import actor, permanent
from db.workspaces import WorkspaceRepo
from domain.provision_workspace import WorkspaceFailure
from domain.refs import WorkspaceRef
from domain.status import WorkspaceStatus


class WorkspaceStoreActivities:
    def __init__(self, workspaces: WorkspaceRepo):
        self._workspaces = workspaces

    @activity.defn
    async def confirm_workspace_slot(self, ref: WorkspaceRef) -> None:
        """The API took the quota slot when it accepted the request; check it is still held."""
        row = await self._workspaces.get(ref.workspace_id)
        if row is None or not row["holds_slot"]:
            raise permanent("WorkspaceSlotMissing", f"workspace {ref.workspace_id} holds no slot")
        await self._workspaces.update(ref.workspace_id, actor=actor(), workflow_id=activity.info().workflow_id)

    @activity.defn
    async def mark_workspace_running(self, ref: WorkspaceRef) -> None:
        await self._workspaces.update(
            ref.workspace_id,
            actor=actor(),
            action="workspace.running",
            status=WorkspaceStatus.running.value,
            failure_reason=None,
        )

    @activity.defn
    async def mark_workspace_failed(self, failure: WorkspaceFailure) -> None:
        """Store the reason and give the slot back; the agent's tokens die with it."""
        await self._workspaces.revoke_tokens(failure.workspace_id)
        await self._workspaces.update(
            failure.workspace_id,
            actor=actor(),
            action="workspace.fail",
            outcome="failed",
            detail={"reason": failure.reason},
            status=WorkspaceStatus.failed.value,
            failure_reason=failure.reason,
            holds_slot=False,
        )

    @activity.defn
    async def mark_workspace_deleting(self, ref: WorkspaceRef) -> None:
        await self._workspaces.update(
            ref.workspace_id, actor=actor(), action="workspace.deleting", status=WorkspaceStatus.deleting.value
        )

    @activity.defn
    async def mark_workspace_deleted(self, ref: WorkspaceRef) -> None:
        await self._workspaces.revoke_tokens(ref.workspace_id)
        await self._workspaces.update(
            ref.workspace_id,
            actor=actor(),
            action="workspace.delete",
            status=WorkspaceStatus.deleted.value,
            holds_slot=False,
        )
