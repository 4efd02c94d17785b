"""Soak the local stack: orgs and workspaces through their whole lifecycle with faults switched on.

    .venv/bin/python -m tools.soak --orgs 20 --workspaces 50          # the CI size
    # the full size:
    .venv/bin/python -m tools.soak --orgs 200 --workspaces 500 --concurrency 8 --registration-timeout 30 \\
        --time-limit 3600

Starts the whole local stack (``devstack.stack.LocalStack``: Temporal dev server, Postgres, moto,
the local Neon server, the boot emulator, the worker and the API) on free loopback ports in a
fresh state directory, then for every org: onboard -> mint a key
-> create its workspaces (some marked never-boot in the boot emulator, so they time out on
registration and must clean up) -> delete the running ones -> suspend -> resume -> hard delete.
Neon 423/429/503 faults on every route the workflows use and EC2 faults on every action they use
(throttling and capacity before anything happens, 5xx after the change took effect): one of each
at the start, then two of each kind more before each org, so the storm runs as long as the soak
does. The local cloud is strict throughout (see docs/production.md).
It ends with a JSON report (``--report``) and a text summary: workflows completed, faults
injected, retries, leaked resources (moto instances/security groups and Neon branches without a
live record; must be 0), lost records (must be 0) and the slowest operations. Exit status 1 when
anything leaked or was lost, or a workflow ended in an unexpected state.

``StackHarness`` is also what the crash suite uses: it knows how to SIGKILL and restart each of
the stack's processes with the same arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from devstack.moto_client import moto_ec2_client  # noqa: E402
from devstack.procs import free_port  # noqa: E402
from devstack.settings import StackSettings  # noqa: E402
from devstack.stack import NEON_PLATFORM_PROJECT, LocalStack, load_or_create_secrets, wait_http_ok  # noqa: E402
from domain.resources import (  # noqa: E402
    MANAGED,
    NAME_PREFIX,
    PRESENT_STATES,
    WORKSPACE_TAG,
    state_filter,
    tags_of,
)
from starter import ApiError, OperatorClient, TenantClient  # noqa: E402

PORT_FIELDS = (
    "api_port",
    "temporal_port",
    "temporal_ui_port",
    "postgres_port",
    "moto_port",
    "neon_port",
    "boot_emulator_port",
    "s3_port",
    "worker_health_port",
    "worker_sdk_metrics_port",
)


class StackHarness:
    """A LocalStack on free ports in its own state dir, with kill -9 / restart per process."""

    def __init__(self, state_dir: Path, **overrides: Any):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        ports = {name: free_port() for name in PORT_FIELDS}
        self.settings = StackSettings(state_dir=str(state_dir), **ports, **overrides)
        self.stack = LocalStack(self.settings)
        # Its own loopback network (devstack.demo), clear of the demo's (42) and the tests' (100-249).
        self.network_octet = random.randint(50, 99)
        # Children inherit os.environ (the stack's env overrides it): settings the stack does not
        # forward (registration timeout, heartbeat interval) reach the worker and API this way.
        self._extra_env = {f"TENANTFLOW_{k.upper()}": str(v) for k, v in overrides.items()}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> StackHarness:
        os.environ.update(self._extra_env)
        self.stack.start()
        wait_http_ok(f"{self.api_url}/healthz", timeout=90)
        return self

    def stop(self) -> None:
        self.stack.stop()

    @property
    def api_url(self) -> str:
        return self.stack.api_url

    @property
    def secrets(self) -> dict:
        return load_or_create_secrets(self.stack.state_dir)

    @property
    def operator(self) -> OperatorClient:
        return OperatorClient(self.api_url, self.secrets["provision_secret"])

    @property
    def neon_base(self) -> str:
        return f"http://127.0.0.1:{self.settings.neon_port}"

    @property
    def boot_admin(self) -> str:
        return f"http://127.0.0.1:{self.settings.boot_emulator_port}"

    @property
    def database_url(self) -> str:
        assert self.stack.postgres is not None
        return self.stack.postgres.url("tenantflow")

    def ec2(self):
        return moto_ec2_client(self.stack.aws_endpoint, self.settings.aws_region)

    async def temporal(self):
        from temporalio.client import Client
        from temporalio.contrib.pydantic import pydantic_data_converter

        return await Client.connect(self.stack.temporal_address, data_converter=pydantic_data_converter)

    # -- processes ---------------------------------------------------------------------------
    def proc(self, name: str):
        found = [p for n, p in self.stack.procs if n == name]
        assert found, f"no {name} process"
        return found[-1]

    def kill(self, name: str) -> list[str]:
        """SIGKILL a process (its whole group, e.g. nothing but itself) and forget it; returns its argv."""
        proc = self.proc(name)
        args = list(proc.args)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        self.stack.procs[:] = [(n, p) for n, p in self.stack.procs if p is not proc]
        return args

    def restart(self, name: str, args: list[str]) -> None:
        """Start a killed process again with exactly the same arguments (same --db-filename etc.)."""
        port = {
            "temporal": self.settings.temporal_port,
            "api": self.settings.api_port,
            "boot": self.settings.boot_emulator_port,
        }.get(name)
        if name == "worker":
            self.stack.start_worker()
            return
        env = self.stack.service_env() if name == "api" else None
        assert port is not None, name
        # The dev server may need a moment to release its port and SQLite lock.
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stack._start(name, args, port, env=env, timeout=90)
                return
            except RuntimeError:
                self.stack.procs[:] = [(n, p) for n, p in self.stack.procs if n != name or p.poll() is None]
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    # -- fault injection ---------------------------------------------------------------------
    def neon_fault(
        self, route: str, status: int, *, method: str = "*", count: int = 1, retry_after: float | None = None
    ) -> None:
        body: dict[str, Any] = {"route": route, "status": status, "method": method, "count": count}
        if retry_after is not None:
            body["retry_after"] = retry_after
        _http("POST", f"{self.neon_base}/__devstack/faults", body)

    def clear_neon_faults(self) -> None:
        _http("DELETE", f"{self.neon_base}/__devstack/faults")

    def neon_stats(self) -> dict:
        return _http("GET", f"{self.neon_base}/__devstack/stats")

    def ec2_fault(self, action: str, code: str, *, when: str = "before", count: int = 1) -> None:
        _http(
            "POST",
            f"{self.stack.aws_endpoint}/__devstack/ec2/faults",
            {"action": action, "code": code, "when": when, "count": count},
        )

    def clear_ec2_faults(self) -> None:
        _http("DELETE", f"{self.stack.aws_endpoint}/__devstack/ec2/faults")

    def ec2_stats(self) -> dict:
        return _http("GET", f"{self.stack.aws_endpoint}/__devstack/ec2/stats")

    def never_boot(self, workspace_id: str) -> None:
        _http("POST", f"{self.boot_admin}/never-boot", {"workspace_id": workspace_id})

    # -- what exists -------------------------------------------------------------------------
    def network(self) -> tuple[str, list[str]]:
        from devstack.demo import ensure_demo_network

        return ensure_demo_network(self.stack.aws_endpoint, self.settings.aws_region, self.network_octet)

    def inventory(self) -> dict:
        """Cloud resources (moto + Neon) and the records that should account for them."""
        ec2 = self.ec2()
        instances = [
            i
            for r in ec2.describe_instances(Filters=[MANAGED, state_filter(*PRESENT_STATES)])["Reservations"]
            for i in r["Instances"]
        ]
        groups = [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"].startswith(NAME_PREFIX)]
        branches = neon_list(
            f"{self.neon_base}/api/v2",
            self.secrets["neon_api_key"],
            f"projects/{NEON_PLATFORM_PROJECT}/branches",
            "branches",
        )
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            orgs = conn.execute("SELECT id, slug, status, neon_branch_id, security_group_id FROM orgs").fetchall()
            workspaces = conn.execute("SELECT id, org_id, status, instance_id FROM workspaces").fetchall()
            ledger = conn.execute("SELECT kind, business_key, cloud_id, status, org_id FROM resources").fetchall()
        return {
            "instances": instances,
            "groups": groups,
            "branches": branches,
            "orgs": orgs,
            "workspaces": workspaces,
            "ledger": ledger,
        }

    def leaks(self) -> dict[str, list[str]]:
        """Cloud resources without a live record pointing at them."""
        inv = self.inventory()
        live_orgs = {o["id"]: o for o in inv["orgs"] if o["status"] not in ("deleted", "failed")}
        live_ws = {w["id"]: w for w in inv["workspaces"] if w["status"] not in ("deleted", "failed")}
        leaked_instances = []
        for inst in inv["instances"]:
            ws = live_ws.get(tags_of(inst).get(WORKSPACE_TAG, ""))
            if ws is None or ws["instance_id"] != inst["InstanceId"]:
                leaked_instances.append(inst["InstanceId"])
        sg_ids = {o["security_group_id"] for o in live_orgs.values()}
        leaked_groups = [g["GroupId"] for g in inv["groups"] if g["GroupId"] not in sg_ids]
        branch_ids = {o["neon_branch_id"] for o in live_orgs.values()}
        leaked_branches = [
            b["id"] for b in inv["branches"] if b["name"].startswith(NAME_PREFIX) and b["id"] not in branch_ids
        ]
        return {"instances": leaked_instances, "security_groups": leaked_groups, "neon_branches": leaked_branches}


def neon_list(api_base: str, api_key: str, path: str, key: str) -> list[dict]:
    """Every item of a Neon list (``projects`` or ``projects/<id>/branches``), page by page as
    Neon hands them out, waiting out its rate limit."""
    items: list[dict] = []
    query: dict[str, Any] = {"limit": 100}
    while True:
        url = f"{api_base.rstrip('/')}/{path}?{urllib.parse.urlencode(query)}"
        for attempt in range(20):
            try:
                page = _http("GET", url, headers={"Authorization": f"Bearer {api_key}"})
                break
            except urllib.error.HTTPError as err:
                if err.code != 429 or attempt == 19:
                    raise
                time.sleep(0.5)
        found = page.get(key, [])
        items += found
        cursor = (page.get("pagination") or {}).get("next") or (page.get("pagination") or {}).get("cursor")
        if not found or not cursor or cursor in (query.get("cursor"), query.get("next")):
            return items
        query["next" if "next" in (page.get("pagination") or {}) else "cursor"] = cursor


def _http(method: str, url: str, body: Any = None, headers: dict | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else {}


def wait_for(
    fetch: Callable[[], dict],
    done: Callable[[dict], bool],
    timeout: float,
    what: str,
    on_error: Callable[[Exception], None] | None = None,
) -> dict:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fetch()
            if done(last):
                return last
        except (ApiError, OSError) as err:
            if on_error is not None:
                on_error(err)
            last = err
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still {last!r} after {timeout:g}s")
        time.sleep(0.3)


# -- the soak ---------------------------------------------------------------------------------

NEON_FAULT_ROUTES = [
    ("/projects/{project_id}/branches", "POST", (423, 429, 503)),
    ("/projects/{project_id}/operations/{operation_id}", "GET", (503, 423)),
    ("/projects/{project_id}/branches/{branch_id}", "DELETE", (423, 503, 429)),
    ("/projects/{project_id}/branches", "GET", (503,)),
]
NEON_FAULTS = [(route, method, status) for route, method, statuses in NEON_FAULT_ROUTES for status in statuses]
# EC2 faults on every action the workflows use: throttling and capacity refusals before anything
# happens, and 5xx after the change took effect (the answer is lost; the product must recover
# what it created by ClientToken or tag).
EC2_FAULTS = [
    ("RunInstances", "InsufficientInstanceCapacity", "before"),
    ("RunInstances", "InternalError", "after"),
    ("TerminateInstances", "RequestLimitExceeded", "before"),
    ("TerminateInstances", "InternalError", "after"),
    ("StopInstances", "InternalError", "after"),
    ("StartInstances", "RequestLimitExceeded", "before"),
    ("CreateSecurityGroup", "InternalError", "after"),
    ("DeleteSecurityGroup", "Unavailable", "before"),
    ("AuthorizeSecurityGroupIngress", "RequestLimitExceeded", "before"),
    ("DescribeInstances", "RequestLimitExceeded", "before"),
]
WS_BODY = {"role": "Soak worker", "runtime": "hermes", "tier": 1, "model": "claude-sonnet-4"}


@dataclass
class SoakResult:
    started: float = field(default_factory=time.monotonic)
    timings: list[tuple[str, str, float]] = field(default_factory=list)  # (operation, subject, seconds)
    unexpected: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    orgs_done: int = 0
    workspaces: dict[str, int] = field(default_factory=lambda: {"running": 0, "timed_out": 0, "deleted": 0})
    faults_injected: dict[str, int] = field(default_factory=dict)

    def timed(self, op: str, subject: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            self.timings.append((op, subject, time.monotonic() - t0))


def inject_faults(
    h: StackHarness, neon: list[tuple[str, str, int]], ec2: list[tuple[str, str, str]], result: SoakResult
) -> None:
    """One error answer each, served to whichever request of that route (or EC2 action) comes next."""
    for route, method, status in neon:
        h.neon_fault(route, status, method=method, count=1, retry_after=0.5 if status == 429 else None)
        key = f"neon {method} {route} {status}"
        result.faults_injected[key] = result.faults_injected.get(key, 0) + 1
    for action, code, when in ec2:
        h.ec2_fault(action, code, when=when)
        key = f"ec2 {action} {code} {when}"
        result.faults_injected[key] = result.faults_injected.get(key, 0) + 1


def rolling_faults(index: int) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, str]]]:
    """Two Neon and two EC2 faults per org, rotating through every route, action and status: the
    storm lasts the whole run instead of landing on the first few orgs (which would then just
    wait out maximum backoffs)."""
    return (
        [NEON_FAULTS[index % len(NEON_FAULTS)], NEON_FAULTS[(index * 4 + 1) % len(NEON_FAULTS)]],
        [EC2_FAULTS[index % len(EC2_FAULTS)], EC2_FAULTS[(index * 3 + 1) % len(EC2_FAULTS)]],
    )


def soak_org(
    h: StackHarness,
    network: tuple[str, list[str]],
    index: int,
    n_workspaces: int,
    never_boot_every: int,
    tag: str,
    result: SoakResult,
    timeout: float,
    faults: bool,
) -> None:
    op = h.operator
    vpc_id, subnets = network
    slug = f"s{tag}{index:03d}"
    if faults:
        inject_faults(h, *rolling_faults(index), result)

    def created_or_existing():
        try:
            return op.onboard(name=f"Soak {index}", slug=slug, plan="pro", vpc_id=vpc_id, subnet_ids=subnets)
        except ApiError as err:  # a retried POST answers with the same org
            if err.status != 409:
                raise

    result.timed(
        "onboard",
        slug,
        lambda: (
            created_or_existing(),
            wait_for(lambda: op.org(slug), lambda o: o["status"] in ("active", "failed"), timeout, f"onboard {slug}"),
        ),
    )
    org = op.org(slug)
    if org["status"] != "active":
        result.unexpected.append(f"org {slug}: {org['status']} ({org.get('failure_reason')})")
        return
    op.set_quota(slug, max_workspaces=max(n_workspaces, 1) + 1)
    tenant = TenantClient(h.api_url, op.mint_key(slug, "soak")["key"])
    created: list[tuple[str, bool]] = []
    for j in range(n_workspaces):
        silent = never_boot_every > 0 and (index * 7 + j) % never_boot_every == never_boot_every - 1
        ws = tenant.create_workspace(name=f"agent-{j}", **WS_BODY)
        if silent:
            h.never_boot(ws["id"])
        created.append((ws["id"], silent))
    finals = {}
    for ws_id, silent in created:
        w = result.timed(
            "provision",
            ws_id,
            lambda: wait_for(
                lambda: tenant.workspace(ws_id), lambda w: w["status"] in ("running", "failed"), timeout, ws_id
            ),
        )
        finals[ws_id] = w
        if w["status"] == "running":
            result.workspaces["running"] += 1
        elif "did not register" in (w.get("failure_reason") or ""):
            result.workspaces["timed_out"] += 1
        else:
            result.unexpected.append(f"workspace {ws_id}: {w['status']} ({w.get('failure_reason')})")
        if w["status"] == "failed" and not silent and "did not register" in (w.get("failure_reason") or ""):
            result.unexpected.append(f"workspace {ws_id} (booting) timed out: {w.get('failure_reason')}")
    # Delete half of the running ones one by one; the cascade takes the rest.
    running = [ws_id for ws_id, w in finals.items() if w["status"] == "running"]
    for ws_id in running[: (len(running) + 1) // 2]:
        tenant.delete_workspace(ws_id)
        result.timed(
            "deprovision",
            ws_id,
            lambda: wait_for(
                lambda: {"ids": [w["id"] for w in tenant.workspaces()]},
                lambda b: ws_id not in b["ids"],
                timeout,
                f"delete {ws_id}",
            ),
        )
        result.workspaces["deleted"] += 1
    # Nothing the tenant created may be missing from the records before the org goes.
    with psycopg.connect(h.database_url) as conn:
        rows = {r[0] for r in conn.execute("SELECT id FROM workspaces WHERE org_id = %s", (org["id"],))}
    result.lost += [f"workspace {ws_id} of {slug}: no row" for ws_id, _ in created if ws_id not in rows]

    op.suspend(slug, reason="soak", stop_instances=index % 2 == 0)
    result.timed(
        "suspend",
        slug,
        lambda: wait_for(lambda: op.org(slug), lambda o: o["status"] == "suspended", timeout, f"suspend {slug}"),
    )
    op.resume(slug)
    result.timed(
        "resume",
        slug,
        lambda: wait_for(lambda: op.org(slug), lambda o: o["status"] == "active", timeout, f"resume {slug}"),
    )
    op.delete(slug, confirm=slug, delete_workspaces=True)
    done = result.timed(
        "hard_delete",
        slug,
        lambda: wait_for(lambda: op.org(slug), lambda o: o["status"] == "deleted", timeout, f"delete {slug}"),
    )
    receipt = done.get("receipt") or {}
    if receipt.get("slug") != slug:
        result.lost.append(f"org {slug}: deleted without a receipt")
    in_receipt = {w["id"] for w in receipt.get("workspaces", [])}
    result.lost += [
        f"workspace {ws_id} of {slug}: not in the purge receipt" for ws_id, _ in created if ws_id not in in_receipt
    ]
    result.orgs_done += 1


async def temporal_figures(h: StackHarness) -> dict:
    """Workflows by type and status, and activity retries (attempt > 1) from their histories."""
    from temporalio.api.enums.v1 import EventType

    client = await h.temporal()
    by: dict[str, dict[str, int]] = {}
    retries: dict[str, int] = {}
    async for wf in client.list_workflows():
        by.setdefault(wf.workflow_type, {}).setdefault(wf.status.name if wf.status else "?", 0)
        by[wf.workflow_type][wf.status.name if wf.status else "?"] += 1
        async for e in client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history_events():
            if (
                e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                and e.activity_task_started_event_attributes.attempt > 1
            ):
                retries[wf.workflow_type] = retries.get(wf.workflow_type, 0) + 1
    return {"workflows": by, "activity_retries": retries}


def run_soak(
    h: StackHarness,
    *,
    orgs: int,
    workspaces: int,
    concurrency: int = 4,
    never_boot_every: int = 5,
    faults: bool = True,
    time_limit: float = 1800,
    op_timeout: float = 240,
) -> dict:
    """Drive ``orgs`` orgs with ``workspaces`` workspaces in all through the lifecycle on ``h``."""
    result = SoakResult()
    tag = os.urandom(2).hex()
    if faults:  # a burst at the start: every route, action and status at once
        inject_faults(h, NEON_FAULTS, EC2_FAULTS, result)
    network = h.network()  # once: concurrent first calls would race to create the same subnets
    per_org = [workspaces // orgs + (1 if i < workspaces % orgs else 0) for i in range(orgs)]
    deadline = time.monotonic() + time_limit
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = []
        for i in range(orgs):
            futures.append(
                pool.submit(
                    soak_org,
                    h,
                    network,
                    i,
                    per_org[i],
                    never_boot_every,
                    tag,
                    result,
                    min(op_timeout, max(30.0, deadline - time.monotonic())),
                    faults,
                )
            )
        for f in futures:
            try:
                f.result(timeout=max(1.0, deadline - time.monotonic()))
            except Exception as err:  # noqa: BLE001 - every failure goes into the report
                errors.append(f"{type(err).__name__}: {err}")
    neon = h.neon_stats()
    ec2 = h.ec2_stats()
    h.clear_neon_faults()
    h.clear_ec2_faults()
    # Let the last cleanups (workflow tails after the status flip) settle before counting leaks.
    time.sleep(2)
    leaks = h.leaks()
    figures = asyncio.run(temporal_figures(h))
    neon_errors = {
        route: {k: v for k, v in statuses.items() if not k.startswith("2")}
        for route, statuses in (neon.get("by_route") or {}).items()
    }
    slowest = sorted(result.timings, key=lambda t: -t[2])[:8]
    by_op: dict[str, list[float]] = {}
    for op_name, _, secs in result.timings:
        by_op.setdefault(op_name, []).append(secs)
    report = {
        "size": {"orgs": orgs, "workspaces": workspaces, "concurrency": concurrency},
        "elapsed_seconds": round(time.monotonic() - result.started, 1),
        "orgs_completed": result.orgs_done,
        "workspaces": result.workspaces,
        "workflows": figures["workflows"],
        "activity_retries": figures["activity_retries"],
        "faults_injected": result.faults_injected,
        "neon_error_answers": {r: s for r, s in neon_errors.items() if s},
        "ec2_error_answers": ec2.get("errors", {}),
        "leaked": leaks,
        "leaked_total": sum(len(v) for v in leaks.values()),
        "lost_records": result.lost,
        "unexpected": result.unexpected + errors,
        "operation_seconds": {
            op_name: {"n": len(v), "p50": round(sorted(v)[len(v) // 2], 2), "max": round(max(v), 2)}
            for op_name, v in by_op.items()
        },
        "slowest": [{"operation": o, "subject": s, "seconds": round(t, 2)} for o, s, t in slowest],
    }
    report["ok"] = report["leaked_total"] == 0 and not report["lost_records"] and not report["unexpected"]
    return report


def text_report(report: dict) -> str:
    lines = [
        f"soak: {report['size']['orgs']} orgs, {report['size']['workspaces']} workspaces in "
        f"{report['elapsed_seconds']}s -> {'OK' if report['ok'] else 'PROBLEMS'}",
        f"  orgs through the whole lifecycle: {report['orgs_completed']}",
        f"  workspaces: {report['workspaces']}",
        "  workflows: " + ", ".join(f"{t} {s}" for t, s in sorted(report["workflows"].items())),
        f"  faults injected: {sum(report['faults_injected'].values())} "
        f"(Neon error answers served: {sum(sum(s.values()) for s in report['neon_error_answers'].values())}, "
        f"EC2: {sum(sum(s.values()) for s in report['ec2_error_answers'].values())})",
        f"  activity retries: {sum(report['activity_retries'].values())} {report['activity_retries']}",
        f"  leaked resources: {report['leaked_total']} {report['leaked'] if report['leaked_total'] else ''}",
        f"  lost records: {len(report['lost_records'])} {report['lost_records'] or ''}",
        f"  unexpected: {len(report['unexpected'])} {report['unexpected'] or ''}",
        "  per operation (n, p50 s, max s): "
        + ", ".join(f"{k} {v['n']}/{v['p50']}/{v['max']}" for k, v in report["operation_seconds"].items()),
        "  slowest: " + ", ".join(f"{s['operation']} {s['subject']} {s['seconds']}s" for s in report["slowest"][:5]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--workspaces", type=int, default=50, help="in all, spread over the orgs")
    parser.add_argument("--concurrency", type=int, default=4, help="orgs driven at once")
    parser.add_argument("--never-boot-every", type=int, default=5, help="every Nth workspace never boots (0: none)")
    parser.add_argument(
        "--registration-timeout",
        type=float,
        default=15.0,
        help="seconds an agent has to register; at concurrency 8 on 2 cores a real boot "
        "can take longer than 15 s (default %(default)s)",
    )
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds, for the whole run")
    parser.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a fresh temporary directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tf-soak-") as tmp:
        h = StackHarness(
            args.state_dir or Path(tmp) / "state",
            registration_timeout_seconds=args.registration_timeout,
            agent_heartbeat_interval_seconds=2.0,
        )
        h.start()
        try:
            report = run_soak(
                h,
                orgs=args.orgs,
                workspaces=args.workspaces,
                concurrency=args.concurrency,
                never_boot_every=args.never_boot_every,
                faults=not args.no_faults,
                time_limit=args.time_limit,
            )
        finally:
            h.stop()
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(text_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
