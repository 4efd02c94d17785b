"""The Neon activities (``activities/neon.py``) in Temporal's ActivityEnvironment, against a local Neon
server of their own whose strict rules each test switches on: plan caps and billed extra branches,
lists longer than a page, operations that fail and are retried or are cancelled, 429/423/503
answers, and answers from a newer Neon (schema drift)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.neon import LOCKED_RETRY_SECONDS, NeonActivities
from db.ledger import Ledger
from devstack.neon.strict import Strictness
from devstack.neon_server import NeonServerConfig, serve
from devstack.postgres import start_postgres
from devstack.procs import free_port
from domain.onboard_org import NeonOperationsInput, TenantDatabase, TenantDatabaseInput
from domain.resources import resource_name
from tests.conftest import new_org_id

API_KEY = f"neon-activities-{secrets.token_hex(4)}"
BRANCHES_ROUTE = "/projects/{project_id}/branches"


class LocalNeon:
    """This module's Neon server, driven through its API and its ``/__devstack/`` admin routes."""

    def __init__(self, port: int):
        self.root = f"http://127.0.0.1:{port}"

    def api(self, method: str, path: str, **kwargs: Any) -> dict:
        response = requests.request(
            method, f"{self.root}/api/v2/{path}", timeout=10, headers={"Authorization": f"Bearer {API_KEY}"}, **kwargs
        )
        response.raise_for_status()
        return response.json()

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        response = requests.request(method, f"{self.root}/__devstack/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def configure(self, **patch: Any) -> None:
        self.admin("PATCH", "config", patch)

    def branch_names(self, project_id: str, limit: int | None = 10000) -> list[str]:
        """Names on the first page (all of them, unless ``limit`` is None: the server's default page)."""
        params = {"limit": limit} if limit else {}
        return [b["name"] for b in self.api("GET", f"projects/{project_id}/branches", params=params)["branches"]]

    def wait_idle(self, project_id: str) -> None:
        while any(
            op["status"] not in ("finished", "cancelled")
            for op in self.api("GET", f"projects/{project_id}/operations", params={"limit": 50})["operations"]
        ):
            time.sleep(0.05)

    def served(self, route: str, status: int) -> int:
        return int(self.admin("GET", "stats")["by_route"].get(route, {}).get(str(status), 0))


@pytest.fixture(scope="module")
def neon_pg(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TENANTFLOW_PG_FSYNC_OFF", "1")
        server = start_postgres(tmp_path_factory.mktemp("neon-pg"), free_port())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_neon(neon_pg):
    """On its own thread and loop (as conftest's), so the tests may call it synchronously."""
    config = NeonServerConfig(
        pg_admin_url=neon_pg.url("postgres"),
        api_key=API_KEY,
        port=free_port(),
        scheduling_seconds=0.05,
        running_seconds=0.1,
        strict=Strictness.lenient(),
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(serve(config), loop).result(timeout=60)
    yield LocalNeon(config.port)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def neon(local_neon: LocalNeon):
    """Lenient unless a test says otherwise; no fault or injected outcome outlives its test."""
    local_neon.configure(**Strictness.lenient().to_json())
    local_neon.admin("POST", "reset-stats")
    yield local_neon
    local_neon.configure(**Strictness.lenient().to_json())
    local_neon.admin("DELETE", "faults")
    local_neon.admin("DELETE", "operation-outcomes")


@pytest.fixture
def platform(neon: LocalNeon) -> str:
    """A fresh platform project (its default branch only) for one test's tenant branches."""
    project_id = neon.api("POST", "projects", json={"project": {"name": f"platform-{secrets.token_hex(3)}"}})[
        "project"
    ]["id"]
    neon.wait_idle(project_id)
    return project_id


@pytest.fixture
def make_activities(settings, pool, local_neon: LocalNeon, platform: str) -> Callable[..., NeonActivities]:
    def make(plan: str = "launch", page_size: int | None = None) -> NeonActivities:
        ours = settings.model_copy(
            update={
                "neon_base_url": f"{local_neon.root}/api/v2/",
                "neon_api_key": SecretStr(API_KEY),
                "neon_project_id": platform,
                "neon_plan": plan,
                "neon_request_timeout_seconds": 10,
            }
        )
        return NeonActivities(ours, Ledger(pool), page_size=page_size)

    return make


def tenant(slug: str, mode: str = "branch") -> TenantDatabaseInput:
    return TenantDatabaseInput(org_id=new_org_id(), slug=f"{slug}-{secrets.token_hex(2)}", mode=mode)


async def onboard(env: ActivityEnvironment, acts: NeonActivities, req: TenantDatabaseInput) -> TenantDatabase:
    """What the onboarding workflow runs: ensure the database, then wait for its operations."""
    db = await env.run(acts.ensure_tenant_database, req)
    await env.run(
        acts.wait_for_neon_operations, NeonOperationsInput(project_id=db.project_id, operation_ids=db.operation_ids)
    )
    return db


async def with_retries(
    env: ActivityEnvironment, call: Callable[[], Awaitable[Any]], attempts: int = 30
) -> tuple[Any, list[ApplicationError]]:
    """Run an activity as Temporal would under its retry policy: retryable failures are retried
    after their ``next_retry_delay`` (capped, to keep the test short)."""
    failures: list[ApplicationError] = []
    try:
        for attempt in range(1, attempts + 1):
            env.info = dataclasses.replace(env.info, attempt=attempt)
            try:
                return await call(), failures
            except ApplicationError as err:
                assert not err.non_retryable, f"{err.type}: {err}"
                failures.append(err)
                delay = err.next_retry_delay.total_seconds() if err.next_retry_delay else 0.2
                await asyncio.sleep(min(delay, 1.2))
    finally:
        env.info = dataclasses.replace(env.info, attempt=1)
    raise AssertionError(f"still failing after {attempts} attempts: {[f.type for f in failures]}")


# -- plan caps -------------------------------------------------------------------------------


async def test_free_plan_refuses_the_tenth_tenant_branch_with_a_clear_error(neon, platform, make_activities):
    neon.configure(plan="free")
    env, acts = ActivityEnvironment(), make_activities(plan="free")
    for i in range(9):  # with the default branch: 10, the Free plan's cap
        await onboard(env, acts, tenant(f"free{i}"))

    with pytest.raises(ApplicationError) as refused:
        await env.run(acts.ensure_tenant_database, tenant("free-tenth"))
    assert refused.value.type == "NeonBranchLimit" and refused.value.non_retryable
    assert "free plan's cap of 10" in refused.value.message
    assert "TENANTFLOW_NEON_MODE=project" in refused.value.message and "TENANTFLOW_NEON_PLAN" in refused.value.message
    assert neon.served(f"POST {BRANCHES_ROUTE}", 422) == 0  # refused before asking Neon
    assert len(neon.branch_names(platform)) == 10

    # When the pre-check passes (here: the settings name a paid plan) Neon's own 422 gets the same answer.
    with pytest.raises(ApplicationError) as refused_by_neon:
        await env.run(make_activities(plan="launch").ensure_tenant_database, tenant("free-raced"))
    assert refused_by_neon.value.type == "NeonBranchLimit" and refused_by_neon.value.non_retryable
    assert "BRANCHES_LIMIT_EXCEEDED" in refused_by_neon.value.message
    assert "TENANTFLOW_NEON_MODE=project" in refused_by_neon.value.message
    assert neon.served(f"POST {BRANCHES_ROUTE}", 422) == 1


async def test_launch_plan_creates_branch_eleven_with_a_cost_warning(neon, platform, make_activities, caplog):
    env, acts = ActivityEnvironment(), make_activities(plan="launch")
    included = [await onboard(env, acts, tenant(f"launch{i}")) for i in range(9)]  # branches 2..10
    assert [db.cost_warning for db in included] == [None] * 9

    with caplog.at_level(logging.WARNING):
        extra = await onboard(env, acts, tenant("launch-extra"))
    assert extra.branch_id and extra.cost_warning
    assert "11 branches" in extra.cost_warning and "10 included in the launch plan" in extra.cost_warning
    assert "billed as an extra branch" in extra.cost_warning
    assert len(neon.branch_names(platform)) == 11
    logged = [r for r in caplog.records if getattr(r, "cost_warning", None)]
    assert logged and logged[0].cost_warning == extra.cost_warning and logged[0].neon_id == extra.branch_id


async def test_neons_project_limit_answer_is_a_clear_error(neon, make_activities):
    neon.admin(
        "POST",
        "faults",
        {
            "route": "/projects",
            "method": "POST",
            "status": 422,
            "code": "PROJECTS_LIMIT_EXCEEDED",
            "message": "projects limit exceeded",
        },
    )
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(make_activities().ensure_tenant_database, tenant("proj", mode="project"))
    assert refused.value.type == "NeonProjectLimit" and refused.value.non_retryable
    assert "PROJECTS_LIMIT_EXCEEDED" in refused.value.message and "TENANTFLOW_NEON_PLAN" in refused.value.message


# -- pagination ------------------------------------------------------------------------------


async def test_a_branch_beyond_the_first_page_is_found_by_name(neon, platform, make_activities):
    neon.configure(pagination={"branch_page_size": 3})
    env, acts = ActivityEnvironment(), make_activities(page_size=2)
    req = tenant("paged")
    first = await onboard(env, acts, req)
    for i in range(6):  # newer branches push the tenant's off the first page
        neon.api("POST", f"projects/{platform}/branches", json={"branch": {"name": f"other-{i}"}})
        neon.wait_idle(platform)
    assert resource_name(req.slug, req.org_id) not in neon.branch_names(platform, limit=None)

    again = await env.run(acts.ensure_tenant_database, req)
    assert again.branch_id == first.branch_id
    assert neon.branch_names(platform).count(resource_name(req.slug, req.org_id)) == 1
    assert neon.served(f"POST {BRANCHES_ROUTE}", 409) == 0

    ops = await env.run(acts.delete_tenant_database, req)
    assert ops.operation_ids
    await env.run(acts.wait_for_neon_operations, ops)
    assert resource_name(req.slug, req.org_id) not in neon.branch_names(platform)


# -- operations ------------------------------------------------------------------------------


async def test_failed_operations_that_neon_retries_are_waited_out(neon, platform, make_activities):
    neon.admin("POST", "operation-outcomes", {"count": 2, "failures": 2})
    env, acts = ActivityEnvironment(), make_activities()
    heartbeats: list[Any] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])

    db = await onboard(env, acts, tenant("retried"))

    statuses = {s for beat in heartbeats for s in beat["pending"].values()}
    assert "failed" in statuses, heartbeats  # the operator sees Neon retrying, and the wait goes on
    for op_id in db.operation_ids:
        op = neon.api("GET", f"projects/{platform}/operations/{op_id}")["operation"]
        assert (op["status"], op["failures_count"]) == ("finished", 2)


async def test_a_cancelled_operation_is_a_clear_permanent_error(neon, make_activities):
    neon.admin("POST", "operation-outcomes", {"count": 1, "outcome": "cancelled", "action": "create_timeline"})
    env, acts = ActivityEnvironment(), make_activities()
    db = await env.run(acts.ensure_tenant_database, tenant("cancelled"))

    with pytest.raises(ApplicationError) as ended:
        await env.run(
            acts.wait_for_neon_operations, NeonOperationsInput(project_id=db.project_id, operation_ids=db.operation_ids)
        )
    assert ended.value.type == "NeonOperationCancelled" and ended.value.non_retryable
    assert "create_timeline" in ended.value.message and "cancelled" in ended.value.message


# -- throttling and locks --------------------------------------------------------------------


def refuse_and_hold(neon: LocalNeon, platform: str) -> None:
    """Two 429s and a 503 on the branch route, Neon's own operation holding the project for 5 s
    (423), and one request a second per route."""
    for route, method, status, count in [(BRANCHES_ROUTE, "GET", 429, 2), (BRANCHES_ROUTE, "POST", 503, 1)]:
        neon.admin("POST", "faults", {"route": route, "method": method, "status": status, "count": count})
    neon.admin("POST", "background-operations", {"project_id": platform, "action": "apply_config", "seconds": 5})
    neon.configure(rate_limit={"enabled": True, "burst_per_route": 1, "retry_after": False})


async def test_throttled_and_locked_answers_are_waited_out_inside_the_activity(neon, platform, make_activities):
    refuse_and_hold(neon, platform)
    env, acts = ActivityEnvironment(), make_activities()
    heartbeats: list[Any] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])
    req = tenant("waited")

    db, failures = await with_retries(env, lambda: env.run(acts.ensure_tenant_database, req))
    await env.run(
        acts.wait_for_neon_operations, NeonOperationsInput(project_id=db.project_id, operation_ids=db.operation_ids)
    )

    # 429 and 423 cost a short wait in place, not a Temporal retry; a 5xx is Temporal's to retry.
    assert [f.type for f in failures] == ["NeonServerError"], [f.type for f in failures]
    assert neon.served("GET " + BRANCHES_ROUTE, 429) >= 2
    # Neon's own operation was waited for (its list polled) before the branch was asked for; a 423
    # that still slips in (Neon starts operations at random) was waited out in place, as above.
    assert neon.served("GET /projects/{project_id}/operations", 200) > 1
    assert any(isinstance(beat, str) and beat.startswith("Neon refused") for beat in heartbeats), heartbeats
    assert neon.branch_names(platform).count(resource_name(req.slug, req.org_id)) == 1


async def test_refusals_longer_than_the_in_place_wait_go_back_to_temporal_with_a_delay(
    neon, platform, make_activities, monkeypatch
):
    monkeypatch.setattr("activities.neon.REFUSED_WAIT_SECONDS", 0.0)
    refuse_and_hold(neon, platform)
    env, acts = ActivityEnvironment(), make_activities()
    heartbeats: list[Any] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])
    req = tenant("throttled")

    db, failures = await with_retries(env, lambda: env.run(acts.ensure_tenant_database, req))
    await env.run(
        acts.wait_for_neon_operations, NeonOperationsInput(project_id=db.project_id, operation_ids=db.operation_ids)
    )

    kinds = {f.type for f in failures}
    assert {"NeonRateLimited", "NeonLocked", "NeonServerError"} <= kinds, kinds
    throttled = [f for f in failures if f.type == "NeonRateLimited"]
    assert all(f.next_retry_delay and f.next_retry_delay.total_seconds() > 0 for f in throttled), (
        "a 429 without Retry-After still gets a (jittered) backoff"
    )
    low, high = LOCKED_RETRY_SECONDS
    assert all(low <= f.next_retry_delay.total_seconds() <= high for f in failures if f.type == "NeonLocked")
    polls = {status for beat in heartbeats if isinstance(beat, dict) for status in beat["pending"].values()}
    assert "not polled: NeonRateLimited" in polls  # the wait backed off and went on polling
    assert neon.served("GET /projects/{project_id}/operations/{operation_id}", 429) > 0
    assert neon.branch_names(platform).count(resource_name(req.slug, req.org_id)) == 1


# -- schema drift ----------------------------------------------------------------------------


async def test_schema_drift_does_not_stop_ensure_wait_or_delete(neon, platform, make_activities):
    neon.configure(schema_drift=True)
    env, acts = ActivityEnvironment(), make_activities()
    req = tenant("drift")

    db = await env.run(acts.ensure_tenant_database, req)
    assert db.branch_id and db.operation_ids
    op = neon.api("GET", f"projects/{platform}/operations/{db.operation_ids[0]}")["operation"]
    assert op["action"].endswith("_v2")  # the answers really are from a "newer" Neon
    await env.run(
        acts.wait_for_neon_operations, NeonOperationsInput(project_id=db.project_id, operation_ids=db.operation_ids)
    )
    again = await env.run(acts.ensure_tenant_database, req)
    assert again.branch_id == db.branch_id

    ops = await env.run(acts.delete_tenant_database, req)
    await env.run(acts.wait_for_neon_operations, ops)
    assert resource_name(req.slug, req.org_id) not in neon.branch_names(platform)
