"""Schema drift: answers as a newer Neon sends them, to clients pinned to an older schema.

Neon's API grows: operations gain actions and statuses, branches and endpoints gain states, objects
gain fields (the enums in https://api-docs.neon.tech/reference/ have grown release after release).
The ``neon-api`` 0.3.0 client parses answers into strict enums and raises on a value it does not
know. With ``schema_drift`` on, every answer carries such values, so a client that parses with the
pinned models fails, and one that reads only what it needs keeps working:

- an operation's ``action`` is a newer one (``<action>_v2``), and ``scheduling`` reads ``queued``;
- a branch that is not ready yet reads ``current_state: provisioning``;
- an endpoint that is not active yet reads ``current_state: starting``;
- branches, endpoints, operations and projects carry fields the pinned schema lacks.
The meaning is unchanged: terminal statuses (finished, cancelled) and ``ready`` stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NEWER_STATUSES = {"scheduling": "queued"}
NEWER_BRANCH_STATES = {"init": "provisioning"}
NEWER_ENDPOINT_STATES = {"init": "starting"}


def _operation(op: dict[str, Any]) -> dict[str, Any]:
    return op | {
        "action": f"{op['action']}_v2",
        "status": NEWER_STATUSES.get(op["status"], op["status"]),
        "attempt_history": [],
    }


def _branch(branch: dict[str, Any]) -> dict[str, Any]:
    state = branch["current_state"]
    return branch | {"current_state": NEWER_BRANCH_STATES.get(state, state), "restricted_actions": []}


def _endpoint(endpoint: dict[str, Any]) -> dict[str, Any]:
    state = endpoint["current_state"]
    return endpoint | {"current_state": NEWER_ENDPOINT_STATES.get(state, state), "compute_release_version": "v2"}


def _project(project: dict[str, Any]) -> dict[str, Any]:
    return project | {"maintenance_scheduled_for": None}


_ONE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "operation": _operation,
    "branch": _branch,
    "project": _project,
}
_MANY: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "operations": _operation,
    "branches": _branch,
    "endpoints": _endpoint,
    "projects": _project,
}


def apply(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (an API answer) as a newer Neon would send it."""
    drifted = dict(body)
    for key, change in _ONE.items():
        if isinstance(body.get(key), dict):
            drifted[key] = change(body[key])
    for key, change in _MANY.items():
        if isinstance(body.get(key), list):
            drifted[key] = [change(item) for item in body[key]]
    return drifted
