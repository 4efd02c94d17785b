"""The documents are tests. Every command block of README.md and docs/operator-runbook.md runs, in
document order, against the local stack that the README's run command starts, exactly as written
but for placeholders filled by one mechanical rule; its exit status and printed answer are
checked against what the text promises (`CHECKS`). A command the docs add or change without a check
here, or a check for a command the docs no longer hold, fails `test_every_documented_command_is_checked`.

The rule (tests/doc_commands.fill): the stack listens on free ports, so `127.0.0.1:<default>` in a
command becomes the stack's port, and the environment says where the stack is as the docs tell an
operator to (`TENANTFLOW_API_URL`, `TEMPORAL_ADDRESS`, `TENANTFLOW_STATE_DIR`, `.venv/bin` first
on `PATH` as the runbook's `export`); then `<vpc-id>`, `<subnet-a>`, `<subnet-b>` are the demo
network's ids (`$SECRET` and `$TENANT_ORG_KEY` are in the environment, as in the tutorial reader's
shell: the stack's operator secret and the demo org's key), `org_7f2a9c1b2c3d` the org the section is about, `ws_0123456789ab` the workspace the previous
`workspace create` made, `tfo_...` the token the last `operator-token create` printed, `tfo_<old id>`
the first token's id, `reconcile report 42` the newest report, and `--event-id 42` the event the
runbook's own rule picks from `temporal workflow show --output json`. `export NAME=value` sets the
environment of the commands after it, as in a shell. Each command runs in `bash -c` from the
repository root. The run command itself is started as `./scripts/run-local.sh` execs it after
installing (the tests run inside that installation); `./scripts/test.sh` is the command running this.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import starter
from devstack.demo import ensure_demo_network
from devstack.moto_client import moto_ec2_client
from domain.resources import MANAGED_TAG, org_tags, resource_name
from tests.doc_commands import (
    README,
    ROOT,
    RUNBOOK,
    DocCommand,
    api_table_rows,
    commands,
    fill,
    matches_sample,
    sample_output,
)
from tests.localstack import RunningStack, wait_until

pytestmark = pytest.mark.e2e

NEVER_RUN_HERE = {
    "./scripts/test.sh": "the command that runs this test",
    "./scripts/run-local.sh": "started by the `docs` fixture as the script execs it (asserted below)",
}


@dataclass
class Session:
    """The shell the documents' commands run in: the stack, the environment, the filled values."""

    stack: RunningStack
    env: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)
    last: subprocess.CompletedProcess[str] | None = None

    @property
    def secret(self) -> str:
        return str(self.stack.secrets["provision_secret"])

    @property
    def operator(self) -> starter.OperatorClient:
        return starter.OperatorClient(self.stack.api_url, self.secret)

    @property
    def ec2(self) -> Any:
        return moto_ec2_client(f"http://127.0.0.1:{self.stack.ports['MOTO_PORT']}")

    def org(self, slug: str = "acme") -> dict[str, Any]:
        return self.operator.org(slug)

    def neon_fault(self, route: str, status: int, method: str, count: int) -> None:
        body = json.dumps({"route": route, "status": status, "method": method, "count": count}).encode()
        url = f"http://127.0.0.1:{self.stack.ports['NEON_PORT']}/__devstack/faults"
        urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}), timeout=10)

    def clear_neon_faults(self) -> None:
        url = f"http://127.0.0.1:{self.stack.ports['NEON_PORT']}/__devstack/faults"
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10)

    def run(self, command: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        if m := re.fullmatch(r"export (\w+)=(\S+)", command):
            self.env[m[1]] = m[2]
            return subprocess.CompletedProcess(command, 0, "", "")
        self.last = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        return self.last


@dataclass(frozen=True)
class Check:
    """What the text promises of one command: its exit status and lines it prints; `before`
    brings about the situation the text describes, `after` reads what later commands use."""

    exit: int = 0
    prints: tuple[str, ...] = ()
    before: Callable[[Session], None] | None = None
    after: Callable[[Session, str], None] | None = None


# -- situations the documents describe ------------------------------------------------------------

PARK_DELETE_DATABASE = ("/projects/{project_id}/branches/{branch_id}", 403, "DELETE", -1)


def parked(s: Session) -> None:
    """Parked, as the operation shows it (the org's workflow knows it by then: a retry or abandon
    sent at once must be taken)."""
    wait_until(lambda: s.org(), lambda o: (o.get("progress") or {}).get("waiting_for_operator"), timeout=90)


def settled(s: Session, status: str, slug: str = "acme") -> dict[str, Any]:
    return wait_until(lambda: s.org(slug), lambda o: o["status"] == status and o.get("operation") is None, 90)


def onboard_second_acme(s: Session) -> None:
    """The runbook's org: `acme` again (the README's was deleted; a slug is free once deleted)."""
    status, org = s.operator.request(
        "POST",
        "/api/v1/orgs",
        {
            "name": "Acme Corp",
            "slug": "acme",
            "plan": "pro",
            "vpc_id": s.values["<vpc-id>"],
            "subnet_ids": [s.values["<subnet-a>"], s.values["<subnet-b>"]],
        },
    )
    assert status == 202, org
    settled(s, "active")
    s.values["org_7f2a9c1b2c3d"] = org["id"]


def delete_parks_as_shown(s: Session) -> None:
    """`starter.py delete` stops on the parked step and prints what the runbook's sample shows."""
    onboard_second_acme(s)
    s.neon_fault(*PARK_DELETE_DATABASE)
    done = s.run("python starter.py delete acme --confirm acme")
    assert done.returncode == 3, done
    printed = done.stdout.splitlines()
    sample = sample_output(RUNBOOK, "acme: deleting")
    at = 0
    for want in sample:
        while at < len(printed) and not matches_sample(want, printed[at]):
            at += 1
        assert at < len(printed), f"the runbook's line {want!r} is not in what delete printed:\n{done.stdout}"


def delete_again(s: Session) -> None:
    """A new cascade (the runbook: `DELETE` again runs a new one)."""
    status, body = s.operator.request("DELETE", "/api/v1/orgs/acme", {"confirm": "acme"})
    assert status == 202, body


def parked_again(s: Session) -> None:
    wait_until(lambda: s.org(), lambda o: o.get("abandoned") or o["status"] == "deleting", 30)
    if s.org().get("abandoned"):
        delete_again(s)
    parked(s)


def abandoned_by_signal(s: Session, _: str) -> None:
    """Abandoned by the signal, the org says so as it does for `starter.py abandon`."""
    org = wait_until(lambda: s.org(), lambda o: o.get("abandoned") and o.get("operation") is None, 30)
    assert org["status"] == "deleting", org
    assert org["abandoned"]["by"] == f"signal to org-delete:{s.values['org_7f2a9c1b2c3d']}", org
    assert org["abandoned"]["step"] == "delete_database", org


def neon_access_restored(s: Session) -> None:
    wait_until(lambda: s.org(), lambda o: o.get("abandoned") and o.get("operation") is None, 30)
    s.clear_neon_faults()
    delete_again(s)
    s.values["receipt"] = json.dumps(settled(s, "deleted")["receipt"], sort_keys=True)


def reset_run_finishes_with_same_receipt(s: Session, _: str) -> None:
    def newest_run_closed() -> bool:
        out = s.run(f"temporal workflow describe --workflow-id org-delete:{s.values['org_7f2a9c1b2c3d']} -o json")
        return json.loads(out.stdout)["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"

    wait_until(newest_run_closed, bool, 90)
    assert json.dumps(s.org()["receipt"], sort_keys=True) == s.values["receipt"]


def event_id_by_the_runbooks_rule(s: Session) -> None:
    """The `WorkflowTaskCompleted` just before the activity that starts the step to run again
    (here the Neon deletion), from `temporal workflow show --output json`."""
    shown = s.run(f"temporal workflow show --workflow-id org-delete:{s.values['org_7f2a9c1b2c3d']} --output json")
    events = json.loads(shown.stdout)["events"]
    kind = [re.sub(r"^EVENT_TYPE_|_", "", str(e["eventType"])).lower() for e in events]
    step = next(
        i
        for i, e in enumerate(events)
        if kind[i] == "activitytaskscheduled"
        and "database" in e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
    )
    done = max(i for i in range(step) if kind[i] == "workflowtaskcompleted")
    s.values["--event-id 42"] = f"--event-id {events[done]['eventId']}"


def created_workspace(s: Session, _: str) -> None:
    tenant = starter.TenantClient(s.stack.api_url, s.stack.secrets["demo_org_key"])
    [ws] = [w for w in tenant.workspaces() if w["name"] == "agent-1"]
    s.values["ws_0123456789ab"] = ws["id"]


def printed_token(s: Session, out: str) -> None:
    token = re.search(r"tfo_[A-Za-z0-9]+_[A-Za-z0-9_-]+", out)
    assert token, out
    s.values["tfo_..."] = token[0]
    s.values.setdefault("tfo_<old id>", token[0].split("_")[0] + "_" + token[0].split("_")[1])


def rows_deleted_by_hand(s: Session) -> None:
    """What the runbook warns of: a managed security group whose org's rows are gone."""
    org_id, slug = f"org_{secrets.token_hex(6)}", f"gone{secrets.token_hex(3)}"
    group_id = s.ec2.create_security_group(
        GroupName=resource_name(slug, org_id),
        Description="its org's rows were deleted by hand",
        VpcId=s.values["<vpc-id>"],
        TagSpecifications=[
            {"ResourceType": "security-group", "Tags": org_tags(org_id, slug, resource_name(slug, org_id))}
        ],
    )["GroupId"]
    visible = [{"Name": "group-id", "Values": [group_id]}, {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}]
    wait_until(lambda: s.ec2.describe_security_groups(Filters=visible)["SecurityGroups"], bool)
    s.values["sg-0123456789abcdef0"] = group_id


def newest_report(s: Session) -> None:
    status, body = s.operator.request("GET", "/api/v1/reconcile/reports?limit=1")
    assert status == 200 and body["reports"], body
    s.values["reconcile report 42"] = f"reconcile report {body['reports'][0]['id']}"
    s.values["--report 42"] = f"--report {body['reports'][0]['id']}"


def orphan_gone(s: Session, _: str) -> None:
    group_id = s.values["sg-0123456789abcdef0"]
    assert s.ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [group_id]}])["SecurityGroups"] == []


def json_keys_as_documented(keys: set[str]) -> Callable[[Session, str], None]:
    def check(_: Session, out: str) -> None:
        assert set(json.loads(out)) == keys, out

    return check


# -- what the text promises, per command as written -----------------------------------------------

VENV = ".venv/bin/python starter.py"
ACME_RUNBOOK = "org-delete:org_7f2a9c1b2c3d"

CHECKS: dict[str, Check] = {
    # README: using it
    f'{VENV} onboard --slug acme --name "Acme Corp" --plan pro --vpc-id <vpc-id> --subnet-ids <subnet-a>,<subnet-b>': Check(
        prints=("active: done", '"status": "active"')
    ),
    f"{VENV} status acme": Check(prints=('"status": "active"',)),
    'curl -X POST http://127.0.0.1:8080/cp/orgs -H "Authorization: Bearer $SECRET" -H "Content-Type: application/json" '
    '-d \'{"name": "Acme Corp", "slug": "acme", "plan": "pro", "vpc_id": "<vpc-id>", "subnet_ids": ["<subnet-a>", "<subnet-b>"]}\'': Check(
        prints=('"slug": "acme"',),
        after=json_keys_as_documented({"id", "name", "slug", "plan", "neon_branch_id", "security_group_id", "status"}),
    ),
    'curl http://127.0.0.1:8080/cp/orgs/acme -H "Authorization: Bearer $SECRET"': Check(
        prints=('"status": "active"', '"failure_reason": null', '"progress": null')
    ),
    ".venv/bin/python -c \"from devstack.moto_client import moto_ec2_client as c; print(c('http://127.0.0.1:5055').describe_subnets()['Subnets'])\"": Check(
        prints=("<subnet-a>", "<subnet-b>", "tenantflow-demo-vpc")
    ),
    # README: as the tenant (the demo org's key from the stack's secrets)
    f'{VENV} workspace create --name agent-1 --role "Inference worker" --tier 2': Check(
        prints=("running",), after=created_workspace
    ),
    f"{VENV} workspace list": Check(prints=("agent-1",)),
    f"{VENV} workspace status ws_0123456789ab": Check(prints=('"status": "running"', "ws_0123456789ab")),
    f"{VENV} workspace delete ws_0123456789ab": Check(prints=("deleted",)),
    'curl -X POST http://127.0.0.1:8080/workspaces -H "Authorization: Bearer $TENANT_ORG_KEY" -H "Content-Type: application/json" '
    '-d \'{"name": "production-agent-1", "role": "Production inference worker", "runtime": "hermes", "tier": 3, "model": "claude-sonnet-4"}\'': Check(
        prints=('"status": "provisioning"',)
    ),
    f"{VENV} mint-key acme": Check(prints=("tfk_",)),
    f"{VENV} quota acme --max-workspaces 10 --max-tier 3": Check(prints=("10",)),
    f"{VENV} mint-key acme --name dashboard --scopes read --expires-at 2030-01-01T00:00:00Z": Check(prints=("tfk_",)),
    # README: named operators (the first create uses the bootstrap secret)
    f"{VENV} operator-token create alice": Check(prints=("tfo_",), after=printed_token),
    "export TENANTFLOW_OPERATOR_TOKEN=tfo_...": Check(),
    f"{VENV} operator-token list --name alice": Check(prints=("alice",)),
    f"{VENV} operator-token revoke tfo_<old id>": Check(prints=("tfo_<old id>",)),
    # README: suspend, resume, delete
    f'{VENV} suspend acme --reason "unpaid invoice"': Check(
        prints=("acme: suspending (suspend accepted)", "suspended: done")
    ),
    f"{VENV} resume acme": Check(prints=("acme: resuming (resume accepted)", "active: done")),
    f"{VENV} delete acme --confirm acme --delete-workspaces": Check(
        prints=("acme: deleting (delete accepted)", "deleted: done")
    ),
    f"{VENV} watch acme": Check(prints=("deleted",)),
    f"{VENV} orgs --status suspended,deleting": Check(prints=("no orgs",)),
    f"{VENV} teardowns": Check(prints=("no teardowns",)),
    f"{VENV} retry acme": Check(exit=2, prints=("refused (404)",)),
    f"{VENV} audit acme": Check(prints=("org.purge", "chain verified")),
    f"{VENV} audit --verify": Check(prints=("chain verified",)),
    # The runbook, on a second `acme`: its state, a parked teardown, retry, abandon, reset
    "temporal workflow query --workflow-id org:org_7f2a9c1b2c3d --name state": Check(
        before=onboard_second_acme, prints=('"active"',)
    ),
    "python starter.py orgs": Check(prints=("acme", "active")),
    "temporal workflow list --query 'TenantflowOrgSlug=\"acme\"'": Check(
        before=delete_parks_as_shown, prints=(ACME_RUNBOOK, "Running")
    ),
    'temporal workflow list --query \'TenantflowOperation="hard-delete" AND ExecutionStatus="Running"\'': Check(
        prints=(ACME_RUNBOOK,)
    ),
    f"temporal workflow describe --workflow-id {ACME_RUNBOOK}": Check(
        prints=("HardDeleteOrgWorkflow", "ParentWorkflowId      org:org_7f2a9c1b2c3d")
    ),
    f"temporal workflow query --workflow-id {ACME_RUNBOOK} --name progress": Check(
        prints=('"waiting_for_operator":true', '"step":"delete_database"')
    ),
    f"temporal workflow show --workflow-id {ACME_RUNBOOK}": Check(prints=("WorkflowExecutionStarted",)),
    f"temporal workflow metadata --workflow-id {ACME_RUNBOOK}": Check(prints=("delete_database",)),
    "python starter.py teardowns": Check(prints=("acme  org-delete:org_7f2a9c1b2c3d  PARKED on delete_database",)),
    "python starter.py retry acme": Check(before=parked, exit=3, prints=("PARKED on delete_database",)),
    f"temporal workflow signal --workflow-id {ACME_RUNBOOK} --name retry": Check(before=parked),
    "python starter.py abandon acme": Check(before=parked, prints=("abandoned",)),
    f"temporal workflow signal --workflow-id {ACME_RUNBOOK} --name abandon": Check(
        before=parked_again, after=abandoned_by_signal
    ),
    f'temporal workflow reset --workflow-id {ACME_RUNBOOK} --type FirstWorkflowTask --reason "Neon access restored"': Check(
        before=neon_access_restored, after=reset_run_finishes_with_same_receipt
    ),
    f'temporal workflow reset --workflow-id {ACME_RUNBOOK} --type LastWorkflowTask --reason "..."': Check(
        after=reset_run_finishes_with_same_receipt
    ),
    f'temporal workflow reset --workflow-id {ACME_RUNBOOK} --event-id 42 --reason "..."': Check(
        before=event_id_by_the_runbooks_rule, after=reset_run_finishes_with_same_receipt
    ),
    "python starter.py audit acme": Check(prints=("org.delete.delete_database", "chain verified")),
    "python starter.py audit acme --since 2026-11-01T00:00:00Z": Check(prints=("chain verified",)),
    'curl -H "Authorization: Bearer $SECRET" http://127.0.0.1:8080/cp/orgs/acme/audit': Check(
        prints=('"valid": true',)
    ),
    "python starter.py reconcile run": Check(before=rows_deleted_by_hand, prints=("1 orphans",)),
    "python starter.py reconcile report": Check(prints=("1 orphans",)),
    "python starter.py reconcile report 42": Check(before=newest_report, prints=("sg-0123456789abcdef0",)),
    "python starter.py reconcile delete-orphan sg-0123456789abcdef0 --report 42": Check(
        prints=("deleted",), after=orphan_gone
    ),
}


def documented() -> list[DocCommand]:
    return [c for c in commands(README) + commands(RUNBOOK) if c.text not in NEVER_RUN_HERE]


def test_every_documented_command_is_checked():
    written = {c.text for c in documented()}
    assert [str(c) for c in documented() if c.text not in CHECKS] == [], "a documented command without a check"
    assert sorted(set(CHECKS) - written) == [], "a check for a command the docs no longer hold"
    script = (ROOT / "scripts" / "run-local.sh").read_text().strip().splitlines()
    assert script[-1] == 'exec .venv/bin/python -m devstack "$@"', "the docs fixture starts the stack as this does"


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Iterator[Session]:
    if shutil.which("curl") is None:
        pytest.fail("the documents' curl commands need curl on PATH")
    stack = RunningStack(tmp_path_factory.mktemp("docs"))
    try:
        stack.start()
        vpc_id, subnets = ensure_demo_network(f"http://127.0.0.1:{stack.ports['MOTO_PORT']}", "us-east-1")
        env = {
            **stack.env,
            "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
            "TENANTFLOW_API_URL": stack.api_url,
            "TEMPORAL_ADDRESS": f"127.0.0.1:{stack.ports['TEMPORAL_PORT']}",
            # As the tutorial's reader has them in their shell.
            "SECRET": str(stack.secrets["provision_secret"]),
            "TENANT_ORG_KEY": str(stack.secrets["demo_org_key"]),
        }
        for var in ("TENANTFLOW_OPERATOR_TOKEN", "TENANTFLOW_PROVISION_SECRET", "TENANTFLOW_ORG_KEY"):
            env.pop(var, None)
        session = Session(stack, env)
        session.values.update(
            {
                "<vpc-id>": vpc_id,
                "<subnet-a>": subnets[0],
                "<subnet-b>": subnets[1],
            }
        )
        yield session
    finally:
        if stack.proc and stack.proc.poll() is None:
            stack.stop()


def run_documented(s: Session, doc: Path) -> None:
    """Every command in order; all that broke are named at the end (one failure cascades less
    than it would hide)."""
    broken: list[str] = []
    for command in commands(doc):
        if command.text in NEVER_RUN_HERE:
            continue
        check = CHECKS[command.text]
        filled = command.text  # until the situation before it is set up
        try:
            if check.before:
                check.before(s)
            filled = fill(command.text, s.values, s.stack.ports)
            done = s.run(filled)
            assert done.returncode == check.exit, f"exit {done.returncode}, the docs promise {check.exit}"
            for promised in check.prints:
                assert fill(promised, s.values, s.stack.ports) in done.stdout, f"{promised!r} not printed"
            if check.after:
                check.after(s, done.stdout)
        except (AssertionError, subprocess.TimeoutExpired, LookupError, ValueError, starter.ApiError) as failed:
            last = s.last
            printed = f"{last.stdout}{last.stderr}"[-3000:] if last else ""
            broken.append(f"{command}\n  ran: {filled}\n  {failed}\n{printed}")
    assert not broken, "\n\n".join(broken)


def test_readme_commands_work_as_written(docs: Session):
    run_documented(docs, README)


def test_runbook_commands_work_as_written(docs: Session):
    run_documented(docs, RUNBOOK)


# -- the README's API table: each row's request, answered as the row says --------------------------


@dataclass
class Row:
    """One row of the API table while it is probed: every answer a probe expects must be one the
    row names (its status, or 200 for a read or a row that names none, and its error code)."""

    session: Session
    request: str
    answer: str

    def call(
        self,
        method: str,
        path: str,
        status: int,
        body: Any = None,
        *,
        token: str | None = None,
        code: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[dict[str, str], Any]:
        named = {int(n) for n in re.findall(r"\b([2-5]\d\d)\b", self.answer)}
        if method == "GET" or not named:
            named.add(200)  # a read that answers
        assert status in named, f"probe expects {status}, the row names {sorted(named)}"
        assert code is None or f"`{code}`" in self.answer, f"probe expects {code}, the row does not name it"
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json", **(headers or {})}
        if token is not None or "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {token or self.session.secret}"
        req = urllib.request.Request(self.session.stack.api_url + path, data, sent, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                got, answer, got_headers = resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            got, answer, got_headers = err.code, err.read(), dict(err.headers)
        parsed = json.loads(answer) if answer else None
        assert got == status, f"{method} {path}: {got} {parsed}, the row says {status}"
        if code is not None:
            assert parsed["code"] == code, parsed
        return got_headers, parsed


def probe_org(s: Session) -> dict[str, Any]:
    return {
        "name": "Docs Probe",
        "slug": s.values.setdefault("probe", f"probe{secrets.token_hex(3)}"),
        "plan": "starter",
        "vpc_id": s.values["<vpc-id>"],
        "subnet_ids": [s.values["<subnet-a>"]],
    }


def demo_workspace(s: Session) -> dict[str, Any]:
    tenant = starter.TenantClient(s.stack.api_url, s.stack.secrets["demo_org_key"])
    return next(w for w in tenant.workspaces() if w["status"] == "running")


def new_key(s: Session, slug: str, **body: Any) -> str:
    status, key = s.operator.request("POST", f"/api/v1/orgs/{slug}/keys", {"name": "docs", **body})
    assert status == 201, key
    return str(key["key"])


def _create(r: Row) -> None:
    headers, org = r.call("POST", "/cp/orgs", 202, probe_org(r.session))
    assert headers["Location"] == f"/api/v1/orgs/{org['slug']}" and "Retry-After" in headers, headers
    r.session.values["probe_id"] = org["id"]
    settled(r.session, "active", org["slug"])


def _repeat(r: Row) -> None:
    assert r.call("POST", "/cp/orgs", 202, probe_org(r.session))[1]["id"] == r.session.values["probe_id"]


def _invalid(r: Row) -> None:
    for bad in ({"slug": "Not A Slug"}, {"plan": "platinum"}, {"vpc_id": "vpc-!!"}, {"extra": 1}, {"name": 7}):
        r.call("POST", "/api/v1/orgs", 400, {**probe_org(r.session), "slug": "neverx", **bad}, code="VALIDATION_FAILED")


def _unknown_network(r: Row) -> None:
    body = {**probe_org(r.session), "slug": "neverx", "vpc_id": "vpc-0123456789abcdef0"}
    assert "vpc-0123456789abcdef0" in r.call("POST", "/api/v1/orgs", 400, body, code="INVALID_NETWORK")[1]["error"]


def _framing(r: Row) -> None:
    r.call("POST", "/api/v1/orgs", 400, raw=b"{not json")
    r.call("POST", "/api/v1/orgs", 415, raw=b"{}", headers={"Content-Type": "text/plain"})
    r.call("POST", "/api/v1/orgs", 413, raw=b"{" + b" " * (65 * 1024) + b"}")


def _paging(r: Row) -> None:
    first = r.call("GET", "/api/v1/orgs?limit=1", 200)[1]
    assert len(first["orgs"]) == 1 and first["next_cursor"], first
    r.call("GET", "/api/v1/orgs?cursor=not-ours", 400, code="INVALID_CURSOR")


def _quota(r: Row) -> None:
    org = r.call("PATCH", "/cp/orgs/demo", 200, {"max_workspaces": 1})[1]
    assert org["over_quota"]["over"] >= 1, org
    r.session.values["over_quota"] = "yes"


def _over_quota(r: Row) -> None:
    ws = {"name": "one-too-many", "role": "x", "runtime": "hermes", "tier": 1, "model": "m"}
    key = r.session.stack.secrets["demo_org_key"]
    r.call("POST", "/workspaces", 409, ws, token=key, code="QUOTA_EXCEEDED")
    status, body = r.session.operator.request("PATCH", "/api/v1/orgs/demo", {"max_workspaces": 10})
    assert status == 200, body


def _not_active(r: Row) -> None:
    slug = r.session.values["probe"]
    key = new_key(r.session, slug)
    r.session.values["probe_key"] = key
    status, body = r.session.operator.request("POST", f"/api/v1/orgs/{slug}/suspend", {"reason": "docs"})
    assert status == 202, body
    r.call("GET", "/workspaces", 403, token=key, code="ORG_NOT_ACTIVE")


def _other_org(r: Row) -> None:
    slug = r.session.values["probe"]
    settled(r.session, "suspended", slug)
    status, body = r.session.operator.request("POST", f"/api/v1/orgs/{slug}/resume")
    assert status == 202, body
    settled(r.session, "active", slug)
    key = new_key(r.session, slug)
    r.call("GET", f"/workspaces/{demo_workspace(r.session)['id']}", 404, token=key)


API_TABLE: dict[str, Callable[[Row], None] | str] = {
    "`POST /cp/orgs` (valid)": _create,
    "the same POST again": _repeat,
    "same slug, different body": lambda r: r.call(
        "POST", "/cp/orgs", 409, {**probe_org(r.session), "name": "Other"}, code="ORG_EXISTS"
    ),
    "invalid slug / name / plan / VPC / subnets, unknown field, wrong type": _invalid,
    "a VPC or subnet EC2 does not know, or a subnet of another VPC": _unknown_network,
    "the network check not answered in time (no worker running, EC2 unreachable)": "tests/test_api_orgs.py",
    "malformed JSON / wrong content type / body > 64 KiB": _framing,
    "no or wrong operator bearer": lambda r: r.call("GET", "/api/v1/orgs", 401, token="tfo_wrong"),
    "`GET /cp/orgs/{slug}`": lambda r: r.call("GET", "/cp/orgs/demo", 200),
    "`GET /api/v1/orgs?status=&prefix=&name=&limit=&cursor=`": lambda r: r.call(
        "GET", "/api/v1/orgs?status=active&prefix=de&name=demo", 200
    ),
    "`?name=&limit=&cursor=` on every list (orgs, teardowns, keys, workspaces, the operator's views of them, operator tokens; reconcile reports and the audit page only)": _paging,
    "`PATCH /cp/orgs/{slug}` `{max_workspaces, max_tier, billing_plan}`": _quota,
    "`POST /cp/orgs/{slug}/keys` `{name, scopes?, expires_at?}` (operator) / `POST /keys` (tenant, `keys:admin`)": lambda r: (
        r.call("POST", "/api/v1/orgs/demo/keys", 201, {"name": "docs-table", "scopes": ["read"]})
    ),
    "a tenant route with a key lacking its scope / an expired key": lambda r: r.call(
        "POST", "/workspaces", 403, {}, token=new_key(r.session, "demo", scopes=["read"]), code="MISSING_SCOPE"
    ),
    "`POST /api/v1/operator-tokens` `{name}`, `GET`, `DELETE .../{id}` (operator)": lambda r: r.call(
        "POST", "/api/v1/operator-tokens", 201, {"name": "docs-table"}
    ),
    "any tenant route with a key of an org that is not active": _not_active,
    "`GET /keys` (`read`), `DELETE /keys/{id}` (`keys:admin`)": lambda r: r.call(
        "GET", "/keys", 200, token=r.session.stack.secrets["demo_org_key"]
    ),
    "`GET /api/v1/orgs/{slug}/keys`, `GET`/`DELETE .../keys/{id}` (operator)": lambda r: r.call(
        "GET", "/api/v1/orgs/demo/keys", 200
    ),
    "`GET /api/v1/orgs/{slug}/workspaces`, `GET`/`DELETE .../workspaces/{id}` (operator)": lambda r: r.call(
        "GET", f"/api/v1/orgs/demo/workspaces/{demo_workspace(r.session)['id']}", 200
    ),
    "`GET /api/v1/reconcile/reports`, `GET .../reports/{id}`, `POST /api/v1/reconcile/runs` (operator)": lambda r: (
        r.call("GET", "/api/v1/reconcile/reports", 200)
    ),
    "`POST /api/v1/reconcile/orphan-deletions` `{report_id, cloud_id}`, `GET .../orphan-deletions/{id}` (operator)": "python starter.py reconcile delete-orphan sg-0123456789abcdef0 --report 42",
    "`POST /workspaces` `{name, role, runtime, tier, model}`": 'curl -X POST http://127.0.0.1:8080/workspaces -H "Authorization: Bearer $TENANT_ORG_KEY" -H "Content-Type: application/json" -d \'{"name": "production-agent-1", "role": "Production inference worker", "runtime": "hermes", "tier": 3, "model": "claude-sonnet-4"}\'',
    "over `max_workspaces`, or `tier` above `max_tier`": _over_quota,
    "`GET /workspaces`, `GET /workspaces/{id}`": lambda r: r.call(
        "GET", f"/workspaces/{demo_workspace(r.session)['id']}", 200, token=r.session.stack.secrets["demo_org_key"]
    ),
    "`DELETE /workspaces/{id}`": f"{VENV} workspace delete ws_0123456789ab",
    "another org's workspace or key": _other_org,
    # An agent registers and heartbeats in every workspace that reaches `running`.
    "`POST /registry/register` (Bearer one-time token) `{workspace_id, agent_cert_sha256}`": f'{VENV} workspace create --name agent-1 --role "Inference worker" --tier 2',
    "`POST /registry/heartbeat` (Bearer workspace token) `{workspace_id, tasks_handled, avg_response_time_ms}`": f'{VENV} workspace create --name agent-1 --role "Inference worker" --tier 2',
    "`POST /cp/orgs/{slug}/suspend` `{reason?, stop_instances?}` / `.../resume`": lambda r: r.call(
        "POST", "/cp/orgs/demo/resume", 409, {}
    ),
    '`DELETE /cp/orgs/{slug}` `{"confirm": "<slug>", "delete_workspaces": true}`': lambda r: r.call(
        "DELETE", "/cp/orgs/demo", 400, {"confirm": "not-demo"}
    ),
    "`GET /cp/orgs/{slug}` of a deleted org": lambda r: r.call("GET", "/cp/orgs/acme", 200),
    "`GET /cp/orgs/{slug}` while a step waits for an operator / after `abandon`": f"temporal workflow signal --workflow-id {ACME_RUNBOOK} --name abandon",
    "`POST /cp/orgs/{slug}/retry` / `abandon` (also `.../teardown/retry`), `GET /cp/teardowns`": lambda r: r.call(
        "POST", "/cp/orgs/demo/retry", 409, {}, code="NOTHING_PARKED"
    ),
    "`GET /cp/orgs/{slug}/audit?org_id=&since=&until=&limit=&cursor=`": lambda r: r.call(
        "GET", "/cp/orgs/acme/audit?limit=5", 200
    ),
    "`GET /cp/audit`": lambda r: r.call("GET", "/cp/audit", 200),
}


def test_every_api_table_row_is_probed():
    rows = [request for request, _ in api_table_rows()]
    assert [r for r in rows if r not in API_TABLE] == [], "an API table row without a probe"
    assert sorted(set(API_TABLE) - set(rows)) == [], "a probe for a row the table no longer holds"
    for by in API_TABLE.values():
        if isinstance(by, str):
            assert by in CHECKS or (ROOT / by).exists(), by


def test_api_table_rows_answer_as_written(docs: Session):
    """After the README's and the runbook's commands (rows they cover are checked there)."""
    broken = []
    for request, answer in api_table_rows():
        probe = API_TABLE[request]
        if isinstance(probe, str):
            continue
        try:
            probe(Row(docs, request, answer))
        except (AssertionError, KeyError, starter.ApiError) as failed:
            broken.append(f"{request}\n  {failed!r}")
    assert not broken, "\n\n".join(broken)
