"""Security properties across every route: operator routes refuse org keys, tenant routes never
show another org's data, and no minted secret ever appears in a response body or a log line."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid

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
            if r.resource.canonical.startswith(("/api/v1/orgs", "/api/v1/teardowns", "/cp/")) and r.method != "HEAD"
        }
    )
    assert len(operator_routes) >= 20
    for method, path in operator_routes:
        url = path.replace("{slug}", a["org"]["slug"])
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
