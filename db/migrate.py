"""Apply ``db/migrations/*.sql`` in order, each once, safely from several processes at a time."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

# Any constant works: it only serialises concurrent migrators (worker and API starting together).
_MIGRATION_LOCK = 7_233_001


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("db") / "migrations"
    files = sorted((f.name, f.read_text()) for f in folder.iterdir() if f.name.endswith(".sql"))
    return files


async def pending_migrations(conn: psycopg.AsyncConnection) -> list[str]:
    """The migrations not applied yet; read without DDL, so the application role may ask."""
    exists = await (await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")).fetchone()
    done: set[str] = set()
    if exists and _first(exists):
        done = {_first(r) for r in await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()}
    return [name for name, _ in migration_files() if name not in done]


def _first(row: Any) -> Any:
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


async def apply_migrations(conn: psycopg.AsyncConnection) -> list[str]:
    """Apply what is pending; run as the schema owner (``migration_database_url``)."""
    applied: list[str] = []
    await conn.set_autocommit(True)
    await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {_first(r) for r in await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (name,))
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


async def _main() -> None:
    from domain.settings import get_settings

    settings = get_settings()
    url = settings.migration_url() or settings.database_url.get_secret_value()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        applied = await apply_migrations(conn)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


if __name__ == "__main__":
    # python -m db.migrate: as the schema owner (TENANTFLOW_MIGRATION_DATABASE_URL), before the
    # API and the worker start as the application role.
    import asyncio

    asyncio.run(_main())
