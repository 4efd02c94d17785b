"""The README's run command, end to end: the whole local stack as an operator starts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import psutil
import psycopg
import pytest
from neon_api import NeonAPI
from temporalio.client import Client

import starter
from devstack.demo import ensure_demo_network
from devstack.procs import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


class RunningStack:
    def __init__(self, tmp_path: Path):
        self.state_dir = tmp_path / "state"
        self.ports = {name: free_port() for name in
                      ("API_PORT", "TEMPORAL_PORT", "TEMPORAL_UI_PORT", "POSTGRES_PORT", "MOTO_PORT", "NEON_PORT")}
        self.env = {**os.environ, "TENANTFLOW_STATE_DIR": str(self.state_dir),
                    **{f"TENANTFLOW_{k}": str(v) for k, v in self.ports.items()}}
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['API_PORT']}"

    def start(self, *args: str, until: str = "local stack running", timeout: float = 240) -> str:
        self.output = []
        self.proc = subprocess.Popen([sys.executable, "-m", "devstack", *args], cwd=ROOT, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if until in line:
                return "".join(self.output)
            assert time.monotonic() < deadline, "".join(self.output)
        raise AssertionError("stack exited early:\n" + "".join(self.output))

    def stop(self) -> list[psutil.Process]:
        """Ctrl-C, as an operator would; returns the processes the stack had started."""
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        rest, _ = self.proc.communicate(timeout=90)
        self.output.append(rest)
        return children

    @property
    def secrets(self) -> dict:
        return json.loads((self.state_dir / "secrets.json").read_text())


def test_run_command_onboards_and_restarts_with_saved_state(tmp_path):
    stack = RunningStack(tmp_path)
    try:
        out = stack.start()
        secret = stack.secrets["provision_secret"]
        assert f"API            {stack.api_url}" in out
        assert f"Temporal UI    http://127.0.0.1:{stack.ports['TEMPORAL_UI_PORT']}" in out
        assert f"Bearer {secret}" in out
        assert "demo org demo: active" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['TEMPORAL_UI_PORT']}/", timeout=10) as ui:
            assert ui.status == 200

        # An operator onboards another org over HTTP with the starter CLI.
        vpc_id, subnets = ensure_demo_network(f"http://127.0.0.1:{stack.ports['MOTO_PORT']}", "us-east-1")
        os.environ["TENANTFLOW_PROVISION_SECRET"] = secret
        try:
            code = starter.main(["--api-url", stack.api_url, "onboard", "--slug", "acme", "--name", "Acme Corp",
                                 "--vpc-id", vpc_id, "--subnet-ids", ",".join(subnets)], out=open(os.devnull, "w"))
        finally:
            del os.environ["TENANTFLOW_PROVISION_SECRET"]
        assert code == 0
        org = starter.OperatorClient(stack.api_url, secret).org("acme")
        assert org["status"] == "active"

        # Its tenant database really connects.
        neon = NeonAPI(stack.secrets["neon_api_key"], base_url=f"http://127.0.0.1:{stack.ports['NEON_PORT']}/api/v2/")
        uri = neon._request("GET", f"projects/{org['neon_project_id']}/connection_uri",
                            params={"branch_id": org["neon_branch_id"], "database_name": "neondb"})["uri"]
        with psycopg.connect(uri, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE agents (id int)")
            assert conn.execute("SELECT current_database()").fetchone()[0]

        # Its security group admits exactly one thing: TCP 443 from the platform CIDR.
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{stack.ports['MOTO_PORT']}",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        group = ec2.describe_security_groups(GroupIds=[org["security_group_id"]])["SecurityGroups"][0]
        rules = [(p["IpProtocol"], p["FromPort"], p["ToPort"], r["CidrIp"])
                 for p in group["IpPermissions"] for r in p["IpRanges"]]
        assert rules == [("tcp", 443, 443, "10.0.0.0/16")]
        assert sum(len(p.get("Ipv6Ranges", [])) + len(p.get("UserIdGroupPairs", [])) for p in group["IpPermissions"]) == 0

        # The workflow is in Temporal, where the UI shows it.
        async def describe():
            client = await Client.connect(f"127.0.0.1:{stack.ports['TEMPORAL_PORT']}")
            return await client.get_workflow_handle(org["workflow_id"]).describe()
        import asyncio
        assert asyncio.run(describe()).status.name == "COMPLETED"

        children = stack.stop()
        assert stack.proc.returncode == 0, "".join(stack.output)
        assert len(children) >= 6
        time.sleep(0.5)
        assert [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []

        # Running the command again reuses the saved state: the demo org is not created twice.
        out = stack.start()
        assert "demo org 'demo' is already active" in out
        assert starter.OperatorClient(stack.api_url, secret).org("acme")["status"] == "active"
        demo = starter.OperatorClient(stack.api_url, secret).org("demo")
        group = ec2.describe_security_groups(GroupIds=[demo["security_group_id"]])["SecurityGroups"][0]
        assert group["GroupId"] == demo["security_group_id"]
        stack.stop()
        assert stack.proc.returncode == 0
    finally:
        if stack.proc and stack.proc.poll() is None:
            stack.proc.kill()
