"""Per-credential rate limits: one tenant's burst is refused with 429 and Retry-After, while
another credential keeps being served."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.ratelimit import RateLimiter


def test_token_bucket_refills_at_its_rate():
    limiter = RateLimiter(per_minute=60, burst=2)
    assert limiter.take("a", now=0) == 0 and limiter.take("a", now=0) == 0
    assert limiter.take("a", now=0) == 1.0  # one token a second
    assert limiter.take("b", now=0) == 0  # another credential has its own bucket
    assert limiter.take("a", now=1.0) == 0


async def test_one_credential_is_limited_and_others_are_not(settings, dev_env):
    app = create_app(
        settings.model_copy(update={"rate_limit_per_minute": 6, "rate_limit_burst": 3}), temporal=dev_env.client
    )
    async with TestClient(TestServer(app)) as client:
        noisy = {"Authorization": "Bearer tfk_000000000000_" + "A" * 43}
        answers = [await client.get("/api/v1/workspaces", headers=noisy) for _ in range(5)]
        assert [a.status for a in answers] == [401, 401, 401, 429, 429]
        limited = await answers[-1].json()
        assert limited["code"] == "RATE_LIMITED" and int(answers[-1].headers["Retry-After"]) >= 1
        quiet = {"Authorization": f"Bearer {settings.provision_secret.get_secret_value()}"}
        assert (await client.get("/api/v1/orgs/nobody", headers=quiet)).status == 404
        assert (await client.get("/healthz")).status == 200
