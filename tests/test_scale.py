"""Horizontal scale on the local stack: two workers and two API processes on one task queue share
the load, and when one worker is killed mid-run the other finishes its workflows."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
import requests

from devstack.demo import ensure_demo_network
from devstack.procs import free_port, spawn, stop, wait_for_port
from devstack.settings import StackSettings
from devstack.stack import LocalStack, load_or_create_secrets, wait_http_ok
from starter import OperatorClient
from tools.soak import PORT_FIELDS

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def test_two_workers_two_apis_and_a_worker_killed_mid_run(tmp_path):
    ports = {name: free_port() for name in PORT_FIELDS}
    stack = LocalStack(StackSettings(state_dir=str(tmp_path / "state"), **ports))
    second_api = second_worker = None
    try:
        stack.start()
        wait_http_ok(f"{stack.api_url}/healthz")
        env = stack.service_env()
        second_api_port = free_port()
        second_api = spawn(
            [sys.executable, "-m", "api"],
            log_path=tmp_path / "api2.log",
            cwd=ROOT,
            env={**env, "TENANTFLOW_API_PORT": str(second_api_port)},
        )
        second_worker = spawn(
            [sys.executable, "worker.py"],
            log_path=tmp_path / "worker2.log",
            cwd=ROOT,
            env={
                **env,
                "TENANTFLOW_WORKER_HEALTH_PORT": str(free_port()),
                "TENANTFLOW_WORKER_SDK_METRICS_PORT": str(free_port()),
            },
        )
        wait_for_port("127.0.0.1", second_api_port, proc=second_api)
        secret = load_or_create_secrets(stack.state_dir)["provision_secret"]
        apis = [OperatorClient(stack.api_url, secret), OperatorClient(f"http://127.0.0.1:{second_api_port}", secret)]
        vpc_id, subnets = ensure_demo_network(stack.aws_endpoint, "us-east-1")

        # Every branch creation fails transiently for a while: onboardings are in flight when the
        # first worker dies.
        neon = f"http://127.0.0.1:{ports['neon_port']}/__devstack/faults"
        requests.post(
            neon,
            json={"route": "/projects/{project_id}/branches", "method": "POST", "status": 503, "count": 12},
            timeout=5,
        ).raise_for_status()
        slugs = [f"scale-{i}" for i in range(8)]
        for i, slug in enumerate(slugs):
            apis[i % 2].onboard(name=f"Scale {i}", slug=slug, plan="pro", vpc_id=vpc_id, subnet_ids=subnets)
        time.sleep(2.0)
        first_worker = next(proc for name, proc in stack.procs if name == "worker")
        first_worker.send_signal(signal.SIGKILL)
        first_worker.wait(10)

        deadline = time.monotonic() + 180
        while True:
            states = {slug: apis[1].org(slug)["status"] for slug in slugs}
            if all(s in ("active", "failed") for s in states.values()):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.5)
        assert set(states.values()) == {"active"}, states

        # Both workers took work before the kill; the survivor finished all of it.
        first_log = (stack.state_dir / "logs" / "worker.log").read_text()
        second_log = (tmp_path / "worker2.log").read_text()

        def onboarded_by(log: str) -> set[str]:
            return {
                json.loads(line).get("org_slug")
                for line in log.splitlines()
                if line.startswith("{") and '"org onboarded"' in line
            }

        assert onboarded_by(second_log) | onboarded_by(first_log) >= set(slugs)
        assert any('"workflow_id"' in line for line in first_log.splitlines())
        assert onboarded_by(second_log)
        assert second_worker.poll() is None
    finally:
        for proc in (second_worker, second_api):
            if proc is not None:
                stop(proc)
        stack.stop()
