"""The emulated OS's ``systemctl``: a shim first on the instance's PATH sends each command over a unix
socket on the instance's disk to the emulator, which plays systemd (PID 1) for that instance.

Like the real one, ``enable``/``disable`` manage the ``<target>.wants/`` links from the unit's
[Install] section (through the instance's own file system view), and ``start``/``stop``/
``restart`` ask the service manager. Also: ``daemon-reload`` (units are re-read at every start),
``is-active``, ``is-enabled``, ``status``; options ``--now``, ``-q``, ``--no-block``, ``--no-pager``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from devstack.units import UNIT_DIR, Supervisor, unit_name

SHIM = Path(__file__).with_name("systemctl_shim.py")
_FLAGS = {"--now", "--no-block", "--no-pager", "-q", "--quiet", "--system", "--no-reload", "-l", "--full"}


def install_shim(bin_dir: Path, socket_path: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "systemctl"
    shim.write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I {shlex.quote(str(SHIM))} "
        f'{shlex.quote(str(socket_path))} "$@"\n'
    )
    shim.chmod(0o755)


class Systemctl:
    def __init__(self, supervisor: Supervisor):
        self.sv = supervisor

    def _unit_link_dirs(self) -> list[Path]:
        base = self.sv.root / UNIT_DIR
        return [d for pattern in ("*.wants", "*.requires") for d in base.glob(pattern)]

    def _enable(self, name: str) -> tuple[int, str]:
        unit = self.sv.load(name)
        if unit is None:
            return 1, f"Failed to enable unit: Unit file {name} does not exist.\n"
        targets = [(t, "wants") for t in unit.words("Install", "WantedBy")]
        targets += [(t, "requires") for t in unit.words("Install", "RequiredBy")]
        if not targets:
            return 0, (
                f"The unit files have no installation config (WantedBy=, RequiredBy=, ...). {name} was not enabled.\n"
            )
        said = []
        for target, kind in targets:
            link = self.sv.root / UNIT_DIR / f"{target}.{kind}" / name
            if link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f"/{UNIT_DIR}/{name}")
            said.append(f"Created symlink /{UNIT_DIR}/{target}.{kind}/{name} \u2192 /{UNIT_DIR}/{name}.\n")
        return 0, "".join(said)

    def _disable(self, name: str) -> tuple[int, str]:
        said = []
        for d in self._unit_link_dirs():
            link = d / name
            if link.is_symlink():
                link.unlink()
                said.append(f'Removed "/{UNIT_DIR}/{d.name}/{name}".\n')
        return 0, "".join(said)

    def _status(self, name: str, enabled: bool) -> tuple[int, str]:
        unit = self.sv.load(name)
        if unit is None:
            return 4, ""
        svc = self.sv.services.get(name)
        state = svc.state if svc else "inactive"
        pid = svc.proc.pid if svc and svc.proc else None
        text = (
            f"\u25cf {name} - {unit.description}\n"
            f"     Loaded: loaded (/{UNIT_DIR}/{name}; {'enabled' if enabled else 'disabled'})\n"
            f"     Active: {state}{' (running)' if pid else ''}\n"
        )
        if pid:
            text += f"   Main PID: {pid}\n"
        return (0 if state == "active" else 3), text

    async def run(self, argv: list[str]) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of ``systemctl argv...``."""
        flags = {a for a in argv if a.startswith("-")}
        words = [a for a in argv if not a.startswith("-")]
        unknown = flags - _FLAGS
        if unknown:
            return 1, "", f"systemctl (emulated): unsupported option {sorted(unknown)[0]}\n"
        if not words:
            return 1, "", "systemctl (emulated): listing units is not supported; name a command\n"
        command, names = words[0], [unit_name(n) for n in words[1:]]
        quiet = bool(flags & {"-q", "--quiet"})
        now = "--now" in flags
        if command == "daemon-reload":
            return 0, "", ""
        if command not in (
            "enable",
            "disable",
            "start",
            "stop",
            "restart",
            "try-restart",
            "is-active",
            "is-enabled",
            "status",
        ):
            return 1, "", f"systemctl (emulated): unsupported command {command!r}\n"
        if not names:
            return 1, "", "Too few arguments.\n"
        enabled = set(self.sv.enabled_units())
        code, out, err = 0, "", ""
        for name in names:
            if command == "enable":
                rc, text = self._enable(name)
                err += "" if quiet else text
                if rc == 0 and now:
                    rc, text = await self._start(name)
                    err += text
            elif command == "disable":
                rc, text = self._disable(name)
                err += "" if quiet else text
                if now:
                    await self.sv.stop(name)
            elif command == "start":
                rc, text = await self._start(name)
                err += text
            elif command == "stop":
                rc = 0
                await self.sv.stop(name)
            elif command in ("restart", "try-restart"):
                svc = self.sv.services.get(name)
                rc = 0
                if command == "restart" or (svc is not None and svc.state == "active"):
                    await self.sv.stop(name)
                    rc, text = await self._start(name)
                    err += text
            elif command == "is-active":
                svc = self.sv.services.get(name)
                state = svc.state if svc else "inactive"
                rc = 0 if state == "active" else 3
                out += "" if quiet else f"{state}\n"
            elif command == "is-enabled":
                rc = 0 if name in enabled else 1
                out += "" if quiet else ("enabled\n" if rc == 0 else "disabled\n")
            else:  # status
                rc, text = self._status(name, name in enabled)
                out += text
                if rc == 4:
                    err += f"Unit {name} could not be found.\n"
            code = code or rc
        return code, out, err

    async def _start(self, name: str) -> tuple[int, str]:
        problem = await self.sv.start(name)
        if problem is None:
            return 0, ""
        if problem.startswith("Unit "):
            return 5, f"Failed to start {name}: {problem}\n"
        return 1, (f'Job for {name} failed.\nSee "systemctl status {name}" and "journalctl -xeu {name}" for details.\n')


async def serve_control(socket_path: Path, systemctl: Systemctl) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            argv = json.loads(await reader.readline())["argv"]
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ValueError("argv must be a list of strings")
            code, out, err = await systemctl.run(argv)
        except Exception as exc:  # noqa: BLE001 - answer the shim, whatever went wrong
            code, out, err = 1, "", f"systemctl (emulated): {type(exc).__name__}: {exc}\n"
        writer.write(json.dumps({"code": code, "stdout": out, "stderr": err}).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    socket_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(socket_path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Through the directory's fd: a full path on a deep disk can exceed sun_path's 108 bytes.
        sock.bind(f"/proc/self/fd/{dir_fd}/{socket_path.name}")
    finally:
        os.close(dir_fd)
    os.chmod(socket_path, 0o600)
    sock.listen(16)
    return await asyncio.start_unix_server(handle, sock=sock)
