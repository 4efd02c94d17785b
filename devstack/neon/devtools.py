"""HTTP plumbing: Neon-like errors, API-key auth, request stats and fault injection.

The ``/__devstack/`` admin routes are unauthenticated; the server only listens on loopback. A fault
answers the next ``count`` matching requests (-1: until cleared) with ``status``, Neon's error
shape (``message``, ``code``) and optionally ``Retry-After``, before the request reaches a handler.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from http import HTTPStatus
from typing import Any

from aiohttp import web

log = logging.getLogger("devstack.neon_server")

API_PREFIX = "/api/v2"
LOCKED_MESSAGE = "project already has running conflicting operations, scheduling of new ones is prohibited"
_FAULT_MESSAGES = {
    423: LOCKED_MESSAGE,
    429: "rate limit exceeded",
    500: "internal server error",
    503: "service temporarily unavailable",
}
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "*"}


class ApiError(Exception):
    """An answer in Neon's error shape; ``code`` is Neon's machine-readable error code, if any."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, code: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.code = code


def error_response(status: int, message: str, headers: dict[str, str] | None = None, code: str = "") -> web.Response:
    # https://api-docs.neon.tech/reference/ (GeneralError): {"request_id", "code", "message"}
    body = {"code": code, "message": message, "request_id": str(uuid.uuid4())}
    return web.json_response(body, status=status, headers=headers)


# -- request bodies --------------------------------------------------------------------------


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    """``obj[key]`` checked against ``kind``; ``default`` when absent or null."""
    value = obj.get(key)
    if value is None:
        return default
    # bool is an int subclass, and Postgres text cannot hold NUL: both would slip through isinstance.
    wrong = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    if wrong or (isinstance(value, str) and "\x00" in value):
        names = "/".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise ApiError(400, f"{where}{key}: expected {names}, got {json.dumps(value)[:80]}")
    return value


# -- routes, stats and faults ----------------------------------------------------------------


def is_api(request: web.Request) -> bool:
    return request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/")


def route_template(request: web.Request) -> str | None:
    """The matched route's template relative to the API prefix, e.g. ``/projects/{project_id}``."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return resource.canonical.removeprefix(API_PREFIX)


@dataclass
class Fault:
    id: int
    method: str
    route: str
    status: int
    count: int
    retry_after: float | None = None
    message: str | None = None
    hits: int = 0
    code: str = ""  # Neon's error code in the body, e.g. BRANCHES_LIMIT_EXCEEDED

    def matches(self, method: str, route: str | None) -> bool:
        return self.method in ("*", method) and (self.route == "*" or self.route == route)

    def response(self) -> web.Response:
        headers = None
        if self.retry_after is not None:
            seconds = self.retry_after
            headers = {"Retry-After": str(int(seconds)) if seconds == int(seconds) else str(seconds)}
        message = self.message or _FAULT_MESSAGES.get(self.status) or HTTPStatus(self.status).phrase.lower()
        return error_response(self.status, message, headers, self.code)


@dataclass
class DevTools:
    api_key: str
    faults: list[Fault] = dc_field(default_factory=list)
    next_fault_id: int = 1
    requests: Counter = dc_field(default_factory=Counter)
    statuses: Counter = dc_field(default_factory=Counter)
    by_route: defaultdict = dc_field(default_factory=lambda: defaultdict(Counter))

    def take_fault(self, method: str, route: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, route):
                fault.hits += 1
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                return fault
        return None

    def record(self, key: str, status: int) -> None:
        self.requests[key] += 1
        self.statuses[str(status)] += 1
        self.by_route[key][str(status)] += 1

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
            "by_route": {key: dict(counts) for key, counts in self.by_route.items()},
        }

    def reset_stats(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.by_route.clear()


DEVTOOLS = web.AppKey("devtools", DevTools)


# -- middlewares (outermost first) -----------------------------------------------------------


@web.middleware
async def stats_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    if is_api(request):
        request.app[DEVTOOLS].record(f"{request.method} {route_template(request) or '<unmatched>'}", response.status)
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err.status, err.message, err.headers, err.code)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        allow = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
        return error_response(err.status, err.reason.lower(), allow)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal server error")


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if is_api(request):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "authorization header with a Bearer API key is required")
        if not hmac.compare_digest(token.encode(), request.app[DEVTOOLS].api_key.encode()):
            raise ApiError(401, "authentication failed: invalid API key")
    return await handler(request)


@web.middleware
async def faults_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if is_api(request):
        fault = request.app[DEVTOOLS].take_fault(request.method, route_template(request))
        if fault is not None:
            return fault.response()
    return await handler(request)


MIDDLEWARES = [stats_middleware, errors_middleware, auth_middleware, faults_middleware]


# -- admin routes ----------------------------------------------------------------------------


def _api_routes(app: web.Application) -> set[str]:
    return {
        r.canonical.removeprefix(API_PREFIX) for r in app.router.resources() if r.canonical.startswith(API_PREFIX + "/")
    }


def _parse_fault(body: dict[str, Any], known_routes: set[str], fault_id: int) -> Fault:
    method = field(body, "method", str, "", "*").upper()
    if method not in _METHODS:
        raise ApiError(400, f"method: expected one of {sorted(_METHODS)}")
    route = field(body, "route", str, "")
    if route is None or (route != "*" and route not in known_routes):
        raise ApiError(400, f"route: expected '*' or one of {sorted(known_routes)}")
    status = field(body, "status", int, "")
    if status is None or not 400 <= status <= 599:
        raise ApiError(400, "status: expected an HTTP error status (400-599)")
    count = field(body, "count", int, "", 1)
    if count == 0 or count < -1:
        raise ApiError(400, "count: expected a positive number, or -1 for until cleared")
    retry_after = field(body, "retry_after", (int, float), "")
    if retry_after is not None and retry_after < 0:
        raise ApiError(400, "retry_after: expected seconds >= 0")
    message = field(body, "message", str, "")
    return Fault(fault_id, method, route, status, count, retry_after, message, code=field(body, "code", str, "", ""))


async def add_fault(request: web.Request) -> web.Response:
    tools = request.app[DEVTOOLS]
    fault = _parse_fault(await json_body(request), _api_routes(request.app), tools.next_fault_id)
    tools.next_fault_id += 1
    tools.faults.append(fault)
    return web.json_response({"fault": asdict(fault)}, status=201)


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": [asdict(f) for f in request.app[DEVTOOLS].faults]})


async def clear_faults(request: web.Request) -> web.Response:
    tools = request.app[DEVTOOLS]
    cleared = len(tools.faults)
    tools.faults.clear()
    return web.json_response({"cleared": cleared})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[DEVTOOLS].stats())


async def reset_stats(request: web.Request) -> web.Response:
    tools = request.app[DEVTOOLS]
    before = tools.stats()
    tools.reset_stats()
    return web.json_response(before)


def add_admin_routes(app: web.Application) -> None:
    app.router.add_post("/__devstack/faults", add_fault)
    app.router.add_get("/__devstack/faults", list_faults)
    app.router.add_delete("/__devstack/faults", clear_faults)
    app.router.add_get("/__devstack/stats", get_stats)
    app.router.add_post("/__devstack/reset-stats", reset_stats)
