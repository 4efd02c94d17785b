"""An emulated instance's namespaces: the holder process that owns them, sockets made inside them,
and the sweep that powers every process in them off.

The holder is ``unshare --net --mount --propagation private`` running a short script: loopback up,
the metadata address 169.254.169.254/32 on it, overlayfs over /etc, /var and /opt whose upper
directories are the instance's disk, the "AMI" (a virtualenv) bind-mounted read-only at
/opt/tenantflow/venv, then ``sleep``. It is spawned with the parent-death signal, so it dies with
the emulator, and the namespaces (and their mounts) go with their last process.

A socket belongs to the network namespace it was created in, whichever thread uses it later; so a
single thread per instance enters the namespace with ``setns`` and creates the sockets, and the
emulator's event loop uses them like any other.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devstack.procs import spawn

CLONE_NEWNET = 0x40000000
AMI_VENV_MOUNT = "/opt/tenantflow/venv"
OVERLAID = ("etc", "var", "opt")
METADATA_ADDRESS = "169.254.169.254"
_libc = ctypes.CDLL(None, use_errno=True)

_HOLDER_SCRIPT = f"""\
set -eu
disk=$1; work=$2; ami=$3; ready=$4
ip link set lo up
ip addr add {METADATA_ADDRESS}/32 dev lo
for d in {" ".join(OVERLAID)}; do
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$disk/$d,workdir=$work/$d" "/$d"
done
mkdir -p {AMI_VENV_MOUNT}
mount --bind -o ro "$ami" {AMI_VENV_MOUNT}
: > "$ready"
exec sleep infinity
"""


def spawn_holder(disk: Path, work: Path, ami: Path, ready: Path, log_path: Path) -> subprocess.Popen:
    for name in OVERLAID:
        (disk / name).mkdir(parents=True, exist_ok=True)
        (work / name).mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    return spawn(
        [
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _HOLDER_SCRIPT,
            "instance-holder",
            str(disk),
            str(work),
            str(ami),
            str(ready),
        ],
        log_path=log_path,
    )


def in_namespace(holder_pid: int, argv: list[str], *, cwd: str = "/") -> list[str]:
    """``argv`` run inside the holder's network and mount namespaces (``nsenter`` execs, no fork).

    nsenter opens the working directory before it enters the namespaces: through the holder's root
    the path names the instance's directory (its overlays), not the host's."""
    return ["nsenter", f"--target={holder_pid}", "--net", "--mount", f"--wd=/proc/{holder_pid}/root{cwd}", "--", *argv]


def net_namespace_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pids_in_net_namespace(inode: int) -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and net_namespace_inode(int(entry)) == inode:
            found.append(int(entry))
    return found


def kill_net_namespace(inode: int) -> None:
    """SIGKILL every process left in the namespace: the instance loses power."""
    for pid in pids_in_net_namespace(inode):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def bind_listen(sock: socket.socket, host: str, port: int) -> socket.socket:
    """``sock``, non-blocking and listening on host:port (closed if it cannot)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class NetNamespace:
    """Makes sockets inside a holder's network namespace (from a thread that entered it)."""

    def __init__(self, holder_pid: int):
        self._fd = os.open(f"/proc/{holder_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self._fd).st_ino
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{holder_pid}", initializer=self._enter)

    def _enter(self) -> None:
        if _libc.setns(self._fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into the instance's network namespace: {os.strerror(err)}")

    async def socket(self) -> socket.socket:
        sock = await asyncio.get_running_loop().run_in_executor(
            self._thread, socket.socket, socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setblocking(False)
        return sock

    async def listen(self, host: str, port: int) -> socket.socket:
        return bind_listen(await self.socket(), host, port)

    def close(self) -> None:
        # The thread and the fd both hold the namespace: release both.
        self._thread.shutdown(wait=True)
        os.close(self._fd)
