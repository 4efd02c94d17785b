"""The boot emulator against a real moto EC2 server (started here) and a fake platform: instances
in a VPC with a 127.x CIDR boot the REAL user data (``render_user_data``) unchanged, in their own
network and mount namespaces, behind their security groups.

Every test tags its instances with its own org id and runs an emulator filtered on that tag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from moto.server import ThreadedMotoServer

from activities.a2a import pinned_client
from activities.boot_script import CONFIG_PATH, UNIT_NAME, UNIT_PATH, render_user_data
from agent.client import ask
from devstack.boot_emulator import BootEmulator, EmulatorUnavailable, check_host
from devstack.moto_client import moto_ec2_client
from devstack.procs import free_port, spawn, wait_for_port
from domain import credentials
from tests.test_agent_runtime import FakePlatform, eventually, fake_platform  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[1]
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
VPC_CIDR, SUBNET_CIDR = "127.77.0.0/16", "127.77.1.0/24"
NEIGHBOUR = "127.77.1.250"  # an address in the subnet that no test instance has
PLATFORM_CIDR = "127.0.0.1/32"
AGENT_PORT = 443
BOOT = 90.0  # generous: a loaded 2-core machine starts Python slowly
SIGNING_KEY = secrets.token_urlsafe(32)  # the platform's: derives each workspace's agent credential


# -- servers and helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def ec2(moto_endpoint):
    return moto_ec2_client(moto_endpoint)


@pytest.fixture(scope="module")
def subnet(ec2) -> tuple[str, str]:
    vpc_id = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    return vpc_id, ec2.create_subnet(VpcId=vpc_id, CidrBlock=SUBNET_CIDR)["Subnet"]["SubnetId"]


@pytest.fixture
def platform(fake_platform) -> FakePlatform:
    return fake_platform


def namespaces() -> set[tuple[str, int]]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for kind in ("net", "mnt"):
            try:
                found.add((kind, os.stat(f"/proc/{pid}/ns/{kind}").st_ino))
            except OSError:
                pass
    return found


class Cloud:
    """One test's org: a security group admitting 443 from the platform, and its instances."""

    def __init__(self, ec2, subnet: tuple[str, str], platform: FakePlatform):
        self.ec2, self.platform = ec2, platform
        self.vpc_id, self.subnet_id = subnet
        self.org_id = f"org_{secrets.token_hex(6)}"
        self.sg = ec2.create_security_group(GroupName=f"tf-{self.org_id}", Description="agents", VpcId=self.vpc_id)[
            "GroupId"
        ]
        self.authorize(AGENT_PORT, PLATFORM_CIDR)
        self.ids: list[str] = []

    def rule(self, port: int, cidr: str) -> list[dict]:
        return [{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": cidr}]}]

    def authorize(self, port: int, cidr: str) -> None:
        self.ec2.authorize_security_group_ingress(GroupId=self.sg, IpPermissions=self.rule(port, cidr))

    def revoke(self, port: int, cidr: str) -> None:
        self.ec2.revoke_security_group_ingress(GroupId=self.sg, IpPermissions=self.rule(port, cidr))

    def user_data(self, workspace_id: str) -> str:
        return render_user_data(
            workspace_id=workspace_id,
            workspace_name="production-agent-1",
            org_slug="acme",
            role="Production inference worker",
            runtime="hermes",
            model="claude-sonnet-4",
            tier=3,
            platform_url=self.platform.url,
            registration_token=self.platform.registration_token,
            platform_credential_sha256=credentials.agent_access(SIGNING_KEY, workspace_id).hash,
            heartbeat_interval_seconds=15,
            listen_port=AGENT_PORT,
        )

    def launch(
        self, user_data: str | None = None, *, workspace_id: str | None = None, subnet_id: str | None = "default"
    ) -> tuple[str, str, str]:
        """(instance id, private ip, workspace id)."""
        workspace_id = workspace_id or f"ws_{secrets.token_hex(6)}"
        tags = {"tenantflow:managed": "true", "tenantflow:org-id": self.org_id, "tenantflow:workspace-id": workspace_id}
        placement = {"SubnetId": self.subnet_id, "SecurityGroupIds": [self.sg]} if subnet_id == "default" else {}
        inst = self.ec2.run_instances(
            ImageId="ami-12c6146b",
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            **placement,
            UserData=self.user_data(workspace_id) if user_data is None else user_data,
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["Instances"][0]
        self.ids.append(inst["InstanceId"])
        return inst["InstanceId"], inst["PrivateIpAddress"], workspace_id

    def registrations(self, workspace_id: str) -> list[dict]:
        return [r for r in self.platform.registrations if r["body"]["workspace_id"] == workspace_id]

    def heartbeats(self, workspace_id: str) -> list[dict]:
        return [h for h in self.platform.heartbeats if h["body"]["workspace_id"] == workspace_id]

    def cleanup(self) -> None:
        if self.ids:
            self.ec2.terminate_instances(InstanceIds=self.ids)


@pytest.fixture
def cloud(ec2, subnet, platform):
    c = Cloud(ec2, subnet, platform)
    yield c
    c.cleanup()


@pytest.fixture
async def emulator(moto_endpoint, cloud, platform, tmp_path):
    before = namespaces()
    emu = BootEmulator(
        moto_endpoint,
        log_dir=tmp_path / "boot",
        poll_interval=0.1,
        stop_timeout=5,
        tag_filters={"tenantflow:org-id": cloud.org_id},
        egress=[("127.0.0.1", platform.port)],
    )
    emu.start()
    yield emu
    await asyncio.to_thread(emu.stop)
    # Everything it started died with it: no namespace (so no mount, no holder) outlives it.
    assert namespaces() <= before


def agent(emu: BootEmulator, instance_id: str) -> dict:
    return emu.agents().get(instance_id) or {}


def unit(emu: BootEmulator, instance_id: str, name: str = UNIT_NAME) -> dict:
    return agent(emu, instance_id).get("units", {}).get(name) or {}


def disk(emu: BootEmulator, instance_id: str) -> Path:
    return emu.log_dir / "instances" / instance_id / "disk"


def console(emu: BootEmulator, instance_id: str) -> str:
    path = emu.log_dir / "instances" / instance_id / "console.log"
    return path.read_text() if path.exists() else ""


def dial(ip: str, port: int, source: str | None = None) -> str:
    """What a TLS client without the platform's credential sees: "refused", "reset" or the first
    line of an HTTP answer (the agent's 401 shows that the wire reaches it)."""
    try:
        sock = socket.create_connection((ip, port), timeout=10, source_address=(source, 0) if source else None)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    try:
        with tls.wrap_socket(sock) as conn:
            conn.sendall(f"GET /.well-known/agent-card.json HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            answer = conn.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except (ssl.SSLError, OSError):
        return "closed"
    finally:
        sock.close()
    return answer.split(b"\r\n", 1)[0].decode() if answer else "closed"


def platform_client(ip: str, workspace_id: str, registration: dict):
    """The worker's view of an agent: its registered certificate and the workspace's credential."""
    return pinned_client(
        f"https://{ip}:{AGENT_PORT}/",
        registration["body"]["agent_cert_sha256"],
        credentials.agent_access(SIGNING_KEY, workspace_id).secret,
    )


async def wait_registered(cloud: Cloud, workspace_id: str) -> dict:
    return (await eventually(lambda: cloud.registrations(workspace_id), "the agent's registration", timeout=BOOT))[0]


async def wait_token_saved(cloud: Cloud, workspace_id: str) -> None:
    """The first heartbeat follows the saving of the workspace token: killing the agent any earlier
    could lose it (and a real platform would refuse the spent registration token)."""
    await wait_registered(cloud, workspace_id)
    await eventually(lambda: cloud.heartbeats(workspace_id), "the first heartbeat", timeout=BOOT)


async def stop_and_start(ec2, emu: BootEmulator, instance_id: str) -> None:
    ec2.stop_instances(InstanceIds=[instance_id])
    await eventually(lambda: agent(emu, instance_id).get("running") is False, "the instance to power off", BOOT)
    ec2.start_instances(InstanceIds=[instance_id])
    await eventually(lambda: agent(emu, instance_id).get("boots") == 2, "the second boot", BOOT)


# -- the product's user data -----------------------------------------------------------------------


def test_user_data_installs_an_enabled_unit_deterministically_and_keeps_the_token_private(cloud):
    script = cloud.user_data("ws_1")
    assert script == cloud.user_data("ws_1")  # a retried launch renders identical user data
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    lines = script.splitlines()
    assert lines[:3] == ["#!/bin/bash", "set -euo pipefail", "umask 077"]
    assert not any(re.match(r"\s*set\s+-\w*x", line) for line in lines) and "xtrace" not in script
    token_lines = [line for line in lines if cloud.platform.registration_token in line]
    assert len(token_lines) == 1 and json.loads(token_lines[0])["listen_port"] == AGENT_PORT
    assert f"cat > {CONFIG_PATH} <<'TENANTFLOW_AGENT_CONFIG'" in lines
    assert f"ExecStart=/opt/tenantflow/venv/bin/python -m agent --config {CONFIG_PATH}" in lines
    assert {
        "Restart=always",
        "RestartSec=2",
        "WantedBy=multi-user.target",
        "NoNewPrivileges=yes",
        "After=network-online.target",
        "Wants=network-online.target",
    } <= set(lines)
    assert lines[-2:] == ["systemctl daemon-reload", f"systemctl enable --now {UNIT_NAME}"]


def test_refuses_to_start_without_what_it_needs(tmp_path, monkeypatch):
    check_host(tmp_path, Path(sys.prefix))  # this machine has what it needs
    with pytest.raises(EmulatorUnavailable, match="must not be under /etc, /var or /opt"):
        check_host(Path("/var/tmp/boot"), Path(sys.prefix))
    with pytest.raises(EmulatorUnavailable, match="has no bin/python"):
        check_host(tmp_path, tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmulatorUnavailable, match="must run as root.*unshare is not on PATH.*nsenter.*ip is not"):
        check_host(tmp_path, Path(sys.prefix))


# -- booting, the wire, the metadata service ------------------------------------------------------


async def test_agent_boots_from_unchanged_user_data_registers_from_its_private_ip_and_serves_its_card(
    cloud, emulator, platform
):
    instance_id, ip, ws = cloud.launch()
    registration = await wait_registered(cloud, ws)
    assert registration["remote"] == ip  # egress leaves from the instance's own address
    assert registration["body"] == {"workspace_id": ws, "agent_cert_sha256": registration["body"]["agent_cert_sha256"]}

    url = f"https://{ip}:{AGENT_PORT}/"
    async with platform_client(ip, ws, registration) as http:  # the worker: from 127.0.0.1
        card = (await http.get(f"{url}.well-known/agent-card.json")).json()
        assert await ask(url, "hi", http=http) == "echo: hi"
    assert card["url"] == url and card["supportedInterfaces"][0]["url"] == url
    await eventually(lambda: cloud.heartbeats(ws), "a heartbeat")
    assert {h["remote"] for h in cloud.heartbeats(ws)} == {ip}

    state = agent(emulator, instance_id)
    assert state["boots"] == 1 and state["user_data_ran"] and state["workspace_id"] == ws
    assert state["units"][UNIT_NAME]["state"] == "active" and state["units"][UNIT_NAME]["enabled"]
    await eventually(lambda: agent(emulator, instance_id)["user_data_exit"] == 0, "the user data to finish")
    # What the script left on the disk: a root-only config and an enabled unit.
    root = disk(emulator, instance_id)
    assert stat.S_IMODE((root / CONFIG_PATH.lstrip("/")).stat().st_mode) == 0o600
    assert (root / "etc/systemd/system/multi-user.target.wants" / UNIT_NAME).is_symlink()
    assert (root / UNIT_PATH.lstrip("/")).is_file()
    token_file = root / "var/lib/tenantflow/agent.token"
    assert token_file.read_text() == platform.workspace_tokens[ws]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The console (which EC2 exposes) shows the script ran, and never a token.
    text = console(emulator, instance_id)
    assert "Created symlink" in text and "user data exited with 0" in text
    assert platform.registration_token not in text and platform.workspace_tokens[ws] not in text


async def test_security_group_decides_who_reaches_the_agent(cloud, emulator):
    instance_id, ip, ws = cloud.launch()
    await wait_registered(cloud, ws)
    await eventually(lambda: dial(ip, AGENT_PORT).startswith("HTTP/1.1 401"), "the agent behind port 443")
    assert dial(ip, 8000) == "refused"  # no rule for the port: nothing listens
    assert dial(ip, AGENT_PORT, source=NEIGHBOUR) == "reset"  # outside the rule's CIDR

    cloud.authorize(AGENT_PORT, f"{NEIGHBOUR}/32")  # rules apply to running instances
    await eventually(
        lambda: dial(ip, AGENT_PORT, source=NEIGHBOUR).startswith("HTTP/1.1 401"), "the neighbour to be admitted"
    )

    # A rule naming a security group admits the private addresses of that group's instances.
    _peer_id, peer_ip, _ = cloud.launch("#!/bin/bash\ntrue\n")
    assert dial(ip, AGENT_PORT, source=peer_ip) == "reset"
    same_group = [
        {"IpProtocol": "tcp", "FromPort": AGENT_PORT, "ToPort": AGENT_PORT, "UserIdGroupPairs": [{"GroupId": cloud.sg}]}
    ]
    cloud.ec2.authorize_security_group_ingress(GroupId=cloud.sg, IpPermissions=same_group)
    await eventually(
        lambda: dial(ip, AGENT_PORT, source=peer_ip).startswith("HTTP/1.1 401"),
        "the same group's instance to be admitted",
    )

    cloud.ec2.revoke_security_group_ingress(GroupId=cloud.sg, IpPermissions=same_group)
    cloud.revoke(AGENT_PORT, PLATFORM_CIDR)
    cloud.revoke(AGENT_PORT, f"{NEIGHBOUR}/32")
    await eventually(lambda: dial(ip, AGENT_PORT) == "refused", "revoking 443 to cut access")
    assert unit(emulator, instance_id)["state"] == "active"  # the agent still runs; the wire is cut


async def test_metadata_service_is_imdsv2_only_and_egress_reaches_only_the_platform(cloud, emulator, platform):
    closed_door = socket.create_server(("127.0.0.1", 0))  # a host service the instance must not reach
    probe = f"""#!/bin/bash
/opt/tenantflow/venv/bin/python - <<'PROBE'
import socket, urllib.error, urllib.request

def call(method, path, headers=None):
    req = urllib.request.Request("http://169.254.169.254" + path, method=method, headers=headers or {{}})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""

def reach(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        return "open"
    except OSError as err:
        return type(err).__name__

print("imdsv1", call("GET", "/latest/meta-data/local-ipv4")[0])
print("token-without-ttl", call("PUT", "/latest/api/token")[0])
status, token = call("PUT", "/latest/api/token", {{"X-aws-ec2-metadata-token-ttl-seconds": "60"}})
auth = {{"X-aws-ec2-metadata-token": token}}
print("token", status)
print("local-ipv4", *call("GET", "/latest/meta-data/local-ipv4", auth))
print("instance-id", *call("GET", "/latest/meta-data/instance-id", auth))
print("bad-token", call("GET", "/latest/meta-data/local-ipv4", {{"X-aws-ec2-metadata-token": "forged"}})[0])
print("user-data", call("GET", "/latest/user-data", auth)[1].startswith("#!/bin/bash"))
print("egress-platform", reach({platform.port}))
print("egress-other", reach({closed_door.getsockname()[1]}))
PROBE
"""
    try:
        instance_id, ip, _ws = cloud.launch(probe)
        text = await eventually(
            lambda: "user data exited" in console(emulator, instance_id) and console(emulator, instance_id),
            "the probe to finish",
            BOOT,
        )
    finally:
        closed_door.close()
    results = dict(line.split(" ", 1) for line in text.splitlines() if not line.startswith("cloud-init"))
    assert results == {
        "imdsv1": "401",
        "token-without-ttl": "400",
        "token": "200",
        "local-ipv4": f"200 {ip}",
        "instance-id": f"200 {instance_id}",
        "bad-token": "401",
        "user-data": "True",
        "egress-platform": "open",
        "egress-other": "ConnectionRefusedError",
    }


async def test_private_ip_outside_loopback_is_not_booted_and_never_boot_is_honoured(cloud, emulator):
    outside_id, outside_ip, _ = cloud.launch(subnet_id=None)  # moto's default subnet: 172.31.x / 10.x
    assert not outside_ip.startswith("127.")
    quiet_id, _ip, quiet_ws = cloud.launch(workspace_id=f"ws_{secrets.token_hex(6)}")
    emulator.never_boot(quiet_ws)
    _control_id, _ip, control_ws = cloud.launch()  # booted in the same polls: the emulator was looking
    await wait_registered(cloud, control_ws)
    for skipped in (outside_id, quiet_id):
        assert agent(emulator, skipped)["running"] is False and agent(emulator, skipped)["boots"] == 0
        assert console(emulator, skipped) == ""
    assert not cloud.registrations(quiet_ws)


# -- cloud-init once, the service manager --------------------------------------------------------


async def test_stop_start_runs_no_user_data_and_the_enabled_unit_resumes_with_its_saved_token(
    cloud, emulator, ec2, platform, caplog
):
    instance_id, ip, ws = cloud.launch()
    await wait_token_saved(cloud, ws)
    semaphore = disk(emulator, instance_id) / f"var/lib/cloud/instances/{instance_id}/sem/config_scripts_user"
    assert semaphore.exists()

    await stop_and_start(ec2, emulator, instance_id)
    seen = len(cloud.heartbeats(ws))
    await eventually(lambda: len(cloud.heartbeats(ws)) > seen, "heartbeats after the restart", BOOT)
    assert len(cloud.registrations(ws)) == 1  # resumed with the token on its disk
    assert cloud.heartbeats(ws)[-1]["authorization"] == f"Bearer {platform.workspace_tokens[ws]}"
    assert console(emulator, instance_id).count("running user data") == 1
    state = agent(emulator, instance_id)
    assert state["user_data_exit"] == 0 and state["units"][UNIT_NAME]["state"] == "active"  # of the first boot
    assert (await asyncio.to_thread(dial, ip, AGENT_PORT)).startswith("HTTP/1.1 401")
    # The certificate made at first boot is the one served after the restart: the pin still holds.
    async with platform_client(ip, ws, cloud.registrations(ws)[0]) as http:
        assert (await http.get(f"https://{ip}:{AGENT_PORT}/.well-known/agent-card.json")).status_code == 200
    ignored = [r for r in caplog.records if "ProtectSystem=" in r.getMessage()]
    assert len(ignored) == 1 and "not emulated" in ignored[0].getMessage()  # said once, not per boot


async def test_unit_started_without_enable_does_not_come_back_after_stop_start(cloud, emulator, ec2):
    ws = f"ws_{secrets.token_hex(6)}"
    started_only = cloud.user_data(ws).replace(f"systemctl enable --now {UNIT_NAME}", f"systemctl start {UNIT_NAME}")
    assert started_only != cloud.user_data(ws)
    instance_id, _ip, _ws = cloud.launch(started_only, workspace_id=ws)
    await wait_registered(cloud, ws)
    assert unit(emulator, instance_id)["enabled"] is False

    await stop_and_start(ec2, emulator, instance_id)
    await asyncio.sleep(5)  # well past RestartSec: nothing is going to start it
    assert unit(emulator, instance_id) == {}  # nothing on the disk says to start it
    assert len(cloud.registrations(ws)) == 1 and console(emulator, instance_id).count("running user data") == 1


async def test_restart_always_restarts_a_dead_agent_and_crash_keeps_it_down(cloud, emulator):
    instance_id, _ip, ws = cloud.launch()
    await wait_token_saved(cloud, ws)
    first = unit(emulator, instance_id)["pid"]
    os.kill(first, signal.SIGKILL)  # the agent dies on its own
    restarted = await eventually(
        lambda: (u := unit(emulator, instance_id)).get("pid") not in (None, first) and u["state"] == "active" and u,
        "Restart=always to start it again",
        BOOT,
    )
    assert restarted["restarts"] == 1
    seen = len(cloud.heartbeats(ws))
    await eventually(lambda: len(cloud.heartbeats(ws)) > seen, "heartbeats from the restarted agent", BOOT)

    await asyncio.to_thread(emulator.crash, instance_id)
    crashed = unit(emulator, instance_id)
    assert crashed["state"] == "failed" and crashed["pid"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(restarted["pid"], 0)
    await asyncio.sleep(5)  # past RestartSec=2: a broken agent is not restarted
    assert unit(emulator, instance_id)["state"] == "failed" and unit(emulator, instance_id)["restarts"] == 1
    assert len(cloud.registrations(ws)) == 1


async def test_service_manager_honours_user_environment_and_refuses_unknown_users(cloud, emulator):
    script = """#!/bin/bash
set -euo pipefail
install -d -m 0777 /var/lib/probe
echo 'FROM_FILE=file' > /etc/probe.env
cat > /etc/systemd/system/probe.service <<'UNIT'
[Service]
User=nobody
Environment=GREETING=hello
EnvironmentFile=/etc/probe.env
WorkingDirectory=/var/lib/probe
ExecStart=/bin/sh -c 'echo "$(id -un) $GREETING $FROM_FILE $(pwd)" > out; exec sleep 1000'
UNIT
cat > /etc/systemd/system/ghost.service <<'UNIT'
[Service]
User=ghost
ExecStart=/bin/sleep 1000
UNIT
systemctl start probe.service
systemctl start ghost.service || echo "ghost start failed: $?"
systemctl is-active probe.service
systemctl is-active ghost.service || true
"""
    instance_id, _ip, _ws = cloud.launch(script)
    await eventually(lambda: "user data exited with 0" in console(emulator, instance_id), "the script", BOOT)
    out = disk(emulator, instance_id) / "var/lib/probe/out"
    await eventually(out.exists, "the probe unit's output")
    assert out.read_text().split() == ["nobody", "hello", "file", "/var/lib/probe"]
    text = console(emulator, instance_id)
    assert "ghost start failed: 1" in text and "active\nfailed\n" in text
    journal = emulator.log_dir / "instances" / instance_id / "journal" / "ghost.service.log"
    assert "User=ghost does not exist in the instance's /etc/passwd" in journal.read_text()
    assert unit(emulator, instance_id, "ghost.service")["state"] == "failed"
    assert not (Path("/etc/probe.env").exists() or Path("/etc/systemd/system/probe.service").exists())


# -- the command line -----------------------------------------------------------------------------


async def test_command_line_admin_endpoint_and_nothing_outlives_it(cloud, moto_endpoint, platform, tmp_path):
    before = namespaces()
    admin_port = free_port()
    proc = spawn(
        [
            sys.executable,
            "-m",
            "devstack.boot_emulator",
            "--ec2-endpoint",
            moto_endpoint,
            "--region",
            "us-east-1",
            "--log-dir",
            str(tmp_path / "boot"),
            "--admin-port",
            str(admin_port),
            "--poll-interval",
            "0.1",
            "--stop-timeout",
            "5",
            "--tag-filter",
            f"tenantflow:org-id={cloud.org_id}",
            "--egress",
            f"127.0.0.1:{platform.port}",
        ],
        log_path=tmp_path / "emulator.log",
        cwd=ROOT,
    )
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", admin_port, timeout=60, proc=proc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", timeout=10, trust_env=False) as http:
            blocked = f"ws_{secrets.token_hex(6)}"
            assert (await http.post("/never-boot", json={"workspace_id": blocked})).status_code == 200
            assert (await http.post("/crash", json={})).status_code == 400
            blocked_id, _ip, _ws = cloud.launch(workspace_id=blocked)
            instance_id, ip, ws = cloud.launch()
            await wait_registered(cloud, ws)
            listed = {a["instance_id"]: a for a in (await http.get("/agents")).json()}
            assert listed[instance_id]["private_ip"] == ip and listed[instance_id]["workspace_id"] == ws
            assert listed[instance_id]["units"][UNIT_NAME]["state"] == "active"
            assert listed[blocked_id]["running"] is False
            pid = listed[instance_id]["units"][UNIT_NAME]["pid"]

            assert (await http.post("/crash", json={"instance_id": instance_id})).status_code == 200
            listed = {a["instance_id"]: a for a in (await http.get("/agents")).json()}
            assert listed[instance_id]["units"][UNIT_NAME]["state"] == "failed"
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(proc.wait, 60)
    assert returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert namespaces() <= before  # no holder, no namespace, so no mount left behind
    assert not cloud.registrations(blocked)


async def test_killed_emulator_takes_its_instances_with_it_and_a_new_one_reboots_them_from_disk(
    cloud, moto_endpoint, platform, tmp_path
):
    """SIGKILL gives the emulator no chance to clean up: the parent-death signal does it. The disks
    stay, so the next emulator (a restarted local stack) reboots the instances from them."""
    before = namespaces()
    proc = spawn(
        [
            sys.executable,
            "-m",
            "devstack.boot_emulator",
            "--ec2-endpoint",
            moto_endpoint,
            "--log-dir",
            str(tmp_path / "boot"),
            "--admin-port",
            str(free_port()),
            "--poll-interval",
            "0.1",
            "--tag-filter",
            f"tenantflow:org-id={cloud.org_id}",
            "--egress",
            f"127.0.0.1:{platform.port}",
        ],
        log_path=tmp_path / "emulator.log",
        cwd=ROOT,
    )
    try:
        instance_id, ip, ws = cloud.launch()
        await wait_token_saved(cloud, ws)
        assert namespaces() - before
    finally:
        proc.kill()
        await asyncio.to_thread(proc.wait, 60)
    await eventually(lambda: namespaces() <= before, "the instance's namespaces to go", BOOT)
    assert await asyncio.to_thread(dial, ip, AGENT_PORT) == "refused"

    emu = BootEmulator(
        moto_endpoint,
        log_dir=tmp_path / "boot",
        poll_interval=0.1,
        stop_timeout=5,
        tag_filters={"tenantflow:org-id": cloud.org_id},
        egress=[("127.0.0.1", platform.port)],
    )
    emu.start()
    try:
        seen = len(cloud.heartbeats(ws))
        await eventually(lambda: len(cloud.heartbeats(ws)) > seen, "heartbeats after the reboot", BOOT)
        assert len(cloud.registrations(ws)) == 1 and console(emu, instance_id).count("running user data") == 1
    finally:
        await asyncio.to_thread(emu.stop)
    assert namespaces() <= before
