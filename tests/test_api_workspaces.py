"""Tenant and operator workspace routes, org API keys, quotas and the registry, through aiohttp's
test client with the real Temporal dev server, moto and Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from activities.boot_script import CONFIG_MARKER
from api.app import create_app
from tests.helpers import instances_of, onboard_active_org, user_data_of
from worker import build_worker

WS_BODY = {
    "name": "production-agent-1",
    "role": "Production inference worker",
    "runtime": "hermes",
    "tier": 3,
    "model": "claude-sonnet-4",
}


@pytest_asyncio.fixture
async def app_settings(settings, task_queue):
    # A registered agent that never answers fails its card check in seconds rather than minutes.
    return settings.model_copy(update={"task_queue": task_queue, "agent_check_timeout_seconds": 3.0})


@pytest_asyncio.fixture
async def api(app_settings, dev_env):
    client = TestClient(TestServer(create_app(app_settings, temporal=dev_env.client)))
    await client.start_server()
    yield client
    await client.close()


def operator(settings) -> dict:
    return {"Authorization": f"Bearer {settings.provision_secret.get_secret_value()}"}


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


async def new_org(dev_env, settings, pool, network, task_queue) -> dict:
    return await onboard_active_org(dev_env, settings, pool, task_queue, network, f"k{uuid.uuid4().hex[:8]}")


async def mint_key(api, settings, slug: str, name: str = "ci") -> str:
    resp = await api.post(f"/cp/orgs/{slug}/keys", json={"name": name}, headers=operator(settings))
    assert resp.status == 201
    return (await resp.json())["key"]


@pytest_asyncio.fixture
async def org_and_key(api, app_settings, dev_env, pool, network, task_queue):
    org = await new_org(dev_env, app_settings, pool, network, task_queue)
    return org, await mint_key(api, app_settings, org["slug"])


async def test_org_keys_are_shown_once_hashed_and_revocable(api, app_settings, pool, org_and_key):
    org, key = org_and_key
    assert key.startswith("tfk_")
    listing = await (await api.get("/keys", headers=bearer(key))).json()
    assert [k["name"] for k in listing["keys"]] == ["ci"]
    assert key not in json.dumps(listing)
    assert listing["keys"][0]["prefix"] == "_".join(key.split("_")[:2])
    assert listing["keys"][0]["last_used_at"] is not None
    async with pool.connection() as conn:
        stored = await (
            await conn.execute("SELECT key_hash FROM org_api_keys WHERE org_id = %s", (org["id"],))
        ).fetchall()
    assert all(key not in r["key_hash"] for r in stored)

    resp = await api.post("/keys", json={"name": "second"}, headers=bearer(key))
    assert resp.status == 201
    second = await resp.json()
    assert second["key"].startswith("tfk_") and second["name"] == "second"
    resp = await api.delete(f"/keys/{second['id']}", headers=bearer(key))
    assert resp.status == 200 and (await resp.json())["revoked"] is True
    # Refused at once.
    assert (await api.get("/workspaces", headers=bearer(second["key"]))).status == 401
    assert (await api.get("/workspaces", headers=bearer(key))).status == 200


async def test_routing_header_must_agree_with_the_key(api, org_and_key):
    org, key = org_and_key
    assert (await api.get("/workspaces", headers={**bearer(key), "X-Org-Slug": org["slug"]})).status == 200
    resp = await api.get("/workspaces", headers={**bearer(key), "X-Org-Slug": "someone-else"})
    assert resp.status == 403 and (await resp.json())["code"] == "ORG_MISMATCH"


async def test_bad_credentials(api, app_settings, org_and_key):
    _, key = org_and_key
    for headers in (
        {},
        bearer("tfk_000000000000_" + "A" * 43),
        bearer(key + "x"),
        bearer(key.replace("tfk_", "tfr_")),
        operator(app_settings),
    ):
        assert (await api.get("/workspaces", headers=headers)).status == 401
    # An org key is not an operator credential.
    assert (await api.get("/cp/orgs/acme", headers=bearer(key))).status == 401


async def set_quota(api, app_settings, dev_env, pool, task_queue, slug: str, **quota) -> dict:
    """Quotas change through the org's entity workflow: a worker must run to accept the change."""
    async with build_worker(dev_env.client, app_settings, pool, task_queue=task_queue):
        resp = await api.patch(f"/cp/orgs/{slug}", json=quota, headers=operator(app_settings))
    assert resp.status == 200
    return await resp.json()


async def test_quota_race_admits_exactly_the_limit(api, app_settings, dev_env, pool, task_queue, org_and_key):
    org, key = org_and_key
    assert (await set_quota(api, app_settings, dev_env, pool, task_queue, org["slug"], max_workspaces=3))[
        "max_workspaces"
    ] == 3
    answers = await asyncio.gather(
        *[api.post("/workspaces", json={**WS_BODY, "name": f"agent-{i}"}, headers=bearer(key)) for i in range(20)]
    )
    statuses = sorted(r.status for r in answers)
    assert statuses == [202] * 3 + [409] * 17
    refused = [await r.json() for r in answers if r.status == 409]
    assert all(r["code"] == "QUOTA_EXCEEDED" and "upgrade" in r["error"] for r in refused)
    listing = await (await api.get("/workspaces", headers=bearer(key))).json()
    assert len(listing["workspaces"]) == 3


async def test_tier_above_max_tier_conflicts_with_a_hint(api, app_settings, dev_env, pool, task_queue, org_and_key):
    org, key = org_and_key
    await set_quota(api, app_settings, dev_env, pool, task_queue, org["slug"], max_tier=2, billing_plan="starter")
    resp = await api.post("/workspaces", json={**WS_BODY, "tier": 3}, headers=bearer(key))
    assert resp.status == 409
    body = await resp.json()
    assert body["code"] == "TIER_NOT_ALLOWED" and "upgrade" in body["error"]
    assert (await (await api.get("/workspaces", headers=bearer(key))).json())["workspaces"] == []


@pytest.mark.parametrize(
    "patch",
    [{}, {"max_workspaces": -1}, {"max_workspaces": "3"}, {"max_tier": 9}, {"billing_plan": "gold"}, {"unknown": 1}],
)
async def test_quota_patch_validation(api, app_settings, org_and_key, patch):
    org, _ = org_and_key
    resp = await api.patch(f"/cp/orgs/{org['slug']}", json=patch, headers=operator(app_settings))
    assert resp.status == 400 and "error" in await resp.json()


@pytest.mark.parametrize(
    "override",
    [{"name": "Bad Name"}, {"tier": 0}, {"tier": "3"}, {"runtime": ""}, {"model": "x y"}, {"role": ""}, {"extra": 1}],
)
async def test_workspace_body_validation(api, org_and_key, override):
    _, key = org_and_key
    resp = await api.post("/workspaces", json={**WS_BODY, **override}, headers=bearer(key))
    assert resp.status == 400
    assert (await (await api.get("/workspaces", headers=bearer(key))).json())["workspaces"] == []


async def test_other_orgs_key_sees_nothing(api, app_settings, dev_env, pool, network, task_queue, org_and_key):
    org_a, key_a = org_and_key
    org_b = await new_org(dev_env, app_settings, pool, network, task_queue)
    key_b = await mint_key(api, app_settings, org_b["slug"])
    resp = await api.post("/workspaces", json=WS_BODY, headers=bearer(key_b))
    assert resp.status == 202
    ws_b = (await resp.json())["id"]
    for method, path in (("GET", f"/workspaces/{ws_b}"), ("DELETE", f"/workspaces/{ws_b}")):
        resp = await api.request(method, path, headers=bearer(key_a))
        assert resp.status == 404
        assert ws_b not in await resp.text()
    listing = await (await api.get("/workspaces", headers=bearer(key_a))).json()
    assert listing["workspaces"] == []
    # A forged routing header does not move the caller into org B.
    resp = await api.get(f"/workspaces/{ws_b}", headers={**bearer(key_a), "X-Org-Slug": org_b["slug"]})
    assert resp.status == 403
    resp = await api.delete(f"/keys/{key_b.split('_')[1]}", headers=bearer(key_a))
    assert resp.status == 404
    assert (await api.get("/workspaces", headers=bearer(key_b))).status == 200


async def wait_for(api, path: str, headers: dict, predicate, timeout: float = 60) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = await (await api.get(path, headers=headers)).json()
        if predicate(body):
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)


def registration_token(ec2, instance_id: str) -> str:
    script = user_data_of(ec2, instance_id)
    return json.loads(script.split(f"<<'{CONFIG_MARKER}'\n")[1].split(f"\n{CONFIG_MARKER}")[0])["registration_token"]


async def test_registration_token_is_one_time_and_bound_to_its_workspace(
    api, app_settings, dev_env, pool, ec2, task_queue, org_and_key
):
    """The agent registers and then never answers (it crashed): the card check fails, the
    instance is terminated and the slot is given back."""
    org, key = org_and_key
    async with build_worker(dev_env.client, app_settings, pool, task_queue=task_queue):
        first = (await (await api.post("/workspaces", json=WS_BODY, headers=bearer(key))).json())["id"]
        second = (await (await api.post("/workspaces", json={**WS_BODY, "name": "other"}, headers=bearer(key))).json())[
            "id"
        ]
        ws = await wait_for(
            api, f"/workspaces/{first}", bearer(key), lambda w: (w["progress"] or {}).get("step") == "wait_registration"
        )
        await wait_for(
            api,
            f"/workspaces/{second}",
            bearer(key),
            lambda w: (w["progress"] or {}).get("step") == "wait_registration",
        )
        token = registration_token(ec2, ws["instance_id"])

        # A token for the first workspace can never register the second.
        resp = await api.post(
            "/registry/register",
            json={"workspace_id": second, "agent_url": "http://127.0.0.1:9"},
            headers=bearer(token),
        )
        assert resp.status == 401
        resp = await api.post(
            "/registry/register",
            json={"workspace_id": first, "agent_url": "http://127.0.0.1:9", "agent_cert_sha256": "0" * 64},
            headers=bearer(token),
        )
        assert resp.status == 200
        answer = await resp.json()
        assert answer["workspace_token"].startswith("tfw_") and answer["workspace_id"] == first
        # It died on use.
        resp = await api.post(
            "/registry/register", json={"workspace_id": first, "agent_url": "http://127.0.0.1:9"}, headers=bearer(token)
        )
        assert resp.status == 401

        # Heartbeats with the workspace token count; with another workspace's id they are refused.
        resp = await api.post(
            "/registry/heartbeat",
            headers=bearer(answer["workspace_token"]),
            json={"workspace_id": first, "tasks_handled": 4, "avg_response_time_ms": 12.5},
        )
        assert resp.status == 200
        resp = await api.post(
            "/registry/heartbeat",
            headers=bearer(answer["workspace_token"]),
            json={"workspace_id": second, "tasks_handled": 1},
        )
        assert resp.status == 403

        failed = await wait_for(api, f"/workspaces/{first}", bearer(key), lambda w: w["status"] == "failed")
        assert failed["failure_reason"].startswith("check_agent: AgentUnreachable")
        # The URL the registration named was never dialled: the platform dials the instance's own
        # private address on the agent port (an agent-chosen URL made the worker an SSRF probe).
        private_ip = instances_of(ec2, first, states=("terminated",))[0]["PrivateIpAddress"]
        derived = f"https://{private_ip}:{app_settings.agent_port}"
        assert failed["agent_url"] == derived and derived in failed["failure_reason"]
        assert "127.0.0.1:9" not in failed["failure_reason"]
        assert instances_of(ec2, first) == []
        # Its workspace token died with it.
        resp = await api.post(
            "/registry/heartbeat",
            headers=bearer(answer["workspace_token"]),
            json={"workspace_id": first, "tasks_handled": 5},
        )
        assert resp.status == 401

        resp = await api.delete(f"/workspaces/{second}", headers=bearer(key))
        assert resp.status == 202
        await wait_for(api, f"/workspaces/{second}", bearer(key), lambda w: w.get("code") == "WORKSPACE_NOT_FOUND")
    assert instances_of(ec2, second) == []
    operator_view = await (await api.get(f"/cp/orgs/{org['slug']}/workspaces", headers=operator(app_settings))).json()
    assert {w["id"]: w["status"] for w in operator_view["workspaces"]} == {first: "failed"}


class HeldSignals:
    """The API's Temporal client, except that signals wait until the test lets them through."""

    def __init__(self, real):
        self._real = real
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_workflow_handle(self, *args, **kwargs):
        handle = self._real.get_workflow_handle(*args, **kwargs)
        held = self

        class Handle:
            def __getattr__(self, name):
                return getattr(handle, name)

            async def signal(self, *a, **k):
                held.reached.set()
                await held.release.wait()
                return await handle.signal(*a, **k)

        return Handle()


async def test_registration_holds_no_lock_while_it_wakes_the_workflow(
    app_settings, dev_env, pool, ec2, task_queue, api, org_and_key
):
    """Registration wakes the provisioning workflow (a Temporal call) without holding a database
    lock: while that call is in flight, audited writes (a key minted) go through."""
    org, key = org_and_key
    held = HeldSignals(dev_env.client)
    slow = TestClient(TestServer(create_app(app_settings, temporal=held)))
    await slow.start_server()
    try:
        async with build_worker(dev_env.client, app_settings, pool, task_queue=task_queue):
            ws_id = (await (await api.post("/workspaces", json=WS_BODY, headers=bearer(key))).json())["id"]
            ws = await wait_for(
                api,
                f"/workspaces/{ws_id}",
                bearer(key),
                lambda w: (w["progress"] or {}).get("step") == "wait_registration",
            )
            token = registration_token(ec2, ws["instance_id"])
            registering = asyncio.create_task(
                slow.post("/registry/register", json={"workspace_id": ws_id}, headers=bearer(token))
            )
            await asyncio.wait_for(held.reached.wait(), 30)
            # The registration now waits on Temporal; an audited write must not wait on it.
            minted = await asyncio.wait_for(
                api.post(f"/cp/orgs/{org['slug']}/keys", json={"name": "meanwhile"}, headers=operator(app_settings)), 30
            )
            assert minted.status == 201 and not registering.done()
            held.release.set()
            answer = await registering
            assert answer.status == 200 and (await answer.json())["workspace_token"].startswith("tfw_")
    finally:
        held.release.set()
        await slow.close()
