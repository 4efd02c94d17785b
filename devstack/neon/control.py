"""Persistent state (projects, branches, operations) in a control database on the same Postgres."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

CONTROL_DATABASE = "neon_control"

Row = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    seq bigserial UNIQUE,
    id text PRIMARY KEY,
    name text NOT NULL,
    region_id text NOT NULL,
    pg_version int NOT NULL,
    database_name text NOT NULL,
    role_name text NOT NULL,
    pg_role text NOT NULL,
    pg_password text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS branches (
    seq bigserial UNIQUE,
    id text PRIMARY KEY,
    project_id text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name text NOT NULL,
    parent_id text,
    parent_lsn text,
    is_default boolean NOT NULL,
    physical_db text NOT NULL UNIQUE,
    endpoint_id text,
    endpoint_type text,
    created_at timestamptz NOT NULL,
    ready_at timestamptz NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE IF NOT EXISTS operations (
    seq bigserial UNIQUE,
    id uuid PRIMARY KEY,
    project_id text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    branch_id text,
    endpoint_id text,
    action text NOT NULL,
    created_at timestamptz NOT NULL,
    running_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_by_project ON operations (project_id, seq);
-- An operation's fate (failed-and-retried, cancelled) is part of its timeline; added later, so
-- state directories from before keep working.
ALTER TABLE operations ADD COLUMN IF NOT EXISTS failures int NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN IF NOT EXISTS retry_seconds double precision NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN IF NOT EXISTS outcome text NOT NULL DEFAULT 'finished';
"""
# Serializes schema creation when several server instances start at once.
_SCHEMA_LOCK_KEY = 0x6E656F6E


def _columns(row: Row) -> tuple[str, str]:
    names = ", ".join(row)
    placeholders = ", ".join(f"%({name})s" for name in row)
    return names, placeholders


class Control:
    def __init__(self, pool: AsyncConnectionPool):
        self._pool = pool

    @classmethod
    def pool(cls, conninfo: str) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=5,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection,
        )

    async def create_schema(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            await conn.execute(_SCHEMA)

    async def _all(self, query: str, params: Any = None) -> list[Row]:
        async with self._pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchall()

    async def _one(self, query: str, params: Any = None) -> Row | None:
        rows = await self._all(query, params)
        return rows[0] if rows else None

    # -- reads ---------------------------------------------------------------------------------

    async def project(self, project_id: str) -> Row | None:
        return await self._one("SELECT * FROM projects WHERE id = %s", (project_id,))

    async def count_projects(self) -> int:
        return (await self._one("SELECT count(*) AS n FROM projects"))["n"]

    async def count_branches(self, project_id: str) -> int:
        return (await self._one("SELECT count(*) AS n FROM branches WHERE project_id = %s", (project_id,)))["n"]

    async def projects(self, after: int, limit: int) -> list[Row]:
        return await self._all("SELECT * FROM projects WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit))

    async def branch(self, project_id: str, branch_id: str) -> Row | None:
        return await self._one("SELECT * FROM branches WHERE project_id = %s AND id = %s", (project_id, branch_id))

    async def default_branch(self, project_id: str) -> Row | None:
        return await self._one("SELECT * FROM branches WHERE project_id = %s AND is_default", (project_id,))

    async def branches(self, project_id: str, after: int, limit: int | None) -> list[Row]:
        return await self._all(
            "SELECT * FROM branches WHERE project_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (project_id, after, limit),
        )

    async def branch_named(self, project_id: str, name: str) -> Row | None:
        return await self._one("SELECT * FROM branches WHERE project_id = %s AND name = %s", (project_id, name))

    async def has_children(self, project_id: str, branch_id: str) -> bool:
        row = await self._one(
            "SELECT 1 FROM branches WHERE project_id = %s AND parent_id = %s LIMIT 1", (project_id, branch_id)
        )
        return row is not None

    async def operation(self, project_id: str, operation_id: str) -> Row | None:
        return await self._one("SELECT * FROM operations WHERE project_id = %s AND id = %s", (project_id, operation_id))

    async def operations(self, project_id: str, before: int | None, limit: int) -> list[Row]:
        """Newest first, like Neon."""
        return await self._all(
            "SELECT * FROM operations WHERE project_id = %s AND (%s::bigint IS NULL OR seq < %s)"
            " ORDER BY seq DESC LIMIT %s",
            (project_id, before, before, limit),
        )

    async def has_unfinished_operations(self, project_id: str, now: datetime) -> bool:
        row = await self._one(
            "SELECT 1 FROM operations WHERE project_id = %s AND finished_at > %s LIMIT 1", (project_id, now)
        )
        return row is not None

    # -- writes --------------------------------------------------------------------------------

    async def save(self, *, project: Row | None = None, branch: Row | None = None, ops: list[Row] = ()) -> Row:
        """Insert a new project and/or branch with the operations that created them, atomically.

        Returns the stored rows: ``{"project": ..., "branch": ..., "operations": [...]}``.
        """
        stored: Row = {"project": None, "branch": None}
        async with self._pool.connection() as conn, conn.transaction():
            for key, table, row in (("project", "projects", project), ("branch", "branches", branch)):
                if row is not None:
                    stored[key] = await self._insert(conn, table, row)
            stored["operations"] = await self._insert_operations(conn, ops)
        return stored

    async def delete_branch(self, branch_id: str, ops: list[Row]) -> list[Row]:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM branches WHERE id = %s", (branch_id,))
            return await self._insert_operations(conn, ops)

    async def delete_project(self, project_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("DELETE FROM projects WHERE id = %s", (project_id,))

    @staticmethod
    async def _insert(conn: Any, table: str, row: Row) -> Row:
        names, values = _columns(row)
        cur = await conn.execute(f"INSERT INTO {table} ({names}) VALUES ({values}) RETURNING *", row)
        return await cur.fetchone()

    @classmethod
    async def _insert_operations(cls, conn: Any, ops: list[Row]) -> list[Row]:
        return [await cls._insert(conn, "operations", op) for op in ops]
