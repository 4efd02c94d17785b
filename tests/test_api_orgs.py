"""The operator API for orgs, through aiohttp's test client, with the real Temporal dev server (and a
worker wherever an org is created: it answers the API's check of the org's network)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import uuid

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from domain.logs import configure_logging
from tests.conftest import loopback_vpc
from tests.helpers import seed_org
from worker import build_worker


def slug() -> str:
    return f"a{uuid.uuid4().hex[:8]}"


async def api_client(settings, dev_env, **settings_update) -> TestClient:
    app = create_app(settings.model_copy(update=settings_update), temporal=dev_env.client)
    client = TestClient(TestServer(app))
    await client.start_server()
    client.session.headers["Authorization"] = f"Bearer {settings.provision_secret.get_secret_value()}"
    return client


@pytest_asyncio.fixture
async def api(settings, dev_env, task_queue):
    client = await api_client(settings, dev_env, task_queue=task_queue)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def worker(settings, dev_env, pool, task_queue):
    """The worker: it answers the API's network checks, and onboards the orgs the API accepts."""
    async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
        yield


def body(network, **overrides):
    vpc_id, subnets = network
    return {"name": "Acme Corp", "slug": slug(), "plan": "pro", "vpc_id": vpc_id, "subnet_ids": subnets, **overrides}


async def org_count(pool) -> int:
    async with pool.connection() as conn:
        return (await (await conn.execute("SELECT count(*) AS n FROM orgs")).fetchone())["n"]


async def workflows_for(dev_env, org_id: str) -> list:
    return [w async for w in dev_env.client.list_workflows(f"WorkflowId = 'org:{org_id}'")]


async def poll_until(api, slug_: str, statuses: set[str], timeout: float = 60, seen: list | None = None) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await api.get(f"/cp/orgs/{slug_}")
        assert resp.status == 200
        org = await resp.json()
        if seen is not None and org["progress"]:
            seen.append(org["progress"])
        if org["status"] in statuses:
            return org
        assert asyncio.get_running_loop().time() < deadline, org
        await asyncio.sleep(0.1)


async def test_onboard_through_api(api, settings, dev_env, pool, network, task_queue, neon_faults):
    req = body(network)
    # Two transient faults hold the workflow in create_database for a few seconds of retries,
    # long enough to see its live progress through the API.
    neon_faults("/projects/{project_id}/branches", 503, method="POST", count=2)
    seen: list[dict] = []
    async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
        resp = await api.post("/cp/orgs", json=req)
        assert resp.status == 202
        created = await resp.json()
        assert set(created) == {"id", "name", "slug", "plan", "neon_branch_id", "security_group_id", "status"}
        assert created["status"] == "provisioning" and created["neon_branch_id"] is None
        assert created["id"].startswith("org_")
        assert resp.headers["Location"] == f"/api/v1/orgs/{req['slug']}"
        assert resp.headers["Retry-After"] and resp.headers["Deprecation"] and resp.headers["Sunset"]
        org = await poll_until(api, req["slug"], {"active", "failed"}, seen=seen)
    assert org["status"] == "active", org["failure_reason"]
    assert any(p["step"] == "create_database" and p["steps_done"] == 2 and p["steps_total"] == 5 for p in seen), seen
    assert org["id"] == created["id"]
    assert org["neon_branch_id"].startswith("br-") and org["security_group_id"].startswith("sg-")
    assert org["workflow_id"] == f"org-onboard:{created['id']}"
    assert org["progress"] is None  # finished: answered from the record


async def test_same_post_twice_is_one_org_and_one_workflow(api, settings, dev_env, pool, network, task_queue):
    req = body(network)
    async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
        first = await (await api.post("/cp/orgs", json=req)).json()
    # The repeat is not checked again (no worker answers now): it finds the org the first created.
    again = await api.post("/cp/orgs", json=req)
    assert again.status == 202
    assert (await again.json())["id"] == first["id"]
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT id FROM orgs WHERE slug = %s", (req["slug"],))).fetchall()
    assert [r["id"] for r in rows] == [first["id"]]
    assert len(await workflows_for(dev_env, first["id"])) == 1


async def test_same_slug_other_body_conflicts(api, settings, dev_env, pool, network, task_queue):
    req = body(network)
    async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
        assert (await api.post("/cp/orgs", json=req)).status == 202
    resp = await api.post("/cp/orgs", json={**req, "plan": "enterprise", "vpc_id": "vpc-0000000000"})
    assert resp.status == 409
    err = await resp.json()
    assert err["code"] == "ORG_EXISTS" and req["slug"] in err["error"]
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT plan FROM orgs WHERE slug = %s", (req["slug"],))).fetchone()
    assert row["plan"] == "pro"


BAD_BODIES = [
    ("slug with capitals", {"slug": "Acme"}),
    ("slug too short", {"slug": "a"}),
    ("slug with a dot", {"slug": "ac.me"}),
    ("empty name", {"name": "   "}),
    ("name too long", {"name": "x" * 101}),
    ("control characters in name", {"name": "bad\nname"}),
    ("unknown plan", {"plan": "gold"}),
    ("malformed vpc", {"vpc_id": "vpc-!!"}),
    ("not a vpc", {"vpc_id": "subnet-0a1b2c3d"}),
    ("no subnets", {"subnet_ids": []}),
    ("subnet repeated", {"subnet_ids": ["subnet-0a1b2c3d", "subnet-0a1b2c3d"]}),
    ("malformed subnet", {"subnet_ids": ["subnet-x"]}),
    ("subnets not a list", {"subnet_ids": "subnet-0a1b2c3d"}),
    ("wrong type", {"name": 42}),
    ("unknown field", {"admin": True}),
]


@pytest.mark.parametrize("case,override", BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
async def test_bad_input_is_refused_and_creates_nothing(api, dev_env, pool, network, case, override):
    req = body(network, **override)
    before = await org_count(pool)
    resp = await api.post("/cp/orgs", json=req)
    assert resp.status == 400, case
    err = await resp.json()
    assert err["error"] and err["code"] == "VALIDATION_FAILED"
    assert await org_count(pool) == before


def _missing_vpc(network, other):
    vpc_id, subnets = network
    return {"vpc_id": "vpc-0000000000"}, [
        "vpc vpc-0000000000 does not exist in us-east-1",
        *(f"subnet {s} belongs to {vpc_id} not vpc-0000000000" for s in subnets),
    ]


def _missing_subnet(network, other):
    vpc_id, subnets = network
    return {"subnet_ids": [subnets[0], "subnet-0000000000"]}, ["subnet subnet-0000000000 does not exist in us-east-1"]


def _foreign_subnet(network, other):
    vpc_id, subnets = network
    return {"subnet_ids": [subnets[0], other[1][1]]}, [f"subnet {other[1][1]} belongs to {other[0]} not {vpc_id}"]


@pytest.mark.parametrize("wrong", [_missing_vpc, _missing_subnet, _foreign_subnet], ids=lambda f: f.__name__[1:])
async def test_a_network_unknown_to_ec2_is_refused_and_creates_nothing(api, worker, dev_env, pool, network, ec2, wrong):
    override, problems = wrong(network, loopback_vpc(ec2))
    req = body(network, **override)
    before = await org_count(pool)
    resp = await api.post("/api/v1/orgs", json=req)
    assert resp.status == 400
    err = await resp.json()
    assert err["code"] == "INVALID_NETWORK" and err["error"] == "; ".join(problems), err
    assert await org_count(pool) == before
    assert (await api.get(f"/api/v1/orgs/{req['slug']}")).status == 404
    # The worker answered (the API holds no EC2 credentials), and nothing else ran for the slug.
    assert await workflow_types_once_checked(dev_env, req["slug"]) == {"ValidateOrgNetworkWorkflow"}


async def workflow_types_once_checked(dev_env, slug_: str) -> set[str]:
    """The types of every workflow for the slug, once its network check is visible in the list."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        found = {w.workflow_type async for w in dev_env.client.list_workflows(f"TenantflowOrgSlug = '{slug_}'")}
        if "ValidateOrgNetworkWorkflow" in found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_an_unanswered_network_check_is_503_and_creates_nothing(settings, dev_env, pool, network, task_queue):
    client = await api_client(settings, dev_env, task_queue=task_queue, command_timeout_seconds=1.0)
    try:
        req = body(network)
        before = await org_count(pool)
        resp = await client.post("/api/v1/orgs", json=req)  # no worker runs
        assert resp.status == 503 and resp.headers["Retry-After"]
        err = await resp.json()
        assert err["code"] == "UNAVAILABLE" and "network could not be checked" in err["error"], err
        assert f"no worker polls task queue '{task_queue}'" in err["error"], err
        assert await org_count(pool) == before
    finally:
        await client.close()


@pytest.mark.parametrize("ec2_endpoint", ["refusing", "silent"])
async def test_a_worker_that_cannot_reach_ec2_is_named_in_the_503(
    settings, dev_env, pool, network, task_queue, ec2_endpoint
):
    client = await api_client(settings, dev_env, task_queue=task_queue, command_timeout_seconds=2.0)
    # EC2 at a loopback port that refuses connections, or that takes them and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if ec2_endpoint == "silent":
            silent.listen(8)
        unreachable = settings.model_copy(
            update={"aws_endpoint_url": f"http://127.0.0.1:{silent.getsockname()[1]}", "aws_read_timeout_seconds": 4}
        )
        try:
            async with build_worker(dev_env.client, unreachable, pool, task_queue=task_queue):
                before = await org_count(pool)
                resp = await client.post("/api/v1/orgs", json=body(network))
                err = await resp.json()
                assert resp.status == 503 and err["code"] == "UNAVAILABLE", err
                if ec2_endpoint == "refusing":  # the check ends, failed: its reason
                    assert "AWS unreachable: EndpointConnectionError" in err["error"], err
                else:  # the check goes on past the wait: the worker is there, EC2 does not answer
                    assert "from the worker: can it reach EC2?" in err["error"], err
                    assert "org-validate:" in err["error"], err
                assert await org_count(pool) == before
        finally:
            await client.close()


async def test_malformed_requests(api, pool):
    before = await org_count(pool)
    resp = await api.post("/cp/orgs", data="{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["code"] == "MALFORMED_JSON"
    resp = await api.post("/cp/orgs", data="slug=acme", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    resp = await api.post(
        "/cp/orgs", data=json.dumps({"name": "x" * 100_000}), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    resp = await api.post("/cp/orgs", json=["not", "an", "object"])
    assert resp.status == 400
    assert await org_count(pool) == before


async def test_operator_auth_required(api, network):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        resp = await api.post("/cp/orgs", json=body(network), headers=headers)
        assert resp.status == 401
        assert "error" in await resp.json()
        resp = await api.get("/cp/orgs/acme", headers=headers)
        assert resp.status == 401


async def test_unknown_and_invalid_slugs(api):
    resp = await api.get("/cp/orgs/does-not-exist")
    assert resp.status == 404 and (await resp.json())["code"] == "ORG_NOT_FOUND"
    resp = await api.get("/cp/orgs/NOT_A_SLUG")
    assert resp.status == 400


async def test_status_answers_from_database_while_no_worker_runs(api, settings, dev_env, pool, network, task_queue):
    # Recorded, and its workflow not yet started (as after a crash between the two): the repeated
    # POST starts it, with no worker to run it.
    seeded = await seed_org(pool, slug(), *network)
    req = body(network, name=seeded.name, slug=seeded.slug)
    resp = await api.post("/cp/orgs", json=req)
    assert resp.status == 202
    created = await resp.json()
    assert created["id"] == seeded.org_id
    for _ in range(3):
        resp = await api.get(f"/cp/orgs/{req['slug']}")
        assert resp.status == 200
        org = await resp.json()
        assert org["status"] == "provisioning" and org["id"] == created["id"]
        assert org["progress"] is None  # the query cannot be answered without a worker
    # Once a worker comes back, the same workflow completes and live progress was available.
    async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
        org = await poll_until(api, req["slug"], {"active", "failed"})
    assert org["status"] == "active"


async def test_dry_run_validates_and_echoes_without_creating(api, worker, dev_env, pool, network):
    req = body(network)
    before = await org_count(pool)
    resp = await api.post("/api/v1/orgs?dry_run=true", json=req)
    assert resp.status == 200
    echo = await resp.json()
    assert echo["dry_run"] is True and echo["valid"] is True and echo["slug_available"] is True
    assert echo["org"]["slug"] == req["slug"]
    assert (await api.post("/api/v1/orgs?dry_run=true", json={**req, "plan": "gold"})).status == 400
    # A network EC2 does not know is refused as the real request would be.
    resp = await api.post("/api/v1/orgs?dry_run=true", json={**req, "vpc_id": "vpc-0000000000"})
    assert resp.status == 400
    err = await resp.json()
    assert err["code"] == "INVALID_NETWORK" and "vpc vpc-0000000000 does not exist" in err["error"]
    assert (await api.post("/api/v1/orgs?dry_run=maybe", json=req)).status == 400
    assert await org_count(pool) == before
    assert (await api.get(f"/api/v1/orgs/{req['slug']}")).status == 404


async def test_canonical_and_mirror_paths_are_the_same_api(api, worker, network):
    req = body(network)
    resp = await api.post("/api/v1/orgs", json=req)
    assert resp.status == 202 and "Deprecation" not in resp.headers
    mirror = await api.get(f"/cp/orgs/{req['slug']}")
    canonical = await api.get(f"/api/v1/orgs/{req['slug']}")
    assert (await mirror.json())["id"] == (await canonical.json())["id"]
    assert mirror.headers["Sunset"] and mirror.headers["Deprecation"].startswith("@")
    assert mirror.headers["Link"] == f'</api/v1/orgs/{req["slug"]}>; rel="successor-version"'
    assert "Deprecation" not in canonical.headers


async def test_errors_carry_a_request_id_that_is_in_the_logs(api):
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", stream=buf)
    try:
        resp = await api.get("/api/v1/orgs/nope-nope", headers={"X-Request-Id": "trace-123"})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert resp.status == 404
    assert (await resp.json())["request_id"] == "trace-123" and resp.headers["X-Request-Id"] == "trace-123"
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert any(r.get("request_id") == "trace-123" and r.get("status") == 404 for r in lines), lines
    resp = await api.get("/api/v1/orgs/nope-nope", headers={"X-Request-Id": "bad id\twith tab"})
    assert (await resp.json())["request_id"] != "bad id\twith tab"


async def test_operators_list_every_org_with_filters_and_pages(api, pool, network):
    prefix = f"l{uuid.uuid4().hex[:6]}"
    slugs = sorted(f"{prefix}-{i}" for i in range(5))
    for s in slugs:
        await seed_org(pool, s, *network)
    async with pool.connection() as conn:  # as if one had been suspended meanwhile
        await conn.execute(
            "UPDATE orgs SET status = 'suspended', status_reason = 'unpaid' WHERE slug = %s", (slugs[2],)
        )

    seen, cursor = [], None
    while True:
        resp = await api.get(
            "/api/v1/orgs", params={"prefix": prefix, "limit": 2, **({"cursor": cursor} if cursor else {})}
        )
        assert resp.status == 200
        page = await resp.json()
        assert len(page["orgs"]) <= 2
        seen += page["orgs"]
        if not (cursor := page["next_cursor"]):
            break
    assert [o["slug"] for o in seen] == slugs
    assert all(set(o) >= {"id", "status", "operation", "workflow_id", "failure_reason"} for o in seen)
    suspended = await (await api.get("/cp/orgs", params={"prefix": prefix, "status": "suspended"})).json()
    assert [(o["slug"], o["status"], o["status_reason"]) for o in suspended["orgs"]] == [
        (slugs[2], "suspended", "unpaid")
    ]
    both = await (await api.get("/api/v1/orgs", params={"prefix": prefix, "status": "suspended,provisioning"})).json()
    assert len(both["orgs"]) == 5 and both["next_cursor"] is None


@pytest.mark.parametrize(
    "query",
    [
        {"status": "gone"},
        {"status": "deleted"},
        {"prefix": "UP"},
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "x"},
        {"cursor": "%%%"},
        {"cursor": "bm90IGEgc2x1Zw"},
    ],
)
async def test_org_list_refuses_bad_queries(api, query):
    resp = await api.get("/api/v1/orgs", params=query)
    assert resp.status == 400 and (await resp.json())["error"]


async def test_org_list_needs_the_operator(api):
    resp = await api.get("/api/v1/orgs", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
