"""The README's run command, end to end: the whole local stack as an operator starts it."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest
from neon_api import NeonAPI
from temporalio.client import Client

import starter
from devstack.demo import ask_agent, ensure_demo_network
from devstack.moto_client import moto_ec2_client
from tests.localstack import RunningStack, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def tenant_state(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_run_command_onboards_and_restarts_with_saved_state(tmp_path):
    stack = RunningStack(tmp_path)
    try:
        out = stack.start()
        secret = stack.secrets["provision_secret"]
        assert f"API            {stack.api_url}" in out
        assert f"Temporal UI    http://127.0.0.1:{stack.ports['TEMPORAL_UI_PORT']}" in out
        assert f"Bearer {secret}" in out
        assert "demo org demo: active" in out
        assert "answered over A2A: 'echo: hello from the operator'" in out
        assert "demo workspace demo-agent: running on i-" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['TEMPORAL_UI_PORT']}/", timeout=10) as ui:
            assert ui.status == 200
        # Probes and metrics of the API and the worker.
        for url in (f"{stack.api_url}/readyz", f"http://127.0.0.1:{stack.ports['WORKER_HEALTH_PORT']}/readyz"):
            with urllib.request.urlopen(url, timeout=10) as probe:
                assert json.loads(probe.read())["status"] == "ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['WORKER_HEALTH_PORT']}/metrics", timeout=10) as m:
            assert b"temporal_workflow_completed" in m.read()
        with urllib.request.urlopen(f"{stack.api_url}/metrics", timeout=10) as m:
            assert b'tenantflow_api_requests_total{method="POST",route="/api/v1/orgs",status="202"}' in m.read()

        # An operator onboards another org over HTTP with the starter CLI.
        vpc_id, subnets = ensure_demo_network(f"http://127.0.0.1:{stack.ports['MOTO_PORT']}", "us-east-1")
        os.environ["TENANTFLOW_PROVISION_SECRET"] = secret
        try:
            code = starter.main(
                [
                    "--api-url",
                    stack.api_url,
                    "onboard",
                    "--slug",
                    "acme",
                    "--name",
                    "Acme Corp",
                    "--vpc-id",
                    vpc_id,
                    "--subnet-ids",
                    ",".join(subnets),
                ],
                out=open(os.devnull, "w"),
            )
        finally:
            del os.environ["TENANTFLOW_PROVISION_SECRET"]
        assert code == 0
        org = starter.OperatorClient(stack.api_url, secret).org("acme")
        assert org["status"] == "active"

        # Its tenant database really connects.
        neon = NeonAPI(stack.secrets["neon_api_key"], base_url=f"http://127.0.0.1:{stack.ports['NEON_PORT']}/api/v2/")
        uri = neon._request(
            "GET",
            f"projects/{org['neon_project_id']}/connection_uri",
            params={"branch_id": org["neon_branch_id"], "database_name": "neondb"},
        )["uri"]
        with psycopg.connect(uri, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE agents (id int)")
            assert conn.execute("SELECT current_database()").fetchone()[0]

        # Its security group admits exactly one thing: TCP 443 from the platform CIDR (the local
        # stack's platform is 127.0.0.1).
        ec2 = moto_ec2_client(f"http://127.0.0.1:{stack.ports['MOTO_PORT']}")
        group = ec2.describe_security_groups(GroupIds=[org["security_group_id"]])["SecurityGroups"][0]
        rules = [
            (p["IpProtocol"], p["FromPort"], p["ToPort"], r["CidrIp"])
            for p in group["IpPermissions"]
            for r in p["IpRanges"]
        ]
        assert rules == [("tcp", 443, 443, "127.0.0.1/32")]
        assert (
            sum(len(p.get("Ipv6Ranges", [])) + len(p.get("UserIdGroupPairs", [])) for p in group["IpPermissions"]) == 0
        )

        # The tenant's workspace lifecycle, through the CLI: create -> agent boots, registers,
        # answers over A2A -> delete -> instance terminated, slot free.
        os.environ["TENANTFLOW_PROVISION_SECRET"] = secret
        try:
            out_file = tmp_path / "starter.out"
            with open(out_file, "w") as out_:
                assert starter.main(["--api-url", stack.api_url, "mint-key", "acme", "--name", "e2e"], out=out_) == 0
            key = out_file.read_text().splitlines()[0]
        finally:
            del os.environ["TENANTFLOW_PROVISION_SECRET"]
        assert key.startswith("tfk_")
        tenant = starter.TenantClient(stack.api_url, key)
        operator = starter.OperatorClient(stack.api_url, secret)
        assert operator.set_quota("acme", max_workspaces=1)["max_workspaces"] == 1
        os.environ["TENANTFLOW_ORG_KEY"] = key
        try:
            code = starter.main(
                [
                    "--api-url",
                    stack.api_url,
                    "workspace",
                    "create",
                    "--name",
                    "agent-1",
                    "--role",
                    "E2E worker",
                    "--tier",
                    "2",
                ],
                out=open(os.devnull, "w"),
            )
            assert code == 0
            [ws] = tenant.workspaces()
            assert ws["status"] == "running" and ws["instance_id"].startswith("i-")
            # Only the platform's credential, over TLS to the certificate it registered, reaches it.
            signing_key = stack.secrets["token_signing_key"]
            assert ws["agent_url"].startswith("https://") and len(ws["agent_cert_sha256"]) == 64
            assert asyncio.run(ask_agent(ws, "ping", signing_key)) == "echo: ping"
            with pytest.raises(starter.ApiError) as full:
                tenant.create_workspace(name="agent-2", role="x", runtime="hermes", tier=1, model="m")
            assert full.value.status == 409
            deadline = time.monotonic() + 30
            while (metrics := operator.request("GET", "/cp/orgs/acme/metrics")[1])["total_tasks_dispatched"] < 1:
                assert time.monotonic() < deadline, metrics
                time.sleep(0.3)
            assert metrics["total_workspaces"] == 1 and metrics["active_agents"] == 1
            assert metrics["avg_response_time_ms"] > 0

            code = starter.main(
                ["--api-url", stack.api_url, "workspace", "delete", ws["id"]], out=open(os.devnull, "w")
            )
            assert code == 0
        finally:
            del os.environ["TENANTFLOW_ORG_KEY"]
        state = ec2.describe_instances(InstanceIds=[ws["instance_id"]])["Reservations"][0]["Instances"][0]["State"]
        assert state["Name"] == "terminated"
        assert tenant.workspaces() == []
        second = tenant.create_workspace(name="agent-2", role="x", runtime="hermes", tier=1, model="m")  # slot free
        running = wait_until(lambda: tenant.workspace(second["id"]), lambda w: w["status"] == "running")

        # The operator's lifecycle commands: suspend (stopping the instances), resume, then the
        # hard-delete cascade. cloud-init ran the user data once; after the stop and start only
        # the service it installed brings the agent back, and the agent heartbeats again.
        os.environ["TENANTFLOW_PROVISION_SECRET"] = secret
        try:

            def cli(*argv: str) -> int:
                return starter.main(["--api-url", stack.api_url, *argv], out=open(os.devnull, "w"))

            assert cli("suspend", "acme", "--reason", "e2e", "--stop-instances") == 0
            assert operator.org("acme")["status"] == "suspended"
            assert tenant_state(ec2, running["instance_id"]) == "stopped"
            stopped_at = operator.request("GET", "/cp/orgs/acme/workspaces")[1]["workspaces"][0]["last_seen"]
            assert cli("resume", "acme") == 0
            assert tenant_state(ec2, running["instance_id"]) == "running"
            # The suspension revoked the tenant's keys: the operator's view shows the heartbeats.
            back = wait_until(
                lambda: operator.request("GET", "/cp/orgs/acme/workspaces")[1]["workspaces"][0],
                lambda w: w["status"] == "running" and w["last_seen"] > stopped_at,
                timeout=90,
            )
            # The same certificate after the stop and start: the pin still holds.
            assert asyncio.run(ask_agent(running, "back?", stack.secrets["token_signing_key"])) == "echo: back?"
            assert back["instance_id"] == running["instance_id"]
            assert cli("delete", "acme", "--confirm", "acme", "--delete-workspaces") == 0
            assert cli("audit", "acme") == 0
        finally:
            del os.environ["TENANTFLOW_PROVISION_SECRET"]
        deleted = operator.org("acme")
        assert deleted["status"] == "deleted" and deleted["receipt"]["slug"] == "acme"
        assert (
            ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [org["security_group_id"]]}])[
                "SecurityGroups"
            ]
            == []
        )

        # The workflow is in Temporal, where the UI shows it.
        async def describe():
            client = await Client.connect(f"127.0.0.1:{stack.ports['TEMPORAL_PORT']}")
            return await client.get_workflow_handle(org["workflow_id"]).describe()

        assert asyncio.run(describe()).status.name == "COMPLETED"

        children = stack.stop()
        assert stack.proc.returncode == 0, "".join(stack.output)
        assert len(children) >= 6
        time.sleep(0.5)
        assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []

        # Running the command again reuses the saved state: the demo org is not created twice.
        out = stack.start()
        assert "demo org 'demo' is already active" in out
        assert "demo workspace 'demo-agent' is already running" in out
        assert "answered over A2A: 'echo: hello from the operator'" in out
        assert starter.OperatorClient(stack.api_url, secret).org("acme")["status"] == "deleted"
        demo = starter.OperatorClient(stack.api_url, secret).org("demo")
        group = ec2.describe_security_groups(GroupIds=[demo["security_group_id"]])["SecurityGroups"][0]
        assert group["GroupId"] == demo["security_group_id"]
        stack.stop()
        assert stack.proc.returncode == 0
    finally:
        if stack.proc and stack.proc.poll() is None:
            stack.proc.kill()


def test_ctrl_c_stops_a_stack_started_with_sigint_ignored(tmp_path):
    stack = RunningStack(tmp_path)
    try:
        stack.start("--no-demo", sigint_ignored=True)
        children = stack.stop()
        assert stack.proc.returncode == 0, "".join(stack.output)
        assert "stopped" in stack.output[-1], "".join(stack.output)
        time.sleep(0.5)
        assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
        # The secrets were never readable by others.
        assert (stack.state_dir / "secrets.json").stat().st_mode & 0o777 == 0o600
    finally:
        if stack.proc and stack.proc.poll() is None:
            stack.proc.kill()
