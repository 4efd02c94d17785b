"""One emulated EC2 instance: its disk, and while it runs its namespaces, metadata service, wire
(security-group ingress, egress) and service manager.

The disk is ``<log dir>/instances/<instance id>/``:

    disk/etc, disk/var, disk/opt     overlay upper directories: what the instance wrote
    work/                            overlayfs work directories
    console.log                      cloud-init's output (EC2's console output)
    journal/<unit>.log               each unit's output and the service manager's notes
    os/bin/systemctl, os/systemctl.sock   the emulated OS's systemctl and its control socket
    holder.log                       the namespace holder's errors

A boot: holder (namespaces and mounts), metadata service, egress, systemctl's socket, the units the
disk has enabled, then (first boot only, as cloud-init's per-instance semaphore on the disk says)
the user data, unchanged, as root, cwd /, with the emulated systemctl first on PATH. A stop: SIGTERM
to every unit, SIGKILL after the stop timeout, then SIGKILL to whatever is left in the namespace;
the disk stays. Termination deletes the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from devstack import sg_proxy
from devstack.imds import InstanceMetadata, build_app
from devstack.netns import METADATA_ADDRESS, NetNamespace, in_namespace, kill_net_namespace, spawn_holder
from devstack.systemctl import Systemctl, install_shim, serve_control
from devstack.units import OS_PATH, Supervisor

log = logging.getLogger("devstack.boot_emulator")

HOLDER_READY_TIMEOUT = 30.0
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class BootFailed(Exception):
    pass


class InstanceHost:
    def __init__(
        self,
        instance_id: str,
        disk_root: Path,
        *,
        ami: Path,
        egress: list[tuple[str, int]],
        stop_timeout: float,
        warn_once: Callable[[str], None],
    ):
        self.instance_id = instance_id
        self.dir = disk_root / instance_id
        self.ami = ami
        self.egress = egress
        self.stop_timeout = stop_timeout
        self.warn_once = warn_once
        self.workspace_id = ""
        self.private_ip = ""
        self.boots = 0
        self.user_data_proc: subprocess.Popen | None = None
        self.user_data_exit: int | None = None
        self.terminated = False
        self.retry_at = 0.0  # after a failed boot, when to try again
        self.supervisor = Supervisor(
            upper=self.upper,
            journal_dir=self.dir / "journal",
            shim_dir=self.dir / "os" / "bin",
            stop_timeout=stop_timeout,
            warn_once=warn_once,
        )
        self.rules: list[sg_proxy.IngressRule] = []
        self._holder: subprocess.Popen | None = None
        self._netns: NetNamespace | None = None
        self._imds: web.AppRunner | None = None
        self._control: asyncio.Server | None = None
        self._egress: list[sg_proxy.Listener] = []
        self._ingress: dict[int, sg_proxy.Listener] = {}

    @property
    def upper(self) -> Path:
        return self.dir / "disk"

    @property
    def running(self) -> bool:
        return self._holder is not None

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    def semaphore(self) -> Path:
        """cloud-init's once-per-instance mark for the user-data scripts, on the instance's disk."""
        return self.upper / "var/lib/cloud/instances" / self.instance_id / "sem/config_scripts_user"

    # -- boot ----------------------------------------------------------------------------------

    async def boot(self, meta: InstanceMetadata, user_data: bytes | None) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.dir / "os").mkdir(exist_ok=True)
        ready = self.dir / "os" / "ready"
        self._holder = spawn_holder(self.upper, self.dir / "work", self.ami, ready, self.dir / "holder.log")
        try:
            deadline = time.monotonic() + HOLDER_READY_TIMEOUT
            while not ready.exists():
                if self._holder.poll() is not None or time.monotonic() > deadline:
                    tail = (self.dir / "holder.log").read_text(errors="replace")[-1000:]
                    raise BootFailed(f"namespace holder failed ({self._holder.returncode}): {tail.strip()}")
                await asyncio.sleep(0.02)
            self.boots += 1
            self.supervisor.holder_pid = self._holder.pid
            self._netns = NetNamespace(self._holder.pid)
            await self._start_metadata(meta)
            for host, port in self.egress:
                sock = await self._netns.listen(host, port)
                self._egress.append(sg_proxy.Listener(sock, self._egress_handler(host, port)))
            socket_path = self.dir / "os" / "systemctl.sock"
            install_shim(self.dir / "os" / "bin", socket_path)
            self._control = await serve_control(socket_path, Systemctl(self.supervisor))
            self.supervisor.start_enabled()
            if not self.semaphore().exists():
                self._run_user_data(user_data)
        except Exception:
            await self.shutdown()
            raise
        log.info(
            "booted %s (%s, boot %d): units %s",
            self.instance_id,
            self.private_ip,
            self.boots,
            sorted(self.supervisor.services) or "none",
        )

    async def _start_metadata(self, meta: InstanceMetadata) -> None:
        sock = await self._netns.listen(METADATA_ADDRESS, 80)
        self._imds = web.AppRunner(build_app(meta), access_log=None, shutdown_timeout=1.0)
        await self._imds.setup()
        await web.SockSite(self._imds, sock).start()

    def _run_user_data(self, user_data: bytes | None) -> None:
        # Written through the instance's own view of its disk, where cloud-init keeps them; the
        # semaphore first, whatever the user data turns out to be: once per instance means once.
        sem = self.supervisor.root / self.semaphore().relative_to(self.upper)
        sem.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sem.write_text(f"boot {self.boots}\n")
        with open(self.console_log, "ab") as out:
            if not user_data:
                out.write(b"cloud-init: no user data\n")
                return
            if not user_data.startswith(b"#!"):
                out.write(b"cloud-init: user data is not a script (#!...); the emulator runs scripts only\n")
                return
            script = f"/var/lib/cloud/instances/{self.instance_id}/scripts/part-001"
            on_disk = self.supervisor.root / script.lstrip("/")
            on_disk.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            on_disk.write_bytes(user_data)
            on_disk.chmod(0o700)
            out.write(f"cloud-init: running user data ({len(user_data)} bytes) as {script}\n".encode())
            out.flush()
            env = {"PATH": f"{self.supervisor.shim_dir}:{OS_PATH}", "HOME": "/root", "LANG": "C.UTF-8"}
            self.user_data_proc = subprocess.Popen(
                in_namespace(self._holder.pid, ["setpriv", "--pdeathsig", "TERM", "--", script]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    # -- while running --------------------------------------------------------------------------

    def tick(self) -> None:
        self.supervisor.tick()
        proc = self.user_data_proc
        if proc is not None and proc.poll() is not None:
            self.user_data_proc, self.user_data_exit = None, proc.returncode
            with open(self.console_log, "a") as out:
                out.write(f"cloud-init: user data exited with {proc.returncode}\n")
            if proc.returncode != 0:
                log.warning(
                    "user data of %s exited with %s (see %s)", self.instance_id, proc.returncode, self.console_log
                )

    async def reconcile_ingress(self, rules: list[sg_proxy.IngressRule]) -> None:
        """Listen on exactly the ports the security groups admit now."""
        self.rules = rules
        if not self.running:
            return
        wanted = sg_proxy.ports_to_listen(rules, self._holder.pid)
        for port in set(self._ingress) - wanted:
            self._ingress.pop(port).stop_listening()  # established connections stay, as on EC2
        for port in wanted - set(self._ingress):
            try:
                sock = sg_proxy.host_listen(self.private_ip, port)
            except OSError as exc:
                self.warn_once(f"cannot listen on {self.private_ip}:{port} for {self.instance_id}: {exc}")
                continue
            self._ingress[port] = sg_proxy.Listener(sock, self._ingress_handler(port))

    def _ingress_handler(self, port: int) -> sg_proxy.Handler:
        async def handle(conn: socket.socket, peer: str) -> None:
            if not sg_proxy.admitted(self.rules, port, peer) or self._netns is None:
                sg_proxy.reset(conn)
                return
            # Inside, the connection comes from the peer's own address when it is a loopback one.
            source = peer if ipaddress.IPv4Address(peer) in LOOPBACK else None
            await sg_proxy.connect_and_splice(conn, self._netns.socket, source, (self.private_ip, port))

        return handle

    def _egress_handler(self, host: str, port: int) -> sg_proxy.Handler:
        async def handle(conn: socket.socket, _peer: str) -> None:
            await sg_proxy.connect_and_splice(conn, sg_proxy.host_socket, self.private_ip, (host, port))

        return handle

    # -- stop ----------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Power off: the disk stays."""
        for listener in self._ingress.values():
            await listener.close()
        self._ingress.clear()
        if self.user_data_proc is not None and self.user_data_proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.user_data_proc.terminate()
        await self.supervisor.stop_all()
        if self._netns is not None:
            kill_net_namespace(self._netns.inode)
        if self.user_data_proc is not None:
            await asyncio.to_thread(self.user_data_proc.wait)
            self.tick()
        await self.supervisor.power_off()
        for listener in self._egress:
            await listener.close()
        self._egress.clear()
        if self._control is not None:
            self._control.close()
            await self._control.wait_closed()
            self._control = None
        if self._imds is not None:
            await self._imds.cleanup()
            self._imds = None
        if self._netns is not None:
            self._netns.close()
            self._netns = None
        if self._holder is not None:
            with contextlib.suppress(ProcessLookupError):
                self._holder.kill()
            await asyncio.to_thread(self._holder.wait)
            self._holder = None
        self.supervisor.holder_pid = None

    def destroy_disk(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def crash(self) -> list[int]:
        return self.supervisor.crash()

    def describe(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "workspace_id": self.workspace_id,
            "private_ip": self.private_ip,
            "running": self.running,
            "boots": self.boots,
            "user_data_ran": self.semaphore().exists(),
            "user_data_exit": self.user_data_exit,
            "units": self.supervisor.snapshot(),
            "listening": sorted(self._ingress),
            "console_log": str(self.console_log),
            "disk": str(self.upper),
        }
