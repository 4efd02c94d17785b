"""Token buckets in the platform database, so that every API replica draws on the same ones.

A bucket holds up to ``burst`` tokens and refills at ``per_minute``; a request takes one. One
statement refills, takes and answers, atomically under the row's lock, with the database's clock
(so replicas whose clocks disagree still agree on the bucket). A bucket untouched for as long as it
takes to refill is full, exactly as an absent one: :meth:`RateLimitRepo.sweep` deletes those.
"""

from __future__ import annotations

from db.pool import Pool, required

# The bucket's tokens now: what it held plus the refill since, capped at the burst. now() is the
# transaction's start: a statement that waited on the row lock may see a now() older than the row's
# updated_at, so the elapsed time is floored at zero and updated_at never goes back.
_REFILLED = "LEAST(%(burst)s, b.tokens + %(rate)s * GREATEST(0, EXTRACT(EPOCH FROM now() - b.updated_at))::float8)"
_TAKE = f"""
INSERT INTO rate_limit_buckets AS b (key, tokens, admitted, updated_at)
VALUES (%(key)s, %(burst)s::float8 - 1, true, now())
ON CONFLICT (key) DO UPDATE SET
    tokens = CASE WHEN {_REFILLED} >= 1 THEN {_REFILLED} - 1 ELSE {_REFILLED} END,
    admitted = {_REFILLED} >= 1,
    updated_at = GREATEST(b.updated_at, now())
RETURNING admitted, tokens
"""


class RateLimitRepo:
    def __init__(self, pool: Pool):
        self._pool = pool

    async def take(self, key: str, *, per_minute: float, burst: int) -> float:
        """0 when the request may pass (a token was taken), else the seconds until a token is there."""
        rate = per_minute / 60.0
        async with self._pool.connection() as conn:
            row = required(await (await conn.execute(_TAKE, {"key": key, "rate": rate, "burst": burst})).fetchone())
        if row["admitted"]:
            return 0.0
        return max(0.0, (1.0 - float(row["tokens"])) / rate)

    async def sweep(self, *, idle_seconds: float) -> int:
        """Delete the buckets untouched for ``idle_seconds`` (full again by then); how many."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM rate_limit_buckets WHERE updated_at < now() - make_interval(secs => %s)",
                (idle_seconds,),
            )
            return cur.rowcount
