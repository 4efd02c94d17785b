"""Org records in the platform database, written by the onboarding workflow's steps."""

from __future__ import annotations

from temporalio import activity

from activities.errors import actor, permanent
from db.orgs import OrgRepo
from domain.models import OrgFailure, OrgRef, OrgResources, OrgStatus


class OrgStoreActivities:
    def __init__(self, orgs: OrgRepo):
        self._orgs = orgs

    @activity.defn
    async def record_org_provisioning(self, req: OrgRef) -> None:
        info = activity.info()
        await self._orgs.set_workflow(req.org_id, info.workflow_id, info.workflow_run_id)
        row = await self._orgs.get(req.org_id)
        if row is None:
            # The API writes the row before starting the workflow; a missing row means it was
            # removed by hand, and provisioning resources for it would leak them.
            raise permanent("OrgRecordMissing", f"org {req.slug} ({req.org_id}) has no record")
        if row["status"] != OrgStatus.provisioning:
            await self._orgs.update(req.org_id, actor=actor(), action="org.provisioning",
                                    status=OrgStatus.provisioning.value, clear=("failure_reason",))

    @activity.defn
    async def record_org_resources(self, req: OrgResources) -> None:
        await self._orgs.update(
            req.org_id, actor=actor(), action="org.resources",
            neon_project_id=req.neon_project_id, neon_branch_id=req.neon_branch_id,
            security_group_id=req.security_group_id,
        )

    @activity.defn
    async def mark_org_active(self, req: OrgRef) -> None:
        await self._orgs.update(req.org_id, actor=actor(), action="org.activate", status=OrgStatus.active.value)

    @activity.defn
    async def mark_org_failed(self, req: OrgFailure) -> None:
        await self._orgs.update(req.org_id, actor=actor(), action="org.fail", outcome="failed",
                                detail={"reason": req.reason}, status=OrgStatus.failed.value,
                                failure_reason=req.reason,
                                # The workflow deleted what it created before calling this.
                                clear=("neon_project_id", "neon_branch_id", "security_group_id"))
