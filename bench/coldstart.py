"""6. Cold start: from ``python -m devstack --no-demo`` to the API answering /healthz, on a warm
install (packages installed, bytecode compiled), on loopback ports that are free. The first run
initialises a fresh state directory (PostgreSQL initdb, Neon seed); the repeated runs reuse it.

    python -m bench.coldstart [--quick] [--reps N]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import ROOT, cli, goal, parse, save, summary

GOAL_S = 15.0


def one(state: Path) -> float:
    from devstack.procs import free_port

    ports = {
        k: str(free_port())
        for k in (
            "TEMPORAL_PORT",
            "TEMPORAL_UI_PORT",
            "POSTGRES_PORT",
            "MOTO_PORT",
            "NEON_PORT",
            "BOOT_EMULATOR_PORT",
            "API_PORT",
        )
    }
    env = {
        **os.environ,
        "TENANTFLOW_STATE_DIR": str(state),
        **{f"TENANTFLOW_{k}": v for k, v in ports.items()},
        "TENANTFLOW_PUBLIC_URL": f"http://127.0.0.1:{ports['API_PORT']}",
    }
    env.pop("TEMPORAL_ADDRESS", None)
    env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{ports['TEMPORAL_PORT']}"
    url = f"http://127.0.0.1:{ports['API_PORT']}/healthz"
    log = (state.parent / f"{state.name}-devstack.log").open("ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "--no-demo"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                pass
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError(f"devstack did not come up; see {log.name}")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--reps", type=int, default=None)
    a = p.parse_args(argv)
    reps = a.reps if a.reps is not None else (0 if a.quick else 3)
    base = Path(tempfile.mkdtemp(prefix="tf-bench-cold-"))
    try:
        state = base / "state"
        first = one(state)
        times = [one(state) for _ in range(reps)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    s = summary(times or [first])
    return save(
        "coldstart",
        {
            "params": {"reps": reps},
            "results": {
                "fresh_state_dir_s": round(first, 2),
                "reused_state_dir_s": s if times else None,
                "goal": f"<= {GOAL_S} s",
                "status": goal(s["p99"] <= GOAL_S and first <= GOAL_S),
            },
        },
    )


if __name__ == "__main__":
    cli(main)
