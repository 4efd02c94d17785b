"""The local EC2 server's front door: a WSGI app in front of moto that runs each EC2 call through
the strict rules (``devstack.ec2_strict``), injects faults, counts requests, and serves an admin API.

Admin API (loopback clients only, unauthenticated, JSON; moto's own admin API is ``/moto-api/``):

    POST   /__devstack/ec2/faults       add a fault (below); 201 {"fault": {...}}
    GET    /__devstack/ec2/faults       {"faults": [...]}
    DELETE /__devstack/ec2/faults       {"cleared": n}
    GET    /__devstack/ec2/stats        {"requests": {Action: n}, "errors": {Action: {Code: n}}}
    POST   /__devstack/ec2/reset-stats  the stats before the reset
    GET    /__devstack/ec2/config       {"strict": true, "pending_seconds": 2.0, ...}
    POST   /__devstack/ec2/config       change some settings, e.g. {"pending_seconds": 0.2}; the result

    POST /moto-api/reset (moto's) also forgets the strict layer's state (tokens, lag, transitions,
    drains) and the faults; the stats are kept.

A fault: ``{"action": "RunInstances" | "*", "code": "RequestLimitExceeded", "status": 503,
"message": null, "count": 1, "when": "before", "delay_seconds": null}``; only ``action`` and one of
``code`` or ``delay_seconds`` are needed. The first fault that matches a call's action is used,
``count`` times (-1: until cleared).
- ``when: "before"``: the error is answered without calling moto (nothing happens).
- ``when: "after"``: moto (and the strict rules) make the change, then the error replaces the real
  answer: the client must find and recover what it created (e.g. a retry with the same ClientToken).
- ``delay_seconds`` holds the call that long at that point (before: before anything happens;
  after: after the change, before the answer), without blocking other calls. A client whose read
  timeout is shorter sees a read timeout; with "after" that models "committed, answer lost".
  Without ``code``, the real answer follows the delay.
The status defaults to EC2's own for the codes below; the body is EC2's error XML, so boto3 raises
``ClientError`` with that code (and, with its default retries, retries the 5xx ones).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Protocol

import botocore.session

from devstack.ec2_query import Answer, Ec2Call, call_wsgi, error_answer, read_body
from devstack.ec2_strict import StrictEC2

log = logging.getLogger("devstack.aws_server")

ADMIN_PREFIX = "/__devstack/ec2"
_MOTO_RESET = "/moto-api/reset"

# EC2's HTTP status and message for the server-side errors worth injecting.
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html#api-error-codes-table-server
FAULT_DEFAULTS = {
    "RequestLimitExceeded": (503, "Request limit exceeded."),
    "InsufficientInstanceCapacity": (
        500,
        "We currently do not have sufficient capacity in the Availability Zone "
        "you requested. Our system will be working on provisioning additional "
        "capacity.",
    ),
    "InternalError": (500, "An internal error has occurred."),
    "Unavailable": (503, "The server is overloaded and can't handle the request."),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the server."),
}


class SharedLock(Protocol):
    def shared(self) -> AbstractContextManager[None]: ...


@cache
def ec2_actions() -> frozenset[str]:
    return frozenset(botocore.session.get_session().get_service_model("ec2").operation_names)


def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ValueError(f"{name}: expected {'/'.join(k.__name__ for k in kinds)}, got {json.dumps(value)[:80]}")
    return value


@dataclass
class Fault:
    id: int
    action: str
    code: str | None
    status: int | None
    message: str | None
    count: int
    when: str
    delay_seconds: float | None
    hits: int = 0

    @classmethod
    def parse(cls, body: dict[str, Any], fault_id: int) -> Fault:
        action = _field(body, "action", (str,))
        if action is None or (action != "*" and action not in ec2_actions()):
            raise ValueError("action: expected '*' or an EC2 action such as RunInstances")
        code = _field(body, "code", (str,))
        status = _field(body, "status", (int,), FAULT_DEFAULTS.get(code, (None,))[0])
        if code is not None and (status is None or not 400 <= status <= 599):
            raise ValueError(f"status: expected an HTTP error status (400-599); required for code {code}")
        count = _field(body, "count", (int,), 1)
        if count == 0 or count < -1:
            raise ValueError("count: expected a positive number, or -1 for until cleared")
        when = _field(body, "when", (str,), "before")
        if when not in ("before", "after"):
            raise ValueError("when: expected 'before' or 'after'")
        delay = _field(body, "delay_seconds", (int, float))
        if delay is not None and delay < 0:
            raise ValueError("delay_seconds: expected seconds >= 0")
        if code is None and delay is None:
            raise ValueError("a fault needs a code, a delay_seconds, or both")
        return cls(fault_id, action, code, status, _field(body, "message", (str,)), count, when, delay)

    def use(self) -> bool:
        """Counts a use; True when it was the last one (a count of -1 never ends)."""
        self.hits += 1
        if self.count > 0:
            self.count -= 1
        return self.count == 0

    def hold(self) -> None:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)

    def answer(self) -> Answer | None:
        """The error to answer, if any (a delay-only fault has none)."""
        if self.code is None:
            return None
        message = self.message or FAULT_DEFAULTS.get(self.code, (0, f"Injected fault: {self.code}"))[1]
        return error_answer(self.code, message, self.status)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, body: dict[str, Any]) -> Fault:
        with self._lock:
            fault = Fault.parse(body, self._next_id)
            self._next_id += 1
            self._faults.append(fault)
            return fault

    def take(self, action: str) -> Fault | None:
        """The first fault for this action, counted as used (and removed after its last use)."""
        with self._lock:
            fault = next((f for f in self._faults if f.action in ("*", action)), None)
            if fault is not None and fault.use():
                self._faults.remove(fault)
            return fault

    def listed(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]

    def clear(self) -> int:
        with self._lock:
            cleared = len(self._faults)
            self._faults.clear()
            return cleared


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._errors: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def record(self, action: str, answer: Answer) -> None:
        with self._lock:
            self._requests[action] += 1
            if code := answer.error_code():
                self._errors[action][code] += 1

    def snapshot(self, reset: bool = False) -> dict[str, Any]:
        with self._lock:
            stats = {
                "requests": dict(self._requests),
                "errors": {action: dict(codes) for action, codes in self._errors.items()},
            }
            if reset:
                self._requests.clear()
                self._errors.clear()
            return stats


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")


class Ec2Frontend:
    """The WSGI app: admin routes, then faults and the strict rules around moto's app. moto runs
    under the server's shared lock; fault delays and admin calls do not, so a held answer never
    holds up housekeeping."""

    def __init__(self, moto_app: Callable[..., Iterable[bytes]], lock: SharedLock, strict: StrictEC2) -> None:
        self._moto_app = moto_app
        self._lock = lock
        self.strict = strict
        self.faults = Faults()
        self.stats = Stats()
        self._routes: dict[tuple[str, str], Callable[[dict[str, Any]], tuple[int, Any]]] = {
            ("POST", "/faults"): lambda body: (201, {"fault": asdict(self.faults.add(body))}),
            ("GET", "/faults"): lambda _: (200, {"faults": self.faults.listed()}),
            ("DELETE", "/faults"): lambda _: (200, {"cleared": self.faults.clear()}),
            ("GET", "/stats"): lambda _: (200, self.stats.snapshot()),
            ("POST", "/reset-stats"): lambda _: (200, self.stats.snapshot(reset=True)),
            ("GET", "/config"): lambda _: (200, self.strict.config.as_dict()),
            ("POST", "/config"): self._set_config,
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(ADMIN_PREFIX + "/"):
            answer = self._admin(environ, path.removeprefix(ADMIN_PREFIX))
        elif (call := Ec2Call.parse(environ)) is not None:
            answer = self._ec2(call)
            self.stats.record(call.action, answer)
        else:
            with self._lock.shared():
                answer = call_wsgi(self._moto_app, environ)
                if path == _MOTO_RESET and answer.ok:
                    self.strict.reset()
                    self.faults.clear()
        return answer.send(start_response)

    def _ec2(self, call: Ec2Call) -> Answer:
        fault = self.faults.take(call.action)
        if fault is not None and fault.when == "before":
            fault.hold()
            if (injected := fault.answer()) is not None:
                return injected
        with self._lock.shared():
            try:
                answer = self.strict.handle(call, self._moto)
            except Exception:  # a bug here must still answer XML that boto3 can read
                log.exception("%s failed", call.action)
                answer = error_answer("InternalError", "An internal error has occurred.", 500)
        if fault is not None and fault.when == "after":
            fault.hold()
            answer = fault.answer() or answer
        return answer

    def _moto(self, call: Ec2Call) -> Answer:
        return call_wsgi(self._moto_app, call.environ_for_moto())

    def _admin(self, environ: dict[str, Any], route: str) -> Answer:
        if not _is_loopback(environ.get("REMOTE_ADDR", "")):
            return _json(403, {"error": "the admin API answers loopback clients only"})
        method = environ.get("REQUEST_METHOD", "GET")
        handler = self._routes.get((method, route))
        if handler is None:
            allowed = sorted(m for m, r in self._routes if r == route)
            return _json(
                405 if allowed else 404, {"error": f"{method} {ADMIN_PREFIX}{route}: not a route", "allowed": allowed}
            )
        try:
            body = json.loads(read_body(environ) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            status, result = handler(body)
        except ValueError as err:  # json.JSONDecodeError is one too
            return _json(400, {"error": str(err)})
        return _json(status, result)

    def _set_config(self, body: dict[str, Any]) -> tuple[int, Any]:
        self.strict.config.update(body)
        return 200, self.strict.config.as_dict()


def _json(status: int, body: Any) -> Answer:
    return Answer(status, [("Content-Type", "application/json")], json.dumps(body).encode())
