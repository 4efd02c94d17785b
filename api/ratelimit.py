"""Rate limits that hold across API replicas, so that no caller can starve the API for the others.

Two kinds of token bucket, both in the platform database (``db/ratelimit.py``), which every
replica shares, so N replicas together admit one limit:

- **per principal** (``org:<org id>``, ``operator:<name>``, ``workspace:<id>`` for an agent's
  token): taken by :func:`limit_principal`, which authentication calls once it has succeeded;
  every key of an org draws on the org's bucket, and agents behind one NAT address do not share one.
- **per client address**: taken, after the handler, by every request that did not authenticate
  (no credentials, a wrong one): random bearers draw on their sender's bucket,
  never on fresh ones. An IPv6 client counts per /64, the block one host is usually given.

Each request costs one statement, on one bucket or the other. A refusal is remembered in this
process (:class:`Refusals`, LRU-bounded) until the bucket has a token again, so a flood that is
already refused is refused before authentication and without reaching the database. That memory
only ever refuses what the shared bucket would refuse; evicting an entry costs one more statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

import psycopg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from api.errors import ApiError
from api.state import POOL, PRINCIPAL, SETTINGS
from db.ratelimit import RateLimitRepo
from domain.settings import Settings

log = structlog.get_logger("tenantflow.api")
EXEMPT = {"/healthz", "/readyz", "/metrics", "/openapi.yaml"}
# Refusals remembered per process: at ~100 bytes each, a few MB at most.
MAX_REMEMBERED = 20_000
SWEEP_INTERVAL_SECONDS = 60.0
# The principal this request was authenticated as and charged to (the address is not charged then).


class Refusals:
    """Which buckets were empty, and until when: a bounded LRU, evicting the least recently used
    entry one at a time (never everything at once)."""

    def __init__(self, max_entries: int = MAX_REMEMBERED):
        self.max_entries = max_entries
        self._until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key``'s bucket has a token again, as last refused; 0 if not refused."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        remaining = until - (time.monotonic() if now is None else now)
        if remaining <= 0:
            del self._until[key]
            return 0.0
        self._until.move_to_end(key)
        return remaining

    def remember(self, key: str, wait: float, now: float | None = None) -> None:
        self._until[key] = (time.monotonic() if now is None else now) + wait
        self._until.move_to_end(key)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)


class RateLimits:
    """The shared buckets and this process's memory of refusals."""

    def __init__(self, settings: Settings, store: RateLimitRepo):
        self.per_minute = settings.rate_limit_per_minute
        self.burst = settings.rate_limit_burst
        self.store = store
        self.refusals = Refusals()

    async def take(self, key: str) -> float:
        """0 when the request may pass, else the seconds until it may."""
        wait = self.refusals.wait(key)
        if wait > 0:
            return wait
        wait = await self.store.take(key, per_minute=self.per_minute, burst=self.burst)
        if wait > 0:
            self.refusals.remember(key, wait)
        return wait

    def refill_seconds(self) -> float:
        """How long an untouched bucket takes to be full again (then it is as good as absent)."""
        return self.burst / (self.per_minute / 60.0)


RATE_LIMITS = web.AppKey("rate_limits", RateLimits)


def client_address(request: web.Request, trusted_proxy_hops: int) -> str:
    """The address the request came from: the peer's, or, behind ``trusted_proxy_hops`` proxies,
    the one the outermost of them saw (X-Forwarded-For entries further left are the client's own
    claim, and a random claim must not buy a fresh bucket)."""
    candidate = request.remote or ""
    if trusted_proxy_hops > 0:
        forwarded = [part.strip() for part in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")]
        forwarded = [part for part in forwarded if part]
        if forwarded:
            candidate = forwarded[-min(trusted_proxy_hops, len(forwarded))]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def too_many(wait: float, what: str) -> ApiError:
    return ApiError(
        429,
        "RATE_LIMITED",
        f"rate limit exceeded for this {what}; retry later",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


async def limit_principal(request: web.Request, principal: str) -> None:
    """Called by authentication once ``principal`` ("org:<id>", "operator:<name>") is proven:
    records it as the request's principal (``api.state.PRINCIPAL``, the audit actor) and charges
    its bucket, or raises the 429. The request's address is then not charged."""
    if request.get(PRINCIPAL) == principal:
        return  # charged once per request, however often a handler checks
    request[PRINCIPAL] = principal
    wait = await request.app[RATE_LIMITS].take(f"principal:{principal}")
    if wait > 0:
        raise too_many(wait, "credential")


async def _charge_address(limits: RateLimits, key: str) -> None:
    try:
        await limits.take(key)
    except psycopg.Error as err:  # the answer is already decided; the next request will meet the outage
        log.warning("rate limit not recorded", error=type(err).__name__)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in EXEMPT:
        return await handler(request)
    limits = request.app[RATE_LIMITS]
    key = f"address:{client_address(request, request.app[SETTINGS].trusted_proxy_hops)}"
    # An address whose bucket was found empty is refused before authentication runs.
    wait = limits.refusals.wait(key)
    if wait > 0:
        raise too_many(wait, "client address")
    try:
        return await handler(request)
    finally:
        if PRINCIPAL not in request:
            # Charged after the fact: the handler's answer (perhaps a registration it recorded)
            # stands, and an empty bucket refuses this address's next requests.
            await _charge_address(limits, key)


def rate_limits_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's rate limits (on its pool), and the sweep of full buckets while it runs."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        limits = app[RATE_LIMITS] = RateLimits(settings, RateLimitRepo(app[POOL]))

        async def sweep() -> None:
            while True:
                await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
                try:
                    await limits.store.sweep(idle_seconds=limits.refill_seconds() + SWEEP_INTERVAL_SECONDS)
                except psycopg.Error as err:
                    log.warning("rate limit sweep failed", error=type(err).__name__)

        task = asyncio.create_task(sweep())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
