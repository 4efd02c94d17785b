"""The audit trail is append-only and hash-chained: the database refuses changes, and a change
made behind its back (trigger disabled by a superuser) is found at the first broken link."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from psycopg.rows import dict_row

from db import audit
from db.migrate import apply_migrations
from devstack.postgres import ensure_database


@pytest.fixture
async def fresh_db(pg):
    """A database of its own: tampering must not break the chain the other tests share."""
    url = ensure_database(pg, f"audit_{secrets.token_hex(4)}")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await apply_migrations(conn)
    conn = await psycopg.AsyncConnection.connect(url, row_factory=dict_row, autocommit=True)
    yield conn
    await conn.close()


async def append_three(conn) -> None:
    for i in range(3):
        async with conn.transaction():
            await audit.append(
                conn,
                actor="operator",
                action=f"test.step{i}",
                outcome="ok",
                org_id="org_000000000001",
                org_slug="acme",
                resource_ids={"n": i},
                detail={"i": i},
            )


async def test_chain_verifies_and_changes_are_refused(fresh_db):
    await append_three(fresh_db)
    assert await audit.verify_chain(fresh_db) == {"valid": True, "records": 3, "first_broken_seq": None, "reason": None}
    for statement in (
        "UPDATE audit_log SET outcome = 'forged' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await fresh_db.execute(statement)
    assert (await audit.verify_chain(fresh_db))["valid"] is True


async def test_tampering_behind_the_triggers_back_is_named(fresh_db):
    await append_three(fresh_db)
    await fresh_db.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    await fresh_db.execute("UPDATE audit_log SET outcome = 'forged' WHERE seq = 2")
    await fresh_db.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    result = await audit.verify_chain(fresh_db)
    assert result["valid"] is False and result["first_broken_seq"] == 2
    assert "hash" in result["reason"]


async def test_a_removed_record_breaks_the_link_after_it(fresh_db):
    await append_three(fresh_db)
    await fresh_db.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    await fresh_db.execute("DELETE FROM audit_log WHERE seq = 2")
    await fresh_db.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    result = await audit.verify_chain(fresh_db)
    assert result == {
        "valid": False,
        "records": 2,
        "first_broken_seq": 3,
        "reason": "does not link to the record before it",
    }
