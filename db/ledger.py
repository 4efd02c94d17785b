"""The resource ledger: a cloud resource is recorded before it is created and after it exists."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from db import audit
from db.pool import Pool, required


class Ledger:
    def __init__(self, pool: Pool):
        self._pool = pool

    async def reserve(self, *, org_id: str, org_slug: str, kind: str, business_key: str, actor: str) -> dict[str, Any]:
        """Record intent to create; idempotent. Returns the row (which may already carry a cloud id)."""
        async with self._pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    """INSERT INTO resources (org_id, org_slug, kind, business_key, status, create_attempted_at)
                   VALUES (%s, %s, %s, %s, 'pending', now())
                   ON CONFLICT (business_key) DO UPDATE
                       SET status = CASE WHEN resources.status = 'deleted' THEN 'pending' ELSE resources.status END,
                           updated_at = now()
                   RETURNING *, (xmax = 0) AS inserted""",
                    (org_id, org_slug, kind, business_key),
                )
            ).fetchone()
            row = required(row)
            if row["inserted"]:
                await audit.append(
                    conn,
                    actor=actor,
                    action=f"{kind}.reserve",
                    outcome="pending",
                    org_id=org_id,
                    org_slug=org_slug,
                    resource_ids={kind: business_key},
                )
            return row

    async def mark_created(
        self, business_key: str, cloud_id: str, *, actor: str, detail: dict[str, Any] | None = None
    ) -> None:
        await self._transition(business_key, cloud_id, "created", actor=actor, detail=detail)

    async def mark_deleting(self, business_key: str, *, actor: str) -> None:
        await self._transition(business_key, None, "deleting", actor=actor)

    async def mark_deleted(self, business_key: str, *, actor: str) -> None:
        await self._transition(business_key, None, "deleted", actor=actor)

    async def _transition(
        self, business_key: str, cloud_id: str | None, status: str, *, actor: str, detail: dict[str, Any] | None = None
    ) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    """UPDATE resources
                   SET status = %s, cloud_id = COALESCE(%s, cloud_id), detail = detail || %s, updated_at = now()
                   WHERE business_key = %s AND status IS DISTINCT FROM %s
                   RETURNING org_id, org_slug, kind, cloud_id""",
                    (status, cloud_id, Jsonb(detail or {}), business_key, status),
                )
            ).fetchone()
            if row:
                await audit.append(
                    conn,
                    actor=actor,
                    action=f"{row['kind']}.{status}",
                    outcome="ok",
                    org_id=row["org_id"],
                    org_slug=row["org_slug"],
                    resource_ids={row["kind"]: row["cloud_id"] or business_key},
                )

    async def attempting_create(self, business_key: str) -> None:
        """Called right before each create call: until the consistency window has passed, a lookup
        that finds nothing does not prove the resource absent."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE resources SET create_attempted_at = now() WHERE business_key = %s", (business_key,)
            )

    async def may_be_invisible(self, business_key: str, window_seconds: float) -> bool:
        """Whether a create of this resource was attempted so recently that the cloud may not show
        it yet: a NotFound (or an empty lookup) then does not prove it is gone."""
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    """SELECT create_attempted_at > now() - make_interval(secs => %s) AS recent
                   FROM resources WHERE business_key = %s""",
                    (window_seconds, business_key),
                )
            ).fetchone()
        return bool(row and row["recent"])

    async def get(self, business_key: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await (
                await conn.execute("SELECT * FROM resources WHERE business_key = %s", (business_key,))
            ).fetchone()

    async def for_org(self, org_id: str) -> list[dict[str, Any]]:
        async with self._pool.connection() as conn:
            return await (
                await conn.execute("SELECT * FROM resources WHERE org_id = %s ORDER BY id", (org_id,))
            ).fetchall()
