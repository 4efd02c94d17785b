"""Replay every committed workflow history (tests/histories/*.json) against today's workflow code.

A change that makes a workflow non-deterministic for histories already recorded (a reordered,
added or removed activity, timer or signal wait outside ``workflow.patched``) fails here before it
ships. Regenerate the histories with ``tests/record_histories.py``; see docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities.store import OrgStoreActivities
from domain.onboard_org import OnboardOrgInput, OnboardOrgResult
from domain.refs import OrgRef
from worker import WORKFLOWS
from workflows.common import CALL_TIMEOUT

HISTORIES = sorted((Path(__file__).resolve().parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    # The workflow id is not stored in the events; the file name carries the case.
    return WorkflowHistory.from_json(path.stem, path.read_text())


def workflow_type(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


def test_every_workflow_type_has_a_recorded_history():
    recorded = {workflow_type(load(p)) for p in HISTORIES}
    assert recorded == {w.__name__ for w in WORKFLOWS}, "record a history for each new workflow type"


def test_failure_paths_are_recorded():
    names = {p.stem for p in HISTORIES}
    for case in (
        "OnboardOrgWorkflow-neon-permanent-fault-compensates",
        "ProvisionWorkspaceWorkflow-registration-timeout",
        "HardDeleteOrgWorkflow-parked-then-retry",
    ):
        assert case in names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_deterministically(path: Path):
    history = load(path)
    assert workflow_type(history) == path.stem.split("-", 1)[0]
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


@workflow.defn(name="OnboardOrgWorkflow", sandboxed=False)
class ChangedOnboardOrgWorkflow:
    """OnboardOrgWorkflow as a careless edit might leave it: the first activity is no longer
    validate_network."""

    @workflow.run
    async def run(self, inp: OnboardOrgInput) -> OnboardOrgResult:
        await workflow.execute_activity_method(
            OrgStoreActivities.mark_org_active,
            OrgRef(org_id=inp.org_id, slug=inp.slug),
            start_to_close_timeout=CALL_TIMEOUT,
        )
        return OnboardOrgResult(org_id=inp.org_id, slug=inp.slug, status="active")


async def test_a_non_deterministic_change_is_caught():
    """The guard itself works: the onboarding history fails to replay on a changed workflow."""
    history = load(next(p for p in HISTORIES if p.stem == "OnboardOrgWorkflow-happy"))
    replayer = Replayer(workflows=[ChangedOnboardOrgWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()
