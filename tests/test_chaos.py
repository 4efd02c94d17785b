"""Overlapping operations at random, at the CI size, through the command an operator runs:
``python -m tools.chaos``. Seeded, so a failing seed is a reproducible failure; the longer runs
and their figures are in docs/reliability.md."""

from __future__ import annotations

import json

import pytest

from tools import chaos

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_random_overlapping_operations_keep_every_invariant(tmp_path):
    report_path = tmp_path / "chaos.json"
    status = chaos.main(["--seeds", "11,12", "--orgs", "4", "--steps", "40", "--report", str(report_path)])
    report = json.loads(report_path.read_text())
    assert report["interleavings"] == 2
    assert [r["violations"] for r in report["runs"]] == [[], []]
    answers = [answer for r in report["runs"] for answer in r["answers"]]
    # The schedule really overlapped operations: some commands were accepted, others refused at
    # once by the org's state, and tenants were both served and locked out.
    for expected in ("create 202", "ws_create 202", "suspend 202", "tenant_list 200"):
        assert expected in answers, (expected, answers)
    assert any(a.endswith(" 409") for a in answers) and any(
        a in ("tenant_list 403", "ws_create 403", "tenant_list 401") for a in answers
    )
    assert sum(sum(r["faults_armed"].values()) for r in report["runs"]) > 0
    assert status == 0
