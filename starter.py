"""The operator's command line: starts operations through the API and follows them to the end.

    python starter.py onboard --slug acme --name "Acme Corp" --plan pro \\
        --vpc-id vpc-0a1b2c3d --subnet-ids subnet-abc123,subnet-def456
    python starter.py status acme
    python starter.py watch acme                         # until it settles (active, suspended, failed, deleted, parked)
    python starter.py orgs [--status suspended,deleting] [--prefix ac] [--name acme]   # every org, its operation
    python starter.py quota acme --max-workspaces 10 --max-tier 3 --billing-plan pro
    python starter.py mint-key acme --name ci [--scopes read,workspaces:write] [--expires-at 2027-01-01T00:00:00Z]
    python starter.py operator-token create alice        # prints a named operator token once
    python starter.py operator-token list [--name alice] | revoke tfo_0123456789ab
    python starter.py workspace create --name agent-1 --role "Inference worker" --runtime hermes \\
        --tier 2 --model claude-sonnet-4                  # as the tenant: TENANTFLOW_ORG_KEY
    python starter.py workspace list [--name agent] | status ws_0123456789ab | delete ws_0123456789ab
    python starter.py suspend acme --reason "unpaid invoice" [--stop-instances]
    python starter.py resume acme
    python starter.py delete acme --confirm acme [--delete-workspaces]   # follows the cascade
    python starter.py teardowns                          # deletions under way; which wait for you
    python starter.py retry acme | abandon acme           # decide on a parked step (or retry a failed onboarding)
    python starter.py audit acme                         # the trail, and whether the chain verifies
    python starter.py audit acme --since 2026-11-01T00:00:00Z [--until ...] [--org-id org_...]
    python starter.py audit --verify                     # every org's chain against the newest anchor
    python starter.py reconcile report [ID]              # the latest reconcile reports, or one in full
    python starter.py reconcile run                      # reconcile now (the schedule's caps) and show its report
    python starter.py reconcile delete-orphan i-0123456789abcdef0 [--report 42]   # one orphan a report names

Every command takes --json: one JSON document on stdout (the API's answer, or for a followed
operation the org or workspace as it settled; for a refusal the API's error body), no progress.

The API URL comes from --api-url or TENANTFLOW_API_URL (default http://127.0.0.1:8080), the
operator's credential from TENANTFLOW_OPERATOR_TOKEN (a named token) or else
TENANTFLOW_PROVISION_SECRET (the deprecated shared secret), and the tenant's key from
TENANTFLOW_ORG_KEY; on the local stack the secret and the key fall back to the stack's saved state,
secrets.json in TENANTFLOW_STATE_DIR (default .tenantflow, relative to this file's directory), so
the CLI works from any directory.

Exit status, from the state the change left:
  0  done (the operation finished, or the org settled active, suspended or deleted)
  1  failed (a failed onboarding, suspend or resume; a broken audit chain)
  2  refused: the API answered 4xx (or the command line was invalid); nothing changed
  3  parked: a step waits for an operator (retry or abandon), or an abandoned delete waits for
     another delete
  4  the API could not be reached (nothing was sent), or stopped answering while an operation was
     followed (it goes on: watch it); one line on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

from domain.operations import Operation
from domain.org_entity import DONE_STATUS, FAILED_STATUS, RUNNING_STATUS, Plan
from domain.scopes import ALL_SCOPES

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_API_URL = "http://127.0.0.1:8080"
PLANS: tuple[str, ...] = get_args(Plan)
TIERS = (1, 2, 3, 4)  # domain.resources.Tier
RETRY_SETTLES_SECONDS = 3.0

Outcome = Literal["done", "failed", "parked"]
EXIT_CODES: dict[Outcome, int] = {"done": 0, "failed": 1, "parked": 3}
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 4


class ApiError(Exception):
    """The API answered with an error status (its JSON body in ``body``)."""

    def __init__(self, status: int, body: dict):
        super().__init__(body.get("error", f"HTTP {status}"))
        self.status, self.body = status, body


class Unreachable(ConnectionError):
    """Nothing answered at the API's address (refused, timed out, reset)."""

    def __init__(self, url: str, reason: object):
        super().__init__(f"cannot reach the tenantflow API at {url} ({reason})")
        self.url = url


# -- HTTP clients ---------------------------------------------------------------------------------


class ApiClient:
    def __init__(self, base_url: str, secret: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._secret}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                payload = json.loads(err.read() or b"{}")
            except ValueError:
                payload = {"error": f"HTTP {err.code}"}
            raise ApiError(err.code, payload) from None
        except OSError as err:  # URLError, refused, reset, timed out
            raise Unreachable(self.base_url, getattr(err, "reason", err)) from None

    def pages(self, path: str, key: str, **params: object) -> list[dict]:
        """Every item of a paged list, following ``next_cursor``."""
        items: list[dict] = []
        cursor = None
        while True:
            page = self.request("GET", with_query(path, **params, cursor=cursor))[1]
            items += page[key]
            if not (cursor := page["next_cursor"]):
                return items


def with_query(path: str, **params: object) -> str:
    """``path?k=v...`` of the parameters that are set."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    return f"{path}?{query}" if query else path


class OperatorClient(ApiClient):
    def onboard(self, **body: Any) -> dict:
        return self.request("POST", "/api/v1/orgs", body)[1]

    def org(self, slug: str) -> dict:
        return self.request("GET", f"/api/v1/orgs/{slug}")[1]

    def orgs(self, *, status: str = "", prefix: str = "", name: str = "") -> list[dict]:
        return self.pages("/api/v1/orgs", "orgs", status=status, prefix=prefix, name=name, limit=100)

    def set_quota(self, slug: str, **body: Any) -> dict:
        return self.request("PATCH", f"/api/v1/orgs/{slug}", body)[1]

    def mint_key(self, slug: str, name: str, scopes: list[str] | None = None, expires_at: str | None = None) -> dict:
        body = {"name": name, "scopes": scopes, "expires_at": expires_at}
        return self.request("POST", f"/api/v1/orgs/{slug}/keys", {k: v for k, v in body.items() if v})[1]

    def create_operator_token(self, name: str) -> dict:
        return self.request("POST", "/api/v1/operator-tokens", {"name": name})[1]

    def operator_tokens(self, name: str = "") -> list[dict]:
        return self.pages("/api/v1/operator-tokens", "tokens", name=name, limit=200)

    def revoke_operator_token(self, token_id: str) -> dict:
        return self.request("DELETE", f"/api/v1/operator-tokens/{token_id}")[1]

    def suspend(self, slug: str, reason: str | None = None, stop_instances: bool = False) -> dict:
        return self.request(
            "POST", f"/api/v1/orgs/{slug}/suspend", {"reason": reason, "stop_instances": stop_instances}
        )[1]

    def resume(self, slug: str) -> dict:
        return self.request("POST", f"/api/v1/orgs/{slug}/resume", {})[1]

    def delete(self, slug: str, confirm: str, delete_workspaces: bool) -> dict:
        return self.request(
            "DELETE", f"/api/v1/orgs/{slug}", {"confirm": confirm, "delete_workspaces": delete_workspaces}
        )[1]

    def teardowns(self) -> list[dict]:
        return self.pages("/api/v1/teardowns", "teardowns", limit=200)

    def decide(self, slug: str, decision: str) -> dict:
        return self.request("POST", f"/api/v1/orgs/{slug}/{decision}", {})[1]

    def audit(self, slug: str, **filters: str | None) -> dict:
        """The org's trail, every page: its records and the chain of the last page."""
        answer: dict = {}
        records: list[dict] = []
        cursor = None
        while True:
            answer = self.request("GET", with_query(f"/api/v1/orgs/{slug}/audit", **filters, cursor=cursor))[1]
            records += answer["records"]
            if not (cursor := answer["next_cursor"]):
                return {**answer, "records": records}

    def reconcile_reports(self, limit: int) -> list[dict]:
        return self.request("GET", with_query("/api/v1/reconcile/reports", limit=limit))[1]["reports"]

    def reconcile_report(self, report_id: str) -> dict:
        return self.request("GET", f"/api/v1/reconcile/reports/{report_id}")[1]

    def run_reconcile(self) -> dict:
        return self.request("POST", "/api/v1/reconcile/runs", {})[1]

    def delete_orphan(self, report_id: int, cloud_id: str) -> tuple[int, dict]:
        """202 and the deletion now under way, or 200 and the one that already settled it."""
        return self.request(
            "POST", "/api/v1/reconcile/orphan-deletions", {"report_id": report_id, "cloud_id": cloud_id}
        )

    def orphan_deletion(self, deletion_id: int) -> dict:
        return self.request("GET", f"/api/v1/reconcile/orphan-deletions/{deletion_id}")[1]

    def verify_audit(self) -> dict:
        return self.request("GET", "/api/v1/audit")[1]


class TenantClient(ApiClient):
    def create_workspace(self, **body: Any) -> dict:
        return self.request("POST", "/api/v1/workspaces", body)[1]

    def workspaces(self, name: str = "") -> list[dict]:
        return self.pages("/api/v1/workspaces", "workspaces", name=name, limit=200)

    def workspace(self, workspace_id: str) -> dict:
        return self.request("GET", f"/api/v1/workspaces/{workspace_id}")[1]

    def delete_workspace(self, workspace_id: str) -> dict:
        return self.request("DELETE", f"/api/v1/workspaces/{workspace_id}")[1]


# -- where a record settles -----------------------------------------------------------------------


def org_outcome(org: dict, operation: str | None = None) -> Outcome | None:
    """How ``operation`` (any operation when None) has settled on this org record; None while it
    runs, or while the record still shows the state from before it (a stale read)."""
    if (org.get("progress") or {}).get("waiting_for_operator"):
        return "parked"
    status, reason = org["status"], org.get("failure_reason")
    for op in [Operation(operation)] if operation else list(DONE_STATUS):
        if status == DONE_STATUS[op] and not reason:
            return "done"
        if status == FAILED_STATUS[op] and reason:
            # An abandoned delete leaves the org deleting: the next step is an operator's.
            return "parked" if status == RUNNING_STATUS[op] else "failed"
    return None


def org_is_moving(org: dict, operation: str) -> bool:
    """The record shows ``operation`` under way (not the state from before it)."""
    return bool(org["status"] == RUNNING_STATUS[Operation(operation)])


# (done, failed) by operation. A deletion retries until it finishes: a "failed" read while one
# runs is the state from before it.
WORKSPACE_ENDS: dict[str, tuple[str, str | None]] = {"create": ("running", "failed"), "delete": ("deleted", None)}


def workspace_outcome(workspace: dict, operation: str) -> Outcome | None:
    done, failed = WORKSPACE_ENDS[operation]
    return "done" if workspace["status"] == done else "failed" if workspace["status"] == failed else None


# -- following an operation -----------------------------------------------------------------------


def progress_line(label: str, record: dict, done: bool, width: int = 24, last: dict | None = None) -> str:
    # A finished operation is answered from the record, without progress: keep the last total.
    p = record.get("progress") or last or {}
    total = p.get("steps_total") or 1
    steps = total if done else p.get("steps_done", 0)
    step = "done" if done else (p.get("step") or record["status"])
    filled = int(width * steps / total)
    return f"{label} [{'#' * filled}{'-' * (width - filled)}] {steps}/{total} {record['status']}: {step}"


def follow(
    fetch: Callable[[], dict],
    label: str,
    outcome: Callable[[dict], Outcome | None],
    *,
    relevant: Callable[[dict], bool] = lambda record: True,
    gone_is_done: bool = False,
    out: TextIO | None = sys.stdout,
    interval: float = 0.5,
    timeout: float = 900.0,
    unreachable_for: float = 60.0,
    api_answered: bool = True,
) -> dict:
    """Poll a record until ``outcome`` says it settled, drawing a progress bar on ``out`` (None:
    silent); returns the final record. A record ``relevant`` rejects (one read before the change
    shows) is neither drawn nor judged. ``gone_is_done``: a 404 ends the wait (a deletion
    finished). The API restarting is waited out for ``unreachable_for`` seconds, once it has
    answered (``api_answered``: the command before the follow was answered)."""
    deadline = time.monotonic() + timeout
    tty = out is not None and out.isatty()
    last_line, last_progress = "", None
    reached = time.monotonic() if api_answered else None
    record: dict | None = None
    while True:
        try:
            record = fetch()
            reached = time.monotonic()
        except ApiError as err:
            if err.status == 404 and gone_is_done:
                record = {"status": "deleted"}
            elif err.status < 500:
                raise
            else:
                record = None  # the API restarting: keep polling
        except Unreachable:
            if reached is None or time.monotonic() - reached > unreachable_for:
                raise
            record = None
        if record is not None and relevant(record):
            settled = outcome(record)
            last_progress = record.get("progress") or last_progress
            line = progress_line(label, record, settled == "done", last=last_progress)
            if out is not None and line != last_line:
                out.write(("\r" + line.ljust(100)) if tty else line + "\n")
                out.flush()
                last_line = line
            if settled is not None:
                if tty and out is not None:
                    out.write("\n")
                return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label} still {record and record['status']} after {timeout:.0f}s")
        time.sleep(interval)


def follow_org(
    client: OperatorClient,
    slug: str,
    out: TextIO | None = sys.stdout,
    *,
    operation: str | None = None,
    retried: bool = False,
) -> dict:
    """Follow an org until ``operation`` (any, when None) settles: done, failed or parked.

    ``retried``: a parked step was just retried. The step's workflow learns of the retry a moment
    after the 202, and answers "parked" until then: a parked reading counts only after one that
    is not, or after a few seconds (the step parked again at once)."""
    started, unparked = time.monotonic(), False

    def relevant(org: dict) -> bool:
        nonlocal unparked
        parked = org_outcome(org, operation) == "parked"
        unparked = unparked or not parked
        if retried and parked and not unparked and time.monotonic() - started < RETRY_SETTLES_SECONDS:
            return False
        return operation is None or org_is_moving(org, operation) or org_outcome(org, operation) is not None

    return follow(
        lambda: client.org(slug),
        slug,
        lambda org: org_outcome(org, operation),
        relevant=relevant,
        out=out,
        api_answered=operation is not None,
    )


def follow_workspace(
    client: TenantClient, workspace_id: str, out: TextIO | None = sys.stdout, *, deleting: bool = False
) -> dict:
    operation = "delete" if deleting else "create"
    moving = "deleting" if deleting else "provisioning"
    return follow(
        lambda: client.workspace(workspace_id),
        workspace_id,
        lambda ws: workspace_outcome(ws, operation),
        relevant=lambda ws: ws["status"] == moving or workspace_outcome(ws, operation) is not None,
        gone_is_done=deleting,
        out=out,
    )


# -- the local stack's secrets --------------------------------------------------------------------


class MissingCredential(Exception):
    pass


def state_dir() -> Path:
    """Where the local stack keeps its state: TENANTFLOW_STATE_DIR, relative to the project."""
    return PROJECT_DIR / os.environ.get("TENANTFLOW_STATE_DIR", ".tenantflow")


def local_secret(env_var: str, state_key: str) -> str:
    if secret := os.environ.get(env_var):
        return secret
    saved_in = state_dir() / "secrets.json"
    if saved_in.exists() and state_key in (saved := json.loads(saved_in.read_text())):
        return str(saved[state_key])
    raise MissingCredential(
        f"set {env_var}, or start the local stack (python -m devstack), which saves it in {saved_in}"
    )


# -- output ---------------------------------------------------------------------------------------


class Output:
    """What a command prints: human lines, or (``--json``) only the final JSON document."""

    def __init__(self, out: TextIO, as_json: bool):
        self.out, self.as_json = out, as_json

    @property
    def progress(self) -> TextIO | None:
        return None if self.as_json else self.out

    def line(self, text: str) -> None:
        if not self.as_json:
            self.out.write(text + "\n")

    def result(self, document: Any, text: str | None = None) -> None:
        """The command's answer: ``document`` as JSON, or ``text`` (default: the document, indented)."""
        if self.as_json:
            self.out.write(json.dumps(document, indent=2) + "\n")
        else:
            self.out.write((json.dumps(document, indent=2) if text is None else text) + "\n")

    def table(self, document: Any, rows: Sequence[Sequence[object]], empty: str) -> None:
        """Rows in aligned columns (the last one unpadded), or ``empty`` when there are none."""
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)] if rows else []
        lines = [
            "  ".join([*(str(c).ljust(w) for c, w in zip(row, widths, strict=False)), str(row[-1])]).rstrip()
            for row in rows
        ]
        self.result(document, "\n".join(lines) if rows else empty)


ORG_KEYS = ("id", "slug", "status", "neon_project_id", "neon_branch_id", "security_group_id")
WORKSPACE_KEYS = ("id", "name", "status", "instance_id", "agent_url", "last_seen")


def report_org(org: dict, outcome: Outcome, show: Output) -> int:
    """The settled org: a summary (or the record, as JSON); its exit status."""
    slug = org["slug"]
    if org["status"] == "deleted" and "receipt" in org:
        receipt = org["receipt"]
        text = (
            f"deleted {slug}: {len(receipt['resources'])} resources, "
            f"{len(receipt['workspaces'])} workspaces (the receipt: starter.py status {slug})"
        )
    elif (p := org.get("progress") or {}).get("waiting_for_operator"):
        text = (
            f"PARKED on {p['step']}: {p['failure_reason']}\n"
            f"fix the cause, then: starter.py retry {slug}  (or: starter.py abandon {slug})"
        )
    elif outcome == "parked":
        text = (
            f"{slug} is {org['status']}: {org['failure_reason']}\nfinish it: starter.py delete {slug} --confirm {slug}"
        )
    elif outcome == "failed":
        text = f"FAILED ({org['status']}): {org['failure_reason']}"
    else:
        text = json.dumps({k: org.get(k) for k in ORG_KEYS if k in org}, indent=2)
    show.result(org, text)
    return EXIT_CODES[outcome]


def report_workspace(workspace: dict, outcome: Outcome, show: Output) -> int:
    if outcome == "failed":
        text = f"FAILED: {workspace.get('failure_reason')}"
    elif workspace["status"] == "deleted":
        text = f"{workspace.get('id', '')} deleted".strip()
    else:
        text = json.dumps({k: workspace.get(k) for k in WORKSPACE_KEYS if k in workspace}, indent=2)
    show.result(workspace, text)
    return EXIT_CODES[outcome]


def accepted_line(slug: str, accepted: dict, command: str) -> str:
    """The first line after a command: the state its 202 reports (recorded before it answered)."""
    running = f", {accepted['workflow_id']}" if accepted.get("workflow_id") else ""
    return f"{slug}: {accepted['status']} ({command} accepted{running})"


# -- API messages in the CLI's words --------------------------------------------------------------

# The request fields a command's flags set: the API's messages name the fields.
FLAGS = {
    "onboard": ("name", "slug", "plan", "vpc_id", "subnet_ids"),
    "quota": ("max_workspaces", "max_tier", "billing_plan"),
    "mint-key": ("name", "scopes", "expires_at"),
    "suspend": ("reason", "stop_instances"),
    "delete": ("confirm", "delete_workspaces"),
    "workspace": ("name", "role", "runtime", "tier", "model"),
}


def in_cli_words(message: str, command: str) -> str:
    """``send "delete_workspaces": true`` -> ``pass --delete-workspaces``; a quoted or snake_case
    field the command has a flag for -> the flag."""
    for field in FLAGS.get(command, ()):
        flag = "--" + field.replace("_", "-")
        message = re.sub(rf'send "{field}": true', f"pass {flag}", message)
        message = message.replace(f'"{field}"', flag)
        if "_" in field:
            message = re.sub(rf"\b{field}\b", flag, message)
    return message


# -- the command line -----------------------------------------------------------------------------


class DefaultsHelp(argparse.HelpFormatter):
    """Each option's help names its default, when it has one worth naming."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, "", argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # Also after the command; SUPPRESS keeps the subcommand from resetting the value given before it.
    common.add_argument("--api-url", default=argparse.SUPPRESS, help="the API's base URL (as before the command)")
    common.add_argument(
        "--json", action="store_true", help="print one JSON document (the API's answer or the final state), no progress"
    )

    def add(subparsers: Any, name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, help=text, description=text, parents=[common], formatter_class=DefaultsHelp
        )
        return parser

    parser = argparse.ArgumentParser(
        prog="starter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--api-url",
        default=os.environ.get("TENANTFLOW_API_URL", DEFAULT_API_URL),
        help=f"the API's base URL (TENANTFLOW_API_URL, default {DEFAULT_API_URL})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    no_wait = {"action": "store_true", "help": "print the 202 answer and return without following"}

    onboard = add(sub, "onboard", "onboard an org and follow it until active (0) or failed (1)")
    onboard.add_argument("--slug", required=True, help="the org's unique id in URLs: a-z, 0-9, -")
    onboard.add_argument("--name", required=True, help="the org's display name")
    onboard.add_argument("--plan", default="pro", choices=PLANS, help="the org's plan")
    onboard.add_argument("--vpc-id", required=True, help="the tenant's VPC (vpc-...)")
    onboard.add_argument("--subnet-ids", required=True, help="its subnets, comma-separated (subnet-a,subnet-b)")
    onboard.add_argument("--no-wait", **no_wait)  # type: ignore[arg-type]

    add(sub, "status", "show an org (exit 1 if it failed)").add_argument("slug", help="the org")
    add(
        sub, "watch", "follow an org until it settles: active, suspended or deleted (0), failed (1), parked (3)"
    ).add_argument("slug", help="the org")

    orgs = add(sub, "orgs", "list orgs with their status and the operation in progress")
    orgs.add_argument("--status", default="", help="only these statuses, comma-separated (e.g. suspended,deleting)")
    orgs.add_argument("--prefix", default="", help="only slugs starting with this")
    orgs.add_argument("--name", default="", help="only orgs whose name contains this (any case)")

    quota = add(sub, "quota", "set an org's quotas (give at least one; the others stay as they are)")
    quota.add_argument("slug", help="the org")
    quota.add_argument("--max-workspaces", type=int, metavar="N", help="workspaces the org may hold (0-10000)")
    quota.add_argument("--max-tier", type=int, choices=TIERS, help="the largest instance tier it may use")
    quota.add_argument("--billing-plan", choices=PLANS, help="the plan it is billed on")

    mint = add(sub, "mint-key", "mint an org API key (printed once)")
    mint.add_argument("slug", help="the org")
    mint.add_argument("--name", default="operator-minted", help="the key's name")
    mint.add_argument(
        "--scopes", help=f"comma-separated among {', '.join(ALL_SCOPES)} (default: all of them)", default=None
    )
    mint.add_argument("--expires-at", help="ISO 8601 time with a zone, e.g. 2027-01-01T00:00:00Z (default: never)")

    tokens = add(sub, "operator-token", "named operator tokens: create (printed once), list, revoke")
    tokens_sub = tokens.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    add(tokens_sub, "create", "a new token for NAME (a second live one while rotating)").add_argument(
        "name", help="a-z first, then a-z 0-9 . _ - (2-40 characters)"
    )
    add(tokens_sub, "list", "every token, without secrets").add_argument(
        "--name", default="", help="only tokens whose name contains this (any case)"
    )
    add(tokens_sub, "revoke", "revoke a token").add_argument("token_id", help="its id, tfo_<id>")

    suspend = add(sub, "suspend", "suspend an org (keys refused, creation frozen) and follow it until suspended")
    suspend.add_argument("slug", help="the org")
    suspend.add_argument("--reason", help="why, recorded and shown on the org (default: none)")
    suspend.add_argument("--stop-instances", action="store_true", help="also stop its workspaces' instances")
    add(sub, "resume", "resume a suspended org and follow it until active").add_argument("slug", help="the org")

    delete = add(sub, "delete", "hard-delete an org and everything it owns; follows the cascade")
    delete.add_argument("slug", help="the org")
    delete.add_argument("--confirm", required=True, help="must equal the slug")
    delete.add_argument(
        "--delete-workspaces", action="store_true", help="terminate its workspaces too (refused without it if any)"
    )
    add(sub, "teardowns", "deletions under way, and which wait for an operator")
    add(sub, "retry", "run a parked step again (or a failed onboarding) and follow it").add_argument(
        "slug", help="the org"
    )
    add(sub, "abandon", "stop the operation in progress on its parked step").add_argument("slug", help="the org")

    audit = add(sub, "audit", "an org's audit trail, and every chain verified against the newest anchor")
    audit.add_argument("slug", nargs="?", help="the org whose records to list")
    audit.add_argument("--verify", action="store_true", help="only verify (every org's chain); exit 1 if broken")
    audit.add_argument("--since", help="only records from this time on (ISO 8601 with a zone)")
    audit.add_argument("--until", help="only records before this time (ISO 8601 with a zone)")
    audit.add_argument(
        "--org-id", help="an earlier org that had the slug (default: the current one; the answer lists them all)"
    )

    reconcile = add(sub, "reconcile", "reconciliation of cloud resources against the ledger")
    reconcile_sub = reconcile.add_subparsers(dest="reconcile_command", required=True, metavar="ACTION")
    report = add(reconcile_sub, "report", "the latest reports, or one in full (its orphans and drifts)")
    report.add_argument("report_id", nargs="?", help="a report's id (default: list the latest)")
    report.add_argument("--limit", type=int, default=20, help="how many of the latest to list (1-200)")
    run = add(reconcile_sub, "run", "reconcile now, with the schedule's caps, and show the run's report")
    run.add_argument("--wait", type=float, default=300.0, metavar="SECONDS", help="how long to wait for its report")
    drop = add(
        reconcile_sub,
        "delete-orphan",
        "delete one orphan a report names, re-checked first and within the caps: deleted or already gone (0),"
        " failed (1), refused (2)",
    )
    drop.add_argument("cloud_id", help="the orphan's cloud id as the report shows it (i-..., sg-..., br-...)")
    drop.add_argument("--report", type=int, metavar="ID", help="the report that names it (default: the newest report)")
    drop.add_argument("--wait", type=float, default=300.0, metavar="SECONDS", help="how long to wait for the outcome")

    ws = add(sub, "workspace", "the tenant's workspaces (with TENANTFLOW_ORG_KEY)")
    ws_sub = ws.add_subparsers(dest="ws_command", required=True, metavar="ACTION")
    create = add(ws_sub, "create", "create a workspace and follow it until running (0) or failed (1)")
    create.add_argument("--name", required=True, help="unique in the org")
    create.add_argument("--role", required=True, help="what the agent is for, free text")
    create.add_argument("--runtime", default="hermes", help="the agent runtime")
    create.add_argument("--tier", type=int, default=2, choices=TIERS, help="instance size (up to the org's max-tier)")
    create.add_argument("--model", default="claude-sonnet-4", help="the model the agent uses")
    create.add_argument("--no-wait", **no_wait)  # type: ignore[arg-type]
    add(ws_sub, "list", "the org's workspaces").add_argument(
        "--name", default="", help="only workspaces whose name contains this (any case)"
    )
    add(ws_sub, "status", "show a workspace (exit 1 if it failed)").add_argument("workspace_id", help="ws_<id>")
    add(ws_sub, "delete", "delete a workspace and follow it until its instance is terminated").add_argument(
        "workspace_id", help="ws_<id>"
    )
    return parser


# -- commands -------------------------------------------------------------------------------------


def _tenant_command(args: argparse.Namespace, show: Output) -> int:
    client = TenantClient(args.api_url, local_secret("TENANTFLOW_ORG_KEY", "demo_org_key"))
    if args.ws_command == "create":
        created = client.create_workspace(
            name=args.name, role=args.role, runtime=args.runtime, tier=args.tier, model=args.model
        )
        if args.no_wait:
            show.result(created, f"accepted: {created['id']} ({created['status']})")
            return 0
        show.line(f"accepted: {created['id']} ({created['status']})")
        workspace = follow_workspace(client, created["id"], show.progress)
        return report_workspace(workspace, workspace_outcome(workspace, "create") or "failed", show)
    if args.ws_command == "list":
        listed = client.workspaces(args.name)
        rows = [(w["id"], w["name"], f"tier {w['tier']}", w["status"], w["instance_id"] or "-") for w in listed]
        show.table({"workspaces": listed}, rows, "no workspaces")
        return 0
    if args.ws_command == "delete":
        accepted = client.delete_workspace(args.workspace_id)
        show.line(f"{args.workspace_id}: {accepted.get('status', 'deleting')}")
        workspace = follow_workspace(client, args.workspace_id, show.progress, deleting=True)
        return report_workspace(
            {"id": args.workspace_id, **workspace}, workspace_outcome(workspace, "delete") or "failed", show
        )
    record = client.workspace(args.workspace_id)
    show.result(record)
    return 1 if record["status"] == "failed" else 0


def _onboard(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    created = client.onboard(
        name=args.name,
        slug=args.slug,
        plan=args.plan,
        vpc_id=args.vpc_id,
        subnet_ids=[s for s in args.subnet_ids.split(",") if s],
    )
    if args.no_wait:
        show.result(created, f"accepted: {created['id']} ({created['status']})")
        return 0
    show.line(f"accepted: {created['id']} ({created['status']})")
    return _follow_and_report(client, args.slug, "onboard", show)


def _follow_and_report(
    client: OperatorClient, slug: str, operation: str | None, show: Output, *, retried: bool = False
) -> int:
    """Follow ``operation`` (any settled state when it is None or not one the org runs itself)."""
    operation = operation if operation in DONE_STATUS else None
    org = follow_org(client, slug, show.progress, operation=operation, retried=retried)
    return report_org(org, org_outcome(org, operation) or "failed", show)


def _watch(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    return _follow_and_report(client, args.slug, None, show)


def _status(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    org = client.org(args.slug)
    show.result(org)
    outcome = org_outcome(org)
    return EXIT_CODES[outcome] if outcome else 0


def _quota(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    wanted = (("max_workspaces", args.max_workspaces), ("max_tier", args.max_tier), ("billing_plan", args.billing_plan))
    org = client.set_quota(args.slug, **{k: v for k, v in wanted if v is not None})
    show.result(org, json.dumps({k: org[k] for k in ("slug", "max_workspaces", "max_tier", "billing_plan")}))
    return 0


def _mint_key(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    scopes = [s for s in args.scopes.split(",") if s] if args.scopes else None
    key = client.mint_key(args.slug, args.name, scopes, args.expires_at)
    expiry = f", expires {key['expires_at']}" if key["expires_at"] else ""
    show.result(
        key, f"{key['key']}\n(shown once: store it now; id {key['id']}, scopes {','.join(key['scopes'])}{expiry})"
    )
    return 0


def _operator_token(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    if args.token_command == "create":
        token = client.create_operator_token(args.name)
        show.result(
            token,
            f"{token['token']}\n(shown once: store it now; id {token['prefix']}; use it as TENANTFLOW_OPERATOR_TOKEN)",
        )
    elif args.token_command == "list":
        listed = client.operator_tokens(args.name)
        rows = [
            (
                t["prefix"],
                t["name"],
                f"created {t['created_at']} by {t['created_by']}",
                "revoked" if t["revoked"] else f"last used {t['last_used_at'] or 'never'}",
            )
            for t in listed
        ]
        show.table({"tokens": listed}, rows, "no operator tokens match" if args.name else "no operator tokens")
    else:
        revoked = client.revoke_operator_token(args.token_id)
        show.result(revoked, f"revoked {revoked['prefix']} ({revoked['name']})")
    return 0


def _lifecycle(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    """suspend, resume, delete and retry: the 202's state first, then follow until it settles."""
    slug = args.slug
    if args.command == "suspend":
        accepted = client.suspend(slug, args.reason, args.stop_instances)
    elif args.command == "resume":
        accepted = client.resume(slug)
    elif args.command == "delete":
        accepted = client.delete(slug, args.confirm, args.delete_workspaces)
    else:
        accepted = client.decide(slug, "retry")
    show.line(accepted_line(slug, accepted, args.command))
    # A retry continues (or restarts) whichever operation its 202 names.
    operation = accepted.get("operation") if args.command == "retry" else args.command
    return _follow_and_report(client, slug, operation, show, retried=args.command == "retry")


def _abandon(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    accepted = client.decide(args.slug, "abandon")
    operation = accepted.get("operation") or "the operation"
    show.result(
        accepted,
        f"{accepted_line(args.slug, accepted, 'abandon')}\n"
        f"abandoned: {operation} of {args.slug} stops on its parked step {accepted.get('step') or ''}".rstrip(),
    )
    return 0


def _orgs(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    listed = client.orgs(status=args.status, prefix=args.prefix, name=args.name)
    rows = [
        (
            o["slug"],
            o["status"],
            f"{o['operation']} ({o['workflow_id']})" if o["operation"] else "-",
            o["failure_reason"] or "",
        )
        for o in listed
    ]
    show.table({"orgs": listed}, rows, "no orgs match" if args.status or args.prefix or args.name else "no orgs")
    return 0


def _teardowns(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    listed = client.teardowns()
    rows = []
    for t in listed:
        p = t["progress"] or {}
        state = f"PARKED on {p.get('step')}: {p.get('failure_reason')}" if t["parked"] else p.get("step", "?")
        rows.append((t["slug"], t["workflow_id"], state))
    show.table({"teardowns": listed}, rows, "no teardowns")
    return 0


def _audit(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    if args.slug is None and not args.verify:
        raise UsageError("audit: name an org, or pass --verify")
    answer = (
        client.verify_audit()
        if args.slug is None
        else client.audit(args.slug, since=args.since, until=args.until, org_id=args.org_id)
    )
    chain = answer["chain"]
    lines = []
    if args.slug is not None and not args.verify:
        lines = [
            f"{r['seq']:>6} {r['at']} {r['actor']:<40} {r['action']:<32} {r['outcome']}" for r in answer["records"]
        ]
    anchored = f"against the anchor of {chain['anchored_at']}" if chain.get("anchored_at") else "(no anchor yet)"
    lines.append(
        f"chain verified: {chain['records']} records in {chain['chains']} chains {anchored}"
        if chain["valid"]
        else f"CHAIN BROKEN at record {chain['first_broken_seq']}: {chain['reason']}"
    )
    show.result(answer, "\n".join(lines))
    return 0 if chain["valid"] else 1


def report_summary(r: dict) -> tuple[object, ...]:
    caps = "CAP EXCEEDED" if r["cap_exceeded"] else ("dry run" if r["dry_run"] else "deleting")
    return (r["id"], r["finished_at"], r["workflow_id"], f"{r['orphans']} orphans, {r['drifts']} drifts", caps)


ORPHAN_DELETION_EXITS = {"deleted": 0, "already_gone": 0, "failed": 1, "refused": EXIT_REFUSED}


def orphan_deletion_line(d: dict) -> str:
    what = f"{d['kind']} {d['cloud_id']}"
    if d["status"] == "refused":
        return f"REFUSED ({d['code']}): {what} left alone, {d['reason']}"
    if d["status"] == "failed":
        return f"FAILED: {what}: {d['reason']}"
    gone = {"deleted": f"deleted {what}", "deleting": f"deleting {what}"}.get(
        d["status"], f"{what} was already gone: nothing deleted"
    )
    return f"{gone} (deletion {d['id']} from report {d['report_id']}, asked by {d['requested_by']})"


def _delete_orphan(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    report_id = args.report
    if report_id is None:
        newest = client.reconcile_reports(1)
        if not newest:
            raise UsageError("no reconcile report yet: run one first (starter.py reconcile run)")
        report_id = newest[0]["id"]
    status, deletion = client.delete_orphan(report_id, args.cloud_id)
    if status == 202:
        show.line(f"deleting {deletion['kind']} {deletion['cloud_id']} (report {report_id}, {deletion['workflow_id']})")
        deletion_id = deletion["id"]
        try:
            deletion = follow(
                lambda: client.orphan_deletion(deletion_id),
                args.cloud_id,
                lambda d: None if d["status"] == "deleting" else "done",
                out=None,
                timeout=args.wait,
            )
        except TimeoutError:
            show.result(
                deletion,
                f"still deleting after {args.wait:g}s: it goes on"
                f" (GET /api/v1/reconcile/orphan-deletions/{deletion_id})",
            )
            return EXIT_UNREACHABLE
    show.result(deletion, orphan_deletion_line(deletion))
    return ORPHAN_DELETION_EXITS[deletion["status"]]


def _reconcile(client: OperatorClient, args: argparse.Namespace, show: Output) -> int:
    if args.reconcile_command == "delete-orphan":
        return _delete_orphan(client, args, show)
    if args.reconcile_command == "report" and args.report_id:
        report = client.reconcile_report(args.report_id)
        lines = [f"report {report['id']} ({report['workflow_id']}), finished {report['finished_at']}"]
        lines += [
            f"{f['problem']:<7} {f['kind']:<15} {f['cloud_id'] or '-':<24} {f['reason']}"
            + (f" (org {f['org_slug'] or f['org_id']})" if f.get("org_id") else "")
            for f in report["findings"]
        ] or ["no findings"]
        lines += [f"deleted {d['kind']} {d['cloud_id']}: {d['outcome']}" for d in report["deleted"]]
        lines += [orphan_deletion_line(d) for d in report["named_deletions"]]
        show.result(report, "\n".join(lines))
        return 0
    if args.reconcile_command == "report":
        listed = client.reconcile_reports(args.limit)
        show.table({"reports": listed}, [report_summary(r) for r in listed], "no reconcile reports yet")
        return 0
    before = client.reconcile_reports(1)
    newest = before[0]["id"] if before else 0
    accepted = client.run_reconcile()
    show.line(f"reconcile requested by {accepted['triggered_by']}; waiting for its report")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        latest = client.reconcile_reports(1)
        if latest and latest[0]["id"] > newest:
            show.table({"reports": latest}, [report_summary(latest[0])], "")
            return 0
        time.sleep(1.0)
    show.result(accepted, f"no report yet after {args.wait:g}s: the run goes on (starter.py reconcile report)")
    return EXIT_UNREACHABLE


class UsageError(Exception):
    pass


OPERATOR_COMMANDS: dict[str, Callable[[OperatorClient, argparse.Namespace, Output], int]] = {
    "onboard": _onboard,
    "status": _status,
    "watch": _watch,
    "quota": _quota,
    "mint-key": _mint_key,
    "suspend": _lifecycle,
    "resume": _lifecycle,
    "delete": _lifecycle,
    "retry": _lifecycle,
    "abandon": _abandon,
    "orgs": _orgs,
    "teardowns": _teardowns,
    "audit": _audit,
    "operator-token": _operator_token,
    "reconcile": _reconcile,
}


def _operator_command(args: argparse.Namespace, show: Output) -> int:
    token = os.environ.get("TENANTFLOW_OPERATOR_TOKEN")
    client = OperatorClient(args.api_url, token or local_secret("TENANTFLOW_PROVISION_SECRET", "provision_secret"))
    return OPERATOR_COMMANDS[args.command](client, args, show)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO | None = None) -> int:
    """Run one command; the answer goes to ``out``, a failure to talk to the API to ``err``
    (default stderr)."""
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    show = Output(out, args.json)
    try:
        if args.command == "workspace":
            return _tenant_command(args, show)
        return _operator_command(args, show)
    except ApiError as refused:
        if refused.status >= 500:
            show.result({"http_status": refused.status, **refused.body}, f"API error ({refused.status}): {refused}")
            return 1
        command = "workspace" if args.command == "workspace" else args.command
        show.result(
            {"http_status": refused.status, **refused.body},
            f"refused ({refused.status}): {in_cli_words(str(refused), command)}",
        )
        return EXIT_REFUSED
    except Unreachable as down:
        err.write(f"{down}: is the stack running? start it with: python -m devstack\n")
        return EXIT_UNREACHABLE
    except TimeoutError as slow:
        err.write(f"{slow}; it goes on: starter.py watch {getattr(args, 'slug', '')}".rstrip() + "\n")
        return EXIT_UNREACHABLE
    except (MissingCredential, UsageError) as usage:
        err.write(f"{usage}\n")
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
