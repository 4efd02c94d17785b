"""Security properties across every route: operator routes refuse org keys, tenant routes never
show another org's data, and no minted secret ever appears in a response body or a log line."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from domain.logs import configure_logging
from tests.helpers import onboard_active_org

WS_BODY = {"name": "sec-agent", "role": "Security test", "runtime": "hermes", "tier": 1, "model": "m"}


@pytest_asyncio.fixture
async def two_orgs(settings, dev_env, pool, network, task_queue):
    """Two active orgs with a key and a workspace each, and everything the test client saw."""
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", stream=buf)
    app = create_app(settings.model_copy(update={"task_queue": task_queue}), temporal=dev_env.client)
    client = TestClient(TestServer(app))
    await client.start_server()
    op = {"Authorization": f"Bearer {settings.provision_secret.get_secret_value()}"}
    orgs = []
    bodies: list[str] = []
    for _ in range(2):
        org = await onboard_active_org(dev_env, settings, pool, task_queue, network, f"s{uuid.uuid4().hex[:8]}")
        resp = await client.post(f"/api/v1/orgs/{org['slug']}/keys", json={"name": "k"}, headers=op)
        minted = await resp.json()
        resp = await client.post(
            "/api/v1/workspaces", json=WS_BODY, headers={"Authorization": f"Bearer {minted['key']}"}
        )
        bodies.append(await resp.text())
        orgs.append(
            {"org": org, "key": minted["key"], "key_id": minted["id"], "workspace": json.loads(bodies[-1])["id"]}
        )
    try:
        yield client, op, orgs, buf, bodies
    finally:
        await client.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def tenant_headers(entry: dict) -> dict:
    return {"Authorization": f"Bearer {entry['key']}"}


async def test_every_operator_route_refuses_an_org_key(two_orgs):
    client, _, orgs, _, _ = two_orgs
    a = orgs[0]
    operator_routes = sorted(
        {
            (r.method, r.resource.canonical)
            for r in client.app.router.routes()
            if r.resource.canonical.startswith(("/api/v1/orgs", "/api/v1/teardowns", "/api/v1/reconcile/", "/cp/"))
            and r.method != "HEAD"
        }
    )
    assert len(operator_routes) >= 20
    for method, path in operator_routes:
        url = path.format(
            slug=a["org"]["slug"], key_id=a["key_id"], workspace_id=a["workspace"], report_id="1", deletion_id="1"
        )
        resp = await client.request(method, url, json={}, headers=tenant_headers(a))
        assert resp.status in (401, 403), (method, path, resp.status)
        assert a["org"]["id"] not in await resp.text()


async def test_every_tenant_route_shows_nothing_of_another_org(two_orgs):
    client, _, orgs, _, _ = two_orgs
    a, b = orgs
    probes = [
        ("GET", f"/api/v1/workspaces/{b['workspace']}"),
        ("DELETE", f"/api/v1/workspaces/{b['workspace']}"),
        ("DELETE", f"/api/v1/keys/{b['key_id']}"),
        ("GET", f"/workspaces/{b['workspace']}"),
        ("DELETE", f"/keys/{b['key_id']}"),
    ]
    for method, path in probes:
        resp = await client.request(method, path, headers=tenant_headers(a))
        assert resp.status == 404, (method, path)
        text = await resp.text()
        assert b["workspace"] not in text and b["org"]["slug"] not in text and b["org"]["id"] not in text
    for path in ("/api/v1/workspaces", "/api/v1/keys"):
        text = await (await client.get(path, headers=tenant_headers(a))).text()
        assert b["workspace"] not in text and b["key_id"] not in text and b["org"]["id"] not in text
    # B's workspace and key survived A's attempts.
    assert (await client.get(f"/api/v1/workspaces/{b['workspace']}", headers=tenant_headers(b))).status == 200
    assert (await client.get("/api/v1/keys", headers=tenant_headers(b))).status == 200


async def test_no_secret_in_any_response_or_log_line(two_orgs, settings):
    client, op, orgs, buf, bodies = two_orgs
    a = orgs[0]
    # Exercise reads that could leak: org views, key listings, workspace views, audit.
    for method, path, headers in [
        ("GET", f"/api/v1/orgs/{a['org']['slug']}", op),
        ("GET", f"/api/v1/orgs/{a['org']['slug']}/workspaces", op),
        ("GET", f"/api/v1/orgs/{a['org']['slug']}/audit", op),
        ("GET", "/api/v1/keys", tenant_headers(a)),
        ("GET", "/api/v1/workspaces", tenant_headers(a)),
        ("GET", f"/api/v1/workspaces/{a['workspace']}", tenant_headers(a)),
        ("GET", "/api/v1/teardowns", op),
    ]:
        resp = await client.request(method, path, headers=headers)
        assert resp.status == 200, path
        bodies.append(await resp.text())
    secrets_minted = [
        settings.provision_secret.get_secret_value(),
        settings.neon_api_key.get_secret_value(),
        *(o["key"] for o in orgs),
    ]
    everything = "\n".join(bodies) + "\n" + buf.getvalue()
    for secret in secrets_minted:
        assert secret not in everything
    assert re.search(r"tf[krw]_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", "\n".join(bodies[2:])) is None
    assert buf.getvalue().count('"event": "http request"') >= 7


# -- robustness regressions ----------------------------------------------------------------------


async def test_control_characters_in_paths_answer_json_and_keep_the_connection(settings, dev_env):
    """The deprecated mirror's Link header echoes the path: a %00 in it once made the response
    unwritable and the connection dropped. Now it is percent-encoded, and the answer is JSON."""
    from yarl import URL

    op = {"Authorization": f"Bearer {settings.provision_secret.get_secret_value()}"}
    async with TestClient(TestServer(create_app(settings, temporal=dev_env.client))) as client:
        for path, expected in [
            ("/cp/orgs/%00", 400),
            ("/cp/orgs/%0d%0aSet-Cookie:%20x=1", 400),
            ("/cp/orgs/%7f/workspaces", 400),
            ("/cp/orgs/a%3E%3Cb", 400),
            ("/workspaces/%00", 401),
            ("/keys/%0a", 405),
            ("/registry/%00", 404),
        ]:
            resp = await client.get(URL(path, encoded=True), headers=op)
            assert resp.status == expected, (path, await resp.text())
            assert (await resp.json())["code"], path
            link = resp.headers["Link"]
            assert link.isprintable() and link.count("<") == 1 and link.count(">") == 1, link
            assert link.startswith("</api/v1/"), link


def test_path_parameters_refuse_a_trailing_newline():
    """``re.match`` with ``$`` accepts "value\\n": every pattern must match the whole value."""
    from api import lifecycle, lookup, org_keys, orgs, reconcile_reports, workspaces
    from api.schemas import OrgCreateRequest
    from domain import credentials
    from domain.resources import org_of_name

    assert lookup.SLUG.fullmatch("acme") and not lookup.SLUG.fullmatch("acme\n")
    assert not orgs._SLUG_PREFIX.fullmatch("acme\n")
    assert not workspaces.WORKSPACE_ID.fullmatch("ws_0123456789ab\n")
    assert not org_keys._KEY_ID.fullmatch("0123456789ab\n")
    assert not reconcile_reports.REPORT_ID.fullmatch("1\n")
    assert not lifecycle._SEQ.fullmatch("1\n") and not lifecycle._ORG_ID.fullmatch("org_0123456789ab\n")
    key = credentials.mint(credentials.ORG_KEY).secret
    assert credentials.parse(key, credentials.ORG_KEY) and credentials.parse(key + "\n", credentials.ORG_KEY) is None
    assert org_of_name("tf-acme-0123456789ab") == ("org_0123456789ab", "acme")
    assert org_of_name("tf-acme-0123456789ab\n") == (None, None)
    with pytest.raises(ValueError):
        OrgCreateRequest(name="x", slug="acme\n", plan="pro", vpc_id="vpc-0123456", subnet_ids=["subnet-0123456"])
    # And nothing in production matches a pattern at the start only.
    root = Path(__file__).resolve().parent.parent
    sources = [p for d in ("api", "db", "domain", "activities", "workflows", "agent") for p in (root / d).rglob("*.py")]
    offenders = [
        f"{p.relative_to(root)}:{n}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\b(re|[A-Z_][A-Z0-9_]*)\.match\(", line)
    ]
    assert offenders == []


async def test_temporal_unreachable_answers_503_and_gives_the_quota_slot_back(settings, pool, network):
    """The lazy client's first connect failing raises a bare RuntimeError: once a 500 that left the
    workspace holding its quota slot forever. Now 503 with Retry-After, and the slot is free."""
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from db.keys import OrgKeyRepo
    from db.orgs import OrgRepo
    from devstack.procs import free_port
    from tests.helpers import seed_org

    nowhere = await Client.connect(f"127.0.0.1:{free_port()}", lazy=True, data_converter=pydantic_data_converter)
    inp = await seed_org(pool, f"s{uuid.uuid4().hex[:8]}", *network)
    await OrgRepo(pool).update(
        inp.org_id, actor="test", status="active", security_group_id="sg-0123456789", max_workspaces=1
    )
    org = await OrgRepo(pool).get(inp.org_id)
    _, key = await OrgKeyRepo(pool).mint(org, "k", actor="test")
    tenant = {"Authorization": f"Bearer {key}"}
    async with TestClient(TestServer(create_app(settings, temporal=nowhere))) as client:
        for name in ("first", "second"):  # a leaked slot would make the second a 409 QUOTA_EXCEEDED
            resp = await client.post("/api/v1/workspaces", json={**WS_BODY, "name": name}, headers=tenant)
            body = await resp.json()
            assert resp.status == 503, body
            assert body["code"] == "UNAVAILABLE" and "Temporal" in body["error"]
            assert int(resp.headers["Retry-After"]) >= 1
        listed = await (await client.get("/api/v1/workspaces", headers=tenant)).json()
        assert {w["status"] for w in listed["workspaces"]} == {"failed"}
        assert all("Temporal unavailable" in w["failure_reason"] for w in listed["workspaces"])
        # An operator's command meets the same outage the same way.
        op = {"Authorization": f"Bearer {settings.provision_secret.get_secret_value()}"}
        resp = await client.post(f"/api/v1/orgs/{inp.slug}/suspend", json={"reason": "x"}, headers=op)
        assert resp.status == 503 and resp.headers["Retry-After"], await resp.text()


def test_local_stack_secrets_are_private_from_their_creation(tmp_path, monkeypatch):
    """secrets.json was written world-readable, then chmod'ed: now created 0600 and renamed into
    place, whatever the umask."""
    import os

    from devstack import stack

    modes = []
    real_replace = os.replace

    def replace(src, dst):
        modes.append(os.stat(src).st_mode & 0o777)
        real_replace(src, dst)

    monkeypatch.setattr(stack.os, "replace", replace)
    old = os.umask(0)
    try:
        values = stack.load_or_create_secrets(tmp_path)
        stack.save_secret(tmp_path, "demo_org_key", "tfk_x")
    finally:
        os.umask(old)
    assert modes == [0o600, 0o600]
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert stack.load_or_create_secrets(tmp_path) == {**values, "demo_org_key": "tfk_x"}
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]  # no temporary file left
