"""The audit trail: keyed (HMAC) hash chains, one per org, that the application role can only
append to and read; tampering by someone with more rights (the schema owner or a superuser) is
named at the first broken record, and deleted newest records at the anchored record that is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.rows import dict_row

from db import audit
from db.migrate import apply_migrations, migration_files
from devstack.postgres import app_role_url, ensure_database
from domain.audit import LEGACY_CHAIN, AuditAnchor

ORG_A, ORG_B = "org_00000000000a", "org_00000000000b"


@pytest.fixture
async def fresh(pg, app_role_password, settings):
    """A database of its own (tampering must not break the chain the other tests share): the
    owner's connection (superuser here) and the application role's."""
    name = f"audit_{secrets.token_hex(4)}"
    owner_url = ensure_database(pg, name)
    async with await psycopg.AsyncConnection.connect(owner_url) as conn:
        await apply_migrations(conn)
    owner = await psycopg.AsyncConnection.connect(owner_url, row_factory=dict_row, autocommit=True)
    app = await psycopg.AsyncConnection.connect(
        app_role_url(pg, name, app_role_password), row_factory=dict_row, autocommit=True
    )
    yield owner, app
    await app.close()
    await owner.close()


async def append(conn, org_id: str | None, n: int = 3, slug: str = "acme") -> None:
    for i in range(n):
        async with conn.transaction():
            await audit.append(
                conn,
                actor="operator",
                action=f"test.step{i}",
                outcome="ok",
                org_id=org_id,
                org_slug=slug if org_id else None,
                resource_ids={"n": i},
                detail={"i": i},
            )


async def rows(conn, where: str = "TRUE") -> list[dict]:
    return await (await conn.execute(f"SELECT * FROM audit_log WHERE {where} ORDER BY seq")).fetchall()


async def anchor_now(conn) -> AuditAnchor:
    check = await audit.verify_chain(conn)
    assert check.valid
    return AuditAnchor(at=datetime.now(UTC), heads=check.heads)


async def behind_the_triggers_back(owner, *statements: tuple[str, tuple]) -> None:
    """What only the owner can do: disable the trigger, change the table, enable it again."""
    await owner.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    for sql, params in statements:
        await owner.execute(sql, params)
    await owner.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


def content(r: dict) -> tuple:
    return (
        r["prev_hash"],
        r["at"],
        r["actor"],
        r["action"],
        r["org_id"],
        r["org_slug"],
        r["resource_ids"],
        r["outcome"],
        r["detail"],
    )


async def forge(owner, records: list[dict], digest, prev: str, *, version: int | None = None) -> None:
    """Rewrite ``records`` (outcome 'forged'), recomputing each hash with ``digest`` (a forger's)
    from ``prev`` on, so that every link between them holds; ``version`` relabels them."""
    relabel = f"version = {version}, " if version else ""
    for r in records:
        new = digest(*content({**r, "prev_hash": prev, "outcome": "forged"}))
        await behind_the_triggers_back(
            owner,
            (
                f"UPDATE audit_log SET {relabel}outcome = 'forged', prev_hash = %s, hash = %s WHERE seq = %s",
                (prev, new, r["seq"]),
            ),
        )
        prev = new


async def test_the_application_role_can_only_append_and_read(fresh):
    _, app = fresh
    await append(app, ORG_A)
    check = await audit.verify_chain(app)
    assert (check.valid, check.records, check.first_broken_seq) == (True, 3, None)
    for statement in (
        "UPDATE audit_log SET outcome = 'forged' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
        "ALTER TABLE audit_log DISABLE TRIGGER USER",
        "DROP TRIGGER audit_log_append_only ON audit_log",
        "DROP TABLE audit_log",
        "SET session_replication_role = replica",
        "CREATE TABLE sneaky (id int)",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await app.execute(statement)
    role = await (await app.execute("SELECT current_user AS u")).fetchone()
    assert role["u"] == "tenantflow_app"
    assert (await audit.verify_chain(app)).valid


async def test_the_owner_is_refused_too_while_the_trigger_stands(fresh):
    owner, _ = fresh
    await append(owner, ORG_A)
    for statement in ("UPDATE audit_log SET outcome = 'forged' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 2"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await owner.execute(statement)


async def test_each_org_has_its_own_keyed_chain(fresh):
    _, app = fresh
    await append(app, ORG_A, 2)
    await append(app, ORG_B, 2, slug="beta")
    await append(app, None, 1)
    await append(app, ORG_A, 1)
    records = await rows(app)
    assert {r["version"] for r in records} == {2}
    a = [r for r in records if r["org_id"] == ORG_A]
    # Org A's third record links to its second, past org B's and the platform's records.
    assert a[2]["prev_hash"] == a[1]["hash"] and a[1]["prev_hash"] == a[0]["hash"]
    assert a[0]["prev_hash"] == audit.GENESIS
    check = await audit.verify_chain(app)
    assert check.valid and set(check.heads) == {ORG_A, ORG_B, "platform"}
    assert check.heads[ORG_A].seq == a[2]["seq"]


async def test_an_edit_behind_the_triggers_back_is_named(fresh):
    owner, app = fresh
    await append(app, ORG_A)
    second = (await rows(app))[1]["seq"]
    await behind_the_triggers_back(owner, ("UPDATE audit_log SET outcome = 'forged' WHERE seq = %s", (second,)))
    check = await audit.verify_chain(app)
    assert (check.valid, check.first_broken_seq, check.reason) == (False, second, "content does not match its hash")


async def test_a_removed_record_breaks_the_link_after_it(fresh):
    owner, app = fresh
    await append(app, ORG_A)
    seqs = [r["seq"] for r in await rows(app)]
    await behind_the_triggers_back(owner, ("DELETE FROM audit_log WHERE seq = %s", (seqs[1],)))
    check = await audit.verify_chain(app)
    assert (check.valid, check.first_broken_seq) == (False, seqs[2])
    assert check.reason == f"does not link to the record before it in chain {ORG_A}"


async def test_deleted_newest_records_are_named_against_the_anchor(fresh):
    owner, app = fresh
    await append(app, ORG_A)
    await append(app, ORG_B, slug="beta")
    anchor = await anchor_now(app)
    newest_a = anchor.heads[ORG_A].seq
    await behind_the_triggers_back(
        owner, ("DELETE FROM audit_log WHERE org_id = %s AND seq >= %s", (ORG_A, newest_a - 1))
    )
    # What remains is a perfect chain: only the anchor shows that something is gone.
    assert (await audit.verify_chain(app)).valid
    check = await audit.verify_chain(app, anchor)
    assert (check.valid, check.first_broken_seq) == (False, newest_a)
    assert check.reason == f"missing: the anchored head of chain {ORG_A} is gone"
    assert check.anchored_at == anchor.at


async def test_records_after_the_anchor_still_verify(fresh):
    _, app = fresh
    await append(app, ORG_A)
    anchor = await anchor_now(app)
    await append(app, ORG_A)
    await append(app, ORG_B)
    assert (await audit.verify_chain(app, anchor)).valid


def plain_sha256(*fields) -> str:
    return audit.record_hash(*fields)


def wrong_key(*fields) -> str:
    return audit.record_hmac(b"not-the-platform-key", *fields)


@pytest.mark.parametrize("digest", [plain_sha256, wrong_key], ids=["plain-sha256", "wrong-key"])
async def test_a_recomputed_chain_is_named_at_its_first_record(fresh, digest):
    owner, app = fresh
    await append(app, ORG_A)
    anchor = await anchor_now(app)
    records = await rows(owner, f"org_id = '{ORG_A}'")
    await forge(owner, records, digest, records[0]["prev_hash"])
    first = (await rows(app))[0]["seq"]
    for against in (None, anchor):
        check = await audit.verify_chain(app, against)
        assert (check.valid, check.first_broken_seq, check.reason) == (False, first, "content does not match its hash")


async def test_a_chain_rewritten_as_old_format_history_is_caught_by_the_anchor(fresh):
    """Marking the records version 1 and recomputing them as one plain SHA-256 chain makes a valid
    old-format history; the anchor's head for the org no longer matches."""
    owner, app = fresh
    await append(app, ORG_A)
    anchor = await anchor_now(app)
    await forge(owner, await rows(owner), audit.record_hash, audit.GENESIS, version=1)
    assert (await audit.verify_chain(app)).valid
    check = await audit.verify_chain(app, anchor)
    assert (check.valid, check.first_broken_seq) == (False, anchor.heads[ORG_A].seq)
    assert check.reason == "differs from the anchored record"


async def test_history_written_before_the_keyed_chains_still_verifies(pg, app_role_password):
    """Records of the old format (one global plain SHA-256 chain, before migration 0007) verify;
    every org's keyed chain starts from the last of them, so rewriting them is caught too."""
    name = f"audit_{secrets.token_hex(4)}"
    owner_url = ensure_database(pg, name)
    files = migration_files()
    before = [f for f in files if f[0] < "0007"]
    async with await psycopg.AsyncConnection.connect(owner_url, row_factory=dict_row, autocommit=True) as owner:
        for _, sql in before:
            await owner.execute(sql)
        # What the code before 0007 wrote: plain SHA-256 over the previous record, one chain.
        prev = audit.GENESIS
        for i in range(3):
            at = datetime.now(UTC)
            fields = (prev, at, "operator", f"old.{i}", ORG_A, "acme", {}, "ok", {"i": i})
            digest = audit.record_hash(*fields)
            await owner.execute(
                "INSERT INTO audit_log (at, actor, action, org_id, org_slug, resource_ids, outcome, detail, "
                "prev_hash, hash) VALUES (%s, 'operator', %s, %s, 'acme', '{}', 'ok', %s, %s, %s)",
                (at, f"old.{i}", ORG_A, psycopg.types.json.Jsonb({"i": i}), prev, digest),
            )
            prev = digest
        legacy_head = prev
        await owner.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, applied_at timestamptz "
            "NOT NULL DEFAULT now())"
        )
        for version, _ in before:
            await owner.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        assert await apply_migrations(owner) == [f[0] for f in files if f[0] >= "0007"]

        async with await psycopg.AsyncConnection.connect(
            app_role_url(pg, name, app_role_password), row_factory=dict_row, autocommit=True
        ) as app:
            await append(app, ORG_A, 2)
            await append(app, ORG_B, 1)
            records = await rows(app)
            assert [r["version"] for r in records] == [1, 1, 1, 2, 2, 2]
            # Each keyed chain starts from the last old-format record.
            assert records[3]["prev_hash"] == legacy_head and records[5]["prev_hash"] == legacy_head
            check = await audit.verify_chain(app)
            assert check.valid and check.records == 6 and check.heads[LEGACY_CHAIN].hash == legacy_head

            # Rewriting the old history consistently (plain SHA-256 needs no key) breaks the
            # first keyed record that links to it.
            await forge(owner, records[:3], audit.record_hash, audit.GENESIS)
            check = await audit.verify_chain(app)
            assert (check.valid, check.first_broken_seq) == (False, records[3]["seq"])


async def test_orgs_never_wait_on_each_other(fresh, pg, app_role_password):
    """An append holds its org's lock until it commits: another org's append goes through at once,
    the same org's waits (a lock timeout, not a timing, tells them apart)."""
    owner, app = fresh
    name = (await (await app.execute("SELECT current_database() AS d")).fetchone())["d"]
    url = app_role_url(pg, name, app_role_password)
    async with (
        await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as holder,
        await psycopg.AsyncConnection.connect(url, row_factory=dict_row, autocommit=True) as other,
    ):
        await audit.append(holder, actor="t", action="held", outcome="ok", org_id=ORG_A)  # in an open transaction
        await other.execute("SET lock_timeout = '2s'")
        async with other.transaction():
            await audit.append(other, actor="t", action="b", outcome="ok", org_id=ORG_B)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            async with other.transaction():
                await audit.append(other, actor="t", action="a", outcome="ok", org_id=ORG_A)
        await holder.commit()
    assert (await audit.verify_chain(app)).valid


def test_the_keyed_hash_is_hmac_sha256():
    fields = (audit.GENESIS, datetime(2026, 1, 1, tzinfo=UTC), "a", "b", None, None, {}, "ok", {})
    key = b"k" * 32
    body = b"v2:" + audit._canonical(*fields)
    assert audit.record_hmac(key, *fields) == hmac.new(key, body, hashlib.sha256).hexdigest()
    assert audit.record_hash(*fields) == hashlib.sha256(audit._canonical(*fields)).hexdigest()
    assert asyncio.iscoroutinefunction(audit.verify_chain)
