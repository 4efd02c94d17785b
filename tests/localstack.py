"""The README's run command as a test starts it: `python -m devstack` on free ports in a temporary
state directory (what `./scripts/run-local.sh` execs after installing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from devstack.procs import free_port
from tools.soak import PORT_FIELDS

ROOT = Path(__file__).resolve().parent.parent


class RunningStack:
    def __init__(self, tmp_path: Path):
        self.state_dir = tmp_path / "state"
        self.ports = {name.upper(): free_port() for name in PORT_FIELDS}
        self.env = {
            **os.environ,
            "TENANTFLOW_STATE_DIR": str(self.state_dir),
            "TENANTFLOW_AGENT_HEARTBEAT_INTERVAL_SECONDS": "0.5",
            **{f"TENANTFLOW_{k}": str(v) for k, v in self.ports.items()},
        }
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['API_PORT']}"

    def start(
        self, *args: str, until: str = "local stack running", timeout: float = 240, sigint_ignored: bool = False
    ) -> str:
        self.output = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # As a shell starts a background job (and some CI runners start every step).
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
        )
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


def wait_until(fetch, done, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not done(last := fetch()):
        assert time.monotonic() < deadline, last
        time.sleep(0.3)
    return last
