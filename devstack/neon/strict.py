"""How strict the local Neon server is: one settings object, strict by default, changed at runtime.

Each rule lives in its own module and reads its part of :class:`Strictness`:
``plans`` (caps per plan), ``ratelimit`` (429s), ``pagination`` (pages and cursors),
``operations`` (failed-then-retried and cancelled operations, Neon's own background operations) and
``drift`` (enum values and fields newer than the pinned client). The defaults are Neon's real
numbers; :meth:`Strictness.lenient` switches off everything random or throttling, for tests that
need an exact sequence of answers.

The settings are readable and changeable while the server runs:

    GET   /__devstack/config            -> the settings, as below
    PATCH /__devstack/config            {"rate_limit": {"retry_after": true}, "schema_drift": true}

    {"plan": "launch",
     "rate_limit": {"enabled": true, "per_minute": 700, "burst_per_route": 40, "retry_after": false},
     "pagination": {"branch_page_size": 100},
     "operations": {"failure_share": 0.05, "failures": 1, "cancel_share": 0.0, "retry_seconds": 0.5},
     "background": {"share": 0.02, "seconds": 1.0},
     "schema_drift": false}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from aiohttp import web

from devstack.neon.devtools import ApiError, json_body
from domain.neon_plans import PLANS


@dataclass
class RateLimit:
    """https://api-docs.neon.tech/reference/api-rate-limiting: 700 requests a minute per account,
    bursts of 40 a second per route, then 429 (not always with Retry-After)."""

    enabled: bool = True
    per_minute: int = 700
    burst_per_route: int = 40
    retry_after: bool = False


@dataclass
class Pagination:
    # Neon documents no default page for list branches; a page applied when the caller names no
    # `limit` catches clients that never follow `pagination.next`. 0: everything in one answer.
    branch_page_size: int = 100


@dataclass
class Operations:
    # Share of new operations that fail `failures` times (Neon retries them after
    # `retry_seconds`) before they finish, and share that end cancelled.
    failure_share: float = 0.05
    failures: int = 1
    cancel_share: float = 0.0
    retry_seconds: float = 0.5


@dataclass
class Background:
    # Share of mutations that find one of Neon's own operations (apply_config, suspend_compute)
    # holding the project lock, and how long such an operation runs.
    share: float = 0.02
    seconds: float = 1.0


@dataclass
class Strictness:
    plan: str = "launch"
    rate_limit: RateLimit = field(default_factory=RateLimit)
    pagination: Pagination = field(default_factory=Pagination)
    operations: Operations = field(default_factory=Operations)
    background: Background = field(default_factory=Background)
    schema_drift: bool = False

    @classmethod
    def lenient(cls, **overrides: Any) -> Strictness:
        """No throttling, no paging by default, no random failures or locks; plan caps stay."""
        quiet = cls(
            rate_limit=RateLimit(enabled=False),
            pagination=Pagination(branch_page_size=0),
            operations=Operations(failure_share=0.0),
            background=Background(share=0.0),
        )
        return replace(quiet, **overrides)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.plan not in PLANS:
            raise ValueError(f"plan: expected one of {sorted(PLANS)}")
        if self.rate_limit.per_minute < 1 or self.rate_limit.burst_per_route < 1:
            raise ValueError("rate_limit: per_minute and burst_per_route must be >= 1")
        if self.pagination.branch_page_size < 0:
            raise ValueError("pagination.branch_page_size: expected >= 0 (0: no default page)")
        ops, background = self.operations, self.background
        for name, share in (
            ("operations.failure_share", ops.failure_share),
            ("operations.cancel_share", ops.cancel_share),
            ("background.share", background.share),
        ):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}: expected a share between 0 and 1")
        if ops.failures < 1 or ops.retry_seconds < 0 or background.seconds <= 0:
            raise ValueError("operations.failures >= 1, operations.retry_seconds >= 0, background.seconds > 0")


def _coerced(old: Any, value: Any, where: str) -> Any:
    """``value`` if it has the type of ``old`` (an int is accepted for a float)."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(old, bool):
        ok = isinstance(value, bool)
    elif isinstance(old, float):
        ok, value = numeric, float(value) if numeric else value
    elif isinstance(old, int):
        ok = numeric and isinstance(value, int)
    else:
        ok = isinstance(value, type(old))
    if not ok:
        raise ApiError(400, f"{where}: expected {type(old).__name__}, got {value!r}")
    return value


def _merged(current: Any, patch: Any, where: str) -> Any:
    """``current`` (a dataclass) with the values of the JSON object ``patch``, type-checked."""
    if not isinstance(patch, dict):
        raise ApiError(400, f"{where.rstrip('.') or 'body'}: expected an object")
    known = {f.name for f in fields(current)}
    changes = {}
    for key, value in patch.items():
        if key not in known:
            raise ApiError(400, f"{where}{key}: unknown setting; expected one of {sorted(known)}")
        old = getattr(current, key)
        changes[key] = _merged(old, value, f"{where}{key}.") if is_dataclass(old) else _coerced(old, value, where + key)
    return replace(current, **changes)


def patched(current: Strictness, patch: Any) -> Strictness:
    updated = _merged(current, patch, "")
    try:
        updated.validate()
    except ValueError as err:
        raise ApiError(400, str(err)) from None
    return updated


class StrictnessHolder:
    """The settings in force; rules read ``holder.now`` on every request."""

    def __init__(self, initial: Strictness):
        initial.validate()
        self.now = initial
        self.listeners: list[Any] = []  # called with the new settings after a change

    def set(self, updated: Strictness) -> None:
        self.now = updated
        for listener in self.listeners:
            listener(updated)


STRICTNESS = web.AppKey("neon_strictness", StrictnessHolder)


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STRICTNESS].now.to_json())


async def patch_config(request: web.Request) -> web.Response:
    holder = request.app[STRICTNESS]
    holder.set(patched(holder.now, await json_body(request)))
    return web.json_response(holder.now.to_json())


def add_config_routes(app: web.Application) -> None:
    app.router.add_get("/__devstack/config", get_config)
    app.router.add_patch("/__devstack/config", patch_config)
