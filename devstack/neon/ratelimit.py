"""Rate limits: 429 Too Many Requests, as https://api-docs.neon.tech/reference/api-rate-limiting says.

"Neon limits API requests to 700 requests per minute (about 11 per second), with bursts allowed up
to 40 requests per second per route, per account." This server has one account (its API key), so
the minute window is server-wide and the second window is per route (method and route template).
Both are sliding windows; a refused request does not count. Real Neon does not always say when to
come back, so ``Retry-After`` is sent only when ``rate_limit.retry_after`` is on.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from devstack.neon.devtools import ApiError, is_api, route_template
from devstack.neon.strict import STRICTNESS, RateLimit

RATE_LIMITED_MESSAGE = "rate limit exceeded"
_MINUTE, _SECOND = 60.0, 1.0


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._account: deque[float] = deque()
        self._routes: defaultdict[str, deque[float]] = defaultdict(deque)

    def reset(self, *_: Any) -> None:
        self._account.clear()
        self._routes.clear()

    def admit(self, route: str, limits: RateLimit) -> float | None:
        """None when the request may go ahead (and is counted), else seconds until it could."""
        now = self._clock()
        account, burst = self._account, self._routes[route]
        _expire(account, now - _MINUTE)
        _expire(burst, now - _SECOND)
        wait = max(_wait(account, limits.per_minute, _MINUTE, now), _wait(burst, limits.burst_per_route, _SECOND, now))
        if wait > 0:
            return wait
        account.append(now)
        burst.append(now)
        return None


def _wait(log: deque[float], cap: int, window: float, now: float) -> float:
    """Seconds until a window holding ``log`` has room for one more request (0: it has now)."""
    return log[len(log) - cap] + window - now if len(log) >= cap else 0.0


def _expire(log: deque[float], before: float) -> None:
    while log and log[0] <= before:
        log.popleft()


RATE_LIMITER = web.AppKey("neon_rate_limiter", RateLimiter)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    limits = request.app[STRICTNESS].now.rate_limit
    if limits.enabled and is_api(request):
        wait = request.app[RATE_LIMITER].admit(f"{request.method} {route_template(request)}", limits)
        if wait is not None:
            headers = {"Retry-After": str(max(1, math.ceil(wait)))} if limits.retry_after else None
            raise ApiError(429, RATE_LIMITED_MESSAGE, headers)
    return await handler(request)
