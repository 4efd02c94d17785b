"""Reading an eventually consistent cloud: "not found" right after a create proves nothing.

Right after RunInstances or CreateSecurityGroup, EC2 may answer ``InvalidInstanceID.NotFound`` /
``InvalidGroup.NotFound`` and leave the new resource out of filtered lookups; and a NotFound from
TerminateInstances "does not mean the instance has been or will be terminated"
(https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html). So "not there" is
believed only once the last create attempt (recorded in the ledger) is older than the
consistency window; until then the activity looks again, polling in place rather than through
Temporal's retry timer (which a time-skipping test server would fast-forward past the window).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio import activity

from activities.errors import transient

T = TypeVar("T")
# How long one activity attempt polls before handing the wait to Temporal's retries: well inside
# the one-call start-to-close timeout.
POLL_SECONDS = 20.0


async def settle(
    check: Callable[[], Awaitable[T | None]], may_be_invisible: Callable[[], Awaitable[bool]], what: str
) -> T | None:
    """``check``'s answer once it finds something, or None once "not found" can be believed."""
    delay, waited = 0.2, 0.0
    while True:
        found = await check()
        if found is not None or not await may_be_invisible():
            return found
        if waited >= POLL_SECONDS:
            raise transient("NotVisibleYet", f"{what} was created moments ago and is not visible yet")
        activity.heartbeat(f"waiting for {what} to become visible")
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, 2.0)
