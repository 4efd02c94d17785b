"""DDL on the Postgres cluster that hosts the tenant databases.

Every call opens a short autocommit connection to the admin (``postgres``) database, so the
server never holds a connection to a tenant database: ``CREATE DATABASE ... TEMPLATE`` needs
the template to have no other sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from psycopg import sql

log = logging.getLogger("devstack.neon_server")

# How long clients connected to a parent branch get to disconnect before a child branch is
# created from it. Neon can branch under load; Postgres can only copy an idle template database.
TEMPLATE_GRACE_SECONDS = 1.0


class Cluster:
    def __init__(self, admin_url: str):
        self._admin_url = admin_url

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(self._admin_url, autocommit=True)

    async def pg_version(self) -> int:
        async with await self._connect() as conn:
            row = await (await conn.execute("SHOW server_version_num")).fetchone()
        return int(row[0]) // 10000

    async def ensure_database(self, name: str) -> None:
        async with await self._connect() as conn:
            if await self._database_exists(conn, name):
                return
            try:
                await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another server instance created it concurrently

    async def create_role(self, role: str, password: str) -> None:
        """Create ``role``, or take over one left behind by an interrupted earlier attempt."""
        async with await self._connect() as conn:
            args = (sql.Identifier(role), sql.Literal(password))
            try:
                await conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(*args))
            except psycopg.errors.DuplicateObject:
                await conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(*args))

    async def create_database(self, name: str, owner: str, template: str = "template0") -> str:
        """Create ``name`` as a copy of ``template``; return the WAL position it was branched at."""
        async with await self._connect() as conn:
            if template != "template0":
                await self._free_template(conn, template)
            lsn = (await (await conn.execute("SELECT pg_current_wal_lsn()::text")).fetchone())[0]
            await conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(template), sql.Identifier(owner)
                )
            )
            # New databases let every role connect; a tenant role should reach only its own.
            await conn.execute(
                sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
            )
        return lsn

    async def _free_template(self, conn: psycopg.AsyncConnection, template: str) -> None:
        others = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + TEMPLATE_GRACE_SECONDS
        while await (await conn.execute(others, (template,))).fetchall():
            if time.monotonic() >= deadline:
                log.warning("terminating sessions on %s so it can be copied into a new branch", template)
                await conn.execute(f"SELECT pg_terminate_backend(pid) FROM ({others}) AS s", (template,))
                return  # CREATE DATABASE itself waits a few seconds for terminated sessions to exit
            await asyncio.sleep(0.05)

    async def drop_databases(self, names: list[str]) -> None:
        async with await self._connect() as conn:
            for name in names:
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    async def drop_role(self, role: str) -> None:
        """Drop ``role`` and every database it still owns."""
        async with await self._connect() as conn:
            rows = await (
                await conn.execute(
                    "SELECT d.datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = %s",
                    (role,),
                )
            ).fetchall()
            for (name,) in rows:
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    @staticmethod
    async def _database_exists(conn: psycopg.AsyncConnection, name: str) -> bool:
        row = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))).fetchone()
        return row is not None
