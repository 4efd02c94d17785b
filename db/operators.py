"""Named operator tokens (``tfo_...``): created (shown once), listed, verified and revoked. Audited.

A name is an operator's identity and the audit actor (``operator:<name>``); it may hold two live
tokens at once, so a rotation never has a moment without a working credential.
"""

from __future__ import annotations

from typing import Any

from db import audit
from db.paging import contains
from db.pool import Pool, required
from domain import credentials

_PUBLIC = "id, name, created_by, created_at, last_used_at, revoked_at"
# The old and the new token of a rotation.
MAX_LIVE_PER_NAME = 2
# Serialises creations per name (with the name's hash as the second key), so two concurrent
# creations cannot both see one live token and leave three.
_CREATE_LOCK = 7_233_003


class NameFull(Exception):
    def __init__(self, name: str):
        super().__init__(
            f"operator '{name}' already has {MAX_LIVE_PER_NAME} live tokens: revoke the old one before rotating again"
        )


class OperatorTokenRepo:
    def __init__(self, pool: Pool):
        self._pool = pool

    async def create(self, name: str, *, actor: str) -> tuple[dict[str, Any], str]:
        """A new token for ``name``; returns its public record and the secret, never stored."""
        minted = credentials.mint(credentials.OPERATOR_TOKEN)
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_CREATE_LOCK, name))
            live = await (
                await conn.execute(
                    "SELECT count(*) AS n FROM operator_tokens WHERE name = %s AND revoked_at IS NULL", (name,)
                )
            ).fetchone()
            if required(live)["n"] >= MAX_LIVE_PER_NAME:
                raise NameFull(name)
            row = await (
                await conn.execute(
                    f"""INSERT INTO operator_tokens (id, name, token_hash, created_by)
                    VALUES (%s, %s, %s, %s) RETURNING {_PUBLIC}""",
                    (minted.id, name, minted.hash, actor),
                )
            ).fetchone()
            await audit.append(
                conn,
                actor=actor,
                action="operator_token.create",
                outcome="ok",
                resource_ids={"operator_token": minted.id},
                detail={"name": name},
            )
        return required(row), minted.secret

    async def authenticate(self, secret: str) -> str | None:
        """The operator name of a live token, or None. Touches ``last_used_at``."""
        token_id = credentials.parse(secret, credentials.OPERATOR_TOKEN)
        if token_id is None:
            return None
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT name, token_hash, revoked_at FROM operator_tokens WHERE id = %s", (token_id,)
                )
            ).fetchone()
            if row is None or row["revoked_at"] is not None or not credentials.matches(secret, row["token_hash"]):
                return None
            await conn.execute("UPDATE operator_tokens SET last_used_at = now() WHERE id = %s", (token_id,))
        name: str = row["name"]
        return name

    async def list(self, *, name: str = "", after: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Every token, oldest first, revoked ones included: named with ``name`` in it, after the
        token ``after``."""
        async with self._pool.connection() as conn:
            return await (
                await conn.execute(
                    f"""SELECT {_PUBLIC} FROM operator_tokens
                    WHERE name ILIKE %(name)s
                      AND (%(after)s::text IS NULL
                           OR (created_at, id) > (SELECT created_at, id FROM operator_tokens WHERE id = %(after)s))
                    ORDER BY created_at, id LIMIT %(limit)s""",
                    {"name": contains(name), "after": after, "limit": limit},
                )
            ).fetchall()

    async def revoke(self, token_id: str, *, actor: str) -> dict[str, Any] | None:
        """Idempotent; the record, or None when there is no such token."""
        async with self._pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    f"""UPDATE operator_tokens SET revoked_at = COALESCE(revoked_at, now())
                    WHERE id = %s RETURNING {_PUBLIC}""",
                    (token_id,),
                )
            ).fetchone()
            if row is not None:
                await audit.append(
                    conn,
                    actor=actor,
                    action="operator_token.revoke",
                    outcome="ok",
                    resource_ids={"operator_token": token_id},
                    detail={"name": row["name"]},
                )
            return row
