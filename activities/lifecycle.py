"""Org lifecycle records: status changes, credential revocation, audit steps and the purge."""

from __future__ import annotations

from temporalio import activity

from activities.errors import actor
from db import audit
from db.keys import OrgKeyRepo
from db.orgs import OrgRepo
from db.pool import Pool
from db.purge import purge_org
from db.workspaces import WorkspaceRepo
from domain.hard_delete_org import PurgeReceipt
from domain.org_entity import OrgTransition, QuotaChange
from domain.refs import AuditEntry, OrgRef, OrgStatusChange, WorkspaceQuery, WorkspacesStatusChange
from domain.status import OrgStatus


class OrgLifecycleActivities:
    def __init__(self, pool: Pool):
        self._pool = pool
        self._orgs = OrgRepo(pool)
        self._keys = OrgKeyRepo(pool)
        self._workspaces = WorkspaceRepo(pool)

    @activity.defn
    async def set_org_status(self, change: OrgStatusChange) -> OrgStatus | None:
        """Returns the status before the change; None when the org row no longer exists. With
        ``only_from``, a compare-and-set: another status is left as it is."""
        row = await self._orgs.get(change.org_id)
        if row is None:
            return None
        await self._orgs.update(
            change.org_id,
            actor=actor(),
            action=f"org.{change.status.value}",
            detail={"reason": change.reason, "from": row["status"]},
            status=change.status.value,
            status_reason=change.reason,
            clear=() if change.reason else ("status_reason",),
            only_from=[s.value for s in change.only_from] or None,
        )
        return OrgStatus(row["status"])

    @activity.defn
    async def transition_org(self, change: OrgTransition) -> OrgStatus | None:
        """The org entity's status change, as a compare-and-set; returns the status the row has
        afterwards (None when the row is gone)."""
        operation = change.operation.value if change.operation else None
        row = await self._orgs.update(
            change.org_id,
            actor=change.actor,
            action=f"org.{change.status.value}",
            detail={"operation": operation, "reason": change.failure_reason or change.status_reason},
            only_from=[s.value for s in change.only_from],
            status=change.status.value,
            operation=operation,
            workflow_id=change.workflow_id,
            failure_reason=change.failure_reason,
            status_reason=change.status_reason,
            abandoned=change.abandoned.model_dump(mode="json") if change.abandoned else None,
            clear=tuple(
                column
                for column, value in (
                    ("operation", operation),
                    ("failure_reason", change.failure_reason),
                    ("status_reason", change.status_reason),
                    ("abandoned", change.abandoned),
                )
                if value is None
            ),
        )
        if row is None:
            row = await self._orgs.get(change.org_id)
        return OrgStatus(row["status"]) if row else None

    @activity.defn
    async def set_org_quota(self, change: QuotaChange) -> None:
        fields = change.model_dump(exclude_none=True, exclude={"org_id", "actor"})
        await self._orgs.update(change.org_id, actor=change.actor, action="org.quota", detail=fields, **fields)

    @activity.defn
    async def read_org_status(self, org: OrgRef) -> OrgStatus | None:
        row = await self._orgs.get(org.org_id)
        return OrgStatus(row["status"]) if row else None

    @activity.defn
    async def revoke_org_keys(self, org: OrgRef) -> int:
        """Every org API key: the tenant is locked out at once; agents keep their workspace tokens."""
        row = await self._orgs.get(org.org_id)
        return await self._keys.revoke_all(row, actor=actor()) if row else 0

    @activity.defn
    async def revoke_org_credentials(self, org: OrgRef) -> int:
        """Every org API key and every workspace token of the org; returns how many keys."""
        row = await self._orgs.get(org.org_id)
        if row is None:
            return 0
        revoked = await self._keys.revoke_all(row, actor=actor())
        for ws in await self._workspaces.list(org.org_id, include_deleted=True):
            await self._workspaces.revoke_tokens(ws["id"])
        return revoked

    @activity.defn
    async def list_org_workspaces(self, query: WorkspaceQuery) -> list[str]:
        rows = await self._workspaces.list(query.org_id, include_deleted=True)
        return [r["id"] for r in rows if r["status"] in query.statuses]

    @activity.defn
    async def set_workspaces_status(self, change: WorkspacesStatusChange) -> None:
        """Move the org's workspaces in any of ``only_from`` to ``status``."""
        for ws in await self._workspaces.list(change.org_id):
            if ws["status"] in change.only_from:
                await self._workspaces.update(
                    ws["id"], actor=actor(), action=f"workspace.{change.status.value}", status=change.status.value
                )

    @activity.defn
    async def audit_step(self, entry: AuditEntry) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await audit.append(
                conn,
                actor=entry.actor if entry.actor != "workflow" else actor(),
                action=entry.action,
                outcome=entry.outcome,
                org_id=entry.org_id,
                org_slug=entry.slug,
                detail=entry.detail,
            )

    @activity.defn
    async def purge_org(self, org: OrgRef) -> PurgeReceipt:
        receipt = await purge_org(
            self._pool, org.org_id, org.slug, actor=actor(), workflow_id=activity.info().workflow_id
        )
        activity.logger.info("org purged", extra={"org_slug": org.slug, "resources": len(receipt["resources"])})
        return PurgeReceipt.model_validate(receipt)
