"""Crash suite: real processes of the local stack killed with SIGKILL mid-workflow, then restarted.

One stack (tools.soak.StackHarness = devstack.stack.LocalStack on free ports, its own state dir)
is shared by the module's tests, in order: worker crash, Temporal server crash, API crash, and a
small soak. After each: every workflow completed, one instance per workspace, nothing leaked
(moto/Neon vs records), nothing lost.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from starter import ApiError, TenantClient
from tools.soak import StackHarness, run_soak, text_report, wait_for

pytestmark = pytest.mark.e2e
WS = {"role": "Crash worker", "runtime": "hermes", "tier": 1, "model": "claude-sonnet-4"}
FIGURES: dict = {}


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    harness = StackHarness(
        tmp_path_factory.mktemp("crash") / "state",
        registration_timeout_seconds=60,
        agent_heartbeat_interval_seconds=1.0,
    )
    harness.start()
    yield harness
    harness.stop()


def onboard(h: StackHarness, slug: str) -> None:
    vpc_id, subnets = h.network()
    h.operator.onboard(name=f"Crash {slug}", slug=slug, plan="pro", vpc_id=vpc_id, subnet_ids=subnets)


def wait_org(h: StackHarness, slug: str, timeout: float = 180) -> dict:
    return wait_for(lambda: h.operator.org(slug), lambda o: o["status"] in ("active", "failed"), timeout, slug)


def active_org_tenant(h: StackHarness, slug: str) -> TenantClient:
    """Onboard ``slug`` to active and return a tenant client with a fresh key of it."""
    onboard(h, slug)
    assert wait_org(h, slug)["status"] == "active"
    return TenantClient(h.api_url, h.operator.mint_key(slug, "crash")["key"])


def instances_of(h: StackHarness, ws_id: str, states=None) -> list[dict]:
    filters = [{"Name": "tag:tenantflow:workspace-id", "Values": [ws_id]}]
    if states:
        filters.append({"Name": "instance-state-name", "Values": list(states)})
    return [i for r in h.ec2().describe_instances(Filters=filters)["Reservations"] for i in r["Instances"]]


def assert_clean(h: StackHarness) -> None:
    assert h.leaks() == {"instances": [], "security_groups": [], "neon_branches": []}


def test_worker_killed_mid_onboarding_and_mid_provisioning(h):
    tag = uuid.uuid4().hex[:5]
    base = f"cw{tag}"
    tenant = active_org_tenant(h, base)

    # Slow the Neon step down (retries with backoff), so the kill lands mid-onboarding.
    h.neon_fault("/projects/{project_id}/branches", 503, method="POST", count=4)
    slugs = [f"cx{tag}{i}" for i in range(2)]
    for slug in slugs:
        onboard(h, slug)
    workspaces = [tenant.create_workspace(name=f"agent-{i}", **WS)["id"] for i in range(2)]
    # Kill the instant RunInstances has returned (the instance exists in moto) and before the
    # workflow can have recorded the result.
    wait_for(lambda: {"n": len(instances_of(h, workspaces[0]))}, lambda b: b["n"] > 0, 60, "instance launched")
    h.kill("worker")
    assert all(h.operator.org(s)["status"] == "provisioning" for s in slugs)
    time.sleep(2)
    h.restart("worker", [])

    for slug in slugs:
        org = wait_org(h, slug, 240)
        assert org["status"] == "active", org
    for ws_id in workspaces:
        ws = wait_for(lambda: tenant.workspace(ws_id), lambda w: w["status"] in ("running", "failed"), 240, ws_id)
        assert ws["status"] == "running", ws
        every = instances_of(h, ws_id)
        assert [i["InstanceId"] for i in every] == [ws["instance_id"]], "exactly one instance ever launched"
    branches = [b["name"] for b in h.inventory()["branches"]]
    assert all(sum(n.startswith(f"tf-{s}-") for n in branches) == 1 for s in slugs + [base])
    assert_clean(h)


def test_temporal_server_killed_mid_workflow(h):
    tag = uuid.uuid4().hex[:5]
    slug = f"ct{tag}"
    h.neon_fault("/projects/{project_id}/branches", 503, method="POST", count=2)
    onboard(h, slug)
    time.sleep(1.0)
    args = h.kill("temporal")
    assert "--db-filename" in args
    time.sleep(3)
    h.restart("temporal", args)
    org = wait_org(h, slug, 240)
    assert org["status"] == "active", org
    tenant = TenantClient(h.api_url, h.operator.mint_key(slug, "crash")["key"])
    ws_id = tenant.create_workspace(name="agent-t", **WS)["id"]
    wait_for(lambda: {"n": len(instances_of(h, ws_id))}, lambda b: b["n"] > 0, 60, "instance launched")
    h.restart("temporal", h.kill("temporal"))
    ws = wait_for(lambda: tenant.workspace(ws_id), lambda w: w["status"] in ("running", "failed"), 240, ws_id)
    assert ws["status"] == "running", ws
    assert len(instances_of(h, ws_id)) == 1
    assert_clean(h)


def test_api_killed_while_clients_poll(h):
    tag = uuid.uuid4().hex[:5]
    slug = f"ca{tag}"
    tenant = active_org_tenant(h, slug)
    tenant.timeout = 3
    ws_id = tenant.create_workspace(name="agent-a", **WS)["id"]
    stats = {"ok": 0, "failed": 0, "ok_after_restart": 0}
    restarted = threading.Event()
    stop = threading.Event()

    def poller():
        op = h.operator
        op.timeout = 3
        while not stop.is_set():
            try:
                op.org(slug)
                tenant.workspace(ws_id)
                stats["ok"] += 1
                if restarted.is_set():
                    stats["ok_after_restart"] += 1
            except (ApiError, OSError):
                stats["failed"] += 1
            time.sleep(0.2)

    threads = [threading.Thread(target=poller) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1)
    args = h.kill("api")
    time.sleep(3)
    h.restart("api", args)
    restarted.set()
    # The agent registers through the API: provisioning must still finish.
    ws = wait_for(lambda: tenant.workspace(ws_id), lambda w: w["status"] in ("running", "failed"), 120, ws_id)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(10)
    FIGURES["api_crash_polls"] = dict(stats)
    print(f"\nAPI crash: {stats}")
    assert ws["status"] == "running", ws
    assert stats["failed"] > 0 and stats["ok_after_restart"] > 0
    assert_clean(h)


def test_small_soak_leaks_and_loses_nothing(h):
    report = run_soak(h, orgs=3, workspaces=5, concurrency=2, never_boot_every=4, time_limit=400)
    print("\n" + text_report(report))
    assert report["leaked_total"] == 0, report["leaked"]
    assert report["lost_records"] == []
    assert report["unexpected"] == [], report["unexpected"]
