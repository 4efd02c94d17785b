"""Workspace records, quota slots and the tokens agents use. Audited where state changes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Any

import psycopg

from db import audit
from db.paging import contains
from db.pool import Pool, required
from domain import credentials
from domain.status import OrgStatus, WorkspaceStatus

# A workspace that is over: its agent's token authenticates nothing, whatever else went wrong.
_FINISHED = (WorkspaceStatus.failed.value, WorkspaceStatus.deleted.value)


class Refusal(StrEnum):
    """Why a workspace was not created."""

    org_missing = "org_missing"
    org_suspended = "org_suspended"
    org_not_active = "org_not_active"
    tier_not_allowed = "tier_not_allowed"
    quota_exceeded = "quota_exceeded"
    name_taken = "name_taken"


class WorkspaceRefused(Exception):
    """Creation refused before anything was written."""

    def __init__(self, reason: Refusal, message: str):
        super().__init__(message)
        self.reason = reason


class TokenRefused(Exception):
    pass


class WorkspaceRepo:
    def __init__(self, pool: Pool):
        self._pool = pool

    async def reserve(
        self,
        org_id: str,
        *,
        workspace_id: str,
        name: str,
        role: str,
        runtime: str,
        tier: int,
        model: str,
        instance_type: str,
        subnet_id: str,
        actor: str,
    ) -> dict[str, Any]:
        """Take a quota slot and record the workspace as provisioning, or refuse.

        The org row is locked for the count and the insert, so N concurrent creates against a
        limit of L admit exactly L.
        """
        async with self._pool.connection() as conn, conn.transaction():
            org = await (await conn.execute("SELECT * FROM orgs WHERE id = %s FOR UPDATE", (org_id,))).fetchone()
            if org is None:
                raise WorkspaceRefused(Refusal.org_missing, "org not found")
            if org["status"] in (OrgStatus.suspending, OrgStatus.suspended, OrgStatus.resuming):
                raise WorkspaceRefused(Refusal.org_suspended, "org suspended: workspace creation is frozen")
            if org["status"] != OrgStatus.active:
                raise WorkspaceRefused(Refusal.org_not_active, f"org is {org['status']}, not active")
            if tier > org["max_tier"]:
                raise WorkspaceRefused(
                    Refusal.tier_not_allowed,
                    f"tier {tier} is above this org's max_tier "
                    f"{org['max_tier']}: upgrade your plan to use higher tiers",
                )
            used = await _slots_used(conn, org_id)
            if used >= org["max_workspaces"]:
                raise WorkspaceRefused(
                    Refusal.quota_exceeded,
                    f"workspace limit reached ({used}/"
                    f"{org['max_workspaces']}): upgrade your plan or delete a workspace to create "
                    "another",
                )
            try:
                row = await (
                    await conn.execute(
                        """INSERT INTO workspaces (id, org_id, name, role, runtime, tier, model, status, instance_type,
                                                   subnet_id)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, 'provisioning', %s, %s) RETURNING *""",
                        (workspace_id, org_id, name, role, runtime, tier, model, instance_type, subnet_id),
                    )
                ).fetchone()
            except psycopg.errors.UniqueViolation:
                raise WorkspaceRefused(Refusal.name_taken, f"a workspace named '{name}' already exists") from None
            await audit.append(
                conn,
                actor=actor,
                action="workspace.create",
                outcome="accepted",
                org_id=org_id,
                org_slug=org["slug"],
                resource_ids={"workspace": workspace_id},
                detail={"tier": tier, "runtime": runtime},
            )
            return required(row)

    async def get(self, workspace_id: str, org_id: str | None = None) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            if org_id is None:
                return await (await conn.execute("SELECT * FROM workspaces WHERE id = %s", (workspace_id,))).fetchone()
            return await (
                await conn.execute("SELECT * FROM workspaces WHERE id = %s AND org_id = %s", (workspace_id, org_id))
            ).fetchone()

    async def list(
        self,
        org_id: str,
        *,
        include_deleted: bool = False,
        name: str = "",
        after: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The org's workspaces, oldest first: named with ``name`` in it, after the workspace ``after``."""
        async with self._pool.connection() as conn:
            return await (
                await conn.execute(
                    """SELECT * FROM workspaces
                   WHERE org_id = %(org)s AND (%(deleted)s OR status <> 'deleted') AND name ILIKE %(name)s
                     AND (%(after)s::text IS NULL
                          OR (created_at, id) > (SELECT created_at, id FROM workspaces WHERE id = %(after)s))
                   ORDER BY created_at, id LIMIT %(limit)s""",
                    {"org": org_id, "deleted": include_deleted, "name": contains(name), "after": after, "limit": limit},
                )
            ).fetchall()

    async def update(
        self,
        workspace_id: str,
        *,
        actor: str,
        action: str | None = None,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
        unless: Sequence[str] = (),
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Set columns (names come from code, never input) and audit the change; not while the
        status is one of ``unless`` (None is returned then)."""
        async with self._pool.connection() as conn, conn.transaction():
            sets = ", ".join([*(f"{k} = %({k})s" for k in fields), "updated_at = now()"])
            row = await (
                await conn.execute(
                    f"UPDATE workspaces SET {sets} WHERE id = %(workspace_id)s AND status <> ALL(%(unless)s::text[])"
                    " RETURNING *",
                    {**fields, "workspace_id": workspace_id, "unless": list(unless)},
                )
            ).fetchone()
            if row is not None and action:
                org = await (await conn.execute("SELECT slug FROM orgs WHERE id = %s", (row["org_id"],))).fetchone()
                await audit.append(
                    conn,
                    actor=actor,
                    action=action,
                    outcome=outcome,
                    org_id=row["org_id"],
                    org_slug=org["slug"] if org else None,
                    detail=detail or {},
                    resource_ids={"workspace": workspace_id, "instance": row["instance_id"]},
                )
            return row

    async def mark_deleting(self, workspace_id: str, *, actor: str) -> dict[str, Any] | None:
        """Record a requested deletion at once (its workflow records it too, a moment later), so
        the request's 202 and every read after it say ``deleting``; never undoes ``deleted``."""
        return await self.update(
            workspace_id,
            actor=actor,
            action="workspace.delete_requested",
            outcome="accepted",
            unless=(WorkspaceStatus.deleting.value, WorkspaceStatus.deleted.value),
            status=WorkspaceStatus.deleting.value,
        )

    async def slots_used(self, org_id: str) -> int:
        """How many of the org's workspaces count against its ``max_workspaces``."""
        async with self._pool.connection() as conn:
            return await _slots_used(conn, org_id)

    # -- tokens -------------------------------------------------------------------------------

    async def record_registration_token(self, workspace_id: str, minted: credentials.Minted, ttl: timedelta) -> None:
        """Store a launch's one-time token (its hash) unless it is stored already: a retried launch
        derives the same token. Any other unused token of the workspace dies, so only the latest
        launch can register."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                """UPDATE workspace_tokens SET revoked_at = now()
                   WHERE workspace_id = %s AND kind = 'registration' AND id <> %s
                     AND revoked_at IS NULL AND used_at IS NULL""",
                (workspace_id, minted.id),
            )
            await conn.execute(
                """INSERT INTO workspace_tokens (id, workspace_id, kind, token_hash, expires_at)
                   VALUES (%s, %s, 'registration', %s, now() + %s) ON CONFLICT (id) DO NOTHING""",
                (minted.id, workspace_id, minted.hash, ttl),
            )

    async def check_registration_token(self, secret: str, workspace_id: str) -> dict[str, Any]:
        """The workspace a live registration token may register, or ``TokenRefused``. Reads only."""
        token_id = credentials.parse(secret, credentials.REGISTRATION_TOKEN)
        if token_id is None:
            raise TokenRefused("not a registration token")
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    """SELECT t.token_hash, t.used_at, t.revoked_at, t.workspace_id AS token_workspace,
                          now() < t.expires_at AS alive, w.*
                   FROM workspace_tokens t JOIN workspaces w ON w.id = t.workspace_id
                   WHERE t.id = %s AND t.kind = 'registration'""",
                    (token_id,),
                )
            ).fetchone()
        if row is None or not credentials.matches(secret, row["token_hash"]):
            raise TokenRefused("unknown registration token")
        if row["used_at"] is not None or row["revoked_at"] is not None:
            raise TokenRefused("registration token already used or revoked")
        if not row["alive"]:
            raise TokenRefused("registration token expired")
        if row["token_workspace"] != workspace_id:
            raise TokenRefused("registration token belongs to another workspace")
        if row["status"] != "provisioning":
            raise TokenRefused("workspace is not waiting for registration")
        return {
            k: v for k, v in row.items() if k not in ("token_hash", "used_at", "revoked_at", "token_workspace", "alive")
        }

    async def redeem_registration_token(
        self, secret: str, workspace_id: str, agent_cert_sha256: str | None = None
    ) -> tuple[dict[str, Any], str]:
        """Spend a registration token for exactly its workspace, record the agent's certificate
        fingerprint and issue a workspace token.

        The spend is a compare-and-set on a token that is unused, unrevoked, unexpired and whose
        workspace still provisions, so a concurrent redeem, a revocation or a failed workspace
        that commits first wins, and no lock is held while the caller talks to Temporal. The
        workspace row is locked first, as ``revoke_tokens`` does: a revocation waits for this
        transaction and then sees (and revokes) the token it inserted, or commits first and
        this one finds its registration token revoked."""
        token_id = credentials.parse(secret, credentials.REGISTRATION_TOKEN)
        if token_id is None:
            raise TokenRefused("not a registration token")
        async with self._pool.connection() as conn, conn.transaction():
            await _lock_workspace(conn, workspace_id)
            spent = await (
                await conn.execute(
                    """UPDATE workspace_tokens t SET used_at = now()
                   FROM workspaces w
                   WHERE t.id = %s AND t.kind = 'registration' AND t.workspace_id = %s AND w.id = t.workspace_id
                     AND t.used_at IS NULL AND t.revoked_at IS NULL AND now() < t.expires_at
                     AND w.status = 'provisioning'
                   RETURNING t.token_hash""",
                    (token_id, workspace_id),
                )
            ).fetchone()
            if spent is None or not credentials.matches(secret, spent["token_hash"]):
                raise TokenRefused("registration token no longer valid")
            minted = credentials.mint(credentials.WORKSPACE_TOKEN)
            await conn.execute(
                "INSERT INTO workspace_tokens (id, workspace_id, kind, token_hash) VALUES (%s, %s, 'workspace', %s)",
                (minted.id, workspace_id, minted.hash),
            )
            ws = required(
                await (
                    await conn.execute(
                        """UPDATE workspaces SET registered_at = now(), last_seen = now(), updated_at = now(),
                          agent_cert_sha256 = %s
                   WHERE id = %s RETURNING *""",
                        (agent_cert_sha256, workspace_id),
                    )
                ).fetchone()
            )
            org = required(
                await (await conn.execute("SELECT slug FROM orgs WHERE id = %s", (ws["org_id"],))).fetchone()
            )
            await audit.append(
                conn,
                actor=f"agent:{workspace_id}",
                action="workspace.register",
                outcome="ok",
                org_id=ws["org_id"],
                org_slug=org["slug"],
                resource_ids={"workspace": workspace_id, "instance": ws["instance_id"]},
            )
            return ws, minted.secret

    async def authenticate_workspace_token(self, secret: str) -> dict[str, Any] | None:
        token_id = credentials.parse(secret, credentials.WORKSPACE_TOKEN)
        if token_id is None:
            return None
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    """SELECT t.token_hash, w.* FROM workspace_tokens t JOIN workspaces w ON w.id = t.workspace_id
                   WHERE t.id = %s AND t.kind = 'workspace' AND t.revoked_at IS NULL
                     AND w.status <> ALL(%s)""",
                    (token_id, list(_FINISHED)),
                )
            ).fetchone()
        if row is None or not credentials.matches(secret, row.pop("token_hash")):
            return None
        return row

    async def record_heartbeat(self, workspace_id: str, tasks_handled: int, avg_response_time_ms: float | None) -> bool:
        """False (nothing written) when the workspace is over: it may have failed after the token
        was checked."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """UPDATE workspaces SET last_seen = now(), tasks_handled = %s,
                       avg_response_time_ms = COALESCE(%s, avg_response_time_ms)
                   WHERE id = %s AND status <> ALL(%s)""",
                (tasks_handled, avg_response_time_ms, workspace_id, list(_FINISHED)),
            )
            return cur.rowcount == 1

    async def revoke_tokens(self, workspace_id: str) -> None:
        """Revoke every token of the workspace, including one a registration in flight inserts:
        the workspace row lock orders this after (or before) any redeem."""
        async with self._pool.connection() as conn, conn.transaction():
            await _lock_workspace(conn, workspace_id)
            await conn.execute(
                "UPDATE workspace_tokens SET revoked_at = now() WHERE workspace_id = %s AND revoked_at IS NULL",
                (workspace_id,),
            )

    async def metrics(self, org_id: str, *, active_within: timedelta) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            return required(
                await (
                    await conn.execute(
                        """SELECT count(*) FILTER (WHERE status <> 'deleted') AS total_workspaces,
                          count(*) FILTER (WHERE status = 'running' AND last_seen > now() - %s) AS active_agents,
                          COALESCE(sum(avg_response_time_ms * tasks_handled) FILTER (WHERE tasks_handled > 0)
                                   / NULLIF(sum(tasks_handled) FILTER (WHERE tasks_handled > 0), 0), 0)
                              AS avg_response_time_ms,
                          COALESCE(sum(tasks_handled), 0) AS total_tasks_dispatched
                   FROM workspaces WHERE org_id = %s""",
                        (active_within, org_id),
                    )
                ).fetchone()
            )


async def _lock_workspace(conn: psycopg.AsyncConnection[Any], workspace_id: str) -> None:
    # NO KEY UPDATE: serializes redeem and revoke, yet lets token inserts (whose foreign key takes
    # KEY SHARE on this row) proceed, so record_registration_token cannot deadlock with them.
    await conn.execute("SELECT 1 FROM workspaces WHERE id = %s FOR NO KEY UPDATE", (workspace_id,))


async def _slots_used(conn: psycopg.AsyncConnection[Any], org_id: str) -> int:
    row = required(
        await (
            await conn.execute("SELECT count(*) AS n FROM workspaces WHERE org_id = %s AND holds_slot", (org_id,))
        ).fetchone()
    )
    n: int = row["n"]
    return n
