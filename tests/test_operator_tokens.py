"""Named operator tokens: hashed like org keys, two live per name during a rotation, the name as
the audit actor (``operator:<name>``); the shared provision secret still works, as a deprecated
bootstrap that says so on every answer and in the log (never logging the secret)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import uuid

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import starter
from api.app import create_app
from api.auth import require_operator, require_org_key
from api.state import PRINCIPAL
from db.keys import OrgKeyRepo
from db.orgs import OrgRepo
from domain.logs import configure_logging
from tests.helpers import seed_org


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def whoami_operator(request: web.Request) -> web.Response:
    await require_operator(request)
    return web.json_response({"principal": request[PRINCIPAL]})


async def whoami_tenant(request: web.Request) -> web.Response:
    await require_org_key(request)
    return web.json_response({"principal": request[PRINCIPAL]})


@pytest_asyncio.fixture
async def api(settings):
    app = create_app(settings)
    # What the rate limiter reads once a request is authenticated.
    app.router.add_get("/test/whoami/operator", whoami_operator)
    app.router.add_get("/test/whoami/tenant", whoami_tenant)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
def bootstrap(settings) -> dict[str, str]:
    return bearer(settings.provision_secret.get_secret_value())


@pytest.fixture
def captured_logs():
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", stream=buf)
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create(api, headers, name: str) -> dict:
    resp = await api.post("/api/v1/operator-tokens", json={"name": name}, headers=headers)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


async def test_tokens_are_shown_once_and_stored_hashed(api, pool, bootstrap):
    name = unique_name("alice")
    token = await create(api, bootstrap, name)
    assert token["token"].startswith(f"tfo_{token['id']}_") and token["prefix"] == f"tfo_{token['id']}"
    assert token["created_by"] == "operator:bootstrap"
    listing = await (
        await api.get("/api/v1/operator-tokens", params={"name": name}, headers=bearer(token["token"]))
    ).json()
    mine = [t for t in listing["tokens"] if t["id"] == token["id"]]
    assert mine and mine[0]["last_used_at"] is not None and "token" not in mine[0]
    assert token["token"] not in json.dumps(listing)
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT * FROM operator_tokens WHERE id = %s", (token["id"],))).fetchone()
    assert token["token"] not in json.dumps(row, default=str)
    assert len(row["token_hash"]) == 64


async def test_rotation_with_two_live_tokens(api, pool, bootstrap):
    name = unique_name("ops")
    old = await create(api, bootstrap, name)
    new = await create(api, bearer(old["token"]), name)  # an operator token creates the next one
    for t in (old, new):
        resp = await api.get("/api/v1/orgs", headers=bearer(t["token"]))
        assert resp.status == 200 and "Warning" not in resp.headers
    resp = await api.post("/api/v1/operator-tokens", json={"name": name}, headers=bearer(new["token"]))
    body = await resp.json()
    assert resp.status == 409 and body["code"] == "OPERATOR_TOKEN_LIMIT" and "revoke the old one" in body["error"]

    resp = await api.delete(f"/api/v1/operator-tokens/{old['prefix']}", headers=bearer(new["token"]))
    assert resp.status == 200 and (await resp.json())["revoked"] is True
    assert (await api.get("/api/v1/orgs", headers=bearer(old["token"]))).status == 401
    assert (await api.get("/api/v1/orgs", headers=bearer(new["token"]))).status == 200
    # The slot the old token held is free again: the rotation after this one can begin.
    third = await create(api, bearer(new["token"]), name)
    assert (await api.get("/api/v1/orgs", headers=bearer(third["token"]))).status == 200
    # Revoking is idempotent; an unknown id is 404.
    assert (await api.delete(f"/api/v1/operator-tokens/{old['id']}", headers=bootstrap)).status == 200
    resp = await api.delete("/api/v1/operator-tokens/000000000000", headers=bootstrap)
    assert resp.status == 404 and (await resp.json())["code"] == "OPERATOR_TOKEN_NOT_FOUND"

    async with pool.connection() as conn:
        actions = await (
            await conn.execute(
                "SELECT actor, action FROM audit_log WHERE resource_ids->>'operator_token' = ANY(%s) ORDER BY seq",
                ([old["id"], new["id"], third["id"]],),
            )
        ).fetchall()
    assert [(r["actor"], r["action"]) for r in actions] == [
        ("operator:bootstrap", "operator_token.create"),
        (f"operator:{name}", "operator_token.create"),
        (f"operator:{name}", "operator_token.revoke"),
        (f"operator:{name}", "operator_token.create"),
        ("operator:bootstrap", "operator_token.revoke"),
    ]


async def test_the_list_pages_and_filters_by_name(api, pool, bootstrap):
    marker = uuid.uuid4().hex[:8]
    made = [await create(api, bootstrap, f"pg{n}-{marker}") for n in range(3)]
    await create(api, bootstrap, unique_name("other"))
    await api.delete(f"/api/v1/operator-tokens/{made[1]['id']}", headers=bootstrap)
    listed, pages, cursor = [], 0, None
    while True:
        query = {"name": marker.upper(), "limit": "2", **({"cursor": cursor} if cursor else {})}
        resp = await api.get("/api/v1/operator-tokens", params=query, headers=bootstrap)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        listed += body["tokens"]
        pages += 1
        if not (cursor := body["next_cursor"]):
            break
    # Oldest first, revoked ones included, the filter case-insensitive, in pages of two.
    assert [(t["id"], t["revoked"]) for t in listed] == [(t["id"], n == 1) for n, t in enumerate(made)]
    assert pages == 2
    # The filter's own wildcards are literal.
    resp = await api.get("/api/v1/operator-tokens", params={"name": "%" + marker}, headers=bootstrap)
    assert (await resp.json())["tokens"] == []
    for query, code in (
        ({"cursor": "d3NfMTIz"}, "INVALID_CURSOR"),  # a workspace id's cursor is not a token's
        ({"cursor": "not a cursor"}, "INVALID_CURSOR"),
        ({"limit": "0"}, "VALIDATION_FAILED"),
        ({"name": "x" * 101}, "VALIDATION_FAILED"),
    ):
        resp = await api.get("/api/v1/operator-tokens", params=query, headers=bootstrap)
        assert resp.status == 400 and (await resp.json())["code"] == code, query


async def test_concurrent_creations_leave_at_most_two_live_tokens(api, pool, bootstrap):
    name = unique_name("race")
    answers = await asyncio.gather(
        *(api.post("/api/v1/operator-tokens", json={"name": name}, headers=bootstrap) for _ in range(8))
    )
    assert sorted(r.status for r in answers) == [201, 201] + [409] * 6
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) AS n FROM operator_tokens WHERE name = %s AND revoked_at IS NULL", (name,)
            )
        ).fetchone()
    assert row["n"] == 2


async def test_the_operator_name_is_the_audit_actor(api, pool, bootstrap):
    name = unique_name("carol")
    token = await create(api, bootstrap, name)
    inp = await seed_org(pool, f"op{uuid.uuid4().hex[:8]}", "vpc-0000000000", ["subnet-0000000000"])
    async with pool.connection() as conn:
        await conn.execute("UPDATE orgs SET status = 'active' WHERE id = %s", (inp.org_id,))
    resp = await api.post(f"/api/v1/orgs/{inp.slug}/keys", json={"name": "k"}, headers=bearer(token["token"]))
    assert resp.status == 201 and (await resp.json())["created_by"] == f"operator:{name}"
    trail = await (await api.get(f"/api/v1/orgs/{inp.slug}/audit", headers=bearer(token["token"]))).json()
    assert [r["actor"] for r in trail["records"] if r["action"] == "org_key.mint"] == [f"operator:{name}"]
    assert trail["chain"]["valid"]

    # Who each credential authenticates as: what the per-principal rate limits key on.
    resp = await api.get("/test/whoami/operator", headers=bearer(token["token"]))
    assert (await resp.json())["principal"] == f"operator:{name}"
    resp = await api.get("/test/whoami/operator", headers=bootstrap)
    assert (await resp.json())["principal"] == "operator:bootstrap"
    org = await OrgRepo(pool).get(inp.org_id)
    _, key = await OrgKeyRepo(pool).mint(org, "k2", actor="test")
    resp = await api.get("/test/whoami/tenant", headers=bearer(key))
    assert (await resp.json())["principal"] == f"org:{inp.org_id}"


async def test_the_bootstrap_secret_works_and_is_marked_deprecated(api, settings, bootstrap, captured_logs):
    resp = await api.get("/api/v1/orgs?limit=1", headers=bootstrap)
    assert resp.status == 200
    assert resp.headers["Warning"].startswith("299 ") and "deprecated" in resp.headers["Warning"]
    # Errors after authentication carry it too.
    resp = await api.get("/api/v1/orgs/no-such-org-x", headers=bootstrap)
    assert resp.status == 404 and "deprecated" in resp.headers["Warning"]
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line.startswith("{")]
    used = [entry for entry in lines if entry.get("event") == "deprecated bootstrap operator secret used"]
    assert len(used) == 2 and used[0]["path"] == "/api/v1/orgs"
    assert settings.provision_secret.get_secret_value() not in captured_logs.getvalue()


async def test_what_is_refused(api, pool, bootstrap):
    name = unique_name("dave")
    token = await create(api, bootstrap, name)
    # Not a credential of any kind; a token with a wrong secret; an unauthenticated caller.
    for headers in (
        bearer("tfo_000000000000_" + "A" * 43),
        bearer(token["token"][:-3] + ("AAA" if not token["token"].endswith("AAA") else "BBB")),
        {},
    ):
        resp = await api.get("/api/v1/operator-tokens", headers=headers)
        assert resp.status == 401 and "Warning" not in resp.headers
    # An org key is no operator credential, and an operator token is no org key.
    inp = await seed_org(pool, f"rf{uuid.uuid4().hex[:8]}", "vpc-0000000000", ["subnet-0000000000"])
    async with pool.connection() as conn:
        await conn.execute("UPDATE orgs SET status = 'active' WHERE id = %s", (inp.org_id,))
    _, key = await OrgKeyRepo(pool).mint(await OrgRepo(pool).get(inp.org_id), "k", actor="test")
    assert (await api.post("/api/v1/operator-tokens", json={"name": "x-y"}, headers=bearer(key))).status == 401
    assert (await api.get("/api/v1/workspaces", headers=bearer(token["token"]))).status == 401
    # The bootstrap's name is reserved; names are plain identifiers.
    for bad in ("bootstrap", "Alice", "a", "x" * 41, "al ice", "al:ice"):
        resp = await api.post("/api/v1/operator-tokens", json={"name": bad}, headers=bootstrap)
        assert resp.status == 400, bad


async def test_cli_creates_lists_and_revokes(api, bootstrap, settings, monkeypatch):
    url = str(api.make_url("/")).rstrip("/")
    monkeypatch.setenv("TENANTFLOW_PROVISION_SECRET", settings.provision_secret.get_secret_value())
    monkeypatch.delenv("TENANTFLOW_OPERATOR_TOKEN", raising=False)
    name = unique_name("erin")

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return starter.main(["--api-url", url, *argv], out=out), out.getvalue()

    code, text = await asyncio.to_thread(run, "operator-token", "create", name)
    assert code == 0, text
    secret = text.split()[0]
    assert secret.startswith("tfo_")
    monkeypatch.setenv("TENANTFLOW_OPERATOR_TOKEN", secret)  # the CLI prefers the named token
    code, text = await asyncio.to_thread(run, "operator-token", "list")
    assert code == 0 and name in text and secret not in text
    code, text = await asyncio.to_thread(run, "operator-token", "list", "--name", name.upper(), "--json")
    assert code == 0 and [t["name"] for t in json.loads(text)["tokens"]] == [name]
    prefix = "_".join(secret.split("_")[:2])
    code, text = await asyncio.to_thread(run, "operator-token", "revoke", prefix)
    assert code == 0 and f"revoked {prefix}" in text
    code, text = await asyncio.to_thread(run, "operator-token", "list")
    assert code == 2 and "refused (401)" in text  # its own token is gone
    assert os.environ["TENANTFLOW_OPERATOR_TOKEN"] == secret
