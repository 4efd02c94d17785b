"""Operations: how their status moves over time, which fail or are cancelled, and Neon's own ones.

As https://neon.com/docs/reference/api/operations.md describes: an operation moves scheduling ->
running -> finished; ``failed`` is not terminal (Neon retries it: ``failures_count`` grows, then it
runs again), while ``finished``, ``skipped`` and ``cancelled`` are. A request that conflicts with
an unfinished operation gets 423 Locked. Neon also runs operations of its own (suspending idle
computes, applying configuration: https://neon.com/docs/manage/operations), which hold the
project lock just the same.

Each operation row carries its whole timeline (``running_at``, ``finished_at``, ``failures``,
``retry_seconds``, ``outcome``), so its status at any moment is a pure function of the clock.
Which operations fail is decided when they are created: first by injected rules
(``POST /__devstack/operation-outcomes``), else by the shares in ``Strictness.operations``.

    POST   /__devstack/operation-outcomes  {"count": 2, "failures": 3, "outcome": "finished",
                                             "action": "create_timeline"}   (action optional)
    GET    /__devstack/operation-outcomes  -> {"rules": [...]}
    DELETE /__devstack/operation-outcomes  -> {"cleared": N}
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from devstack.neon import ids
from devstack.neon.control import Row
from devstack.neon.devtools import ApiError, field, json_body
from devstack.neon.strict import Operations

OUTCOMES = ("finished", "cancelled")
BACKGROUND_ACTIONS = ("apply_config", "suspend_compute")
FAILURE_MESSAGE = "operation failed; it will be retried"


@dataclass
class OutcomeRule:
    count: int
    failures: int
    outcome: str
    action: str | None = None


@dataclass
class Timing:
    scheduling: float
    running: float


class OperationPlanner:
    """Decides, for each new operation, how often it fails before its outcome."""

    def __init__(self, rng: random.Random | None = None):
        self.rules: list[OutcomeRule] = []
        self._rng = rng or random.Random()

    def pick(self, choices: tuple[str, ...]) -> str:
        return self._rng.choice(choices)

    def chance(self, share: float) -> bool:
        return share > 0 and self._rng.random() < share

    def plan(self, action: str, settings: Operations) -> tuple[int, str]:
        for rule in self.rules:
            if rule.action in (None, action):
                rule.count -= 1
                if rule.count == 0:
                    self.rules.remove(rule)
                return rule.failures, rule.outcome
        if self.chance(settings.cancel_share):
            return 0, "cancelled"
        if self.chance(settings.failure_share):
            return settings.failures, "finished"
        return 0, "finished"


def _row(
    project_id: str,
    branch: Row,
    action: str,
    now: datetime,
    timing: Timing,
    failures: int = 0,
    retry_seconds: float = 0.0,
    outcome: str = "finished",
) -> Row:
    running = now + timedelta(seconds=timing.scheduling)
    busy = timing.running * (failures + 1) + retry_seconds * failures
    return {
        "id": ids.operation_id(),
        "project_id": project_id,
        "branch_id": branch["id"],
        "endpoint_id": branch["endpoint_id"] if action.endswith("_compute") else None,
        "action": action,
        "created_at": now,
        "running_at": running,
        "finished_at": running + timedelta(seconds=busy),
        "failures": failures,
        "retry_seconds": retry_seconds,
        "outcome": outcome,
    }


def new_operations(
    planner: OperationPlanner,
    settings: Operations,
    timing: Timing,
    project_id: str,
    branch: Row,
    actions: list[str],
    now: datetime,
) -> list[Row]:
    """Rows for the operations one request starts, their fates decided now."""
    rows = []
    for action in actions:
        failures, outcome = planner.plan(action, settings)
        rows.append(_row(project_id, branch, action, now, timing, failures, settings.retry_seconds, outcome))
    return rows


def background_operation(
    planner: OperationPlanner, project_id: str, branch: Row, seconds: float, now: datetime, action: str | None = None
) -> Row:
    """One of Neon's own operations on ``branch``, running from ``now`` for ``seconds``."""
    return _row(project_id, branch, action or planner.pick(BACKGROUND_ACTIONS), now, Timing(0.0, seconds))


@dataclass
class Phase:
    status: str
    failures_count: int
    since: datetime  # when the operation entered this status


def phase(op: Row, now: datetime) -> Phase:
    """Where ``op`` is at ``now``: [scheduling] ([running][failed]) x failures [running] outcome."""
    if now < op["running_at"]:
        return Phase("scheduling", 0, op["created_at"])
    if now >= op["finished_at"]:
        return Phase(op["outcome"], op["failures"], op["finished_at"])
    failures, pause = op["failures"], op["retry_seconds"]
    total = (op["finished_at"] - op["running_at"]).total_seconds()
    attempt = (total - failures * pause) / (failures + 1)
    elapsed = (now - op["running_at"]).total_seconds()
    cycle = attempt + pause
    done = min(int(elapsed // cycle), failures) if cycle > 0 else failures
    start = op["running_at"] + timedelta(seconds=done * cycle)
    if done < failures and elapsed - done * cycle >= attempt:
        return Phase("failed", done + 1, start + timedelta(seconds=attempt))
    return Phase("running", done, start)


# -- admin routes ----------------------------------------------------------------------------

PLANNER = web.AppKey("neon_operation_planner", OperationPlanner)


def _parse_rule(body: dict[str, Any]) -> OutcomeRule:
    count = field(body, "count", int, "", 1)
    failures = field(body, "failures", int, "", 0)
    outcome = field(body, "outcome", str, "", "finished")
    if count < 1 or failures < 0:
        raise ApiError(400, "count: expected >= 1; failures: expected >= 0")
    if outcome not in OUTCOMES:
        raise ApiError(400, f"outcome: expected one of {list(OUTCOMES)}")
    return OutcomeRule(count, failures, outcome, field(body, "action", str, ""))


async def add_outcome_rule(request: web.Request) -> web.Response:
    rule = _parse_rule(await json_body(request))
    request.app[PLANNER].rules.append(rule)
    return web.json_response({"rule": asdict(rule)}, status=201)


async def list_outcome_rules(request: web.Request) -> web.Response:
    return web.json_response({"rules": [asdict(r) for r in request.app[PLANNER].rules]})


async def clear_outcome_rules(request: web.Request) -> web.Response:
    rules = request.app[PLANNER].rules
    cleared = len(rules)
    rules.clear()
    return web.json_response({"cleared": cleared})


def add_operation_routes(app: web.Application) -> None:
    app.router.add_post("/__devstack/operation-outcomes", add_outcome_rule)
    app.router.add_get("/__devstack/operation-outcomes", list_outcome_rules)
    app.router.add_delete("/__devstack/operation-outcomes", clear_outcome_rules)
