"""The operator's command line: starts operations through the API and follows them to the end.

    python starter.py onboard --slug acme --name "Acme Corp" --plan pro \\
        --vpc-id vpc-0a1b2c3d --subnet-ids subnet-abc123,subnet-def456
    python starter.py status acme
    python starter.py watch acme
    python starter.py orgs [--status suspended,deleting] [--prefix ac]   # every org, its operation
    python starter.py quota acme --max-workspaces 10 --max-tier 3 --billing-plan pro
    python starter.py mint-key acme --name ci [--scopes read,workspaces:write] [--expires-at 2027-01-01T00:00:00Z]
    python starter.py operator-token create alice        # prints a named operator token once
    python starter.py operator-token list | revoke tfo_0123456789ab
    python starter.py workspace create --name agent-1 --role "Inference worker" --runtime hermes \\
        --tier 2 --model claude-sonnet-4                  # as the tenant: TENANTFLOW_ORG_KEY
    python starter.py workspace list
    python starter.py workspace delete ws_0123456789ab
    python starter.py suspend acme --reason "unpaid invoice" [--stop-instances]
    python starter.py resume acme
    python starter.py delete acme --confirm acme [--delete-workspaces]   # follows the cascade
    python starter.py teardowns                          # deletions under way; which wait for you
    python starter.py retry acme | abandon acme           # decide on a parked step (or retry a failed onboarding)
    python starter.py audit acme                         # the trail, and whether the chain verifies
    python starter.py audit --verify                     # every org's chain against the newest anchor

The API URL comes from TENANTFLOW_API_URL (default http://127.0.0.1:8080), the operator's
credential from TENANTFLOW_OPERATOR_TOKEN (a named token) or else TENANTFLOW_PROVISION_SECRET (the
deprecated shared secret), and the tenant's key from TENANTFLOW_ORG_KEY; on the local stack the
secret and the key fall back to the saved state (the demo org's key). Exit status: 0 when the operation ends
well, 1 when it fails, 2 on a refused request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

TERMINAL_OK = {"active"}
TERMINAL_FAILED = {"failed"}
# Where an org settles when the operation in progress succeeds.
SETTLES_AS = {"onboard": {"active"}, "suspend": {"suspended"}, "resume": {"active"}, "delete": {"deleted"}}


class ApiError(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(body.get("error", f"HTTP {status}"))
        self.status, self.body = status, body


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


class OperatorClient(ApiClient):
    def onboard(self, **body: Any) -> dict:
        return self.request("POST", "/api/v1/orgs", body)[1]

    def org(self, slug: str) -> dict:
        return self.request("GET", f"/api/v1/orgs/{slug}")[1]

    def orgs(self, *, status: str = "", prefix: str = "", limit: int = 100, cursor: str | None = None) -> dict:
        query = urllib.parse.urlencode(
            {k: v for k, v in (("status", status), ("prefix", prefix), ("limit", limit), ("cursor", cursor)) if v}
        )
        return self.request("GET", f"/api/v1/orgs?{query}")[1]

    def set_quota(self, slug: str, **body: Any) -> dict:
        return self.request("PATCH", f"/api/v1/orgs/{slug}", body)[1]

    def mint_key(self, slug: str, name: str, scopes: list[str] | None = None, expires_at: str | None = None) -> dict:
        body = {"name": name, "scopes": scopes, "expires_at": expires_at}
        return self.request("POST", f"/api/v1/orgs/{slug}/keys", {k: v for k, v in body.items() if v})[1]

    def create_operator_token(self, name: str) -> dict:
        return self.request("POST", "/api/v1/operator-tokens", {"name": name})[1]

    def operator_tokens(self) -> list[dict]:
        return self.request("GET", "/api/v1/operator-tokens")[1]["tokens"]

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
        return self.request("GET", "/api/v1/teardowns")[1]["teardowns"]

    def decide(self, slug: str, decision: str) -> dict:
        return self.request("POST", f"/api/v1/orgs/{slug}/{decision}", {})[1]

    def audit(self, slug: str) -> dict:
        return self.request("GET", f"/api/v1/orgs/{slug}/audit")[1]

    def verify_audit(self) -> dict:
        return self.request("GET", "/api/v1/audit")[1]


class TenantClient(ApiClient):
    def create_workspace(self, **body: Any) -> dict:
        return self.request("POST", "/api/v1/workspaces", body)[1]

    def workspaces(self) -> list[dict]:
        return self.request("GET", "/api/v1/workspaces")[1]["workspaces"]

    def workspace(self, workspace_id: str) -> dict:
        return self.request("GET", f"/api/v1/workspaces/{workspace_id}")[1]

    def delete_workspace(self, workspace_id: str) -> dict:
        return self.request("DELETE", f"/api/v1/workspaces/{workspace_id}")[1]


def progress_line(label: str, record: dict, ok: set[str], width: int = 24, last: dict | None = None) -> str:
    # A finished operation is answered from the record, without progress: keep the last total.
    p = record.get("progress") or last or {}
    total = p.get("steps_total") or 1
    done = total if record["status"] in ok else p.get("steps_done", 0)
    step = "done" if record["status"] in ok else (p.get("step") or record["status"])
    filled = int(width * done / total)
    return f"{label} [{'#' * filled}{'-' * (width - filled)}] {done}/{total} {record['status']}: {step}"


def follow(
    fetch: Callable[[], dict],
    label: str,
    *,
    ok: set[str],
    failed: set[str] = TERMINAL_FAILED,
    gone_is_ok: bool = False,
    out: TextIO = sys.stdout,
    interval: float = 0.5,
    timeout: float = 900.0,
) -> dict:
    """Poll a status until it ends, drawing a progress bar; returns the final record.

    ``gone_is_ok``: a 404 ends the wait successfully (a deletion finished)."""
    deadline = time.monotonic() + timeout
    last = ""
    tty = out.isatty()
    record: dict | None = None
    last_progress: dict | None = None
    while True:
        try:
            record = fetch()
        except ApiError as err:
            if err.status == 404 and gone_is_ok:
                out.write(("\n" if tty else "") + f"{label}: deleted\n")
                return {"status": "deleted"}
            if err.status < 500:
                raise
            record = None  # the API restarting: keep polling
        except OSError:
            record = None
        if record is not None:
            last_progress = record.get("progress") or last_progress
            line = progress_line(label, record, ok, last=last_progress)
            if line != last:
                out.write(("\r" + line.ljust(100)) if tty else line + "\n")
                out.flush()
                last = line
            if record["status"] in ok | failed:
                if tty:
                    out.write("\n")
                return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label} still {record and record['status']} after {timeout}s")
        time.sleep(interval)


def follow_org(
    client: OperatorClient,
    slug: str,
    out: TextIO = sys.stdout,
    *,
    ok: set[str] = TERMINAL_OK,
    parked_is_final: bool = False,
) -> dict:
    """Follow an org until it settles; a teardown parked for an operator also ends the wait."""

    def fetch() -> dict:
        org = client.org(slug)
        if parked_is_final and (org.get("progress") or {}).get("waiting_for_operator"):
            return {**org, "status": "parked"}
        return org

    failed = TERMINAL_FAILED | ({"parked"} if parked_is_final else set())
    return follow(fetch, slug, ok=ok, failed=failed, out=out)


def follow_workspace(
    client: TenantClient, workspace_id: str, out: TextIO = sys.stdout, *, deleting: bool = False
) -> dict:
    ok = set() if deleting else {"running"}
    return follow(lambda: client.workspace(workspace_id), workspace_id, ok=ok, gone_is_ok=deleting, out=out)


def _local_secret(env_var: str, state_key: str) -> str:
    secret = os.environ.get(env_var)
    if secret:
        return secret
    state = Path(os.environ.get("TENANTFLOW_STATE_DIR", ".tenantflow")) / "secrets.json"
    if state.exists() and state_key in (saved := json.loads(state.read_text())):
        return saved[state_key]
    sys.exit(f"set {env_var} (or run the local stack, which saves one)")


def _report(record: dict, out: TextIO, keys: tuple[str, ...]) -> int:
    if record["status"] == "parked":
        p = record["progress"]
        out.write(
            f"PARKED on {p['step']}: {p['failure_reason']}\n"
            f"fix the cause, then: starter.py retry {record['slug']}  (or abandon)\n"
        )
        return 1
    if record["status"] in TERMINAL_FAILED:
        out.write(f"FAILED: {record.get('failure_reason')}\n")
        return 1
    out.write(json.dumps({k: record.get(k) for k in keys if k in record}, indent=2) + "\n")
    return 0


ORG_KEYS = ("id", "slug", "status", "neon_project_id", "neon_branch_id", "security_group_id")
WORKSPACE_KEYS = ("id", "name", "status", "instance_id", "agent_url", "last_seen")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api-url", default=os.environ.get("TENANTFLOW_API_URL", "http://127.0.0.1:8080"))
    sub = parser.add_subparsers(dest="command", required=True)
    onboard = sub.add_parser("onboard", help="onboard an org and follow it until active or failed")
    onboard.add_argument("--slug", required=True)
    onboard.add_argument("--name", required=True)
    onboard.add_argument("--plan", default="pro")
    onboard.add_argument("--vpc-id", required=True)
    onboard.add_argument("--subnet-ids", required=True, help="comma-separated")
    onboard.add_argument("--no-wait", action="store_true")
    for name, text in (("status", "show an org"), ("watch", "follow an org until it settles")):
        sub.add_parser(name, help=text).add_argument("slug")
    orgs = sub.add_parser("orgs", help="list orgs with their status and the operation in progress")
    orgs.add_argument("--status", default="", help="only these statuses, comma-separated (e.g. suspended,deleting)")
    orgs.add_argument("--prefix", default="", help="only slugs starting with this")
    quota = sub.add_parser("quota", help="set an org's quotas")
    quota.add_argument("slug")
    quota.add_argument("--max-workspaces", type=int)
    quota.add_argument("--max-tier", type=int)
    quota.add_argument("--billing-plan")
    mint = sub.add_parser("mint-key", help="mint an org API key (shown once)")
    mint.add_argument("slug")
    mint.add_argument("--name", default="operator-minted")
    mint.add_argument("--scopes", help="comma-separated among read, workspaces:write, keys:admin (default: all)")
    mint.add_argument("--expires-at", help="ISO 8601 time with a zone, e.g. 2027-01-01T00:00:00Z (default: never)")
    tokens = sub.add_parser("operator-token", help="named operator tokens: create (shown once), list, revoke")
    tokens_sub = tokens.add_subparsers(dest="token_command", required=True)
    tokens_sub.add_parser("create", help="a new token for NAME (a second one while rotating)").add_argument("name")
    tokens_sub.add_parser("list", help="every token, without secrets")
    tokens_sub.add_parser("revoke", help="revoke a token by id (tfo_<id>)").add_argument("token_id")
    suspend = sub.add_parser("suspend", help="suspend an org: keys revoked, creation frozen")
    suspend.add_argument("slug")
    suspend.add_argument("--reason")
    suspend.add_argument("--stop-instances", action="store_true")
    sub.add_parser("resume", help="resume a suspended org").add_argument("slug")
    delete = sub.add_parser("delete", help="hard-delete an org and everything it owns; follows the cascade")
    delete.add_argument("slug")
    delete.add_argument("--confirm", required=True, help="must equal the slug")
    delete.add_argument("--delete-workspaces", action="store_true")
    sub.add_parser("teardowns", help="deletions under way, and which wait for an operator")
    sub.add_parser("retry", help="run a parked step again, or a failed onboarding again").add_argument("slug")
    sub.add_parser("abandon", help="stop the operation in progress on its parked step").add_argument("slug")
    audit = sub.add_parser("audit", help="an org's audit trail, and every chain verified against the newest anchor")
    audit.add_argument("slug", nargs="?", help="the org whose records to list")
    audit.add_argument("--verify", action="store_true", help="only verify (every org's chain); exit 1 if broken")
    ws = sub.add_parser("workspace", help="tenant workspace operations (TENANTFLOW_ORG_KEY)")
    ws_sub = ws.add_subparsers(dest="ws_command", required=True)
    create = ws_sub.add_parser("create", help="create a workspace and follow it until running or failed")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True)
    create.add_argument("--runtime", default="hermes")
    create.add_argument("--tier", type=int, default=2)
    create.add_argument("--model", default="claude-sonnet-4")
    create.add_argument("--no-wait", action="store_true")
    ws_sub.add_parser("list", help="list workspaces")
    for name in ("status", "delete"):
        ws_sub.add_parser(name).add_argument("workspace_id")
    return parser


def _tenant_command(args: argparse.Namespace, out: TextIO) -> int:
    client = TenantClient(args.api_url, _local_secret("TENANTFLOW_ORG_KEY", "demo_org_key"))
    if args.ws_command == "create":
        created = client.create_workspace(
            name=args.name, role=args.role, runtime=args.runtime, tier=args.tier, model=args.model
        )
        out.write(f"accepted: {created['id']} ({created['status']})\n")
        if args.no_wait:
            return 0
        return _report(follow_workspace(client, created["id"], out), out, WORKSPACE_KEYS)
    if args.ws_command == "list":
        for w in client.workspaces():
            out.write(f"{w['id']}  {w['name']:<24} tier {w['tier']}  {w['status']:<12} {w['instance_id'] or '-'}\n")
        return 0
    if args.ws_command == "delete":
        client.delete_workspace(args.workspace_id)
        follow_workspace(client, args.workspace_id, out, deleting=True)
        return 0
    record = client.workspace(args.workspace_id)
    out.write(json.dumps(record, indent=2) + "\n")
    return 1 if record["status"] in TERMINAL_FAILED else 0


def _onboard(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    created = client.onboard(
        name=args.name,
        slug=args.slug,
        plan=args.plan,
        vpc_id=args.vpc_id,
        subnet_ids=[s for s in args.subnet_ids.split(",") if s],
    )
    out.write(f"accepted: {created['id']} ({created['status']})\n")
    if args.no_wait:
        return 0
    return _report(follow_org(client, args.slug, out), out, ORG_KEYS)


def _watch(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    return _report(follow_org(client, args.slug, out), out, ORG_KEYS)


def _quota(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    wanted = (("max_workspaces", args.max_workspaces), ("max_tier", args.max_tier), ("billing_plan", args.billing_plan))
    org = client.set_quota(args.slug, **{k: v for k, v in wanted if v is not None})
    out.write(json.dumps({k: org[k] for k in ("slug", "max_workspaces", "max_tier", "billing_plan")}) + "\n")
    return 0


def _mint_key(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    scopes = [s for s in args.scopes.split(",") if s] if args.scopes else None
    key = client.mint_key(args.slug, args.name, scopes, args.expires_at)
    expiry = f", expires {key['expires_at']}" if key["expires_at"] else ""
    out.write(f"{key['key']}\n(shown once: store it now; id {key['id']}, scopes {','.join(key['scopes'])}{expiry})\n")
    return 0


def _operator_token(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.token_command == "create":
        token = client.create_operator_token(args.name)
        out.write(
            f"{token['token']}\n(shown once: store it now; id {token['prefix']}; use it as TENANTFLOW_OPERATOR_TOKEN)\n"
        )
    elif args.token_command == "list":
        for t in client.operator_tokens():
            state = "revoked" if t["revoked"] else f"last used {t['last_used_at'] or 'never'}"
            out.write(f"{t['prefix']}  {t['name']:<24} created {t['created_at']} by {t['created_by']}  {state}\n")
    else:
        revoked = client.revoke_operator_token(args.token_id)
        out.write(f"revoked {revoked['prefix']} ({revoked['name']})\n")
    return 0


def _suspend(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    client.suspend(args.slug, args.reason, args.stop_instances)
    return _report(follow_org(client, args.slug, out, ok={"suspended"}), out, ORG_KEYS)


def _resume(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    client.resume(args.slug)
    return _report(follow_org(client, args.slug, out, ok={"active"}), out, ORG_KEYS)


def _delete_or_decide(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    """delete, retry and abandon: follow the org until the operation settles (or parks)."""
    if args.command == "delete":
        accepted = client.delete(args.slug, args.confirm, args.delete_workspaces)
    else:
        accepted = client.decide(args.slug, args.command)
    if args.command == "abandon":
        out.write(
            f"abandoned: {accepted.get('operation') or 'the operation'} of {args.slug} stops on its parked step\n"
        )
        return 0
    final = follow_org(
        client, args.slug, out, ok=SETTLES_AS.get(accepted.get("operation"), {"deleted"}), parked_is_final=True
    )
    if final["status"] == "deleted":
        receipt = final["receipt"]
        out.write(
            f"deleted {args.slug}: {len(receipt['resources'])} resources, "
            f"{len(receipt['workspaces'])} workspaces (receipt at GET /cp/orgs/{args.slug})\n"
        )
        return 0
    return _report(final, out, ORG_KEYS)


def _orgs(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    page: dict = {"next_cursor": None}
    listed = 0
    while True:
        page = client.orgs(status=args.status, prefix=args.prefix, cursor=page["next_cursor"])
        for o in page["orgs"]:
            operation = f"{o['operation']} ({o['workflow_id']})" if o["operation"] else "-"
            out.write(f"{o['slug']:<24} {o['status']:<13} {operation:<44} {o['failure_reason'] or ''}\n")
            listed += 1
        if not page["next_cursor"]:
            break
    if not listed:
        out.write("no orgs match\n")
    return 0


def _teardowns(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    for t in client.teardowns():
        p = t["progress"] or {}
        state = f"PARKED: {p.get('failure_reason')}" if t["parked"] else p.get("step", "?")
        out.write(f"{t['slug']:<20} {t['workflow_id']:<32} {state}\n")
    return 0


def _audit(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.slug is None and not args.verify:
        raise SystemExit("audit: name an org, or pass --verify")
    if args.slug is None:
        chain = client.verify_audit()["chain"]
    else:
        trail = client.audit(args.slug)
        if not args.verify:
            for r in trail["records"]:
                out.write(f"{r['seq']:>6} {r['at']} {r['actor']:<40} {r['action']:<32} {r['outcome']}\n")
        chain = trail["chain"]
    verified = chain["valid"]
    anchored = f"against the anchor of {chain['anchored_at']}" if chain.get("anchored_at") else "(no anchor yet)"
    out.write(
        f"chain verified: {chain['records']} records in {chain['chains']} chains {anchored}\n"
        if verified
        else f"CHAIN BROKEN at record {chain['first_broken_seq']}: {chain['reason']}\n"
    )
    return 0 if verified else 1


def _status(client: OperatorClient, args: argparse.Namespace, out: TextIO) -> int:
    org = client.org(args.slug)
    out.write(json.dumps(org, indent=2) + "\n")
    return 1 if org["status"] in TERMINAL_FAILED else 0


OPERATOR_COMMANDS: dict[str, Callable[[OperatorClient, argparse.Namespace, TextIO], int]] = {
    "onboard": _onboard,
    "watch": _watch,
    "quota": _quota,
    "mint-key": _mint_key,
    "suspend": _suspend,
    "resume": _resume,
    "delete": _delete_or_decide,
    "retry": _delete_or_decide,
    "abandon": _delete_or_decide,
    "orgs": _orgs,
    "teardowns": _teardowns,
    "audit": _audit,
    "operator-token": _operator_token,
}


def _operator_command(args: argparse.Namespace, out: TextIO) -> int:
    token = os.environ.get("TENANTFLOW_OPERATOR_TOKEN")
    client = OperatorClient(args.api_url, token or _local_secret("TENANTFLOW_PROVISION_SECRET", "provision_secret"))
    return OPERATOR_COMMANDS.get(args.command, _status)(client, args, out)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "workspace":
            return _tenant_command(args, out)
        return _operator_command(args, out)
    except ApiError as err:
        out.write(f"refused ({err.status}): {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
