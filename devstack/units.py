"""The emulated instance OS's service manager: systemd units from the instance's own disk.

Units are read from the overlay's upper ``etc/systemd/system`` only, so the host's own units never
leak into an instance; a boot starts the units whose links sit in that directory's ``*.wants/`` and
``*.requires/`` directories. A unit runs inside the instance's namespaces as
``nsenter ... -- setpriv ... -- <ExecStart>`` (split like systemd does, no shell), in its own process
group, its output appended to ``journal/<unit>.log``.

Honoured: ExecStart= (one command; ``-`` prefix; ``$VAR``/``${VAR}``; ``%n``/``%N``/``%%``),
Environment=, EnvironmentFile=, WorkingDirectory=, User=/Group= (must exist in the instance's
/etc/passwd and /etc/group), UMask=, Restart= with RestartSec=, StartLimitIntervalSec=/
StartLimitBurst=, TimeoutStopSec=, StateDirectory= with StateDirectoryMode= (and
``$STATE_DIRECTORY``), NoNewPrivileges= and CapabilityBoundingSet= (through setpriv), [Install]
WantedBy=/RequiredBy=. Every other directive is ignored, and the log says so once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devstack.netns import in_namespace

log = logging.getLogger("devstack.boot_emulator")

UNIT_DIR = "etc/systemd/system"
OS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
_UNDERSTOOD = {
    "Unit": {
        "Description",
        "Documentation",
        "Wants",
        "Requires",
        "After",
        "Before",
        "StartLimitIntervalSec",
        "StartLimitBurst",
    },
    "Service": {
        "Type",
        "ExecStart",
        "Environment",
        "EnvironmentFile",
        "WorkingDirectory",
        "User",
        "Group",
        "UMask",
        "Restart",
        "RestartSec",
        "TimeoutStopSec",
        "StateDirectory",
        "StateDirectoryMode",
        "NoNewPrivileges",
        "CapabilityBoundingSet",
    },
    "Install": {"WantedBy", "RequiredBy"},
}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


class UnitError(Exception):
    """The unit cannot be started as written (what systemd would refuse or fail with)."""


def timespan(value: str | None, default: float) -> float:
    if value is None or not value.strip():
        return default
    if value.strip() == "infinity":
        return float("inf")
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        if unit not in _TIME_UNITS and unit:
            raise UnitError(f"bad time span {value!r}")
        total += float(number) * _TIME_UNITS.get(unit, 1.0)
    return total


def yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "on", "1")


@dataclass
class UnitFile:
    name: str
    values: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, text: str) -> UnitFile:
        unit, section, pending = cls(name), "", ""
        for raw in text.splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif "=" in line:
                key, value = (part.strip() for part in line.split("=", 1))
                values = unit.values.setdefault((section, key), [])
                if value:
                    values.append(value)
                else:  # an empty assignment resets a list, as in systemd
                    values.clear()
        return unit

    def all(self, section: str, key: str) -> list[str]:
        return self.values.get((section, key), [])

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        values = self.all(section, key)
        return values[-1] if values else default

    def words(self, section: str, key: str) -> list[str]:
        return [word for value in self.all(section, key) for word in value.split()]

    @property
    def description(self) -> str:
        return self.get("Unit", "Description", self.name) or self.name


@dataclass
class Service:
    unit: UnitFile
    state: str = "inactive"  # active | activating (auto-restart) | deactivating | inactive | failed
    result: str = ""
    proc: subprocess.Popen | None = None
    restarts: int = 0
    stop_requested: bool = False
    crashed: bool = False
    restart_at: float | None = None
    starts: list[float] = field(default_factory=list)

    def to_dict(self, enabled: bool) -> dict:
        return {
            "state": self.state,
            "result": self.result,
            "pid": self.proc.pid if self.proc else None,
            "restarts": self.restarts,
            "enabled": enabled,
        }


def unit_name(name: str) -> str:
    return name if "." in name else f"{name}.service"


def _lookup(path: Path, key: str) -> list[str] | None:
    """The /etc/passwd or /etc/group entry whose name (or numeric id) is ``key``."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 4 and key in (fields[0], fields[2]):
            return fields
    return None


def _expand(line: str, env: dict[str, str], name: str) -> list[str]:
    def specifier(m: re.Match) -> str:
        if m[1] not in ("%", "n", "N"):
            raise UnitError(f"specifier %{m[1]} in ExecStart= is not emulated")
        return {"%": "%", "n": name, "N": name.rsplit(".", 1)[0]}[m[1]]

    words = shlex.split(re.sub(r"%(.)", specifier, line))
    argv: list[str] = []
    for word in words:
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:  # $VAR alone is split on whitespace; ${VAR} is substituted in place
            argv.extend(env.get(whole[1], "").split())
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m[1], ""), word))
    return argv


def _capabilities(value: str) -> str:
    """CapabilityBoundingSet= as a setpriv --bounding-set argument."""
    inverted = value.startswith("~")
    caps = [c.lower().removeprefix("cap_") for c in value.lstrip("~").split()]
    if inverted:
        return ",".join(["+all", *[f"-{c}" for c in caps]])
    return ",".join(["-all", *[f"+{c}" for c in caps]])


class Supervisor:
    """PID 1 of one instance: starts, stops, restarts and reports its services."""

    def __init__(
        self, *, upper: Path, journal_dir: Path, shim_dir: Path, stop_timeout: float, warn_once: Callable[[str], None]
    ):
        self.upper = upper  # the instance disk's upper root (etc/, var/, opt/)
        self.journal_dir = journal_dir
        self.shim_dir = shim_dir
        self.stop_timeout = stop_timeout
        self.warn_once = warn_once
        self.holder_pid: int | None = None
        self.broken = False  # the admin crashed this instance's agent: nothing starts again
        self.services: dict[str, Service] = {}

    @property
    def root(self) -> Path:
        """The instance's file system as the instance sees it (overlays and all)."""
        return Path(f"/proc/{self.holder_pid}/root")

    # -- unit files on the disk ----------------------------------------------------------------

    def load(self, name: str) -> UnitFile | None:
        path = self.upper / UNIT_DIR / name
        if not path.is_file():
            return None
        return UnitFile.parse(name, path.read_text(errors="replace"))

    def _links(self, base: Path) -> list[Path]:
        return [
            link
            for pattern in ("*.wants", "*.requires")
            for d in sorted(base.glob(pattern))
            for link in sorted(d.iterdir())
            if link.is_symlink()
        ]

    def enabled_units(self) -> list[str]:
        names = {link.name for link in self._links(self.upper / UNIT_DIR)}
        return sorted(name for name in names if (self.upper / UNIT_DIR / name).is_file())

    def journal(self, name: str, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%b %d %H:%M:%S")
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        with open(self.journal_dir / f"{name}.log", "a") as f:
            f.write(f"{stamp} systemd[1]: {message}\n")

    # -- starting --------------------------------------------------------------------------------

    def _passwd(self, user: str) -> list[str]:
        entry = _lookup(self.root / "etc/passwd", user)
        if entry is None:
            raise UnitError(f"User={user} does not exist in the instance's /etc/passwd")
        return entry

    def _command(self, unit: UnitFile) -> tuple[list[str], dict[str, str], int]:
        for section, key in unit.values:
            if key not in _UNDERSTOOD.get(section, set()):
                self.warn_once(f"{section}/{key}= (in {unit.name}) is not emulated: ignored")
        kind = unit.get("Service", "Type", "simple")
        if kind not in ("simple", "exec"):
            self.warn_once(f"Type={kind} (in {unit.name}) runs as Type=simple")
        lines = unit.all("Service", "ExecStart")
        if len(lines) != 1:
            raise UnitError("needs exactly one ExecStart= (Type=oneshot is not emulated)")
        line = lines[0].lstrip("-")
        if line[:1] in ("@", "+", "!", ":"):
            raise UnitError(f"ExecStart= prefix {line[0]!r} is not emulated")

        env = {"PATH": f"{self.shim_dir}:{OS_PATH}", "LANG": "C.UTF-8", "INVOCATION_ID": secrets.token_hex(16)}
        setpriv = ["setpriv", "--pdeathsig", "TERM"]
        owner = (0, 0)
        user, group = unit.get("Service", "User"), unit.get("Service", "Group")
        if user:
            pw = self._passwd(user)
            owner = (int(pw[2]), int(pw[3]))
            env.update(USER=pw[0], LOGNAME=pw[0], HOME=pw[5], SHELL=pw[6])
            setpriv += [f"--reuid={owner[0]}", "--init-groups"]
        if group:
            gr = _lookup(self.root / "etc/group", group)
            if gr is None:
                raise UnitError(f"Group={group} does not exist in the instance's /etc/group")
            owner = (owner[0], int(gr[2]))
        if user or group:
            setpriv += [f"--regid={owner[1]}"] + ([] if user else ["--clear-groups"])
        if yes(unit.get("Service", "NoNewPrivileges")):
            setpriv.append("--no-new-privs")
        bounding = unit.get("Service", "CapabilityBoundingSet")
        if bounding is not None:
            setpriv += ["--bounding-set", _capabilities(bounding)]

        state_dirs = unit.words("Service", "StateDirectory")
        if state_dirs:
            mode = int(unit.get("Service", "StateDirectoryMode", "0755"), 8)
            for name in state_dirs:
                path = self.root / "var/lib" / name
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, *owner)
                path.chmod(mode)
            env["STATE_DIRECTORY"] = ":".join(f"/var/lib/{name}" for name in state_dirs)

        for value in unit.all("Service", "Environment"):
            env.update(word.split("=", 1) for word in shlex.split(value) if "=" in word)
        for value in unit.all("Service", "EnvironmentFile"):
            path = value.lstrip("-")
            try:
                text = (self.root / path.lstrip("/")).read_text()
            except OSError:
                if value.startswith("-"):
                    continue
                raise UnitError(f"EnvironmentFile={path} cannot be read") from None
            for raw in text.splitlines():
                raw = raw.strip()
                if raw and raw[0] not in "#;" and "=" in raw:
                    key, val = (part.strip() for part in raw.split("=", 1))
                    quoted = len(val) >= 2 and val[0] == val[-1] and val[0] in "'\""
                    env[key] = val[1:-1] if quoted else val

        workdir = (unit.get("Service", "WorkingDirectory") or "/").lstrip("-")
        if workdir == "~":
            workdir = env.get("HOME", "/root")
        argv = _expand(line, env, unit.name)
        if not argv:
            raise UnitError("ExecStart= is empty")
        umask = int(unit.get("Service", "UMask", "0022"), 8)
        return in_namespace(self.holder_pid, [*setpriv, "--", *argv], cwd=workdir), env, umask

    def _launch(self, svc: Service) -> str | None:
        """Start the service's process; the reason it failed, or None."""
        name, unit = svc.unit.name, svc.unit
        svc.restart_at = None
        if self.broken:
            return self._failed(svc, "crashed", "the emulator's admin crashed this instance's agent; not starting")
        interval = timespan(unit.get("Unit", "StartLimitIntervalSec"), 10.0)
        burst = int(unit.get("Unit", "StartLimitBurst", "5"))
        now = time.monotonic()
        svc.starts = [t for t in svc.starts if now - t < interval]
        if interval > 0 and len(svc.starts) >= burst:
            return self._failed(svc, "start-limit-hit", "Start request repeated too quickly.")
        svc.starts.append(now)
        try:
            argv, env, umask = self._command(unit)
        except (UnitError, ValueError, OSError) as exc:
            return self._failed(svc, "resources", f"Failed to start {name}: {exc}")
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        with open(self.journal_dir / f"{name}.log", "ab") as out:
            # No preexec_fn: setpriv sets the parent-death signal (after any change of user) itself.
            svc.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                umask=umask,
                start_new_session=True,
            )
        svc.state, svc.result, svc.stop_requested = "active", "", False
        self.journal(name, f"Started {unit.description} (pid {svc.proc.pid}).")
        return None

    def _failed(self, svc: Service, result: str, message: str) -> str:
        svc.state, svc.result = "failed", result
        self.journal(svc.unit.name, message)
        log.warning("%s: %s", svc.unit.name, message)
        return message

    async def start(self, name: str) -> str | None:
        unit = self.load(name)
        if unit is None:
            return f"Unit {name} not found."
        svc = self.services.setdefault(name, Service(unit))
        if svc.proc is not None and svc.state == "active":
            return None
        svc.unit = unit  # what is on disk now (daemon-reload is implicit)
        return self._launch(svc)

    def start_enabled(self) -> None:
        for name in self.enabled_units():
            unit = self.load(name)
            if unit is not None:
                self._launch(self.services.setdefault(name, Service(unit)))

    # -- exits, restarts, stopping -------------------------------------------------------------

    def _exited(self, svc: Service, proc: subprocess.Popen) -> None:
        if svc.proc is not proc:
            return
        svc.proc = None
        rc = proc.returncode
        how = f"code=exited, status={rc}" if rc >= 0 else f"code=killed, status={signal.Signals(-rc).name}"
        self.journal(svc.unit.name, f"{svc.unit.name}: Main process exited, {how}")
        clean = rc == 0 or (rc < 0 and -rc in _CLEAN_SIGNALS) or svc.unit.get("Service", "ExecStart", "")[:1] == "-"
        if svc.stop_requested:
            svc.state, svc.result = "inactive", ""
            return
        if svc.crashed:
            svc.state, svc.result = "failed", "signal"
            return
        policy = svc.unit.get("Service", "Restart", "no")
        restart = {
            "always": True,
            "on-failure": not clean,
            "on-success": clean,
            "on-abnormal": rc < 0 and not clean,
            "on-abort": rc < 0 and not clean,
        }.get(policy, False)
        if restart:
            svc.state, svc.result = "activating", "exit-code" if not clean else "success"
            svc.restarts += 1
            svc.restart_at = time.monotonic() + timespan(svc.unit.get("Service", "RestartSec"), 0.1)
            self.journal(
                svc.unit.name, f"{svc.unit.name}: Scheduled restart job, restart counter is at {svc.restarts}."
            )
        else:
            svc.state, svc.result = ("inactive", "success") if clean else ("failed", "exit-code")

    def tick(self) -> None:
        now = time.monotonic()
        for svc in list(self.services.values()):
            proc = svc.proc
            if proc is not None and proc.poll() is not None:
                self._exited(svc, proc)
            if svc.restart_at is not None and now >= svc.restart_at and svc.proc is None:
                self._launch(svc)

    async def stop(self, name: str) -> None:
        svc = self.services.get(name)
        if svc is None:
            return
        svc.stop_requested, svc.restart_at = True, None
        proc = svc.proc
        if proc is None:
            if svc.state == "activating":
                svc.state = "inactive"
            return
        svc.state = "deactivating"
        _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timespan(svc.unit.get("Service", "TimeoutStopSec"), self.stop_timeout)
        while proc.poll() is None:
            if time.monotonic() > deadline:
                self.journal(name, f"{name}: State 'stop-sigterm' timed out. Killing.")
                _signal_group(proc, signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(0.05)
        self._exited(svc, proc)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(name) for name in list(self.services)))

    def crash(self) -> list[int]:
        """SIGKILL every running service and mark it failed for good: a broken agent."""
        self.broken = True
        killed = []
        for svc in self.services.values():
            svc.crashed, svc.restart_at = True, None
            if svc.proc is not None:
                killed.append(svc.proc.pid)
                _signal_group(svc.proc, signal.SIGKILL)
            else:
                svc.state, svc.result = "failed", "crashed"
        return killed

    def snapshot(self) -> dict[str, dict]:
        enabled = set(self.enabled_units())
        units = {name: svc.to_dict(name in enabled) for name, svc in self.services.items()}
        for name in enabled - units.keys():
            units[name] = Service(UnitFile(name)).to_dict(True)
        return units

    async def power_off(self) -> None:
        """After the namespace was swept: reap what is left; the next boot starts from nothing."""
        for svc in self.services.values():
            if svc.proc is not None:
                await asyncio.to_thread(svc.proc.wait)
        self.services.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
