"""Plays the part of a workspace instance's OS on the local stack.

moto records EC2 instances but runs nothing. The emulator polls moto for managed instances and, for
each one that is ``running``, does what its boot script would: reads the agent's boot config out of
the user data and starts ``python -m agent`` as a local process on a free loopback port. When the
instance stops or terminates, its agent is stopped; a stopped instance started again boots again.

    python -m devstack.boot_emulator --ec2-endpoint URL --region R --log-dir DIR --admin-port N

Admin endpoint (127.0.0.1 only), for tests and demos of failure modes:
    POST /never-boot {"workspace_id": ...}   instances of that workspace never start their agent
    POST /crash {"instance_id": ...}         SIGKILL that instance's agent, and never restart it
    GET  /agents                             [{"instance_id", "workspace_id", "pid", "port", ...}]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.moto_client import moto_ec2_client
from devstack.procs import free_port, spawn, stop

log = logging.getLogger("devstack.boot_emulator")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DELIMITER = "TENANTFLOW_AGENT_CONFIG"
_HEREDOC_OPEN = f"<<'{CONFIG_DELIMITER}'"
_HALTED_STATES = {"stopping", "stopped", "shutting-down", "terminated"}
_AGENT_STOP_TIMEOUT = 5.0


def extract_boot_config(user_data: str) -> dict:
    """The agent's boot config: the JSON inside the ``<<'TENANTFLOW_AGENT_CONFIG'`` heredoc."""
    lines = user_data.splitlines()
    for start, line in enumerate(lines):
        if line.rstrip().endswith(_HEREDOC_OPEN):
            break
    else:
        raise ValueError("user data has no TENANTFLOW_AGENT_CONFIG heredoc")
    for end in range(start + 1, len(lines)):
        if lines[end].rstrip("\r") == CONFIG_DELIMITER:
            break
    else:
        raise ValueError("TENANTFLOW_AGENT_CONFIG heredoc is not terminated")
    try:
        config = json.loads("\n".join(lines[start + 1:end]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"boot config is not valid JSON: {exc.msg}") from None  # the text holds a token
    if not isinstance(config, dict):
        raise ValueError("boot config is not a JSON object")
    return config


def _decode_user_data(value: str) -> str:
    raw = base64.b64decode(value)
    if raw[:2] == b"\x1f\x8b":  # cloud-init accepts gzipped user data
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


@dataclass
class AgentProcess:
    instance_id: str
    workspace_id: str
    port: int
    public_url: str
    proc: subprocess.Popen
    config_path: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def to_dict(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "workspace_id": self.workspace_id, "pid": self.pid,
                "port": self.port, "public_url": self.public_url, "running": self.running,
                "returncode": self.proc.returncode, "log_path": str(self.log_path)}


class BootEmulator:
    def __init__(self, ec2_endpoint_url: str, region: str = "us-east-1", *, log_dir: Path,
                 poll_interval: float = 0.3, python: str = sys.executable, agent_host: str = "127.0.0.1",
                 tag_filters: dict[str, str] | None = None):
        """``tag_filters`` narrows the instances it boots further (e.g. ``{"tenantflow:org-id": ...}``), so
        tests sharing one moto server each see only their own instances."""
        self._ec2 = moto_ec2_client(ec2_endpoint_url, region)
        self.log_dir = Path(log_dir)
        self.poll_interval = poll_interval
        self.python = python
        self.agent_host = agent_host
        self._filters = [{"Name": f"tag:{k}", "Values": [v]}
                         for k, v in {"tenantflow:managed": "true", **(tag_filters or {})}.items()]
        self._lock = threading.Lock()
        self._agents: dict[str, AgentProcess] = {}
        self._booted: set[str] = set()  # booted during the instance's current run (reset when it stops)
        self._never_boot: set[str] = set()  # workspace ids
        self._crashed: set[str] = set()  # instance ids
        self._reported: set[str] = set()  # instance ids already logged as skipped or exited
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="boot-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        with self._lock:
            agents = list(self._agents.values())
        for agent in agents:
            self._stop_agent(agent)

    def never_boot(self, workspace_id: str) -> None:
        """Instances of this workspace never start their agent (agents already running are left alone)."""
        with self._lock:
            self._never_boot.add(workspace_id)

    def crash(self, instance_id: str) -> None:
        """SIGKILL this instance's agent now (if any), and never boot it again."""
        with self._lock:
            self._crashed.add(instance_id)
            agent = self._agents.get(instance_id)
        if agent is not None and agent.running:
            log.info("crashing agent of %s (pid %s)", instance_id, agent.pid)
            stop(agent.proc, sig=signal.SIGKILL, timeout=_AGENT_STOP_TIMEOUT)

    def agents(self) -> dict[str, AgentProcess]:
        with self._lock:
            return dict(self._agents)

    # -- polling ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # moto restarting, a transient error: try again next round
                log.warning("polling EC2 failed: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.poll_interval)

    def poll_once(self) -> None:
        seen: dict[str, tuple[str, dict[str, str]]] = {}
        pages = self._ec2.get_paginator("describe_instances").paginate(Filters=self._filters)
        for page in pages:
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                    seen[inst["InstanceId"]] = (inst["State"]["Name"], tags)

        for instance_id, (state, tags) in seen.items():
            if self._stop.is_set():
                return
            if state == "running":
                self._maybe_boot(instance_id, tags)
            elif state in _HALTED_STATES:
                self._halt(instance_id, state)
        for instance_id in set(self.agents()) - seen.keys():
            self._halt(instance_id, "gone")
        self._report_exited_agents()

    def _maybe_boot(self, instance_id: str, tags: dict[str, str]) -> None:
        workspace_id = tags.get("tenantflow:workspace-id", "")
        with self._lock:
            if instance_id in self._booted or instance_id in self._crashed:
                return
            if workspace_id in self._never_boot:
                self._report_once(instance_id, "not booting %s: workspace %s is marked never-boot",
                                  instance_id, workspace_id)
                return
        attr = self._ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        try:
            config = extract_boot_config(_decode_user_data(attr.get("UserData", {}).get("Value", "")))
        except ValueError as exc:
            with self._lock:
                self._report_once(instance_id, "ignoring %s: %s", instance_id, exc)
            return
        with self._lock:
            if instance_id in self._crashed or workspace_id in self._never_boot:
                return  # marked while we read the user data
            agent = self._launch(instance_id, config.get("workspace_id") or workspace_id, config)
            self._booted.add(instance_id)
            self._reported.discard(instance_id)
            self._agents[instance_id] = agent
        log.info("booted %s: agent pid %s at %s (log %s)", instance_id, agent.pid, agent.public_url, agent.log_path)

    def _launch(self, instance_id: str, workspace_id: str, config: dict) -> AgentProcess:
        # The instance's private disk: the config carries the registration token, and the agent
        # keeps its workspace token beside it across a stop/start; removed when terminated.
        disk = self._disk(instance_id)
        disk.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = str(disk / "agent.json")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        port = free_port()
        public_url = f"http://{self.agent_host}:{port}"
        log_path = self.log_dir / f"agent-{instance_id}.log"
        proc = spawn([self.python, "-m", "agent", "--config", name, "--host", self.agent_host,
                      "--port", str(port), "--public-url", public_url], log_path=log_path, cwd=REPO_ROOT)
        return AgentProcess(instance_id, workspace_id, port, public_url, proc, Path(name), log_path)

    def _disk(self, instance_id: str) -> Path:
        return self.log_dir / "instances" / instance_id

    def _halt(self, instance_id: str, state: str) -> None:
        with self._lock:
            self._booted.discard(instance_id)
            agent = self._agents.get(instance_id)
        if agent is not None and agent.running:
            log.info("instance %s is %s: stopping its agent (pid %s)", instance_id, state, agent.pid)
            self._stop_agent(agent)
        if state in ("terminated", "gone"):
            shutil.rmtree(self._disk(instance_id), ignore_errors=True)

    def _stop_agent(self, agent: AgentProcess) -> None:
        stop(agent.proc, timeout=_AGENT_STOP_TIMEOUT)
        # Stopping keeps the instance's disk, including saved tokens.
        if agent.config_path.parent != self._disk(agent.instance_id):
            agent.config_path.unlink(missing_ok=True)

    def _report_exited_agents(self) -> None:
        with self._lock:
            for instance_id, agent in self._agents.items():
                if instance_id in self._booted and not agent.running:
                    self._report_once(instance_id, "agent of %s exited with %s (see %s)",
                                      instance_id, agent.proc.returncode, agent.log_path)

    def _report_once(self, instance_id: str, msg: str, *args: object) -> None:
        if instance_id not in self._reported:
            self._reported.add(instance_id)
            log.warning(msg, *args)


# -- command line and admin endpoint ----------------------------------------------------------

async def _serve_admin(emulator: BootEmulator, port: int) -> None:
    from aiohttp import web

    async def body_field(request: web.Request, key: str) -> str:
        with contextlib.suppress(ValueError):
            value = (await request.json()).get(key)
            if isinstance(value, str) and value:
                return value
        raise web.HTTPBadRequest(text=json.dumps({"error": f"JSON body with a string {key!r} required"}),
                                 content_type="application/json")

    async def never_boot(request: web.Request) -> web.Response:
        workspace_id = await body_field(request, "workspace_id")
        emulator.never_boot(workspace_id)
        return web.json_response({"workspace_id": workspace_id, "never_boot": True})

    async def crash(request: web.Request) -> web.Response:
        instance_id = await body_field(request, "instance_id")
        await asyncio.to_thread(emulator.crash, instance_id)
        return web.json_response({"instance_id": instance_id, "crashed": True})

    async def agents(_request: web.Request) -> web.Response:
        return web.json_response([a.to_dict() for a in emulator.agents().values()])

    app = web.Application()
    app.router.add_post("/never-boot", never_boot)
    app.router.add_post("/crash", crash)
    app.router.add_get("/agents", agents)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    log.info("boot emulator admin on http://127.0.0.1:%s", port)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ec2-endpoint", required=True, help="moto's EC2 endpoint URL")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--log-dir", type=Path, required=True, help="agent logs and boot configs go here")
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--poll-interval", type=float, default=0.3)
    parser.add_argument("--tag-filter", action="append", default=[], metavar="KEY=VALUE",
                        help="boot only instances with this tag too (repeatable)")
    args = parser.parse_args()
    tag_filters = dict(item.split("=", 1) for item in args.tag_filter)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)

    emulator = BootEmulator(args.ec2_endpoint, args.region, log_dir=args.log_dir, poll_interval=args.poll_interval,
                            tag_filters=tag_filters)
    emulator.start()
    try:
        asyncio.run(_serve_admin(emulator, args.admin_port))
    finally:
        emulator.stop()
        log.info("boot emulator stopped")


if __name__ == "__main__":
    main()
