"""Overlapping operations on the local stack, at random but reproducibly: operators create,
suspend (with and without stopping instances), resume, change quotas of and delete a few orgs while
tenants mint keys, create and delete workspaces and list them, with Neon and EC2 faults on. Then
the stack is left to settle and every invariant is checked.

    .venv/bin/python -m tools.chaos --seed 7 --orgs 4 --steps 40          # the CI size
    .venv/bin/python -m tools.chaos --seeds 1-20 --orgs 6 --steps 120     # a longer run

A seed fixes the whole schedule: which request goes to which org, with which parameters and after
which pause, and which faults are armed when (the interleaving the machine then produces varies
with its load, which is the point of running many seeds). Invariants after quiescence:
- no request was answered with a 5xx or an unexpected status;
- every org is settled (active, suspended or failed, no operation in progress), or deleted with a
  receipt, and no operation workflow is left running;
- a deleted org left no instance, security group or Neon branch, and its receipt lists exactly the
  resources its ledger recorded, each deleted;
- no key of an org that is not active authenticates;
- every running (stopped) workspace has exactly one instance, running (stopped), and it is the one
  on record; no live instance belongs to no workspace; failed and deleted ones have none;
- nothing leaked (``StackHarness.leaks``) and the audit chain verifies.
Exit status 1 on any violation; ``--report`` writes the JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from domain.resources import (  # noqa: E402
    ORG_ID_TAG,
    PRESENT_STATES,
    WORKSPACE_TAG,
    name_of_key,
    resource_name,
    state_filter,
    tag_filter,
    tags_of,
)
from starter import ApiClient, ApiError  # noqa: E402
from tools.soak import WS_BODY, StackHarness, wait_for  # noqa: E402

# The answers each request may get. Anything else (and every 5xx) is a violation.
ALLOWED = {
    "create": {202, 409},
    "suspend": {202, 404, 409},
    "resume": {202, 404, 409},
    "quota": {200, 404, 409},
    "delete": {202, 404, 409},
    "mint_key": {201, 404, 409},
    "ws_create": {202, 401, 403, 409},
    "ws_delete": {202, 401, 403, 404},
    "tenant_list": {200, 401, 403},
}
WEIGHTS = {
    "create": 3,
    "suspend": 3,
    "resume": 3,
    "quota": 1,
    "delete": 2,
    "mint_key": 3,
    "ws_create": 4,
    "ws_delete": 2,
    "tenant_list": 2,
}
NEON_FAULTS = [
    ("/projects/{project_id}/branches", "POST", 423),
    ("/projects/{project_id}/branches", "POST", 503),
    ("/projects/{project_id}/branches/{branch_id}", "DELETE", 423),
    ("/projects/{project_id}/branches/{branch_id}", "DELETE", 429),
    ("/projects/{project_id}/operations/{operation_id}", "GET", 503),
]
# Transient EC2 faults; "after" commits the change and loses the answer.
EC2_FAULTS = [
    ("RunInstances", "InsufficientInstanceCapacity", "before"),
    ("RunInstances", "InternalError", "after"),
    ("TerminateInstances", "RequestLimitExceeded", "before"),
    ("StopInstances", "InternalError", "after"),
    ("StartInstances", "RequestLimitExceeded", "before"),
    ("CreateSecurityGroup", "InternalError", "after"),
    ("DeleteSecurityGroup", "Unavailable", "before"),
    ("DescribeInstances", "RequestLimitExceeded", "before"),
]
SETTLED = {"active", "suspended", "failed"}


@dataclass
class Step:
    op: str
    org: int
    pause: float
    stop_instances: bool = False
    quota: int = 3
    pick: float = 0.0  # which of the org's workspaces a delete takes
    fault: tuple | None = None


def schedule(seed: int, orgs: int, steps: int) -> list[Step]:
    """Every org is created first (in a random order) and gets a key once it may be onboarded;
    then random operations, some with a fault armed first. Pauses are long enough for operations
    to finish sometimes and to overlap often."""
    rng = random.Random(seed)
    plan = [Step("create", i, rng.uniform(0, 0.2)) for i in rng.sample(range(orgs), orgs)]
    plan += [Step("mint_key", i, rng.uniform(4, 8)) for i in rng.sample(range(orgs), orgs)]
    ops, weights = zip(*WEIGHTS.items(), strict=False)
    for _ in range(steps):
        step = Step(
            rng.choices(ops, weights)[0],
            rng.randrange(orgs),
            rng.uniform(0.2, 4),
            stop_instances=rng.random() < 0.5,
            quota=rng.randint(1, 4),
            pick=rng.random(),
        )
        if rng.random() < 0.25:
            step.fault = ("neon", *rng.choice(NEON_FAULTS)) if rng.random() < 0.5 else ("ec2", *rng.choice(EC2_FAULTS))
        plan.append(step)
    return plan


@dataclass
class Run:
    h: StackHarness
    seed: int
    network: tuple[str, list[str]]
    answers: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    # org slot -> keys minted for it: (org id, key)
    keys: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slug(self, i: int) -> str:
        return f"c{self.seed % 10_000:04d}-{i}"

    def call(self, op: str, client: ApiClient, method: str, path: str, body: Any = None) -> dict | None:
        try:
            status, answer = client.request(method, path, body)
        except ApiError as err:
            status, answer = err.status, err.body
        with self.lock:
            self.answers[f"{op} {status}"] += 1
            if status not in ALLOWED[op]:
                self.violations.append(f"{op} {method} {path} -> {status} {answer}")
        return answer if status < 300 else None

    def key_for(self, i: int) -> str | None:
        with self.lock:
            minted = self.keys.get(i) or []
        return minted[-1][1] if minted else None

    def arm(self, fault: tuple) -> None:
        kind, *spec = fault
        if kind == "neon":
            route, method, status = spec
            self.h.neon_fault(route, status, method=method, retry_after=0.3 if status == 429 else None)
        else:
            action, code, when = spec
            self.h.ec2_fault(action, code, when=when)
        with self.lock:
            self.faults[" ".join(str(part) for part in fault)] += 1

    def perform(self, step: Step) -> None:
        time.sleep(step.pause)
        if step.fault:
            self.arm(step.fault)
        op, slug = self.h.operator, self.slug(step.org)
        tenant_key = self.key_for(step.org)
        tenant = ApiClient(self.h.api_url, tenant_key or "tfk_none")
        if step.op == "create":
            vpc_id, subnets = self.network
            self.call(
                "create",
                op,
                "POST",
                "/api/v1/orgs",
                {"name": f"Chaos {slug}", "slug": slug, "plan": "pro", "vpc_id": vpc_id, "subnet_ids": subnets},
            )
        elif step.op == "suspend":
            self.call(
                "suspend",
                op,
                "POST",
                f"/api/v1/orgs/{slug}/suspend",
                {"reason": "chaos", "stop_instances": step.stop_instances},
            )
        elif step.op == "resume":
            self.call("resume", op, "POST", f"/api/v1/orgs/{slug}/resume", {})
        elif step.op == "quota":
            self.call("quota", op, "PATCH", f"/api/v1/orgs/{slug}", {"max_workspaces": step.quota})
        elif step.op == "delete":
            self.call("delete", op, "DELETE", f"/api/v1/orgs/{slug}", {"confirm": slug, "delete_workspaces": True})
        elif step.op == "mint_key":
            minted = self.call("mint_key", op, "POST", f"/api/v1/orgs/{slug}/keys", {"name": "chaos"})
            if minted:
                org_id = op.org(slug).get("id", "")  # the org the key was minted for (a slug may be reused)
                with self.lock:
                    self.keys.setdefault(step.org, []).append((org_id, minted["key"]))
        elif step.op == "ws_create":
            self.call(
                "ws_create", tenant, "POST", "/api/v1/workspaces", {"name": f"agent-{int(step.pick * 1e6)}", **WS_BODY}
            )
        elif step.op == "ws_delete":
            listed = self.call("tenant_list", tenant, "GET", "/api/v1/workspaces")
            live = [w for w in (listed or {}).get("workspaces", []) if w["status"] in ("running", "failed")]
            if live:
                target = live[int(step.pick * len(live))]["id"]
                self.call("ws_delete", tenant, "DELETE", f"/api/v1/workspaces/{target}")
        else:
            self.call("tenant_list", tenant, "GET", "/api/v1/workspaces")


# -- quiescence and invariants -----------------------------------------------------------------


def settle(run: Run, orgs: int, timeout: float) -> dict[int, dict]:
    """Wait until every org is settled (or deleted) and no workspace is in flight."""
    op = run.h.operator

    def state() -> dict:
        found = {}
        for i in range(orgs):
            try:
                found[i] = op.org(run.slug(i))
            except ApiError as err:
                if err.status != 404:
                    raise
        with psycopg.connect(run.h.database_url, row_factory=dict_row) as conn:
            busy = conn.execute(
                "SELECT count(*) AS n FROM workspaces WHERE status IN ('provisioning', 'deleting')"
            ).fetchone()["n"]
        return {"orgs": found, "busy_workspaces": busy}

    def settled(s: dict) -> bool:
        return s["busy_workspaces"] == 0 and all(
            o["status"] == "deleted" or (o["status"] in SETTLED and not o.get("operation")) for o in s["orgs"].values()
        )

    return wait_for(state, settled, timeout, "quiescence")["orgs"]


def check(run: Run, final: dict[int, dict]) -> None:
    h, v = run.h, run.violations
    ec2 = h.ec2()
    inv = h.inventory()
    with psycopg.connect(h.database_url, row_factory=dict_row) as conn:
        receipts = {r["org_id"]: r["receipt"] for r in conn.execute("SELECT org_id, receipt FROM org_receipts")}
        ledger = conn.execute("SELECT org_id, kind, business_key, status FROM resources").fetchall()
    live_orgs = {o["id"]: o for o in inv["orgs"]}
    # Deleted orgs: nothing left, and the receipt is exactly the ledger.
    for org_id, receipt in receipts.items():
        if org_id in live_orgs:
            v.append(f"org {org_id} has a receipt but still a row")
        name = resource_name(receipt["slug"], org_id)
        left = [
            i["InstanceId"]
            for r in ec2.describe_instances(Filters=[tag_filter(ORG_ID_TAG, org_id), state_filter(*PRESENT_STATES)])[
                "Reservations"
            ]
            for i in r["Instances"]
        ]
        groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        branches = [b for b in inv["branches"] if b["name"] == name]
        if left or groups or branches:
            v.append(
                f"deleted org {receipt['slug']} left instances {left}, groups {[g['GroupId'] for g in groups]}, "
                f"branches {[b['id'] for b in branches]}"
            )
        recorded = {name_of_key(r["business_key"]) for r in ledger if r["org_id"] == org_id}
        listed = {r["name"] for r in receipt["resources"]}
        if recorded != listed:
            v.append(f"receipt of {receipt['slug']} lists {sorted(listed)}, the ledger {sorted(recorded)}")
        not_deleted = [r["name"] for r in receipt["resources"] if r["status"] != "deleted"]
        if not_deleted:
            v.append(f"receipt of {receipt['slug']} has resources not deleted: {not_deleted}")
    # Settled, and no operation workflow left running.
    for i, org in final.items():
        if org["status"] != "deleted" and (org["status"] not in SETTLED or org.get("operation")):
            v.append(f"org {run.slug(i)} not settled: {org['status']} {org.get('operation')}")
    running = asyncio.run(_running_operations(h))
    if running:
        v.append(f"operation workflows still running: {running}")
    # Keys of orgs that are not active are refused.
    for i, minted in run.keys.items():
        for org_id, key in minted:
            org = live_orgs.get(org_id)
            if org is not None and org["status"] == "active":
                continue
            try:
                ApiClient(h.api_url, key).request("GET", "/api/v1/workspaces")
                v.append(f"key of {run.slug(i)} ({org['status'] if org else 'deleted'}) still authenticates")
            except ApiError as err:
                if err.status not in (401, 403):
                    v.append(f"key of {run.slug(i)} answered {err.status}")
    # Exactly one instance per running or stopped workspace, none for the others, no orphans.
    instances: dict[str, list[dict]] = {}
    for inst in inv["instances"]:
        instances.setdefault(tags_of(inst).get(WORKSPACE_TAG, "?"), []).append(inst)
    for ws in inv["workspaces"]:
        mine = instances.pop(ws["id"], [])
        want = {"running": "running", "stopped": "stopped"}.get(ws["status"])
        states = [i["State"]["Name"] for i in mine]
        if want is None and mine:
            v.append(f"{ws['status']} workspace {ws['id']} has instances {states}")
        elif want is not None and (states != [want] or mine[0]["InstanceId"] != ws["instance_id"]):
            v.append(f"{ws['status']} workspace {ws['id']} has instances {states} (record: {ws['instance_id']})")
    if instances:
        v.append(f"instances of no workspace: {sorted(instances)}")
    leaks = h.leaks()
    if any(leaks.values()):
        v.append(f"leaked: {leaks}")
    with psycopg.connect(h.database_url) as conn:
        slug = conn.execute("SELECT org_slug FROM audit_log WHERE org_slug IS NOT NULL LIMIT 1").fetchone()
    if slug:  # the verification covers the whole chain, whichever org is asked for
        chain = h.operator.request("GET", f"/api/v1/orgs/{slug[0]}/audit")[1]["chain"]
        if not chain["valid"]:
            v.append(f"audit chain broken: {chain}")


async def _running_operations(h: StackHarness) -> list[str]:
    client = await h.temporal()
    return [
        f"{w.workflow_type} {w.id}"
        async for w in client.list_workflows("ExecutionStatus = 'Running'")
        if w.workflow_type not in ("OrgWorkflow", "ReconcileWorkflow")
    ]


def run_chaos(
    h: StackHarness, *, seed: int, orgs: int, steps: int, concurrency: int = 4, settle_timeout: float = 300
) -> dict:
    started = time.monotonic()
    run = Run(h, seed, h.network())
    plan = schedule(seed, orgs, steps)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(run.perform, step) for step in plan]:
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - the driver's own failures are reported too
                run.violations.append(f"driver: {type(err).__name__}: {err}")
    h.clear_neon_faults()
    h.clear_ec2_faults()
    try:
        final = settle(run, orgs, settle_timeout)
        check(run, final)
    except TimeoutError as err:
        final = {}
        run.violations.append(str(err))
    return {
        "seed": seed,
        "orgs": orgs,
        "steps": steps,
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "final": {run.slug(i): o["status"] for i, o in final.items()},
        "answers": dict(sorted(run.answers.items())),
        "faults_armed": dict(run.faults),
        "violations": run.violations,
        "ok": not run.violations,
    }


def seeds(spec: str) -> list[int]:
    if "-" in spec:
        low, high = spec.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in spec.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", "--seeds", dest="seeds", default="1", help="a seed, a list (1,5,9) or a range (1-20)")
    parser.add_argument(
        "--orgs", type=int, default=4, help="org slots the operations spread over (default %(default)s)"
    )
    parser.add_argument("--steps", type=int, default=40, help="random operations per seed (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default %(default)s)")
    parser.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory(prefix="tf-chaos-") as tmp:
        h = StackHarness(Path(tmp) / "state", registration_timeout_seconds=30.0, agent_heartbeat_interval_seconds=2.0)
        h.start()
        try:
            for seed in seeds(args.seeds):
                report = run_chaos(h, seed=seed, orgs=args.orgs, steps=args.steps, concurrency=args.concurrency)
                reports.append(report)
                print(
                    f"seed {seed}: {'OK' if report['ok'] else 'VIOLATIONS'} in {report['elapsed_seconds']}s "
                    f"{report['final']} {report['violations'] or ''}",
                    flush=True,
                )
        finally:
            h.stop()
    summary = {"runs": reports, "interleavings": len(reports), "violations": sum(len(r["violations"]) for r in reports)}
    if args.report:
        args.report.write_text(json.dumps(summary, indent=2))
    print(f"{summary['interleavings']} seeds, {summary['violations']} violations")
    return 0 if summary["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
