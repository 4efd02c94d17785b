"""The local Neon server's strict rules, each against the real server and the real ``neon-api``
client: plan caps, rate limits, pagination, failed and cancelled operations, Neon's own background
operations and schema drift, and the settings that switch them (CLI and ``/__devstack/config``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pydantic
import pytest
import pytest_asyncio
from psycopg.conninfo import make_conninfo

from devstack.neon.control import CONTROL_DATABASE
from devstack.neon.ratelimit import RateLimiter
from devstack.neon.strict import Strictness
from devstack.neon_server import _parse_args
from devstack.postgres import PostgresServer
from tests.test_neon_server import LOCKED, Neon, neon, pg  # noqa: F401 - fixtures: this module's own server

CONFIG = "/__devstack/config"


async def configure(neon: Neon, **patch: Any) -> dict[str, Any]:
    status, _, body = await neon.raw("PATCH", CONFIG, key=None, json=patch)
    assert status == 200, body
    return body


# The business plan's 5,000 projects: the test of the project cap leaves 100 behind.
START = Strictness.lenient(plan="business")


@pytest_asyncio.fixture
async def lenient(neon: Neon):
    """Every test starts from lenient settings and leaves no rule, fault or injection behind."""
    await configure(neon, **START.to_json())
    yield neon
    await configure(neon, **START.to_json())
    for route in ("/__devstack/faults", "/__devstack/operation-outcomes"):
        await neon.raw("DELETE", route, key=None)


@pytest_asyncio.fixture
async def project(lenient: Neon):
    created = await lenient.call("project_create", project={"name": "strict"})
    await lenient.wait_idle(created.project.id)
    return created.project


async def create_branches(neon: Neon, project_id: str, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        status, _, body = await neon.raw(
            "POST", f"/api/v2/projects/{project_id}/branches", json={"branch": {"name": name}}
        )
        assert status == 201, body
        ids.append(body["branch"]["id"])
        await neon.wait_idle(project_id)
    return ids


def test_strict_by_default_with_neons_numbers():
    strict = Strictness()
    assert (
        strict.plan,
        strict.rate_limit.enabled,
        strict.rate_limit.per_minute,
        strict.rate_limit.burst_per_route,
        strict.rate_limit.retry_after,
    ) == ("launch", True, 700, 40, False)
    assert strict.pagination.branch_page_size == 100 and not strict.schema_drift
    assert strict.operations.failure_share > 0 and strict.background.share > 0
    assert strict.operations.cancel_share == 0  # a cancelled operation fails a step for good: only on request


def test_every_setting_has_a_command_line_flag(monkeypatch):
    monkeypatch.setenv("NEON_API_KEY", "k")
    args = [
        "--pg-admin-url",
        "postgresql://x",
        "--plan",
        "free",
        "--no-rate-limit",
        "--rate-limit-per-minute",
        "5",
        "--rate-limit-burst",
        "2",
        "--rate-limit-retry-after",
        "--branch-page-size",
        "7",
        "--operation-failure-share",
        "0.5",
        "--operation-failures",
        "3",
        "--operation-cancel-share",
        "0.25",
        "--operation-retry-seconds",
        "0.1",
        "--background-operation-share",
        "0.2",
        "--background-operation-seconds",
        "2",
        "--schema-drift",
    ]
    strict = _parse_args(args).strict
    assert strict.to_json() == {
        "plan": "free",
        "rate_limit": {"enabled": False, "per_minute": 5, "burst_per_route": 2, "retry_after": True},
        "pagination": {"branch_page_size": 7},
        "operations": {"failure_share": 0.5, "failures": 3, "cancel_share": 0.25, "retry_seconds": 0.1},
        "background": {"share": 0.2, "seconds": 2.0},
        "schema_drift": True,
    }
    assert _parse_args(["--pg-admin-url", "x"]).strict == Strictness()
    lenient = _parse_args(["--pg-admin-url", "x", "--lenient", "--plan", "scale"]).strict
    assert lenient == Strictness.lenient(plan="scale")
    with pytest.raises(SystemExit):
        _parse_args(["--pg-admin-url", "x", "--background-operation-share", "1.5"])


async def test_settings_change_at_runtime_and_are_validated(lenient: Neon):
    status, _, body = await lenient.raw("GET", CONFIG, key=None)
    assert status == 200 and body == START.to_json()
    body = await configure(lenient, plan="scale", rate_limit={"retry_after": True}, operations={"failure_share": 1})
    assert (body["plan"], body["rate_limit"]["retry_after"], body["operations"]["failure_share"]) == (
        "scale",
        True,
        1.0,
    )
    assert body["rate_limit"]["enabled"] is False  # untouched settings keep their values
    for bad in (
        {"plan": "gold"},
        {"nope": 1},
        {"rate_limit": {"per_minute": "many"}},
        {"rate_limit": 5},
        {"operations": {"failure_share": 2}},
        {"schema_drift": "yes"},
        {"pagination": {"branch_page_size": -1}},
    ):
        status, _, body = await lenient.raw("PATCH", CONFIG, key=None, json=bad)
        assert status == 400 and body["message"], bad
    assert (await lenient.raw("GET", CONFIG, key=None))[2]["plan"] == "scale"


# -- plans -----------------------------------------------------------------------------------


async def test_free_plan_caps_a_project_at_ten_branches_counting_the_default(lenient: Neon, project):
    await configure(lenient, plan="free")
    await create_branches(lenient, project.id, [f"b{i}" for i in range(9)])  # main + 9 = 10

    body = await lenient.error(422, "branch_create", project.id, branch={"name": "b9"})
    assert body["code"] == "BRANCHES_LIMIT_EXCEEDED" and "branches limit exceeded" in body["message"]
    assert len((await lenient.call("branches", project.id)).branches) == 10

    await configure(lenient, plan="launch")  # paid plans go past the included 10, billed as extras
    await create_branches(lenient, project.id, ["b10"])
    assert len((await lenient.call("branches", project.id)).branches) == 11


async def test_projects_are_capped_per_plan(lenient: Neon, pg: PostgresServer):
    await configure(lenient, plan="free")  # 100 projects
    control = make_conninfo(pg.url("postgres"), dbname=CONTROL_DATABASE)
    # Stand-ins (rows only, no databases) bring the account to 99 projects quickly.
    async with await psycopg.AsyncConnection.connect(control, autocommit=True) as conn:
        count = (await (await conn.execute("SELECT count(*) FROM projects")).fetchone())[0]
        for i in range(99 - count):
            await conn.execute(
                "INSERT INTO projects (id, name, region_id, pg_version, database_name, role_name, pg_role,"
                " pg_password, created_at, updated_at) VALUES (%s, %s, 'aws-us-east-2', 17, 'neondb', 'r', 'r',"
                " 'p', now(), now())",
                (f"stand-in-{i}", f"stand-in-{i}"),
            )
    try:
        status, _, _ = await lenient.raw("POST", "/api/v2/projects", json={"project": {"name": "hundredth"}})
        assert status == 201
        status, _, body = await lenient.raw("POST", "/api/v2/projects", json={"project": {"name": "too-many"}})
        assert (status, body["code"], body["message"]) == (422, "PROJECTS_LIMIT_EXCEEDED", "projects limit exceeded")
        await configure(lenient, plan="scale")  # 1,000
        status, _, _ = await lenient.raw("POST", "/api/v2/projects", json={"project": {"name": "one-more"}})
        assert status == 201
    finally:
        async with await psycopg.AsyncConnection.connect(control, autocommit=True) as conn:
            await conn.execute("DELETE FROM projects WHERE id LIKE 'stand-in-%'")


# -- rate limits -----------------------------------------------------------------------------


def test_rate_windows_are_700_a_minute_and_40_a_second_per_route():
    now = [0.0]
    limiter, limits = RateLimiter(clock=lambda: now[0]), Strictness().rate_limit
    assert [limiter.admit("GET /projects", limits) for _ in range(40)] == [None] * 40
    assert limiter.admit("GET /projects", limits) == pytest.approx(1.0)  # the 41st in the same second
    assert limiter.admit("GET /projects/{project_id}", limits) is None  # another route, its own burst
    admitted, second = 41, 0
    while True:  # 40 a second on fresh routes, until the minute's 700 are used
        second += 1
        now[0] = float(second)
        answers = [limiter.admit(f"GET /r{second}", limits) for _ in range(40)]
        admitted += sum(a is None for a in answers)
        if any(a is not None for a in answers):
            break
    assert admitted == 700
    assert next(a for a in answers if a is not None) == pytest.approx(60.0 - second)  # when t=0's expire
    now[0] = 60.0
    assert limiter.admit("GET /other", limits) is None


async def test_a_burst_beyond_40_a_second_gets_429(lenient: Neon, project):
    await configure(lenient, rate_limit={"enabled": True})
    path = f"/api/v2/projects/{project.id}"
    statuses = [status for status, _, _ in await asyncio.gather(*(lenient.raw("GET", path) for _ in range(45)))]
    assert statuses.count(200) >= 40 and 429 in statuses
    assert (await lenient.raw("GET", f"{path}/branches"))[0] == 200


async def test_rate_limit_per_minute_and_retry_after(lenient: Neon, project):
    await configure(lenient, rate_limit={"enabled": True, "per_minute": 3, "burst_per_route": 40})
    path = f"/api/v2/projects/{project.id}"
    assert [(await lenient.raw("GET", path))[0] for _ in range(3)] == [200] * 3
    status, headers, body = await lenient.raw("GET", f"{path}/branches")  # the minute window is account-wide
    assert status == 429 and "Retry-After" not in headers and body["message"] == "rate limit exceeded"

    await configure(lenient, rate_limit={"retry_after": True})  # a settings change also starts new windows
    assert [(await lenient.raw("GET", path))[0] for _ in range(3)] == [200] * 3
    status, headers, _ = await lenient.raw("GET", path)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 60
    status, _, _ = await lenient.raw("GET", CONFIG, key=None)
    assert status == 200  # the admin API is never throttled


# -- pagination ------------------------------------------------------------------------------


async def test_branches_page_and_a_client_that_does_not_follow_misses_some(lenient: Neon, project):
    await configure(lenient, pagination={"branch_page_size": 3})
    await create_branches(lenient, project.id, [f"page-{i}" for i in range(6)])
    path = f"/api/v2/projects/{project.id}/branches"

    first = (await lenient.call("branches", project.id)).branches  # what a client not following pages sees
    assert len(first) == 3

    seen, cursor, pages = [], None, 0
    while True:
        status, _, body = await lenient.raw("GET", path, params={"cursor": cursor} if cursor else {})
        assert status == 200
        pages += 1
        seen += [b["name"] for b in body["branches"]]
        assert (body["pagination"]["sort_by"], body["pagination"]["sort_order"]) == ("updated_at", "desc")
        if "next" not in body["pagination"]:
            break
        cursor = body["pagination"]["next"]
    assert sorted(seen) == sorted(["main"] + [f"page-{i}" for i in range(6)]) and pages == 3  # 3 + 3 + 1
    assert seen[0] == "page-5"  # newest first, as Neon sorts by default

    _, _, body = await lenient.raw("GET", path, params={"limit": "2", "sort_by": "name", "sort_order": "asc"})
    assert [b["name"] for b in body["branches"]] == ["main", "page-0"]
    _, _, second = await lenient.raw("GET", path, params={"limit": "2", "cursor": body["pagination"]["next"]})
    assert [b["name"] for b in second["branches"]] == ["page-1", "page-2"]
    _, _, back = await lenient.raw("GET", path, params={"limit": "2", "cursor": second["pagination"]["previous"]})
    assert [b["name"] for b in back["branches"]] == ["main", "page-0"]

    _, _, found = await lenient.raw("GET", path, params={"search": "PAGE-4"})
    assert [b["name"] for b in found["branches"]] == ["page-4"]
    for bad in ({"limit": "10001"}, {"sort_by": "size"}, {"sort_order": "up"}, {"cursor": "not-a-cursor"}):
        status, _, body = await lenient.raw("GET", path, params=bad)
        assert status == 400 and body["message"], bad

    await configure(lenient, pagination={"branch_page_size": 0})
    assert len((await lenient.call("branches", project.id)).branches) == 7


async def test_projects_page_ten_by_default_with_a_cursor(lenient: Neon):
    for i in range(11):
        await lenient.call("project_create", project={"name": f"listed-{i}"})
    _, _, body = await lenient.raw("GET", "/api/v2/projects")
    assert len(body["projects"]) == 10 and body["pagination"]["cursor"]
    status, _, body = await lenient.raw("GET", "/api/v2/projects", params={"limit": "401"})
    assert status == 400


# -- operations ------------------------------------------------------------------------------


async def watch(neon: Neon, project_id: str, op_id: str, timeout: float = 15.0) -> list[tuple[str, int]]:
    """The (status, failures_count) an operation goes through, until it stays terminal."""
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, body = await neon.raw("GET", f"/api/v2/projects/{project_id}/operations/{op_id}")
        op = body["operation"]
        state = (op["status"], op["failures_count"])
        if not seen or seen[-1] != state:
            seen.append(state)
        if op["status"] in ("finished", "cancelled"):
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"operation {op_id} did not end: {seen}")


async def test_failed_operations_are_retried_by_neon_then_finish(lenient: Neon, project):
    await lenient.raw(
        "POST",
        "/__devstack/operation-outcomes",
        key=None,
        json={"count": 1, "failures": 2, "action": "create_timeline"},
    )
    created = await lenient.raw("POST", f"/api/v2/projects/{project.id}/branches", json={"branch": {"name": "flaky"}})
    op = next(o for o in created[2]["operations"] if o["action"] == "create_timeline")

    async def locked_while_failed() -> bool:
        while True:
            _, _, body = await lenient.raw("GET", f"/api/v2/projects/{project.id}/operations/{op['id']}")
            if body["operation"]["status"] == "failed":
                assert body["operation"]["error"] and body["operation"]["retry_at"]
                return (await lenient.raw("POST", f"/api/v2/projects/{project.id}/branches", json={}))[0] == 423
            await asyncio.sleep(0.02)

    locked = asyncio.create_task(locked_while_failed())
    seen = await watch(lenient, project.id, op["id"])
    assert seen == [
        ("scheduling", 0),
        ("running", 0),
        ("failed", 1),
        ("running", 1),
        ("failed", 2),
        ("running", 2),
        ("finished", 2),
    ]
    assert await locked, "a failed operation still holds the project lock"
    assert (await lenient.raw("GET", "/__devstack/operation-outcomes", key=None))[2] == {"rules": []}


async def test_cancelled_operations_stay_cancelled_and_release_the_lock(lenient: Neon, project):
    await lenient.raw("POST", "/__devstack/operation-outcomes", key=None, json={"count": 1, "outcome": "cancelled"})
    created = await lenient.call("branch_create", project.id, branch={"name": "doomed"})
    seen = await watch(lenient, project.id, created.operations[0].id)
    assert seen[-1] == ("cancelled", 0) and ("running", 0) in seen
    await asyncio.sleep(0.1)
    assert (await lenient.call("operation", project.id, created.operations[0].id)).operation.status.value == "cancelled"
    await lenient.call("branch_create", project.id, branch={"name": "after"})


async def test_a_share_of_operations_fails_when_configured(lenient: Neon, project):
    await configure(lenient, operations={"failure_share": 1.0, "failures": 1, "retry_seconds": 0.05})
    created = await lenient.call("branch_create", project.id, branch={"name": "shared-fate"})
    assert ("failed", 1) in await watch(lenient, project.id, created.operations[0].id)
    for bad in ({"outcome": "exploded"}, {"count": 0}, {"failures": -1}):
        status, _, _ = await lenient.raw("POST", "/__devstack/operation-outcomes", key=None, json=bad)
        assert status == 400, bad


async def test_neons_own_operations_lock_the_project(lenient: Neon, project):
    status, _, body = await lenient.raw(
        "POST",
        "/__devstack/background-operations",
        key=None,
        json={"project_id": project.id, "action": "apply_config", "seconds": 0.5},
    )
    assert status == 201 and body["operation"]["status"] == "running"
    assert (await lenient.error(423, "branch_create", project.id, branch={"name": "x"}))["message"] == LOCKED
    await lenient.wait_idle(project.id)
    await lenient.call("branch_create", project.id, branch={"name": "x"})
    await lenient.wait_idle(project.id)

    await configure(lenient, background={"share": 1.0, "seconds": 0.3})  # every mutation meets one
    await lenient.error(423, "branch_create", project.id, branch={"name": "y"})
    actions = {op.action.value for op in (await lenient.call("operations", project.id, limit=3)).operations}
    assert actions & {"apply_config", "suspend_compute"}
    status, _, _ = await lenient.raw(
        "POST",
        "/__devstack/background-operations",
        key=None,
        json={"project_id": project.id, "action": "drop_everything"},
    )
    assert status == 400


# -- schema drift ----------------------------------------------------------------------------


async def wait_idle_raw(neon: Neon, project_id: str, timeout: float = 10.0) -> None:
    """Like ``Neon.wait_idle``, without the pinned client's models."""
    deadline = time.monotonic() + timeout
    while True:
        _, _, body = await neon.raw("GET", f"/api/v2/projects/{project_id}/operations", params={"limit": "1000"})
        if all(op["status"] in ("finished", "cancelled") for op in body["operations"]):
            return
        assert time.monotonic() < deadline, "operations did not finish"
        await asyncio.sleep(0.05)


async def test_schema_drift_breaks_the_pinned_client_models_only(lenient: Neon, project):
    await configure(lenient, schema_drift=True)
    status, _, created = await lenient.raw(
        "POST",
        f"/api/v2/projects/{project.id}/branches",
        json={"branch": {"name": "drifted"}, "endpoints": [{"type": "read_write"}]},
    )
    assert status == 201
    assert {op["action"] for op in created["operations"]} == {"create_timeline_v2", "start_compute_v2"}
    assert {op["status"] for op in created["operations"]} == {"queued"} and "attempt_history" in created["operations"][
        0
    ]
    assert created["branch"]["current_state"] == "provisioning" and "restricted_actions" in created["branch"]
    assert created["endpoints"][0]["current_state"] == "starting"
    op_id = created["operations"][0]["id"]
    with pytest.raises(pydantic.ValidationError):
        await lenient.call("operation", project.id, op_id)
    await wait_idle_raw(lenient, project.id)
    with pytest.raises(pydantic.ValidationError):
        await lenient.call(
            "branch_create", project.id, branch={"name": "drifted-2"}, endpoints=[{"type": "read_write"}]
        )
    _, _, listed = await lenient.raw("GET", f"/api/v2/projects/{project.id}/branches")
    assert {b["current_state"] for b in listed["branches"]} <= {"ready", "provisioning"}

    await configure(lenient, schema_drift=False)
    assert (await lenient.call("operation", project.id, op_id)).operation.status.value == "finished"
