"""Append-only, hash-chained audit records.

Each record's hash covers its content and the previous record's hash, so changing or removing
any record breaks every link after it; the table's trigger refuses UPDATE and DELETE outright.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from db.pool import Pool

GENESIS = "0" * 64
# Serialises appends so that two writers never chain onto the same predecessor.
_AUDIT_LOCK = 7_233_002


def record_hash(
    prev_hash: str,
    at: datetime,
    actor: str,
    action: str,
    org_id: str | None,
    org_slug: str | None,
    resource_ids: dict[str, Any],
    outcome: str,
    detail: dict[str, Any],
) -> str:
    canonical = json.dumps(
        [prev_hash, at.astimezone(UTC).isoformat(), actor, action, org_id, org_slug, resource_ids, outcome, detail],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def append(
    conn: psycopg.AsyncConnection[Any],
    *,
    actor: str,
    action: str,
    outcome: str,
    org_id: str | None = None,
    org_slug: str | None = None,
    resource_ids: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
) -> str:
    """Append one record inside the caller's transaction; returns its hash."""
    resource_ids = resource_ids or {}
    detail = detail or {}
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_AUDIT_LOCK,))
    row = await (await conn.execute("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")).fetchone()
    prev = _col(row, "hash") if row else GENESIS
    at = datetime.now(UTC)
    digest = record_hash(prev, at, actor, action, org_id, org_slug, resource_ids, outcome, detail)
    await conn.execute(
        """INSERT INTO audit_log (at, actor, action, org_id, org_slug, resource_ids, outcome, detail, prev_hash, hash)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (at, actor, action, org_id, org_slug, Jsonb(resource_ids), outcome, Jsonb(detail), prev, digest),
    )
    return digest


def _col(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else row[0]


async def verify_chain(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """Recompute every record's hash and link; name the first broken one."""
    prev = GENESIS
    count = 0
    cur = conn.cursor()
    async for raw in cur.stream("SELECT * FROM audit_log ORDER BY seq"):
        row = raw if isinstance(raw, dict) else dict(zip([c.name for c in cur.description or []], raw, strict=True))
        count += 1
        if row["prev_hash"] != prev:
            return {
                "valid": False,
                "records": count,
                "first_broken_seq": row["seq"],
                "reason": "does not link to the record before it",
            }
        expected = record_hash(
            row["prev_hash"],
            row["at"],
            row["actor"],
            row["action"],
            row["org_id"],
            row["org_slug"],
            row["resource_ids"],
            row["outcome"],
            row["detail"],
        )
        if expected != row["hash"]:
            return {
                "valid": False,
                "records": count,
                "first_broken_seq": row["seq"],
                "reason": "content does not match its hash",
            }
        prev = row["hash"]
    return {"valid": True, "records": count, "first_broken_seq": None, "reason": None}


async def records_for(conn: psycopg.AsyncConnection[Any], slug: str, limit: int = 1000) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT seq, at, actor, action, org_id, org_slug, resource_ids, outcome, detail, hash FROM audit_log "
        "WHERE org_slug = %s ORDER BY seq LIMIT %s",
        (slug, limit),
    )
    records: list[dict[str, Any]] = await cur.fetchall()
    return records


class AuditRepo:
    """The audit trail as the API shows it."""

    def __init__(self, pool: Pool):
        self._pool = pool

    async def trail(self, slug: str, limit: int = 1000) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The org's records (they outlive it), and a verification of the whole chain."""
        async with self._pool.connection() as conn:
            return await records_for(conn, slug, limit), await verify_chain(conn)
