"""The platform database pool, migrated before first use."""

from __future__ import annotations

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from db.migrate import apply_migrations

# Rows come back as dicts.
Connection = psycopg.AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Connection]


def required(row: DictRow | None) -> DictRow:
    """The row a statement always returns (an INSERT or UPDATE ... RETURNING of a row that exists)."""
    if row is None:
        raise LookupError("the statement returned no row")
    return row


async def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> Pool:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await apply_migrations(conn)
    pool = Pool(
        database_url,
        connection_class=Connection,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row},
        open=False,
        # A dropped connection is detected and replaced instead of failing the next query.
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=True, timeout=30)
    return pool
