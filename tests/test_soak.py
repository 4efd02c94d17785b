"""The soak at its CI size (6 orgs, 15 workspaces, Neon and EC2 faults on, a fifth of the workspaces never
boot), through the same command an operator runs: ``python -m tools.soak``. The full size
(200 orgs, 500 workspaces) is run by hand; its figures are in docs/reliability.md."""

from __future__ import annotations

import json

import pytest

from tools import soak

ORGS, WORKSPACES = 6, 15  # CI size: 3/100 of the full size, to keep CI under 20 minutes
NEVER_BOOT = WORKSPACES // 5  # every fifth workspace (tools.soak --never-boot-every 5)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def test_ci_size_soak_completes_every_lifecycle_and_leaks_nothing(tmp_path):
    report_path = tmp_path / "soak.json"
    status = soak.main(
        [
            "--orgs",
            str(ORGS),
            "--workspaces",
            str(WORKSPACES),
            "--concurrency",
            "4",
            "--time-limit",
            "900",
            "--state-dir",
            str(tmp_path / "state"),
            "--report",
            str(report_path),
        ]
    )
    report = json.loads(report_path.read_text())
    assert report["leaked_total"] == 0, report["leaked"]
    assert report["lost_records"] == []
    assert report["unexpected"] == []
    assert report["orgs_completed"] == ORGS
    assert report["workspaces"]["running"] + report["workspaces"]["timed_out"] == WORKSPACES
    assert report["workspaces"]["timed_out"] == NEVER_BOOT  # exactly the never-boot ones, each cleaned up
    workflows = report["workflows"]
    for kind in (
        "OrgWorkflow",
        "OnboardOrgWorkflow",
        "SuspendOrgWorkflow",
        "ResumeOrgWorkflow",
        "HardDeleteOrgWorkflow",
    ):
        assert workflows[kind] == {"COMPLETED": ORGS}, (kind, workflows[kind])
    assert workflows["ProvisionWorkspaceWorkflow"] == {"COMPLETED": WORKSPACES - NEVER_BOOT, "FAILED": NEVER_BOOT}
    # The faults were served (Neon's and EC2's), and retried to completion.
    injected = report["faults_injected"]
    assert sum(sum(s.values()) for s in report["neon_error_answers"].values()) >= sum(
        n for k, n in injected.items() if k.startswith("neon ")
    )
    assert sum(sum(s.values()) for s in report["ec2_error_answers"].values()) >= sum(
        n for k, n in injected.items() if k.startswith("ec2 ")
    )
    assert report["activity_retries"]["OnboardOrgWorkflow"] > 0
    assert status == 0
