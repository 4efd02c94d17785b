"""Org records. Every status change is audited in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from db import audit
from db.paging import contains
from db.pool import Pool, required
from db.purge import latest_receipt


class OrgRepo:
    def __init__(self, pool: Pool):
        self._pool = pool

    async def create_or_get(
        self,
        *,
        org_id: str,
        slug: str,
        name: str,
        plan: str,
        vpc_id: str,
        subnet_ids: list[str],
        neon_mode: str,
        request_hash: str,
        actor: str,
    ) -> tuple[dict[str, Any], bool]:
        """Insert the org as provisioning, or return the existing row for this slug (whose
        ``request_hash`` tells whether it was the same request)."""
        async with self._pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    """INSERT INTO orgs (id, slug, name, plan, vpc_id, subnet_ids, status, neon_mode, request_hash,
                                         billing_plan)
                   VALUES (%s, %s, %s, %s, %s, %s, 'provisioning', %s, %s, %s)
                   ON CONFLICT (slug) DO NOTHING
                   RETURNING *""",
                    (org_id, slug, name, plan, vpc_id, subnet_ids, neon_mode, request_hash, plan),
                )
            ).fetchone()
            if row is not None:
                await audit.append(
                    conn,
                    actor=actor,
                    action="org.create",
                    outcome="accepted",
                    org_id=org_id,
                    org_slug=slug,
                    detail={"plan": plan, "vpc_id": vpc_id},
                )
                return row, True
            existing = await (await conn.execute("SELECT * FROM orgs WHERE slug = %s", (slug,))).fetchone()
            return required(existing), False

    async def get_by_slug(self, slug: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await (await conn.execute("SELECT * FROM orgs WHERE slug = %s", (slug,))).fetchone()

    async def page(
        self,
        *,
        statuses: Sequence[str] = (),
        prefix: str = "",
        name: str = "",
        after: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Orgs by slug, optionally of some statuses, with a slug prefix and a name containing
        ``name``, after a slug."""
        async with self._pool.connection() as conn:
            return await (
                await conn.execute(
                    """SELECT * FROM orgs
                   WHERE (cardinality(%(statuses)s::text[]) = 0 OR status = ANY(%(statuses)s::text[]))
                     AND slug LIKE %(pattern)s AND name ILIKE %(name)s
                     AND (%(after)s::text IS NULL OR slug > %(after)s::text)
                   ORDER BY slug LIMIT %(limit)s""",
                    {
                        "statuses": list(statuses),
                        "pattern": prefix.replace("%", "").replace("_", "") + "%",
                        "name": contains(name),
                        "after": after,
                        "limit": limit,
                    },
                )
            ).fetchall()

    async def latest_receipt(self, slug: str) -> dict[str, Any] | None:
        """The purge receipt of the last org of this slug that was deleted."""
        return await latest_receipt(self._pool, slug)

    async def get(self, org_id: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await (await conn.execute("SELECT * FROM orgs WHERE id = %s", (org_id,))).fetchone()

    async def set_workflow(self, org_id: str, workflow_id: str, run_id: str | None) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE orgs SET workflow_id = %s, run_id = COALESCE(%s, run_id), updated_at = now() WHERE id = %s",
                (workflow_id, run_id, org_id),
            )

    async def update(
        self,
        org_id: str,
        *,
        actor: str,
        action: str | None = None,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
        clear: tuple[str, ...] = (),
        only_from: Sequence[str] | None = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Set the given columns (None leaves a column as it is; ``clear`` names columns to null)
        and audit the change. ``only_from``: a compare-and-set, applied only while the status is
        one of these (None is returned otherwise). Column names come from code, never from input; a
        dict is written as JSON."""
        fields = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in fields.items() if v is not None}
        guard = "" if only_from is None else " AND status = ANY(%(only_from)s)"
        async with self._pool.connection() as conn, conn.transaction():
            assignments = [f"{k} = %({k})s" for k in fields] + [f"{k} = NULL" for k in clear]
            sets = ", ".join([*assignments, "updated_at = now()"])
            row = await (
                await conn.execute(
                    f"UPDATE orgs SET {sets} WHERE id = %(org_id)s{guard} RETURNING *",
                    {**fields, "org_id": org_id, "only_from": list(only_from or [])},
                )
            ).fetchone()
            if row is not None and action:
                await audit.append(
                    conn,
                    actor=actor,
                    action=action,
                    outcome=outcome,
                    org_id=org_id,
                    org_slug=row["slug"],
                    detail=detail or {},
                    resource_ids={k: v for k, v in fields.items() if k.endswith("_id")},
                )
            return row
