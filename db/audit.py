"""Append-only audit records, chained per org with a keyed hash.

Each record's hash covers its content and the previous record of its chain, so changing or
removing any record breaks every link after it; the table's trigger refuses UPDATE and DELETE,
and the application role has neither privilege. Since migration 0007 (format version 2) every org
has its own chain (records without an org share the 'platform' chain), appends to different orgs
never wait on each other, and the hash is HMAC-SHA256 with the platform's audit key, so nobody
without the key can recompute a chain. Records written before (version 1: one global chain of
plain SHA-256) still verify, and each version-2 chain starts from the last of them. Deleting the
newest records leaves a valid chain behind, so verification also compares every chain with the
newest anchor (``db.audit_anchors``): an anchored record that is gone or differs is named.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from db.pool import Pool
from domain.audit import LEGACY_CHAIN, PLATFORM_CHAIN, AuditAnchor, ChainHead, chain_of

GENESIS = "0" * 64
# With a hash of the chain's name: serialises the appends to one chain only.
_AUDIT_LOCK_CLASS = 7_233_002
_CHAIN_SQL = f"coalesce(org_id, '{PLATFORM_CHAIN}')"

_key: bytes | None = None


def configure(key: str) -> None:
    """The platform's audit key (``audit_hmac_key``), for every append and verification here."""
    global _key
    if not key:
        raise ValueError("the audit HMAC key is empty: set TENANTFLOW_AUDIT_HMAC_KEY")
    _key = key.encode()


def _required_key() -> bytes:
    if _key is None:
        raise RuntimeError("db.audit.configure(audit_hmac_key) was not called")
    return _key


def _canonical(
    prev_hash: str,
    at: datetime,
    actor: str,
    action: str,
    org_id: str | None,
    org_slug: str | None,
    resource_ids: dict[str, Any],
    outcome: str,
    detail: dict[str, Any],
) -> bytes:
    return json.dumps(
        [prev_hash, at.astimezone(UTC).isoformat(), actor, action, org_id, org_slug, resource_ids, outcome, detail],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    ).encode()


def record_hash(*fields: Any) -> str:
    """Version 1: plain SHA-256 (records written before migration 0007)."""
    return hashlib.sha256(_canonical(*fields)).hexdigest()


def record_hmac(key: bytes, *fields: Any) -> str:
    """Version 2: HMAC-SHA256 with the platform's audit key."""
    return hmac.new(key, b"v2:" + _canonical(*fields), hashlib.sha256).hexdigest()


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
    """Append one record to its org's chain inside the caller's transaction; returns its hash."""
    key = _required_key()
    resource_ids = resource_ids or {}
    detail = detail or {}
    chain = chain_of(org_id)
    # Held to commit, so the next append to this chain reads this record as its predecessor.
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_AUDIT_LOCK_CLASS, chain))
    row = await (
        await conn.execute(
            f"SELECT hash FROM audit_log WHERE version = 2 AND {_CHAIN_SQL} = %s ORDER BY seq DESC LIMIT 1",
            (chain,),
        )
    ).fetchone()
    prev = _col(row, "hash") if row else await _legacy_head(conn)
    at = datetime.now(UTC)
    digest = record_hmac(key, prev, at, actor, action, org_id, org_slug, resource_ids, outcome, detail)
    await conn.execute(
        """INSERT INTO audit_log
               (version, at, actor, action, org_id, org_slug, resource_ids, outcome, detail, prev_hash, hash)
           VALUES (2, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (at, actor, action, org_id, org_slug, Jsonb(resource_ids), outcome, Jsonb(detail), prev, digest),
    )
    return digest


async def _legacy_head(conn: psycopg.AsyncConnection[Any]) -> str:
    """Where every version-2 chain starts: the last version-1 record (none: the genesis)."""
    row = await (
        await conn.execute("SELECT hash FROM audit_log WHERE version = 1 ORDER BY seq DESC LIMIT 1")
    ).fetchone()
    return str(_col(row, "hash")) if row else GENESIS


def _col(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else row[0]


@dataclass
class Verification:
    valid: bool = True
    records: int = 0
    first_broken_seq: int | None = None
    reason: str | None = None
    # When the anchor compared with was written (None: no anchor yet).
    anchored_at: datetime | None = None
    # Every chain's newest record, as read (the legacy chain under LEGACY_CHAIN).
    heads: dict[str, ChainHead] = field(default_factory=dict)

    def broken(self, seq: int, reason: str) -> Verification:
        self.valid, self.first_broken_seq, self.reason = False, seq, reason
        return self

    def summary(self) -> dict[str, Any]:
        """As the API and the CLI show it."""
        out = asdict(self)
        del out["heads"]
        out["chains"] = len(self.heads)
        out["anchored_at"] = self.anchored_at.isoformat() if self.anchored_at else None
        return out


async def verify_chain(conn: psycopg.AsyncConnection[Any], anchor: AuditAnchor | None = None) -> Verification:
    """Recompute every record's hash and link, then compare with the anchor; name the first record
    that is broken, or the anchored record that is missing."""
    key = _required_key()
    result = Verification(anchored_at=anchor.at if anchor else None)
    anchored = {head.seq: (chain, head.hash) for chain, head in (anchor.heads if anchor else {}).items()}
    legacy_prev = GENESIS
    seen_v2 = False
    heads = result.heads
    cur = conn.cursor()
    async for raw in cur.stream("SELECT * FROM audit_log ORDER BY seq"):
        row = raw if isinstance(raw, dict) else dict(zip([c.name for c in cur.description or []], raw, strict=True))
        result.records += 1
        seq = row["seq"]
        content = (
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
        if row["version"] == 1:
            chain = LEGACY_CHAIN
            if seen_v2:
                return result.broken(seq, "a version-1 record after the keyed per-org chains began")
            expected_prev, expected = legacy_prev, record_hash(*content)
            legacy_prev = row["hash"]
        else:
            seen_v2 = True
            chain = chain_of(row["org_id"])
            expected_prev, expected = (heads[chain].hash if chain in heads else legacy_prev), record_hmac(key, *content)
        if row["prev_hash"] != expected_prev:
            return result.broken(seq, f"does not link to the record before it in chain {chain}")
        if expected != row["hash"]:
            return result.broken(seq, "content does not match its hash")
        if seq in anchored:
            if anchored.pop(seq) != (chain, row["hash"]):
                return result.broken(seq, "differs from the anchored record")
        heads[chain] = ChainHead(seq=seq, hash=row["hash"], org_slug=row["org_slug"])
    if anchored:
        seq = min(anchored)
        return result.broken(seq, f"missing: the anchored head of chain {anchored[seq][0]} is gone")
    return result


async def records_for(
    conn: psycopg.AsyncConnection[Any],
    org_id: str,
    *,
    after_seq: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """One org's records, oldest first: after the record ``after_seq``, written at or after
    ``since`` and before ``until``."""
    cur = await conn.execute(
        """SELECT seq, version, at, actor, action, org_id, org_slug, resource_ids, outcome, detail, hash
           FROM audit_log
           WHERE org_id = %(org)s AND (%(after)s::bigint IS NULL OR seq > %(after)s)
             AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
             AND (%(until)s::timestamptz IS NULL OR at < %(until)s)
           ORDER BY seq LIMIT %(limit)s""",
        {"org": org_id, "after": after_seq, "since": since, "until": until, "limit": limit},
    )
    records: list[dict[str, Any]] = await cur.fetchall()
    return records


async def org_ids_of(conn: psycopg.AsyncConnection[Any], slug: str) -> list[str]:
    """Every org that has had this slug (a slug is free again once its org is deleted), newest last."""
    cur = await conn.execute(
        "SELECT org_id FROM audit_log WHERE org_slug = %s AND org_id IS NOT NULL GROUP BY org_id ORDER BY max(seq)",
        (slug,),
    )
    return [_col(row, "org_id") for row in await cur.fetchall()]


# The newest anchor, read from the write-once store (None: nothing anchored yet).
NewestAnchor = Callable[[], Awaitable[AuditAnchor | None]]


async def _no_anchor() -> AuditAnchor | None:
    return None


class AuditRepo:
    """The audit trail as the API shows it, verified against the newest anchor."""

    def __init__(self, pool: Pool, newest_anchor: NewestAnchor = _no_anchor):
        self._pool = pool
        self._newest_anchor = newest_anchor

    async def verify(self) -> Verification:
        anchor = await self._newest_anchor()
        async with self._pool.connection() as conn:
            return await verify_chain(conn, anchor)

    async def org_ids(self, slug: str) -> list[str]:
        async with self._pool.connection() as conn:
            return await org_ids_of(conn, slug)

    async def trail(
        self,
        org_id: str,
        *,
        after_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> tuple[list[dict[str, Any]], Verification]:
        """A page of the org's records (they outlive it), and a verification of every chain."""
        anchor = await self._newest_anchor()
        async with self._pool.connection() as conn:
            records = await records_for(conn, org_id, after_seq=after_seq, since=since, until=until, limit=limit)
            return records, await verify_chain(conn, anchor)

    async def record(self, **fields: Any) -> None:
        """``append`` (its keyword arguments) on its own, for what is audited outside any other write."""
        async with self._pool.connection() as conn, conn.transaction():
            await append(conn, **fields)
