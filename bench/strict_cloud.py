"""10. What the strict local cloud costs: a fixed subset of the test suite (files that drive EC2 and
Neon through the workflows and the API) and a small soak (``tools.soak``), each run with the
cloud as configured (strict EC2 with the suite's short timings, strict Neon; the soak's stack with
the devstack defaults) and lenient (``bench.lenient_cloud``: the same servers switched to lenient
through their admin APIs as soon as they start), alternated in the same run. Wall time of the
whole process (pytest, or the soak with its stack start), plus pytest's per-file test time and the
soak's own elapsed time and per-operation medians.

    python -m bench.strict_cloud [--quick] [--reps N] [--files tests/a.py,tests/b.py] [--soak-orgs N --soak-workspaces N]
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

from bench.common import ROOT, cli, parse, save, summary

FILES = ["tests/test_workspace_workflow.py", "tests/test_onboard_workflow.py", "tests/test_lifecycle.py",
         "tests/test_org_workflow.py"]
QUICK_FILES = ["tests/test_org_workflow.py"]
MODES = ("strict", "lenient")


def _run(args: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t, proc


def run_tests(files: list[str], mode: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tf-bench-pytest-"))
    try:
        junit = tmp / "junit.xml"
        # Its own basetemp (the shared /tmp/pytest-of-<user> is pruned by concurrent sessions).
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp / 'bt'}",
                f"--junitxml={junit}", *(["-p", "bench.lenient_cloud"] if mode == "lenient" else []), *files]
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
        return {"wall_s": round(wall, 2), "exit": proc.returncode, "counts": counts, "summary": last,
                "test_seconds_by_file": per_file, "failed": failed}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_soak(orgs: int, workspaces: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="tf-bench-soak-") as tmp:
        report_path = Path(tmp) / "report.json"
        module = "bench.lenient_cloud" if mode == "lenient" else "tools.soak"
        wall, proc = _run([sys.executable, "-m", module, "--orgs", str(orgs), "--workspaces", str(workspaces),
                           "--report", str(report_path)], timeout=1800)
        if not report_path.exists():
            return {"wall_s": round(wall, 2), "exit": proc.returncode, "error": proc.stderr[-2000:]}
        report = json.loads(report_path.read_text())
    return {"wall_s": round(wall, 2), "exit": proc.returncode, "ok": report["ok"],
            "soak_elapsed_s": report["elapsed_seconds"], "operation_seconds": report["operation_seconds"],
            "unexpected": report["unexpected"], "leaked_total": report["leaked_total"]}


def compare(runs: dict[str, list[dict]], key: str) -> dict:
    strict, lenient = (summary([r[key] for r in runs[m] if key in r]) for m in MODES)
    ratio = strict["median"] / lenient["median"] if strict["median"] and lenient["median"] else None
    return {"strict_s": strict, "lenient_s": lenient, "ratio_strict_to_lenient": round(ratio, 3) if ratio else None}


async def measure(files: list[str], soak_size: tuple[int, int], reps: int) -> dict:
    tests: dict[str, list[dict]] = {m: [] for m in MODES}
    soaks: dict[str, list[dict]] = {m: [] for m in MODES}
    for i in range(reps):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for mode in order:
            tests[mode].append(await asyncio.to_thread(run_tests, files, mode))
        for mode in order:
            soaks[mode].append(await asyncio.to_thread(run_soak, *soak_size, mode))
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
    a = p.parse_args(argv)
    files = a.files.split(",") if a.files else (QUICK_FILES if a.quick else FILES)
    soak_size = (a.soak_orgs or (2 if a.quick else 4), a.soak_workspaces or (2 if a.quick else 8))
    reps = a.reps or (1 if a.quick else 2)
    return save("strict_cloud", {"params": {"files": files, "soak": {"orgs": soak_size[0], "workspaces": soak_size[1]},
                                            "reps": reps, "order": "strict first in even repetitions"},
                                 "results": await measure(files, soak_size, reps)})


if __name__ == "__main__":
    cli(main)
