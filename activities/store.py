"""Org records in the platform database, written by the onboarding workflow's steps."""

from __future__ import annotations

from temporalio import activity

from activities.errors import actor, permanent
from db.orgs import OrgRepo
from domain.onboard_org import OrgFailure, OrgResources
from domain.refs import OrgRef
from domain.status import OrgStatus


class OrgStoreActivities:
    def __init__(self, orgs: OrgRepo):
        self._orgs = orgs

    @activity.defn
    async def record_org_provisioning(self, req: OrgRef) -> None:
        info = activity.info()
        await self._orgs.set_workflow(req.org_id, info.workflow_id or "", info.workflow_run_id)
        row = await self._orgs.get(req.org_id)
        if row is None:
            # The API writes the row before starting the workflow; a missing row means it was
            # removed by hand, and provisioning resources for it would leak them.
            raise permanent("OrgRecordMissing", f"org {req.slug} ({req.org_id}) has no record")
        if row["status"] == OrgStatus.failed:  # an onboarding started again by hand
            await self._orgs.update(
                req.org_id,
                actor=actor(),
                action="org.provisioning",
                status=OrgStatus.provisioning.value,
                clear=("failure_reason",),
                only_from=[OrgStatus.failed.value],
            )
        elif row["status"] not in (OrgStatus.provisioning, OrgStatus.active):  # active: a reset replays
            # Being deleted (or suspended) meanwhile: creating resources now would leak them.
            raise permanent("OrgNotProvisioning", f"org {req.slug} is {row['status']}, not provisioning")

    @activity.defn
    async def record_org_resources(self, req: OrgResources) -> None:
        await self._orgs.update(
            req.org_id,
            actor=actor(),
            action="org.resources",
            detail={"cost_warning": req.cost_warning} if req.cost_warning else None,
            neon_project_id=req.neon_project_id,
            neon_branch_id=req.neon_branch_id,
            security_group_id=req.security_group_id,
            cost_warning=req.cost_warning,
        )

    @activity.defn
    async def mark_org_active(self, req: OrgRef) -> None:
        row = await self._orgs.update(
            req.org_id,
            actor=actor(),
            action="org.activate",
            status=OrgStatus.active.value,
            only_from=[OrgStatus.provisioning.value, OrgStatus.active.value],
        )
        if row is not None:
            return
        current = await self._orgs.get(req.org_id)
        if current is None or current["status"] == OrgStatus.deleting:
            # Deleted meanwhile: the onboarding undoes what it made before the cascade looks.
            raise permanent(
                "OrgNotProvisioning", f"org {req.slug} is {current['status'] if current else 'gone'}, not provisioning"
            )
        # Otherwise the org lives on (say, a reset onboarding of an org suspended since): its
        # resources are its own, and undoing them would destroy a tenant's data.
        activity.logger.warning(
            "org not activated: it is no longer provisioning", extra={"org_slug": req.slug, "status": current["status"]}
        )

    @activity.defn
    async def mark_org_failed(self, req: OrgFailure) -> None:
        await self._orgs.update(
            req.org_id,
            actor=actor(),
            action="org.fail",
            outcome="failed",
            detail={"reason": req.reason},
            status=OrgStatus.failed.value,
            failure_reason=req.reason,
            only_from=[OrgStatus.provisioning.value],
            # The workflow deleted what it created before calling this.
            clear=("neon_project_id", "neon_branch_id", "security_group_id"),
        )
