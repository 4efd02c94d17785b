"""Per-credential rate limits, so one tenant cannot starve the API for the others.

A token bucket per credential (the bearer token's hash; the client address when there is none),
held in this process: each API replica limits on its own.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from api.errors import error_response
from api.state import SETTINGS

EXEMPT = {"/healthz", "/readyz", "/metrics", "/openapi.yaml"}
_MAX_BUCKETS = 100_000


@dataclass
class Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: float, burst: int):
        self.rate = per_minute / 60.0
        self.burst = burst
        self._buckets: dict[str, Bucket] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """0 when the request may pass, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets.clear()  # a flood of distinct keys must not exhaust memory
            bucket = self._buckets[key] = Bucket(tokens=self.burst, updated=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


def credential_key(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header:
        # aiohttp decodes undecodable header bytes as surrogates: hash them back as bytes.
        return "cred:" + hashlib.sha256(header.encode("utf-8", "surrogateescape")).hexdigest()
    return "addr:" + (request.remote or "unknown")


LIMITER = web.AppKey("rate_limiter", RateLimiter)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in EXEMPT:
        return await handler(request)
    wait = request.app[LIMITER].take(credential_key(request))
    if wait > 0:
        limit = request.app[SETTINGS].rate_limit_per_minute
        response = error_response(
            request, 429, "RATE_LIMITED", f"rate limit of {limit:g} requests per minute for this credential exceeded"
        )
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    return await handler(request)
