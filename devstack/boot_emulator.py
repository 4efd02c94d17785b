"""Plays each workspace instance's hypervisor, network and OS on the local stack, strictly.

moto records EC2 instances but runs nothing. The emulator polls moto for managed instances and
gives every ``running`` one what EC2 would: network and mount namespaces with a disk that survives
a stop (overlays over /etc, /var, /opt), the project's virtualenv as its "AMI" at
/opt/tenantflow/venv, an IMDSv2 metadata service, cloud-init that runs the user data unchanged on
the first boot only, a service manager that starts what the disk has enabled on every boot, the
security groups on the way in and only the configured destinations on the way out. It never does
the product's work: it does not tell the agent its address or port, restart what the product
failed to install, or forgive a port the security group closes. See devstack/instance_host.py.

Instances must have a private IP in 127.0.0.0/8 (a VPC with a 127.x CIDR): any such address can be
bound on the host without configuration, so the platform dials the instance's real private IP.

    python -m devstack.boot_emulator --ec2-endpoint URL --region R --log-dir DIR --admin-port N \\
        [--tag-filter K=V]... [--egress HOST:PORT]... [--ami-venv PATH]

Admin endpoint (127.0.0.1 only), for tests and demos of failure modes:
    POST /never-boot {"workspace_id": ...}   instances of that workspace never boot
    POST /crash {"instance_id": ...}         SIGKILL that instance's units; they stay failed (a broken agent)
    GET  /agents                             per instance: ids, private ip, units, boots, user data ran
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import ipaddress
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from devstack import sg_proxy
from devstack.imds import InstanceMetadata
from devstack.instance_host import LOOPBACK, InstanceHost
from devstack.moto_client import moto_ec2_client
from devstack.netns import OVERLAID
from domain.resources import GONE_STATES, HALTED_STATES, MANAGED_TAG, WORKSPACE_TAG, tag_filter, tags_of

log = logging.getLogger("devstack.boot_emulator")

REQUIRED_TOOLS = ("unshare", "nsenter", "ip", "setpriv", "mount")
_BOOT_RETRY_SECONDS = 5.0
_TICK_SECONDS = 0.1


class EmulatorUnavailable(RuntimeError):
    """This machine cannot run the emulator (not root, tools missing, unusable log dir)."""


def check_host(log_dir: Path, ami: Path) -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("it must run as root (it creates network and mount namespaces)")
    problems += [f"{tool} is not on PATH (util-linux / iproute2)" for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    resolved = log_dir.resolve()
    if any(resolved.is_relative_to(f"/{d}") for d in OVERLAID):
        problems.append(f"the log dir {resolved} must not be under /etc, /var or /opt (instances overlay them)")
    if any(c in str(resolved) for c in ",:\\ "):
        problems.append(f"the log dir {resolved} must not contain ',', ':', '\\' or spaces (overlayfs options)")
    if not (ami / "bin" / "python").exists():
        problems.append(f"the AMI virtualenv {ami} has no bin/python")
    if problems:
        raise EmulatorUnavailable("the boot emulator cannot run: " + "; ".join(problems))


def decode_user_data(value: str) -> bytes | None:
    """What cloud-init runs: the base64-decoded user data, gunzipped if it was gzipped."""
    if not value:
        return None
    raw = base64.b64decode(value)
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def parse_endpoint(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    ipaddress.IPv4Address(host)
    return host, int(port)


@dataclass
class Ec2View:
    instances: list[dict]
    permissions: dict[str, list[dict]] = field(default_factory=dict)  # group id -> IpPermissions
    members: dict[str, list[str]] = field(default_factory=dict)  # group id -> private IPs of its running instances


class BootEmulator:
    def __init__(
        self,
        ec2_endpoint_url: str,
        region: str = "us-east-1",
        *,
        log_dir: Path,
        poll_interval: float = 0.3,
        tag_filters: dict[str, str] | None = None,
        egress: list[tuple[str, int]] | None = None,
        ami_venv: Path | str = sys.prefix,
        stop_timeout: float = 10.0,
    ):
        """``tag_filters`` narrows the instances it boots further (e.g. ``{ORG_ID_TAG: ...}``), so
        tests sharing one moto server each see only their own instances. ``egress`` lists the only
        destinations instances can reach (the platform API). ``stop_timeout``: SIGTERM to SIGKILL."""
        self._ec2 = moto_ec2_client(ec2_endpoint_url, region)
        self.log_dir = Path(log_dir)
        self.poll_interval = poll_interval
        self.egress = list(egress or [])
        self.ami = Path(ami_venv)
        self.stop_timeout = stop_timeout
        self._filters = [tag_filter(k, v) for k, v in {MANAGED_TAG: "true", **(tag_filters or {})}.items()]
        self._hosts: dict[str, InstanceHost] = {}
        self._never_boot: set[str] = set()  # workspace ids
        self._crashed: set[str] = set()  # instance ids
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task] = []
        self._ec2_thread: ThreadPoolExecutor | None = None

    # -- public API (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        check_host(self.log_dir, self.ami)
        (self.log_dir / "instances").mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ec2_thread = ThreadPoolExecutor(1, thread_name_prefix="boot-emulator-ec2")
        self._loop = asyncio.new_event_loop()
        # Every process is spawned from this one thread, which lives as long as the emulator: the
        # parent-death signal fires when the spawning thread ends.
        self._thread = threading.Thread(target=self._loop.run_forever, name="boot-emulator", daemon=True)
        self._thread.start()
        self._call(self._begin())

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._end(), timeout=max(120.0, 3 * self.stop_timeout))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
        self._ec2_thread.shutdown(wait=True)
        self._loop = self._thread = self._ec2_thread = None

    def never_boot(self, workspace_id: str) -> None:
        """Instances of this workspace never boot (instances already running are left alone)."""
        with self._lock:
            self._never_boot.add(workspace_id)

    def crash(self, instance_id: str) -> None:
        """SIGKILL this instance's units now, and never start them again: a broken agent."""
        with self._lock:
            self._crashed.add(instance_id)
        if self._loop is not None:
            self._call(self._crash(instance_id))

    def agents(self) -> dict[str, dict[str, Any]]:
        """Per instance id: workspace, private ip, whether it runs, boots, user data, units (pids, states)."""
        if self._loop is None:
            return {}
        return self._call(self._describe())

    # -- the event loop's side --------------------------------------------------------------------

    def _call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    async def _begin(self) -> None:
        self._tasks = [asyncio.create_task(self._poll_forever()), asyncio.create_task(self._tick_forever())]

    async def _end(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(h.shutdown() for h in self._hosts.values() if h.running))

    async def _crash(self, instance_id: str) -> None:
        host = self._hosts.get(instance_id)
        if host is None:
            return
        host.supervisor.broken = True
        for pid in host.crash():
            log.info("crashed a unit of %s (pid %s)", instance_id, pid)
        while any(s.proc is not None for s in host.supervisor.services.values()):
            host.tick()
            await asyncio.sleep(0.02)

    async def _describe(self) -> dict[str, dict[str, Any]]:
        return {iid: host.describe() for iid, host in self._hosts.items() if not host.terminated}

    async def _tick_forever(self) -> None:
        while True:
            for host in list(self._hosts.values()):
                if host.running:
                    host.tick()
            await asyncio.sleep(_TICK_SECONDS)

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                view = await loop.run_in_executor(self._ec2_thread, self._read_ec2)
                await self._apply(view)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - moto restarting, a transient error: try again next round
                log.warning("polling EC2 failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.poll_interval)

    # -- reading EC2 (on the EC2 thread: boto3 blocks) --------------------------------------------

    def _instances(self, filters: list[dict]) -> list[dict]:
        pages = self._ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _permissions(self, group_ids: set[str]) -> dict[str, list[dict]]:
        if not group_ids:
            return {}
        try:
            groups = self._ec2.describe_security_groups(GroupIds=sorted(group_ids))["SecurityGroups"]
        except ClientError as err:
            if err.response["Error"]["Code"] != "InvalidGroup.NotFound":
                raise
            groups = []  # one of them is gone (or not visible yet): ask one by one
            for group_id in sorted(group_ids):
                with contextlib.suppress(ClientError):
                    groups += self._ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
        return {g["GroupId"]: g.get("IpPermissions", []) for g in groups}

    def _read_ec2(self) -> Ec2View:
        view = Ec2View(self._instances(self._filters))
        groups = {
            g["GroupId"] for i in view.instances if i["State"]["Name"] == "running" for g in i.get("SecurityGroups", [])
        }
        view.permissions = self._permissions(groups)
        referenced = {
            pair["GroupId"]
            for perms in view.permissions.values()
            for perm in perms
            for pair in perm.get("UserIdGroupPairs", [])
            if pair.get("GroupId")
        }
        if referenced:
            for inst in self._instances(
                [
                    {"Name": "instance.group-id", "Values": sorted(referenced)},
                    {"Name": "instance-state-name", "Values": ["running"]},
                ]
            ):
                for group in inst.get("SecurityGroups", []):
                    if group["GroupId"] in referenced and inst.get("PrivateIpAddress"):
                        view.members.setdefault(group["GroupId"], []).append(inst["PrivateIpAddress"])
        return view

    def _user_data(self, instance_id: str) -> str:
        attr = self._ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return attr.get("UserData", {}).get("Value", "")

    # -- acting on it (on the loop) ---------------------------------------------------------------

    async def _apply(self, view: Ec2View) -> None:
        seen = {inst["InstanceId"] for inst in view.instances}
        work = [self._reconcile(inst, view) for inst in view.instances]
        work += [self._halt(self._hosts[iid], "gone") for iid in set(self._hosts) - seen]
        for result in await asyncio.gather(*work, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("reconciling an instance failed: %s: %s", type(result).__name__, result)

    async def _reconcile(self, inst: dict, view: Ec2View) -> None:
        iid, state = inst["InstanceId"], inst["State"]["Name"]
        host = self._hosts.get(iid)
        if host is None:
            host = self._hosts[iid] = InstanceHost(
                iid,
                self.log_dir / "instances",
                ami=self.ami,
                egress=self.egress,
                stop_timeout=self.stop_timeout,
                warn_once=self._warn_once,
            )
        host.workspace_id = tags_of(inst).get(WORKSPACE_TAG, "")
        host.private_ip = inst.get("PrivateIpAddress") or ""
        if state in HALTED_STATES:
            await self._halt(host, state)
            return
        if state != "running":
            return
        if not host.running and not await self._boot(host, inst):
            return
        permissions = [p for g in inst.get("SecurityGroups", []) for p in view.permissions.get(g["GroupId"], [])]
        await host.reconcile_ingress(sg_proxy.ingress_rules(permissions, view.members, self._warn_once))

    def _may_boot(self, host: InstanceHost) -> bool:
        with self._lock:
            never = host.workspace_id in self._never_boot
            host.supervisor.broken = host.instance_id in self._crashed
        if never:
            self._warn_once(f"not booting {host.instance_id}: workspace {host.workspace_id} is marked never-boot")
            return False
        try:
            inside = ipaddress.IPv4Address(host.private_ip) in LOOPBACK
        except ValueError:
            inside = False
        if not inside:
            self._warn_once(
                f"not booting {host.instance_id}: its private IP {host.private_ip or '(none)'} is not "
                f"in 127.0.0.0/8; launch it in a subnet of a VPC with a 127.x CIDR"
            )
            return False
        twin = next(
            (h.instance_id for h in self._hosts.values() if h.running and h.private_ip == host.private_ip), None
        )
        if twin is not None:
            self._warn_once(
                f"not booting {host.instance_id} yet: {twin} already has its private IP {host.private_ip} "
                f"(overlapping VPCs: give each a distinct 127.x CIDR)"
            )
            return False
        return time.monotonic() >= host.retry_at

    async def _boot(self, host: InstanceHost, inst: dict) -> bool:
        if not self._may_boot(host):
            return False
        try:
            raw = await asyncio.get_running_loop().run_in_executor(self._ec2_thread, self._user_data, host.instance_id)
            options = inst.get("MetadataOptions", {})
            meta = InstanceMetadata(
                host.instance_id,
                host.private_ip,
                base64.b64decode(raw) if raw else None,
                http_tokens=options.get("HttpTokens", "optional"),
                http_endpoint=options.get("HttpEndpoint", "enabled"),
            )
            await host.boot(meta, decode_user_data(raw))
        except Exception as exc:  # noqa: BLE001 - report, retry a little later
            host.retry_at = time.monotonic() + _BOOT_RETRY_SECONDS
            self._warn_once(f"booting {host.instance_id} failed: {type(exc).__name__}: {exc}")
            return False
        return True

    async def _halt(self, host: InstanceHost, state: str) -> None:
        if host.running:
            log.info("instance %s is %s: powering it off", host.instance_id, state)
            await host.shutdown()
        if (state in GONE_STATES or state == "gone") and not host.terminated:
            host.terminated = True
            host.destroy_disk()


# -- command line and admin endpoint ----------------------------------------------------------


async def _serve_admin(emulator: BootEmulator, port: int) -> None:
    from aiohttp import web

    async def body_field(request: web.Request, key: str) -> str:
        with contextlib.suppress(ValueError):
            value = (await request.json()).get(key)
            if isinstance(value, str) and value:
                return value
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"JSON body with a string {key!r} required"}), content_type="application/json"
        )

    async def never_boot(request: web.Request) -> web.Response:
        workspace_id = await body_field(request, "workspace_id")
        emulator.never_boot(workspace_id)
        return web.json_response({"workspace_id": workspace_id, "never_boot": True})

    async def crash(request: web.Request) -> web.Response:
        instance_id = await body_field(request, "instance_id")
        await asyncio.to_thread(emulator.crash, instance_id)
        return web.json_response({"instance_id": instance_id, "crashed": True})

    async def agents(_request: web.Request) -> web.Response:
        return web.json_response(list((await asyncio.to_thread(emulator.agents)).values()))

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
    parser.add_argument("--log-dir", type=Path, required=True, help="instance disks, consoles and journals go here")
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--poll-interval", type=float, default=0.3)
    parser.add_argument(
        "--tag-filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="boot only instances with this tag too (repeatable)",
    )
    parser.add_argument(
        "--egress",
        action="append",
        default=[],
        type=parse_endpoint,
        metavar="HOST:PORT",
        help="a destination instances may reach, e.g. the platform API (repeatable)",
    )
    parser.add_argument(
        "--ami-venv",
        type=Path,
        default=Path(sys.prefix),
        help="the virtualenv mounted at /opt/tenantflow/venv in every instance (default: this one)",
    )
    parser.add_argument("--stop-timeout", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    args = parser.parse_args()
    tag_filters = dict(item.split("=", 1) for item in args.tag_filter)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)

    emulator = BootEmulator(
        args.ec2_endpoint,
        args.region,
        log_dir=args.log_dir,
        poll_interval=args.poll_interval,
        tag_filters=tag_filters,
        egress=args.egress,
        ami_venv=args.ami_venv,
        stop_timeout=args.stop_timeout,
    )
    try:
        emulator.start()
    except EmulatorUnavailable as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(_serve_admin(emulator, args.admin_port))
    finally:
        emulator.stop()
        log.info("boot emulator stopped")


if __name__ == "__main__":
    main()
