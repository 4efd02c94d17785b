"""What reconciliation reads from the platform database, and what it writes back: ledger rows of
deleted orphans (audited in the same transaction) and one report per run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from db import audit
from db.pool import Pool, required
from domain.resources import LedgerStatus, ResourceKind
from domain.status import CAPPED_ORPHAN_DELETIONS, OrphanDeletionStatus

ACTOR = "reconciler"
RESOURCE_KINDS = [kind.value for kind in ResourceKind]
_LEDGER_COLUMNS = "business_key, kind, cloud_id, status, org_id, org_slug, detail, updated_at"
# Serialises named orphan deletions' admission, so that racing requests cannot all see room under
# the cap and together exceed it.
_ORPHAN_DELETION_LOCK = 7_233_004
_SETTLED = [OrphanDeletionStatus.deleted.value, OrphanDeletionStatus.already_gone.value]


class DeletionCapReached(Exception):
    def __init__(self, deleted: int, max_deletes: int, window_seconds: float):
        super().__init__(
            f"{deleted} orphans were deleted (or are being deleted) in the last {window_seconds:g}s, by reconcile"
            f" runs and operators; at most {max_deletes} per reconcile interval (TENANTFLOW_RECONCILE_MAX_DELETES)"
        )
        self.deleted, self.max_deletes = deleted, max_deletes


class ReconcileRepo:
    def __init__(self, pool: Pool):
        self._pool = pool

    async def records(
        self,
        *,
        business_keys: list[str],
        org_ids: list[str],
        workspace_ids: list[str],
        created_in_orgs: list[str] | None,
    ) -> dict[str, Any]:
        """The ledger rows of ``business_keys`` (any status) and every ``created`` row of
        ``created_in_orgs`` (None: of all orgs), plus which of ``org_ids`` and ``workspace_ids``
        still have rows."""
        async with self._pool.connection() as conn:
            ledger = await (
                await conn.execute(
                    f"""SELECT {_LEDGER_COLUMNS} FROM resources
                    WHERE business_key = ANY(%(keys)s::text[])
                       OR (status = %(created)s AND kind = ANY(%(kinds)s::text[])
                           AND (%(all_orgs)s OR org_id = ANY(%(orgs)s::text[])))
                    ORDER BY id""",
                    {
                        "keys": business_keys,
                        "kinds": RESOURCE_KINDS,
                        "all_orgs": created_in_orgs is None,
                        "orgs": created_in_orgs or [],
                        "created": LedgerStatus.created.value,
                    },
                )
            ).fetchall()
            orgs = await (
                await conn.execute("SELECT id, slug FROM orgs WHERE id = ANY(%s::text[])", (org_ids,))
            ).fetchall()
            workspaces = await (
                await conn.execute("SELECT id FROM workspaces WHERE id = ANY(%s::text[])", (workspace_ids,))
            ).fetchall()
        return {
            "ledger": ledger,
            "orgs": {r["id"]: r["slug"] for r in orgs},
            "workspaces": [r["id"] for r in workspaces],
        }

    async def created_rows(self, *, after: int, limit: int, org_ids: list[str] | None) -> list[dict[str, Any]]:
        """A page of ``created`` ledger rows (of ``org_ids``; None: of every org), by row id after
        ``after``."""
        async with self._pool.connection() as conn:
            rows: list[dict[str, Any]] = await (
                await conn.execute(
                    f"""SELECT id, {_LEDGER_COLUMNS} FROM resources
                    WHERE status = %(created)s AND kind = ANY(%(kinds)s::text[]) AND id > %(after)s
                      AND (%(all_orgs)s OR org_id = ANY(%(orgs)s::text[]))
                    ORDER BY id LIMIT %(limit)s""",
                    {
                        "created": LedgerStatus.created.value,
                        "kinds": RESOURCE_KINDS,
                        "after": after,
                        "all_orgs": org_ids is None,
                        "orgs": org_ids or [],
                        "limit": limit,
                    },
                )
            ).fetchall()
        return rows

    async def record_deletion(
        self,
        *,
        kind: str,
        cloud_id: str,
        business_key: str | None,
        org_id: str | None,
        org_slug: str | None,
        outcome: str,
        detail: dict[str, Any],
    ) -> bool:
        """Mark the resource's ledger row (if any) deleted and audit the deletion, atomically.
        Returns whether a ledger row changed."""
        async with self._pool.connection() as conn, conn.transaction():
            row = None
            if business_key:
                # Only the row of this very resource: a same-named successor keeps its record.
                row = await (
                    await conn.execute(
                        """UPDATE resources SET status = 'deleted', updated_at = now(),
                              detail = detail || jsonb_build_object('deleted_by', %s::text)
                       WHERE business_key = %s AND status <> 'deleted' AND (cloud_id IS NULL OR cloud_id = %s)
                       RETURNING org_slug""",
                        (ACTOR, business_key, cloud_id),
                    )
                ).fetchone()
            await audit.append(
                conn,
                actor=ACTOR,
                action="reconcile.delete",
                outcome=outcome,
                org_id=org_id,
                org_slug=org_slug or (row["org_slug"] if row else None),
                resource_ids={kind: cloud_id},
                detail={**detail, "business_key": business_key, "ledger_updated": row is not None},
            )
        return row is not None

    async def save_report(
        self,
        *,
        workflow_id: str,
        run_id: str,
        started_at: datetime,
        finished_at: datetime,
        dry_run: bool,
        cap_exceeded: bool,
        findings: list[dict[str, Any]],
        deleted: list[dict[str, Any]],
        detail: dict[str, Any],
    ) -> int:
        """Store a run's report; a retried save of the same run overwrites instead of duplicating."""
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    """INSERT INTO reconcile_reports
                       (workflow_id, run_id, started_at, finished_at, dry_run, cap_exceeded, findings, deleted, detail)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (workflow_id, run_id) DO UPDATE
                       SET finished_at = EXCLUDED.finished_at, dry_run = EXCLUDED.dry_run,
                           cap_exceeded = EXCLUDED.cap_exceeded, findings = EXCLUDED.findings,
                           deleted = EXCLUDED.deleted, detail = EXCLUDED.detail
                   RETURNING id""",
                    (
                        workflow_id,
                        run_id,
                        started_at,
                        finished_at,
                        dry_run,
                        cap_exceeded,
                        Jsonb(findings),
                        Jsonb(deleted),
                        Jsonb(detail),
                    ),
                )
            ).fetchone()
        report_id: int = required(row)["id"]
        return report_id

    async def extend_findings(
        self, *, workflow_id: str, run_id: str, offset: int, findings: list[dict[str, Any]]
    ) -> int:
        """Set the stored report's findings from ``offset`` on (those before it stay): a report too
        large for one write is stored in parts, and a part written again replaces itself."""
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    """UPDATE reconcile_reports SET findings = COALESCE(
                       (SELECT jsonb_agg(f ORDER BY n) FROM jsonb_array_elements(findings) WITH ORDINALITY AS t(f, n)
                        WHERE n <= %(offset)s), '[]'::jsonb) || %(findings)s
                   WHERE workflow_id = %(workflow_id)s AND run_id = %(run_id)s
                   RETURNING id""",
                    {"offset": offset, "findings": Jsonb(findings), "workflow_id": workflow_id, "run_id": run_id},
                )
            ).fetchone()
        if row is None:
            raise LookupError(f"no report of {workflow_id} run {run_id} to extend")
        report_id: int = row["id"]
        return report_id

    async def reports(self, *, workflow_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest reports, newest first (of one workflow id, if given)."""
        async with self._pool.connection() as conn:
            return await (
                await conn.execute(
                    """SELECT * FROM reconcile_reports WHERE %(wf)s::text IS NULL OR workflow_id = %(wf)s
                   ORDER BY id DESC LIMIT %(limit)s""",
                    {"wf": workflow_id, "limit": limit},
                )
            ).fetchall()

    async def summaries(self, *, before: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Reports newest first (before the report ``before``), each without its findings and
        deletions but with how many of each there are."""
        async with self._pool.connection() as conn:
            return await (
                await conn.execute(
                    """SELECT id, workflow_id, run_id, started_at, finished_at, dry_run, cap_exceeded, detail,
                          (SELECT count(*) FROM jsonb_array_elements(findings) f WHERE f->>'problem' = 'orphan')
                              AS orphans,
                          (SELECT count(*) FROM jsonb_array_elements(findings) f WHERE f->>'problem' = 'drift')
                              AS drifts,
                          jsonb_array_length(deleted) AS deletions
                   FROM reconcile_reports WHERE %(before)s::bigint IS NULL OR id < %(before)s
                   ORDER BY id DESC LIMIT %(limit)s""",
                    {"before": before, "limit": limit},
                )
            ).fetchall()

    async def report(self, report_id: int) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await (await conn.execute("SELECT * FROM reconcile_reports WHERE id = %s", (report_id,))).fetchone()

    # -- an operator's deletion of one named orphan -----------------------------------------------

    async def request_orphan_deletion(
        self,
        *,
        report_id: int,
        finding: dict[str, Any],
        workflow_id: str,
        actor: str,
        max_deletes: int,
        window_seconds: float,
    ) -> tuple[dict[str, Any], bool]:
        """Record an operator's request to delete one orphan, within the cap; returns its row and
        whether it is new. The deletion of the resource that is under way, or that settled it
        (deleted or already gone), is returned instead of a new one.

        Counted against ``max_deletes`` in the last ``window_seconds``: what reconcile runs deleted
        (their stored reports) and every named deletion under way, done or failed part-way.
        Admission holds a lock, so racing requests are counted one after the other."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ORPHAN_DELETION_LOCK,))
            earlier = await (
                await conn.execute(
                    """SELECT * FROM orphan_deletions WHERE cloud_id = %s AND status = ANY(%s::text[])
                    ORDER BY id DESC LIMIT 1""",
                    (finding["cloud_id"], [OrphanDeletionStatus.deleting.value, *_SETTLED]),
                )
            ).fetchone()
            if earlier is not None:
                return earlier, False
            deleted = await _deleted_within(conn, window_seconds)
            if deleted >= max_deletes:
                raise DeletionCapReached(deleted, max_deletes, window_seconds)
            row = await (
                await conn.execute(
                    """INSERT INTO orphan_deletions
                       (report_id, kind, cloud_id, org_id, org_slug, requested_by, workflow_id)
                   VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *""",
                    (
                        report_id,
                        finding["kind"],
                        finding["cloud_id"],
                        finding.get("org_id"),
                        finding.get("org_slug"),
                        actor,
                        workflow_id,
                    ),
                )
            ).fetchone()
            await audit.append(
                conn,
                actor=actor,
                action="reconcile.delete_orphan",
                outcome="requested",
                org_id=finding.get("org_id"),
                org_slug=finding.get("org_slug"),
                resource_ids={finding["kind"]: finding["cloud_id"]},
                detail={"report_id": report_id, "reason": finding.get("reason"), "workflow_id": workflow_id},
            )
        return required(row), True

    async def finish_orphan_deletion(
        self, deletion_id: int, *, status: str, code: str | None, reason: str | None
    ) -> bool:
        """Record the outcome of a named deletion under way, audited as the operator who asked;
        False when it was already recorded (a retried activity)."""
        async with self._pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    """UPDATE orphan_deletions SET status = %s, code = %s, reason = %s, finished_at = now()
                   WHERE id = %s AND status = %s RETURNING *""",
                    (status, code, reason, deletion_id, OrphanDeletionStatus.deleting.value),
                )
            ).fetchone()
            if row is not None:
                await audit.append(
                    conn,
                    actor=row["requested_by"],
                    action="reconcile.delete_orphan",
                    outcome=status,
                    org_id=row["org_id"],
                    org_slug=row["org_slug"],
                    resource_ids={row["kind"]: row["cloud_id"]},
                    detail={"report_id": row["report_id"], "code": code, "reason": reason},
                )
        return row is not None

    async def deleted_within(self, window_seconds: float) -> int:
        """How many deletions count towards the cap now (``request_orphan_deletion``)."""
        async with self._pool.connection() as conn:
            return await _deleted_within(conn, window_seconds)

    async def orphan_deletions_of(self, report_id: int) -> list[dict[str, Any]]:
        """The operators' deletions of orphans the report named, oldest first."""
        async with self._pool.connection() as conn:
            return await (
                await conn.execute("SELECT * FROM orphan_deletions WHERE report_id = %s ORDER BY id", (report_id,))
            ).fetchall()

    async def orphan_deletion(self, deletion_id: int) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await (await conn.execute("SELECT * FROM orphan_deletions WHERE id = %s", (deletion_id,))).fetchone()


async def _deleted_within(conn: AsyncConnection[Any], window_seconds: float) -> int:
    """What reconcile runs deleted in the last ``window_seconds`` (by their stored reports) and
    the named deletions requested in it that are under way, done, or failed (perhaps part-way)."""
    row = await (
        await conn.execute(
            """SELECT
              (SELECT count(*) FROM reconcile_reports r, jsonb_array_elements(r.deleted) d
               WHERE r.finished_at > now() - make_interval(secs => %(window)s)
                 AND d->>'outcome' IN ('deleted', 'failed'))
            + (SELECT count(*) FROM orphan_deletions
               WHERE requested_at > now() - make_interval(secs => %(window)s)
                 AND status = ANY(%(capped)s::text[])) AS n""",
            {"window": window_seconds, "capped": [s.value for s in CAPPED_ORPHAN_DELETIONS]},
        )
    ).fetchone()
    counted: int = required(row)["n"]
    return counted
