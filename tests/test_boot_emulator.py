"""The boot emulator against moto's EC2 server: instances launched there start real agent processes,
which register with a fake platform registry (``FakePlatform`` from the agent runtime tests).

moto is shared by the whole session, so every test tags its instances with its own org id, runs the
emulator filtered on that tag, and terminates its instances when it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import stat
import sys
from pathlib import Path

import httpx
import pytest

from devstack.boot_emulator import BootEmulator, extract_boot_config
from devstack.procs import free_port, spawn, wait_for_port
from tests.test_agent_runtime import FakePlatform, eventually

ROOT = Path(__file__).resolve().parents[1]


def boot_script(config: dict) -> str:
    return (
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        "umask 077\n"
        "install -d -m 700 /etc/tenantflow\n"
        "cat > /etc/tenantflow/agent.json <<'TENANTFLOW_AGENT_CONFIG'\n"
        f"{json.dumps(config, indent=2)}\n"
        "TENANTFLOW_AGENT_CONFIG\n"
        "exec /opt/tenantflow/venv/bin/python -m agent --config /etc/tenantflow/agent.json\n"
    )


class Instances:
    """Launches managed instances for one test (one org), and terminates them afterwards."""

    def __init__(self, ec2) -> None:
        self.ec2 = ec2
        self.org_id = f"org_{secrets.token_hex(6)}"
        self.ids: list[str] = []

    def run(self, workspace_id: str, user_data: str) -> str:
        tags = {"tenantflow:managed": "true", "tenantflow:org-id": self.org_id, "tenantflow:org-slug": "acme",
                "tenantflow:workspace-id": workspace_id}
        reservation = self.ec2.run_instances(
            ImageId="ami-12c6146b", InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=user_data,
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
        instance_id = reservation["Instances"][0]["InstanceId"]
        self.ids.append(instance_id)
        return instance_id

    def terminate_all(self) -> None:
        if self.ids:
            self.ec2.terminate_instances(InstanceIds=self.ids)


@pytest.fixture
async def fake_platform():
    fake = FakePlatform()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def instances(ec2):
    launched = Instances(ec2)
    yield launched
    launched.terminate_all()


@pytest.fixture
async def emulator(moto_url, instances, tmp_path):
    emu = BootEmulator(moto_url, "us-east-1", log_dir=tmp_path / "boot", poll_interval=0.1,
                       tag_filters={"tenantflow:org-id": instances.org_id})
    emu.start()
    yield emu
    await asyncio.to_thread(emu.stop)
    assert not any(a.running for a in emu.agents().values())


def new_workspace() -> str:
    return f"ws_{secrets.token_hex(6)}"


def registrations_of(fake: FakePlatform, workspace_id: str) -> list[dict]:
    return [r for r in fake.registrations if r["body"]["workspace_id"] == workspace_id]


# -- extract_boot_config ------------------------------------------------------------------------

def test_extract_boot_config_reads_the_heredoc():
    config = {"workspace_id": "ws_1", "registration_token": "tfr_x", "tier": 3}
    assert extract_boot_config(boot_script(config)) == config
    assert extract_boot_config(boot_script(config).replace("\n", "\r\n")) == config


@pytest.mark.parametrize("user_data", [
    "",
    "#!/bin/bash\necho hello\n",
    "cat > f <<'TENANTFLOW_AGENT_CONFIG'\n{\"a\": 1}\n",  # never closed
    "cat > f <<'TENANTFLOW_AGENT_CONFIG'\n[1, 2]\nTENANTFLOW_AGENT_CONFIG\n",  # not an object
    "cat > f <<'OTHER'\n{\"a\": 1}\nOTHER\n",
])
def test_extract_boot_config_rejects(user_data):
    with pytest.raises(ValueError):
        extract_boot_config(user_data)


def test_extract_boot_config_error_does_not_echo_the_token():
    script = "cat > f <<'TENANTFLOW_AGENT_CONFIG'\n{\"registration_token\": \"tfr_secret\",}\nTENANTFLOW_AGENT_CONFIG\n"
    with pytest.raises(ValueError) as err:
        extract_boot_config(script)
    assert "tfr_secret" not in str(err.value)


# -- the emulator -------------------------------------------------------------------------------

async def test_running_instance_boots_an_agent_that_registers_and_terminate_stops_it(
        fake_platform, instances, emulator, ec2):
    ws = new_workspace()
    instance_id = instances.run(ws, boot_script(fake_platform.boot_config(ws)))

    await eventually(lambda: registrations_of(fake_platform, ws), "the agent's registration")
    agent = emulator.agents()[instance_id]
    assert agent.running and agent.workspace_id == ws
    assert registrations_of(fake_platform, ws)[0]["body"]["agent_url"] == agent.public_url
    assert stat.S_IMODE(agent.config_path.stat().st_mode) == 0o600
    async with httpx.AsyncClient() as http:
        card = (await http.get(f"{agent.public_url}/.well-known/agent-card.json")).json()
    assert card["name"] == "production-agent-1"
    await eventually(lambda: fake_platform.heartbeats, "a heartbeat")

    ec2.terminate_instances(InstanceIds=[instance_id])
    await eventually(lambda: not agent.running and not agent.config_path.exists(),
                     "the agent to stop and its config (holding the token) to go")
    assert agent.proc.returncode == 0  # SIGTERM: a clean shutdown


async def test_stopped_instance_started_again_resumes_without_registering_again(
        fake_platform, instances, emulator, ec2):
    ws = new_workspace()
    instance_id = instances.run(ws, boot_script(fake_platform.boot_config(ws, heartbeat_interval_seconds=0.2)))
    await eventually(lambda: registrations_of(fake_platform, ws), "the first registration")
    first = emulator.agents()[instance_id]

    ec2.stop_instances(InstanceIds=[instance_id])
    await eventually(lambda: not first.running, "the agent to stop with its instance")
    ec2.start_instances(InstanceIds=[instance_id])
    await eventually(lambda: emulator.agents()[instance_id].pid != first.pid, "a new agent process")
    second = emulator.agents()[instance_id]
    # The instance's disk kept the workspace token: the new agent heartbeats from its new address.
    await eventually(lambda: any(h["body"].get("agent_url") == second.public_url for h in fake_platform.heartbeats),
                     "a heartbeat from the new address")
    assert second.running and len(registrations_of(fake_platform, ws)) == 1


async def test_never_boot_and_user_data_without_config_start_nothing(fake_platform, instances, emulator):
    quiet, plain = new_workspace(), new_workspace()
    emulator.never_boot(quiet)
    quiet_id = instances.run(quiet, boot_script(fake_platform.boot_config(quiet)))
    plain_id = instances.run(plain, "#!/bin/bash\necho no agent here\n")
    # A control instance, booted in the same polls, shows the emulator was looking.
    control = new_workspace()
    instances.run(control, boot_script(fake_platform.boot_config(control)))
    await eventually(lambda: registrations_of(fake_platform, control), "the control agent's registration")
    await asyncio.sleep(0.5)
    assert quiet_id not in emulator.agents() and plain_id not in emulator.agents()
    assert not registrations_of(fake_platform, quiet)


async def test_crash_kills_the_agent_and_it_stays_down(fake_platform, instances, emulator):
    ws = new_workspace()
    instance_id = instances.run(ws, boot_script(fake_platform.boot_config(ws)))
    await eventually(lambda: registrations_of(fake_platform, ws), "the agent's registration")
    agent = emulator.agents()[instance_id]

    await asyncio.to_thread(emulator.crash, instance_id)
    assert agent.proc.returncode == -signal.SIGKILL
    await asyncio.sleep(0.6)  # several polls of a still-running instance
    assert emulator.agents()[instance_id] is agent and not agent.running
    assert len(registrations_of(fake_platform, ws)) == 1


async def test_command_line_with_admin_endpoint(fake_platform, instances, moto_url, tmp_path):
    admin_port = free_port()
    proc = spawn([sys.executable, "-m", "devstack.boot_emulator", "--ec2-endpoint", moto_url, "--region", "us-east-1",
                  "--log-dir", str(tmp_path / "boot"), "--admin-port", str(admin_port), "--poll-interval", "0.1",
                  "--tag-filter", f"tenantflow:org-id={instances.org_id}"],
                 log_path=tmp_path / "emulator.log", cwd=ROOT)
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", admin_port, timeout=15, proc=proc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", timeout=5) as http:
            blocked = new_workspace()
            assert (await http.post("/never-boot", json={"workspace_id": blocked})).status_code == 200
            assert (await http.post("/crash", json={})).status_code == 400

            doomed, survivor = new_workspace(), new_workspace()
            doomed_id = instances.run(doomed, boot_script(fake_platform.boot_config(doomed)))
            survivor_id = instances.run(survivor, boot_script(fake_platform.boot_config(survivor)))
            instances.run(blocked, boot_script(fake_platform.boot_config(blocked)))
            await eventually(lambda: registrations_of(fake_platform, doomed) and registrations_of(fake_platform, survivor),
                             "both agents' registrations")
            listed = {a["instance_id"]: a for a in (await http.get("/agents")).json()}
            assert {(i, a["workspace_id"], a["running"]) for i, a in listed.items()} == {
                (doomed_id, doomed, True), (survivor_id, survivor, True)}

            assert (await http.post("/crash", json={"instance_id": doomed_id})).status_code == 200
            running = {a["instance_id"]: a["running"] for a in (await http.get("/agents")).json()}
            assert running == {doomed_id: False, survivor_id: True}
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(proc.wait, 15)
    assert returncode == 0
    with pytest.raises(ProcessLookupError):  # SIGTERM to the emulator stopped its agents too
        os.kill(listed[survivor_id]["pid"], 0)
    assert not registrations_of(fake_platform, blocked)
