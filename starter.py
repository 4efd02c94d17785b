"""The operator's command line: starts operations through the API and follows them to the end.

    python starter.py onboard --slug acme --name "Acme Corp" --plan pro \\
        --vpc-id vpc-0a1b2c3d --subnet-ids subnet-abc123,subnet-def456
    python starter.py status acme
    python starter.py watch acme

The API URL comes from TENANTFLOW_API_URL (default http://127.0.0.1:8080) and the operator secret
from TENANTFLOW_PROVISION_SECRET, or from the local stack's state directory when that is unset.
Exit status: 0 when the operation ends well, 1 when it fails, 2 on a refused request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

TERMINAL_OK = {"active"}
TERMINAL_FAILED = {"failed"}


class ApiError(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(body.get("error", f"HTTP {status}"))
        self.status, self.body = status, body


class OperatorClient:
    def __init__(self, base_url: str, secret: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._secret}", "Content-Type": "application/json",
        })
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                payload = json.loads(err.read() or b"{}")
            except ValueError:
                payload = {"error": f"HTTP {err.code}"}
            raise ApiError(err.code, payload) from None

    def onboard(self, **body: Any) -> dict:
        return self.request("POST", "/cp/orgs", body)[1]

    def org(self, slug: str) -> dict:
        return self.request("GET", f"/cp/orgs/{slug}")[1]


def progress_line(org: dict, width: int = 24) -> str:
    p = org.get("progress") or {}
    total = p.get("steps_total") or 1
    done = total if org["status"] in TERMINAL_OK else p.get("steps_done", 0)
    step = p.get("step") or org["status"]
    filled = int(width * done / total)
    return f"{org['slug']} [{'#' * filled}{'-' * (width - filled)}] {done}/{total} {org['status']}: {step}"


def follow(client: OperatorClient, slug: str, *, out: TextIO = sys.stdout, interval: float = 0.5,
           timeout: float = 900.0) -> dict:
    """Poll the org's status until it ends, drawing a progress bar; returns the final record."""
    deadline = time.monotonic() + timeout
    last = ""
    tty = out.isatty()
    while True:
        try:
            org = client.org(slug)
        except (ApiError, OSError) as err:
            if isinstance(err, ApiError) and err.status < 500:
                raise
            org = None  # the API restarting: keep polling
        if org is not None:
            line = progress_line(org)
            if line != last:
                out.write(("\r" + line.ljust(100)) if tty else line + "\n")
                out.flush()
                last = line
            if org["status"] in TERMINAL_OK | TERMINAL_FAILED:
                if tty:
                    out.write("\n")
                return org
        if time.monotonic() > deadline:
            raise TimeoutError(f"{slug} still {org and org['status']} after {timeout}s")
        time.sleep(interval)


def _secret() -> str:
    secret = os.environ.get("TENANTFLOW_PROVISION_SECRET")
    if secret:
        return secret
    state = Path(os.environ.get("TENANTFLOW_STATE_DIR", ".tenantflow")) / "secrets.json"
    if state.exists():
        return json.loads(state.read_text())["provision_secret"]
    sys.exit("set TENANTFLOW_PROVISION_SECRET (or run the local stack, which saves one)")


def _report(org: dict, out: TextIO) -> int:
    if org["status"] in TERMINAL_FAILED:
        out.write(f"FAILED: {org.get('failure_reason')}\n")
        return 1
    keys = ("id", "slug", "status", "neon_project_id", "neon_branch_id", "security_group_id")
    out.write(json.dumps({k: org.get(k) for k in keys}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="starter.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("slug")
    args = parser.parse_args(argv)
    client = OperatorClient(args.api_url, _secret())
    try:
        if args.command == "onboard":
            created = client.onboard(name=args.name, slug=args.slug, plan=args.plan, vpc_id=args.vpc_id,
                                     subnet_ids=[s for s in args.subnet_ids.split(",") if s])
            out.write(f"accepted: {created['id']} ({created['status']})\n")
            if args.no_wait:
                return 0
            return _report(follow(client, args.slug, out=out), out)
        if args.command == "watch":
            return _report(follow(client, args.slug, out=out), out)
        org = client.org(args.slug)
        out.write(json.dumps(org, indent=2) + "\n")
        return 1 if org["status"] in TERMINAL_FAILED else 0
    except ApiError as err:
        out.write(f"refused ({err.status}): {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
