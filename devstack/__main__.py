"""``python -m devstack``: run the whole product on the embedded local stack until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from devstack.demo import demo_org_key, ensure_demo_network, onboard_demo_org, run_demo_workspace
from devstack.settings import StackSettings
from devstack.stack import LocalStack, load_or_create_secrets, wait_http_ok
from starter import OperatorClient, TenantClient


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-demo", action="store_true", help="start the stack without onboarding the demo org")
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="a kinder local cloud for demos (plain moto, no Neon limits); never for tests, which "
        "must pass against the strict default (docs/production.md)",
    )
    args = parser.parse_args()

    # Started with SIGINT ignored (a background job, some CI runners), Python installs no handler
    # for it and Ctrl-C would do nothing: take the default (KeyboardInterrupt) explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = StackSettings()
    stack = LocalStack(settings, lenient=args.lenient)
    # SIGTERM behaves like Ctrl-C: whatever the stack is doing, it stops everything it started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"starting the local stack in {stack.state_dir} ...", flush=True)
        stack.start()
        wait_http_ok(f"{stack.api_url}/healthz")
        secret = load_or_create_secrets(stack.state_dir)["provision_secret"]
        print(
            "\n"
            f"  API            {stack.api_url}\n"
            f"  Temporal UI    {stack.temporal_ui_url}\n"
            f"  Temporal       {stack.temporal_address} (namespace default)\n"
            f"  operator auth  Authorization: Bearer {secret}\n"
            f"  logs           {stack.state_dir / 'logs'}\n",
            flush=True,
        )
        if not args.no_demo:
            vpc_id, subnets = ensure_demo_network(stack.aws_endpoint, settings.aws_region)
            operator = OperatorClient(stack.api_url, secret)
            org = onboard_demo_org(operator, settings.demo_org_slug, vpc_id, subnets)
            print(
                f"demo org {org['slug']}: {org['status']}  (workflow {org['workflow_id']} in the Temporal UI)",
                flush=True,
            )
            if org["status"] == "active":
                key = demo_org_key(
                    operator,
                    stack.api_url,
                    org["slug"],
                    stack.state_dir,
                    load_or_create_secrets(stack.state_dir).get("demo_org_key"),
                )
                print(f"  demo org key   Authorization: Bearer {key}  (tenant routes: /workspaces)", flush=True)
                ws = run_demo_workspace(
                    TenantClient(stack.api_url, key),
                    settings.demo_workspace_name,
                    load_or_create_secrets(stack.state_dir)["token_signing_key"],
                )
                print(f"demo workspace {ws['name']}: {ws['status']} on {ws['instance_id']}", flush=True)
        print("local stack running; Ctrl-C stops everything", flush=True)
        while True:
            time.sleep(1.0)
            dead = [name for name, proc in stack.procs if proc.poll() is not None]
            if dead:
                print(f"stopping: {', '.join(dead)} exited (see {stack.state_dir / 'logs'})", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not interrupt the orderly stop (children would still die with us).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping the local stack ...", flush=True)
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
