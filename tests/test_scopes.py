"""Scoped, expiring org API keys: every tenant route declares the one scope it requires, in code
(``@requires``) and in the OpenAPI spec, and a key is admitted exactly when it holds that scope;
a key mints only keys within its own scopes and lifetime; expired keys are refused; an org holds
at most ``max_live_keys_per_org`` live keys, however many mints race."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestClient, TestServer

from api.app import SPEC_PATH, create_app
from api.auth import REQUIRED_SCOPES
from api.versioning import API_V1, UNVERSIONED
from db.keys import OrgKeyRepo
from db.orgs import OrgRepo
from domain.scopes import ALL_SCOPES
from tests.helpers import seed_org

CAP = 4
# One request per tenant route whose answer, once the scope check passes, changes nothing that
# matters: what tells "admitted" from "refused" is only whether the scope check answered.
SAMPLES = {
    ("GET", "/api/v1/keys"): {},
    ("POST", "/api/v1/keys"): {"json": {"name": "matrix"}},
    ("DELETE", "/api/v1/keys/{key_id}"): {"key_id": "000000000000"},
    ("GET", "/api/v1/workspaces"): {},
    ("POST", "/api/v1/workspaces"): {"json": {"name": "Not A Valid Name"}},
    ("GET", "/api/v1/workspaces/{workspace_id}"): {"workspace_id": "ws_000000000000"},
    ("DELETE", "/api/v1/workspaces/{workspace_id}"): {"workspace_id": "ws_000000000000"},
}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest_asyncio.fixture
async def api(settings):
    # No route here reaches Temporal: the app's lazy client is never used.
    app = create_app(settings.model_copy(update={"max_live_keys_per_org": CAP}))
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest_asyncio.fixture
async def org(pool) -> dict:
    """An active org, as onboarding leaves it (its clouds are never touched here)."""
    inp = await seed_org(pool, f"sc{uuid.uuid4().hex[:8]}", "vpc-0000000000", ["subnet-0000000000"])
    async with pool.connection() as conn:
        await conn.execute("UPDATE orgs SET status = 'active' WHERE id = %s", (inp.org_id,))
    row = await OrgRepo(pool).get(inp.org_id)
    assert row is not None
    return row


async def key_with(pool, org: dict, scopes, *, expires_at: datetime | None = None) -> str:
    _, secret = await OrgKeyRepo(pool, max_live_per_org=1000).mint(
        org, "test", actor="test", scopes=list(scopes), expires_at=expires_at
    )
    return secret


def tenant_routes(app) -> dict[tuple[str, str], str]:
    """Every canonical route that declares a scope, with the scope."""
    return {
        (r.method, r.resource.canonical): REQUIRED_SCOPES[r.handler].value
        for r in app.router.routes()
        if r.handler in REQUIRED_SCOPES and r.method != "HEAD" and r.resource.canonical.startswith(API_V1)
    }


# -- one truth: the code's declarations are the spec's -----------------------------------------


def test_every_tenant_route_declares_its_scope_in_code_and_spec(settings):
    app = create_app(settings)
    declared = tenant_routes(app)
    spec = yaml.safe_load(SPEC_PATH.read_text())
    in_spec = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "security" in op:
                for requirement in op["security"]:
                    if "orgApiKey" in requirement:
                        in_spec[(method.upper(), path)] = requirement["orgApiKey"]
    assert {route: [scope] for route, scope in declared.items()} == in_spec
    assert set(declared) == set(SAMPLES), "a tenant route without a sample request in this test"
    assert set(declared.values()) == set(ALL_SCOPES), "a scope no route requires"
    # The deprecated mirror runs the same guarded handlers, and nothing else takes an org key
    # without declaring a scope: every other route is an operator's, an agent's or a probe.
    for route in app.router.routes():
        path = route.resource.canonical
        if route.handler not in REQUIRED_SCOPES and route.method != "HEAD" and path not in UNVERSIONED:
            assert path.startswith(
                (
                    "/api/v1/orgs",
                    "/cp/",
                    "/api/v1/teardowns",
                    "/api/v1/operator-tokens",
                    "/api/v1/audit",
                    "/api/v1/reconcile/",
                )
            ) or ("registry" in path), path


# -- the route x scope matrix -------------------------------------------------------------------


async def call(api, method: str, template: str, secret: str):
    sample = dict(SAMPLES[(method, template)])
    body = sample.pop("json", None)
    return await api.request(method, template.format(**sample), json=body, headers=bearer(secret))


async def test_route_by_scope_matrix(api, pool, org):
    routes = tenant_routes(api.server.app)
    keys = {scope: await key_with(pool, org, [scope]) for scope in ALL_SCOPES}
    everything_but = {scope: await key_with(pool, org, [s for s in ALL_SCOPES if s != scope]) for scope in ALL_SCOPES}
    for (method, template), required in sorted(routes.items()):
        for scope, secret in keys.items():
            resp = await call(api, method, template, secret)
            body = await resp.json()
            if scope == required:
                assert resp.status not in (401, 403), (method, template, scope, resp.status, body)
            else:
                assert resp.status == 403, (method, template, scope, resp.status, body)
                assert body["code"] == "MISSING_SCOPE" and body["required_scope"] == required
                assert f"lacks the scope '{required}'" in body["error"], body
        # Holding every other scope is not enough.
        resp = await call(api, method, template, everything_but[required])
        assert resp.status == 403 and (await resp.json())["required_scope"] == required, (method, template)
        # The same on the deprecated mirror.
        resp = await call(api, method, template, keys[required])
        legacy = await api.request(
            method,
            template.removeprefix(API_V1).format(
                **{k: v for k, v in SAMPLES[(method, template)].items() if k != "json"}
            ),
            json=SAMPLES[(method, template)].get("json"),
            headers=bearer(keys[[s for s in ALL_SCOPES if s != required][0]]),
        )
        assert legacy.status == 403 and (await legacy.json())["code"] == "MISSING_SCOPE", (method, template)


async def test_admitted_requests_reach_the_handler(api, pool, org):
    """What the matrix's admitted answers are: the handler's own, not an authorisation's."""
    full = await key_with(pool, org, ALL_SCOPES)
    expected = {
        ("GET", "/api/v1/keys"): 200,
        ("POST", "/api/v1/keys"): 201,
        ("DELETE", "/api/v1/keys/{key_id}"): 404,
        ("GET", "/api/v1/workspaces"): 200,
        ("POST", "/api/v1/workspaces"): 400,
        ("GET", "/api/v1/workspaces/{workspace_id}"): 404,
        ("DELETE", "/api/v1/workspaces/{workspace_id}"): 404,
    }
    for method, template in SAMPLES:
        resp = await call(api, method, template, full)
        assert resp.status == expected[(method, template)], (method, template, await resp.text())


# -- minting within one's own scopes and lifetime --------------------------------------------------


async def test_a_key_mints_only_a_subset_of_its_scopes(api, pool, org):
    admin = await key_with(pool, org, ["read", "keys:admin"])
    resp = await api.post("/api/v1/keys", json={"name": "wider", "scopes": ["workspaces:write"]}, headers=bearer(admin))
    body = await resp.json()
    assert resp.status == 403 and body["code"] == "SCOPE_EXCEEDED"
    assert "workspaces:write" in body["error"]
    resp = await api.post(
        "/api/v1/keys",
        json={"name": "all", "scopes": ["read", "workspaces:write", "keys:admin"]},
        headers=bearer(admin),
    )
    assert resp.status == 403

    resp = await api.post("/api/v1/keys", json={"name": "reader", "scopes": ["read"]}, headers=bearer(admin))
    assert resp.status == 201, await resp.text()
    reader = await resp.json()
    assert reader["scopes"] == ["read"] and reader["expires_at"] is None
    resp = await api.post("/api/v1/keys", json={"name": "same"}, headers=bearer(admin))
    assert (await resp.json())["scopes"] == ["read", "keys:admin"]  # omitted: the minter's own

    # A read-only key cannot mint at all, nor widen itself.
    resp = await api.post("/api/v1/keys", json={"name": "x", "scopes": ["read"]}, headers=bearer(reader["key"]))
    assert resp.status == 403 and (await resp.json())["required_scope"] == "keys:admin"
    # The scopes show in the listing; unknown scopes are a 400.
    listing = await (await api.get("/api/v1/keys", headers=bearer(reader["key"]))).json()
    assert {k["name"]: k["scopes"] for k in listing["keys"]}["reader"] == ["read"]
    resp = await api.post("/api/v1/keys", json={"name": "x", "scopes": ["admin"]}, headers=bearer(admin))
    assert resp.status == 400 and (await resp.json())["code"] == "VALIDATION_FAILED"
    resp = await api.post("/api/v1/keys", json={"name": "x", "scopes": []}, headers=bearer(admin))
    assert resp.status == 400


async def test_the_operator_grants_any_scopes_and_all_by_default(api, settings, org):
    op = bearer(settings.provision_secret.get_secret_value())
    resp = await api.post(f"/api/v1/orgs/{org['slug']}/keys", json={"name": "d"}, headers=op)
    assert resp.status == 201 and (await resp.json())["scopes"] == list(ALL_SCOPES)
    resp = await api.post(
        f"/api/v1/orgs/{org['slug']}/keys", json={"name": "w", "scopes": ["workspaces:write"]}, headers=op
    )
    assert (await resp.json())["scopes"] == ["workspaces:write"]


async def test_expired_keys_are_refused_and_keys_cannot_outlive_their_minter(api, pool, org):
    past = await key_with(pool, org, ALL_SCOPES, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    resp = await api.get("/api/v1/workspaces", headers=bearer(past))
    body = await resp.json()
    assert resp.status == 401 and body["code"] == "KEY_EXPIRED" and "expired at" in body["error"]
    # A wrong secret with the expired key's id learns nothing about expiry.
    forged = past[:-4] + ("AAAA" if not past.endswith("AAAA") else "BBBB")
    assert (await (await api.get("/api/v1/workspaces", headers=bearer(forged))).json())["code"] == "UNAUTHORIZED"

    soon = datetime.now(UTC) + timedelta(seconds=2)
    short = await key_with(pool, org, ALL_SCOPES, expires_at=soon)
    resp = await api.post("/api/v1/keys", json={"name": "child"}, headers=bearer(short))
    child = await resp.json()
    assert resp.status == 201 and datetime.fromisoformat(child["expires_at"]) == soon  # inherits the expiry
    later = (soon + timedelta(days=1)).isoformat()
    resp = await api.post("/api/v1/keys", json={"name": "c", "expires_at": later}, headers=bearer(short))
    assert resp.status == 403 and (await resp.json())["code"] == "EXPIRY_EXCEEDED"
    resp = await api.post(
        "/api/v1/keys", json={"name": "c", "expires_at": "2020-01-01T00:00:00Z"}, headers=bearer(short)
    )
    assert resp.status == 400 and "future" in (await resp.json())["error"]
    resp = await api.post(
        "/api/v1/keys", json={"name": "c", "expires_at": "2099-01-01T00:00:00"}, headers=bearer(short)
    )
    assert resp.status == 400  # no time zone

    assert (await api.get("/api/v1/workspaces", headers=bearer(child["key"]))).status == 200
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    for secret in (short, child["key"]):
        resp = await api.get("/api/v1/workspaces", headers=bearer(secret))
        assert resp.status == 401 and (await resp.json())["code"] == "KEY_EXPIRED"


# -- the cap on live keys ---------------------------------------------------------------------------


async def live_keys(pool, org_id: str) -> int:
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) AS n FROM org_api_keys WHERE org_id = %s AND revoked_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > now())",
                (org_id,),
            )
        ).fetchone()
    return int(row["n"])


async def test_concurrent_mints_cannot_exceed_the_cap(api, settings, pool, org):
    op = bearer(settings.provision_secret.get_secret_value())
    path = f"/api/v1/orgs/{org['slug']}/keys"
    answers = await asyncio.gather(*(api.post(path, json={"name": f"k{i}"}, headers=op) for i in range(12)))
    statuses = sorted(r.status for r in answers)
    assert statuses == [201] * CAP + [409] * (12 - CAP)
    refusal = await next(r for r in answers if r.status == 409).json()
    assert refusal["code"] == "KEY_LIMIT_REACHED" and refusal["max_live_keys"] == CAP
    assert f"{CAP} live API keys" in refusal["error"]
    assert await live_keys(pool, org["id"]) == CAP

    # A tenant's own mints count too; revoking one frees its slot.
    minted = [await r.json() for r in answers if r.status == 201]
    resp = await api.post("/api/v1/keys", json={"name": "more"}, headers=bearer(minted[0]["key"]))
    assert resp.status == 409
    assert (await api.delete(f"/api/v1/keys/{minted[1]['id']}", headers=bearer(minted[0]["key"]))).status == 200
    resp = await api.post("/api/v1/keys", json={"name": "more"}, headers=bearer(minted[0]["key"]))
    assert resp.status == 201


async def test_expired_keys_do_not_count_against_the_cap(api, settings, pool, org):
    for _ in range(CAP):
        await key_with(pool, org, ["read"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
    op = bearer(settings.provision_secret.get_secret_value())
    resp = await api.post(f"/api/v1/orgs/{org['slug']}/keys", json={"name": "fresh"}, headers=op)
    assert resp.status == 201


@pytest.mark.parametrize("scopes", [["read"], ["workspaces:write"], ["keys:admin"]])
async def test_mint_records_scopes_and_expiry_in_the_audit(api, pool, org, scopes):
    admin = await key_with(pool, org, ALL_SCOPES)
    resp = await api.post("/api/v1/keys", json={"name": "audited", "scopes": scopes}, headers=bearer(admin))
    minted = await resp.json()
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT actor, detail FROM audit_log WHERE action = 'org_key.mint' AND resource_ids->>'org_key' = %s",
                (minted["id"],),
            )
        ).fetchone()
    assert row["actor"].startswith("org_key:") and row["detail"]["scopes"] == scopes
