"""The last step of a hard delete: the org's rows go, its receipt and audit trail stay."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from db import audit
from db.pool import Pool, required
from domain.resources import name_of_key
from domain.status import WorkspaceStatus


async def purge_org(pool: Pool, org_id: str, slug: str, *, actor: str, workflow_id: str | None) -> dict[str, Any]:
    """Delete the org row (keys, workspaces and tokens cascade) and write the receipt, in one
    transaction. Idempotent: once purged, the existing receipt is returned."""
    async with pool.connection() as conn, conn.transaction():
        existing = await (
            await conn.execute("SELECT receipt FROM org_receipts WHERE org_id = %s", (org_id,))
        ).fetchone()
        if existing is not None:
            receipt: dict[str, Any] = existing["receipt"]
            return receipt
        resources = await (
            await conn.execute(
                """SELECT kind, business_key, cloud_id, status, updated_at FROM resources
               WHERE org_id = %s ORDER BY id""",
                (org_id,),
            )
        ).fetchall()
        workspaces = await (
            await conn.execute(
                "SELECT id, name, instance_id, status FROM workspaces WHERE org_id = %s ORDER BY created_at", (org_id,)
            )
        ).fetchall()
        keys = required(
            await (await conn.execute("SELECT count(*) AS n FROM org_api_keys WHERE org_id = %s", (org_id,))).fetchone()
        )["n"]
        await conn.execute("DELETE FROM orgs WHERE id = %s", (org_id,))
        receipt = {
            "org_id": org_id,
            "slug": slug,
            "deleted_at": datetime.now(UTC).isoformat(),
            "workflow_id": workflow_id,
            "resources": [
                {
                    "kind": r["kind"],
                    "name": name_of_key(r["business_key"]),
                    "cloud_id": r["cloud_id"],
                    "status": r["status"],
                    "at": r["updated_at"].isoformat(),
                }
                for r in resources
            ],
            # Their final state: the cascade ended every one before this step, and the purge deletes
            # their rows (a row may still say "running" for an instance the cascade terminated).
            "workspaces": [
                {
                    "id": w["id"],
                    "name": w["name"],
                    "instance_id": w["instance_id"],
                    "status": WorkspaceStatus.deleted.value,
                    "status_before_purge": w["status"],
                }
                for w in workspaces
            ],
            "keys_revoked": keys,
        }
        await conn.execute(
            "INSERT INTO org_receipts (org_id, org_slug, workflow_id, receipt) VALUES (%s, %s, %s, %s)",
            (org_id, slug, workflow_id, Jsonb(receipt)),
        )
        await audit.append(
            conn,
            actor=actor,
            action="org.purge",
            outcome="ok",
            org_id=org_id,
            org_slug=slug,
            resource_ids={r["kind"] + ":" + str(i): r["cloud_id"] for i, r in enumerate(resources)},
            detail={"workspaces": len(workspaces), "keys": keys},
        )
        return receipt


async def latest_receipt(pool: Pool, slug: str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT receipt FROM org_receipts WHERE org_slug = %s ORDER BY deleted_at DESC LIMIT 1", (slug,)
            )
        ).fetchone()
    return row["receipt"] if row else None
