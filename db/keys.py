"""Org API keys: minted (shown once) with their scopes and optional expiry, listed, verified and
revoked. Audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from db import audit
from db.paging import contains
from db.pool import Pool, required
from domain import credentials
from domain.scopes import ALL_SCOPES

_PUBLIC = "id, org_id, name, scopes, expires_at, created_by, created_at, last_used_at, revoked_at"
_LIVE = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"


class OrgNotActive(Exception):
    """Keys are minted only for an active org."""

    def __init__(self, status: str):
        super().__init__(f"org is {status}")
        self.status = status


class KeyCapReached(Exception):
    """The org already holds as many live keys as it may."""

    def __init__(self, cap: int):
        super().__init__(f"the org already has {cap} live API keys, the most it may hold")
        self.cap = cap


class KeyExpired(Exception):
    """A genuine key past its expiry."""

    def __init__(self, expires_at: datetime):
        super().__init__(f"this org API key expired at {expires_at.isoformat()}")
        self.expires_at = expires_at


class OrgKeyRepo:
    def __init__(self, pool: Pool, *, max_live_per_org: int = 25):
        self._pool = pool
        self.max_live_per_org = max_live_per_org

    async def mint(
        self,
        org: dict[str, Any],
        name: str,
        *,
        actor: str,
        scopes: list[str] | tuple[str, ...] = ALL_SCOPES,
        expires_at: datetime | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A new key for an active org; returns its public record and the secret, which is never
        stored. The org row is locked while the key is written, so a suspension either commits
        first (and the key is refused) or waits until the key exists (and is revoked), and two
        mints count the org's live keys one after the other (the cap cannot be overshot)."""
        minted = credentials.mint(credentials.ORG_KEY)
        async with self._pool.connection() as conn, conn.transaction():
            current = await (
                await conn.execute("SELECT status FROM orgs WHERE id = %s FOR UPDATE", (org["id"],))
            ).fetchone()
            if current is None or current["status"] != "active":
                raise OrgNotActive(current["status"] if current else "deleted")
            live = await (
                await conn.execute(
                    f"SELECT count(*) AS n FROM org_api_keys WHERE org_id = %s AND {_LIVE}", (org["id"],)
                )
            ).fetchone()
            if required(live)["n"] >= self.max_live_per_org:
                raise KeyCapReached(self.max_live_per_org)
            row = await (
                await conn.execute(
                    f"""INSERT INTO org_api_keys (id, org_id, name, key_hash, created_by, scopes, expires_at)
                    VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_PUBLIC}""",
                    (minted.id, org["id"], name, minted.hash, actor, list(scopes), expires_at),
                )
            ).fetchone()
            await audit.append(
                conn,
                actor=actor,
                action="org_key.mint",
                outcome="ok",
                org_id=org["id"],
                org_slug=org["slug"],
                resource_ids={"org_key": minted.id},
                detail={
                    "name": name,
                    "scopes": list(scopes),
                    "expires_at": expires_at.isoformat() if expires_at else None,
                },
            )
        return required(row), minted.secret

    async def authenticate(self, secret: str) -> dict[str, Any] | None:
        """The org a live key belongs to (whatever the org's status: the caller refuses an org
        that is not active, with the reason), with the key's ``key_id``, ``key_scopes`` and
        ``key_expires_at``; None for anything that is not a live key. A genuine key past its
        expiry raises ``KeyExpired``. Touches ``last_used_at``."""
        key_id = credentials.parse(secret, credentials.ORG_KEY)
        if key_id is None:
            return None
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT k.key_hash, k.revoked_at, k.scopes AS key_scopes, k.expires_at AS key_expires_at, "
                    "k.expires_at <= now() AS key_expired, o.* "
                    "FROM org_api_keys k JOIN orgs o ON o.id = k.org_id WHERE k.id = %s",
                    (key_id,),
                )
            ).fetchone()
            if row is None or row["revoked_at"] is not None or not credentials.matches(secret, row["key_hash"]):
                return None
            if row["key_expired"]:
                raise KeyExpired(row["key_expires_at"])
            await conn.execute("UPDATE org_api_keys SET last_used_at = now() WHERE id = %s", (key_id,))
        org = {k: v for k, v in row.items() if k not in ("key_hash", "revoked_at", "key_expired")}
        org["key_id"] = key_id
        return org

    async def list(
        self, org_id: str, *, name: str = "", after: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The org's keys, oldest first, revoked ones included: named with ``name`` in it, after the
        key ``after``."""
        async with self._pool.connection() as conn:
            return await (
                await conn.execute(
                    f"""SELECT {_PUBLIC} FROM org_api_keys
                    WHERE org_id = %(org)s AND name ILIKE %(name)s
                      AND (%(after)s::text IS NULL
                           OR (created_at, id) > (SELECT created_at, id FROM org_api_keys WHERE id = %(after)s))
                    ORDER BY created_at, id LIMIT %(limit)s""",
                    {"org": org_id, "name": contains(name), "after": after, "limit": limit},
                )
            ).fetchall()

    async def get(self, org_id: str, key_id: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await (
                await conn.execute(
                    f"SELECT {_PUBLIC} FROM org_api_keys WHERE id = %s AND org_id = %s", (key_id, org_id)
                )
            ).fetchone()

    async def revoke(self, org: dict[str, Any], key_id: str, *, actor: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    f"""UPDATE org_api_keys SET revoked_at = COALESCE(revoked_at, now())
                    WHERE id = %s AND org_id = %s RETURNING {_PUBLIC}""",
                    (key_id, org["id"]),
                )
            ).fetchone()
            if row is not None:
                await audit.append(
                    conn,
                    actor=actor,
                    action="org_key.revoke",
                    outcome="ok",
                    org_id=org["id"],
                    org_slug=org["slug"],
                    resource_ids={"org_key": key_id},
                )
            return row

    async def revoke_all(self, org: dict[str, Any], *, actor: str) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE org_api_keys SET revoked_at = now() WHERE org_id = %s AND revoked_at IS NULL", (org["id"],)
            )
            await audit.append(
                conn,
                actor=actor,
                action="org_key.revoke_all",
                outcome="ok",
                org_id=org["id"],
                org_slug=org["slug"],
                detail={"revoked": cur.rowcount},
            )
            return cur.rowcount
