"""Rate limits that hold: per authenticated principal after authentication, per client address
before it, in token buckets every API replica shares (the platform database), with a bounded
in-process memory of refusals.

The module uses a database of its own, so that draining buckets here never limits another test.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
import requests
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from pydantic import SecretStr

from api.app import create_app
from api.ratelimit import Refusals, client_address
from db.keys import OrgKeyRepo
from db.pool import open_pool
from db.ratelimit import RateLimitRepo
from devstack.postgres import ensure_database
from devstack.procs import free_port, spawn, stop, wait_for_port
from tests.helpers import active_org_key, provisioning_workspace

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def limits_db(pg) -> str:
    return ensure_database(pg, "tenantflow_ratelimit")


@pytest_asyncio.fixture(scope="module")
async def limits_pool(limits_db):
    pool = await open_pool(limits_db, max_size=4)
    yield pool
    await pool.close()


def bucket_rows(database_url: str, like: str) -> list[tuple[str, float]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT key, tokens FROM rate_limit_buckets WHERE key LIKE %s ORDER BY key", (like,)
        ).fetchall()


# -- the shared token bucket (real Postgres) ------------------------------------------------------


async def test_a_bucket_admits_its_burst_then_refuses_until_it_refills(limits_pool):
    repo = RateLimitRepo(limits_pool)
    key = f"test:{secrets.token_hex(4)}"
    waits = [await repo.take(key, per_minute=60, burst=3) for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert 0 < waits[3] <= 1.0  # one token a second
    assert await repo.take(f"{key}:other", per_minute=60, burst=3) == 0  # its own bucket
    await asyncio.sleep(waits[3] + 0.05)
    assert await repo.take(key, per_minute=60, burst=3) == 0
    assert await repo.take(key, per_minute=60, burst=3) > 0


async def test_concurrent_takes_never_admit_more_than_the_burst(limits_pool):
    repo = RateLimitRepo(limits_pool)
    key = f"test:{secrets.token_hex(4)}"
    waits = await asyncio.gather(*(repo.take(key, per_minute=0.001, burst=5) for _ in range(40)))
    assert sum(1 for w in waits if w == 0) == 5


async def test_the_sweep_deletes_idle_buckets_only(limits_pool, limits_db):
    repo = RateLimitRepo(limits_pool)
    idle, busy = f"sweep:{secrets.token_hex(4)}:idle", f"sweep:{secrets.token_hex(4)}:busy"
    await repo.take(idle, per_minute=60, burst=3)
    with psycopg.connect(limits_db) as conn:
        conn.execute("UPDATE rate_limit_buckets SET updated_at = now() - interval '1 hour' WHERE key = %s", (idle,))
    await repo.take(busy, per_minute=60, burst=3)
    assert await repo.sweep(idle_seconds=600) >= 1
    assert [k for k, _ in bucket_rows(limits_db, "sweep:%")] == [busy]


# -- this process's memory of refusals --------------------------------------------------------------


def test_refusals_are_bounded_and_evicted_one_at_a_time():
    refusals = Refusals(max_entries=3)
    for key in "abc":
        refusals.remember(key, 10, now=0)
    assert refusals.wait("a", now=1) == 9  # "a" is now the most recently used
    refusals.remember("d", 10, now=1)  # evicts "b" alone, the least recently used
    assert len(refusals) == 3
    assert refusals.wait("b", now=1) == 0
    assert refusals.wait("a", now=1) == 9 and refusals.wait("c", now=1) == 9 and refusals.wait("d", now=1) == 10
    assert refusals.wait("a", now=11) == 0 and len(refusals) == 2  # expired entries leave


def test_client_address_trusts_only_the_configured_proxies():
    def addr(remote: str, forwarded: str | None, hops: int) -> str:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        return client_address(make_mocked_request("GET", "/", headers=headers).clone(remote=remote), hops)

    assert addr("10.0.0.9", "203.0.113.5", 0) == "10.0.0.9"  # no proxy: the header is a claim
    assert addr("10.0.0.9", "1.2.3.4, 203.0.113.5", 1) == "203.0.113.5"  # what the proxy saw
    assert addr("10.0.0.9", "1.2.3.4, 203.0.113.5, 10.0.0.8", 2) == "203.0.113.5"
    assert addr("10.0.0.9", "not-an-address", 1) == "unknown"
    assert addr("2001:db8:1:2:3:4:5:6", None, 0) == "2001:db8:1:2::/64"  # one host's block
    assert addr("::ffff:198.51.100.7", None, 0) == "198.51.100.7"


# -- the app: address before authentication, principal after it ---------------------------------------


@pytest_asyncio.fixture(scope="module")
async def limited_app(settings, limits_db, dev_env):
    limited = settings.model_copy(
        update={
            "database_url": SecretStr(limits_db),
            "rate_limit_per_minute": 1.0,  # practically no refill while a test runs
            "rate_limit_burst": 20,
            # Each test speaks from an address of its own (TEST-NET), as a load balancer would say.
            "trusted_proxy_hops": 1,
        }
    )
    async with TestClient(TestServer(create_app(limited, temporal=dev_env.client))) as client:
        yield client, limited


def from_address(address: str, token: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": address}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def test_500_random_bearer_tokens_from_one_address_are_limited(limited_app, limits_db):
    client, settings = limited_app
    address = "198.51.100.10"
    statuses = []
    for i in range(500):
        # Random secrets, half of them shaped like org keys (so authentication really looks them up).
        token = f"tfk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}" if i % 2 else secrets.token_urlsafe(24)
        resp = await client.get("/api/v1/workspaces", headers=from_address(address, token))
        statuses.append(resp.status)
    # The burst (and the request that found the bucket empty) got their 401; then 429 before auth.
    assert set(statuses[:21]) == {401}
    assert set(statuses[21:]) == {429}
    limited = await resp.json()
    assert limited["code"] == "RATE_LIMITED" and int(resp.headers["Retry-After"]) >= 1
    # One bucket for the address, none per bearer.
    assert [k for k, _ in bucket_rows(limits_db, f"address:{address}")] == [f"address:{address}"]
    assert bucket_rows(limits_db, "cred:%") == []
    # Another address, and the operator from another address, are served.
    assert (await client.get("/api/v1/workspaces", headers=from_address("198.51.100.11", "x"))).status == 401
    operator = settings.provision_secret.get_secret_value()
    assert (await client.get("/api/v1/orgs/nobody", headers=from_address("198.51.100.12", operator))).status == 404
    assert (await client.get("/healthz", headers=from_address(address))).status == 200


async def test_an_org_is_limited_across_all_its_keys_and_others_are_not(limited_app, limits_pool):
    client, _ = limited_app
    secrets_by_org = []
    for _ in range(2):
        first = await active_org_key(limits_pool, f"rl-{secrets.token_hex(4)}")
        org = await OrgKeyRepo(limits_pool).authenticate(first)
        assert org is not None
        more = [(await OrgKeyRepo(limits_pool).mint(org, f"k{i}", actor="test"))[1] for i in range(2)]
        secrets_by_org.append([first, *more])
    noisy, quiet = secrets_by_org
    # Three keys of one org, from three addresses: one bucket of 20.
    statuses = [
        (await client.get("/api/v1/keys", headers=from_address(f"198.51.100.{20 + i % 3}", noisy[i % 3]))).status
        for i in range(30)
    ]
    assert statuses == [200] * 20 + [429] * 10
    # The addresses were not charged: an unauthenticated request from them is still answered.
    assert (await client.get("/api/v1/keys", headers=from_address("198.51.100.20"))).status == 401
    # The other org is served.
    assert (await client.get("/api/v1/keys", headers=from_address("198.51.100.20", quiet[0]))).status == 200


async def test_agents_behind_one_address_are_limited_per_workspace(limited_app, limits_pool):
    # A VPC's agents reach the API through one NAT address: each workspace token is a principal.
    client, _ = limited_app
    tokens = []
    for _ in range(2):
        repo, ws, secret = await provisioning_workspace(limits_pool)
        _, token = await repo.redeem_registration_token(secret, ws, "ab" * 32)
        tokens.append((ws, token))
    nat = from_address("198.51.100.30")

    async def heartbeat(ws: str, token: str) -> int:
        body = {"workspace_id": ws, "tasks_handled": 1, "avg_response_time_ms": 2.0}
        headers = {**nat, "Authorization": f"Bearer {token}"}
        return (await client.post("/api/v1/registry/heartbeat", json=body, headers=headers)).status

    noisy, quiet = tokens
    assert [await heartbeat(*noisy) for _ in range(25)] == [200] * 20 + [429] * 5
    assert await heartbeat(*quiet) == 200  # its own bucket, from the same address


# -- two API processes, one limit ---------------------------------------------------------------


def test_two_api_replicas_together_enforce_one_limit(tmp_path, settings, pg):
    database_url = ensure_database(pg, "tenantflow_ratelimit_replicas")
    secret = f"tfp_test_{secrets.token_urlsafe(16)}"
    ports = [free_port(), free_port()]
    env = {
        "TENANTFLOW_DATABASE_URL": database_url,
        "TENANTFLOW_PROVISION_SECRET": secret,
        "TENANTFLOW_AUDIT_HMAC_KEY": secrets.token_urlsafe(32),
        "TENANTFLOW_RATE_LIMIT_PER_MINUTE": "0.5",  # one token every two minutes
        "TENANTFLOW_RATE_LIMIT_BURST": "10",
        "TENANTFLOW_LOG_LEVEL": "WARNING",
        # Nothing the requests below need: the client connects lazily.
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    replicas = [
        spawn(
            [sys.executable, "-m", "api"],
            log_path=tmp_path / f"api{i}.log",
            cwd=ROOT,
            env={**env, "TENANTFLOW_API_PORT": str(port)},
        )
        for i, port in enumerate(ports)
    ]
    try:
        for proc, port in zip(replicas, ports, strict=True):
            wait_for_port("127.0.0.1", port, proc=proc, timeout=60)
        session = requests.Session()

        def ask(i: int, token: str) -> int:
            return session.get(
                f"http://127.0.0.1:{ports[i % 2]}/api/v1/orgs/nobody",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).status_code

        # The operator, alternating between the replicas: 10 in all, not 10 each.
        statuses = [ask(i, secret) for i in range(30)]
        assert statuses.count(404) == 10, statuses
        assert statuses[:10] == [404] * 10 and set(statuses[10:]) == {429}
        # Failed authentication from one address, alternating: 10 in all (+1 that found it empty on
        # each replica, which answers 401 and remembers the refusal).
        failed = [ask(i, f"wrong-{i}") for i in range(30)]
        assert failed == [401] * 12 + [429] * 18, failed
    finally:
        for proc in replicas:
            stop(proc)
