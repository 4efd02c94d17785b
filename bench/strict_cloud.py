"""10. What the strict local cloud costs: a fixed subset of the test suite (files that drive EC2 and
Neon through the workflows and the API) and a small soak (``tools.soak``), each run with the
cloud as configured (strict EC2 with the suite's short timings, strict Neon; the soak's stack with
the devstack defaults) and lenient (``bench.lenient_cloud``: the same servers switched to lenient
through their admin APIs as soon as they start), alternated in the same run. Wall time of the
whole process (pytest, or the soak with its stack start), plus pytest's per-file test time and the
soak's own elapsed time and per-operation medians. Some tests are left out of both modes
(``DESELECT``: three need the strict cloud to pass, one is racy), so both run the same passing set;
a new test that needs the strict cloud shows up as failing in the lenient runs only, and belongs
there (see docs/performance.md for the marker the suite should have instead).
The soak is ``tools.soak`` with its instances in a loopback network of their own (see
``bench.lenient_cloud.soak``): in the demo network every local stack shares, another stack on the
machine (someone's soak or chaos run) answers for the same addresses and fails workspaces on both
sides with AgentCardMismatch. Each soak records what listened in the demo network when it started.
It runs without its fault storm (``--no-faults``) unless ``--soak-faults``: the storm loses
RunInstances answers after the launch took effect, which only ClientToken idempotency (strict EC2)
recovers from, so a lenient soak with faults launches duplicate instances and fails workspaces
(AgentUnreachable once the agent check gives up) - not the same work as the strict run.

    python -m bench.strict_cloud [--quick] [--reps N] [--files tests/a.py,tests/b.py]
                                 [--soak-orgs N] [--soak-workspaces N] [--soak-faults]
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil

from bench.common import ROOT, cli, parse, save, summary
from bench.lenient_cloud import SUMMARY

FILES = [
    "tests/test_workspace_workflow.py",
    "tests/test_onboard_workflow.py",
    "tests/test_lifecycle.py",
    "tests/test_org_workflow.py",
]
QUICK_FILES = ["tests/test_org_workflow.py"]
# Left out of both modes, so that both run the same tests and pass.
DESELECT = {
    "tests/test_workspace_workflow.py::test_launch_committed_but_answer_lost_at_ec2_is_one_instance": "needs strict EC2 (ClientToken idempotency): fails lenient by design",
    "tests/test_workspace_workflow.py::test_launch_with_other_parameters_under_the_same_token_adopts_the_first": "needs strict EC2 (ClientToken idempotency): fails lenient by design",
    "tests/test_org_workflow.py::test_delete_preempts_a_suspend_in_the_middle_of_a_step": "needs strict EC2 (a stop that takes time, so that the delete lands mid-step): fails lenient",
    "tests/test_lifecycle.py::test_parked_step_retry_concurrent_delete_and_reset": "racy in either mode: its poll after the retry can see the step still parked from before, and the "
    "abandon that follows is refused (409) until the step has parked again",
}
MODES = ("strict", "lenient")
# The demo puts its instances in 127.42.0.0/16 and each tools.soak / tools.chaos stack in one of
# 127.50-99 (devstack.demo.ensure_demo_network); another stack on the machine may listen there.
INSTANCE_NETWORK_OCTETS = {42, *range(50, 100)}


def _in_instance_network(ip: str) -> bool:
    parts = ip.split(".")
    return len(parts) == 4 and parts[0] == "127" and int(parts[1]) in INSTANCE_NETWORK_OCTETS


def _run(args: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t, proc


def run_tests(files: list[str], mode: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-pytest-"))
    try:
        junit = tmp / "junit.xml"
        # Its own basetemp (the shared /tmp/pytest-of-<user> is pruned by concurrent sessions).
        deselect = [arg for test in DESELECT for arg in ("--deselect", test)]
        args = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp / 'bt'}",
            f"--junitxml={junit}",
            *(["-p", "bench.lenient_cloud"] if mode == "lenient" else []),
            *deselect,
            *files,
        ]
        wall, proc = _run(args, timeout=1800)
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", last)}
        per_file: dict[str, float] = {}
        failed: list[str] = []
        if junit.exists():
            for case in ET.parse(junit).iter("testcase"):
                name = case.get("classname", "").rsplit(".", 1)[-1]
                per_file[name] = round(per_file.get(name, 0.0) + float(case.get("time", 0)), 2)
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{name}::{case.get('name')}")
        # pytest -q's short summary: "FAILED tests/x.py::test - AssertionError: ..."
        reasons = [line[:300] for line in proc.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        switched = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.startswith(SUMMARY)]
        return {
            "wall_s": round(wall, 2),
            "exit": proc.returncode,
            "counts": counts,
            "summary": last,
            "lenient_servers": switched[0] if switched else None,
            "test_seconds_by_file": per_file,
            "failed": failed,
            "failure_lines": reasons,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def demo_network_listeners() -> list[str]:
    """Addresses in the local stacks' instance network that something already listens on."""
    return sorted(
        {
            f"{c.laddr.ip}:{c.laddr.port}"
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and _in_instance_network(c.laddr.ip)
        }
    )


def run_soak(orgs: int, workspaces: int, faults: bool, mode: str) -> dict:
    others = demo_network_listeners()
    with tempfile.TemporaryDirectory(prefix="tf-bench-soak-") as tmp:
        report_path = Path(tmp) / "report.json"
        wall, proc = _run(
            [
                sys.executable,
                "-m",
                "bench.lenient_cloud",
                "--cloud",
                mode,
                "--orgs",
                str(orgs),
                "--workspaces",
                str(workspaces),
                *([] if faults else ["--no-faults"]),
                "--report",
                str(report_path),
            ],
            timeout=1800,
        )
        if not report_path.exists():
            return {"wall_s": round(wall, 2), "exit": proc.returncode, "error": proc.stderr[-2000:]}
        report = json.loads(report_path.read_text())
    return {
        "wall_s": round(wall, 2),
        "exit": proc.returncode,
        "ok": report["ok"],
        "other_stack_listening_at_start": others,
        "soak_elapsed_s": report["elapsed_seconds"],
        "operation_seconds": report["operation_seconds"],
        "unexpected": report["unexpected"],
        "leaked_total": report["leaked_total"],
    }


def compare(runs: dict[str, list[dict]], key: str) -> dict:
    strict, lenient = (summary([r[key] for r in runs[m] if key in r]) for m in MODES)
    ratio = strict["median"] / lenient["median"] if strict["median"] and lenient["median"] else None
    return {"strict_s": strict, "lenient_s": lenient, "ratio_strict_to_lenient": round(ratio, 3) if ratio else None}


async def measure(files: list[str], soak_size: tuple[int, int], soak_faults: bool, reps: int) -> dict:
    tests: dict[str, list[dict]] = {m: [] for m in MODES}
    soaks: dict[str, list[dict]] = {m: [] for m in MODES}
    for i in range(reps):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for mode in order:
            tests[mode].append(await asyncio.to_thread(run_tests, files, mode))
        for mode in order:
            soaks[mode].append(await asyncio.to_thread(run_soak, *soak_size, soak_faults, mode))
    return {
        "tests": {**compare(tests, "wall_s"), "runs": tests},
        "soak": {**compare(soaks, "wall_s"), "soak_elapsed": compare(soaks, "soak_elapsed_s"), "runs": soaks},
    }


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--reps", type=int, default=None, help="strict/lenient pairs, order alternated")
    p.add_argument("--files", default=None, help="comma-separated test files")
    p.add_argument("--soak-orgs", type=int, default=None)
    p.add_argument("--soak-workspaces", type=int, default=None)
    p.add_argument(
        "--soak-faults",
        action="store_true",
        help="with the soak's Neon and EC2 faults (lenient runs then fail: see the docstring)",
    )
    a = p.parse_args(argv)
    files = a.files.split(",") if a.files else (QUICK_FILES if a.quick else FILES)
    soak_size = (a.soak_orgs or (2 if a.quick else 4), a.soak_workspaces or (2 if a.quick else 8))
    reps = a.reps or (1 if a.quick else 2)
    return save(
        "strict_cloud",
        {
            "params": {
                "files": files,
                "deselected": DESELECT,
                "soak": {"orgs": soak_size[0], "workspaces": soak_size[1], "faults": a.soak_faults},
                "reps": reps,
                "order": "strict first in even repetitions",
            },
            "results": await measure(files, soak_size, a.soak_faults, reps),
        },
    )


if __name__ == "__main__":
    cli(main)
