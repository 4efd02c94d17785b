"""Only the platform can call a workspace's agent, and only the agent it launched answers the
platform: the credential the agent checks (401 without it), TLS to the certificate the agent
registered (pinned by the worker), and another org's agent on the same network, which can neither
call the agent nor pass for it. Real agents: processes here, instances in the boot emulator below.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import ssl

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.a2a import AgentActivities, pinned_client, presented_certificate
from agent.client import ask
from agent.tls import load_or_create
from db.workspaces import TokenRefused
from devstack.boot_emulator import BootEmulator
from domain import credentials
from domain.provision_workspace import AgentCardCheck
from domain.settings import Settings
from tests.helpers import provisioning_workspace
from tests.test_agent_runtime import eventually, fake_imds, fake_platform, run_agent  # noqa: F401 - fixtures
from tests.test_boot_emulator import (  # noqa: F401 - fixtures
    AGENT_PORT,
    BOOT,
    SIGNING_KEY,
    Cloud,
    cloud,
    ec2,
    emulator,
    moto_endpoint,
    platform,
    subnet,
    wait_registered,
)

CARD = ".well-known/agent-card.json"


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


async def boot(fake_platform, run_agent, workspace_id: str | None = None) -> tuple[str, str]:
    """A registered agent of a (fresh) workspace: (workspace id, url)."""
    ws = workspace_id or f"ws_{secrets.token_hex(6)}"
    proc, url, _log = run_agent(fake_platform.boot_config(ws), public_url=True)
    await eventually(lambda: [r for r in fake_platform.registrations if r["body"]["workspace_id"] == ws], "a register")
    return ws, url


async def unpinned(url: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """What anyone on the network can do: TLS without checking who answers."""
    async with httpx.AsyncClient(verify=False, trust_env=False, timeout=10) as http:  # noqa: S501 - an attacker's view
        if path:
            return await http.get(f"{url}{path}", headers=headers or {})
        return await http.post(
            url,
            headers=headers or {},
            json={"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {}}},
        )


# -- the agent's door ------------------------------------------------------------------------------


async def test_agent_answers_only_the_platform_credential_over_tls(fake_platform, run_agent):
    ws, url = await boot(fake_platform, run_agent)
    other = f"tfa_{secrets.token_urlsafe(24)}"  # another workspace's credential: valid-looking, not this one's
    for path in (CARD, ""):  # the card and the JSON-RPC endpoint alike
        for headers in (
            {},
            {"Authorization": f"Bearer {other}"},
            {"Authorization": "Bearer"},
            {"Authorization": f"Basic {fake_platform.agent_credential}"},
            {"Authorization": f"Bearer {hashlib.sha256(fake_platform.agent_credential.encode()).hexdigest()}"},
        ):
            resp = await unpinned(url, path, headers)
            assert resp.status_code == 401, (path, headers, resp.text)
            assert resp.json()["code"] == "UNAUTHORIZED" and resp.headers["www-authenticate"].startswith("Bearer")
            assert ws not in resp.text and "acme" not in resp.text  # nothing about the tenant leaks

    async with fake_platform.client(url, ws) as http:
        card = (await http.get(f"{url}{CARD}")).json()
        assert await ask(url, "hi", http=http) == "echo: hi"
    assert card["url"] == url and url.startswith("https://")
    assert card["securitySchemes"]["platform"]["httpAuthSecurityScheme"]["scheme"] == "Bearer"

    # Plain HTTP gets no answer from a TLS port.
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"http://127.0.0.1:{port_of(url)}/{CARD}")


async def test_agent_without_the_credential_hash_refuses_to_start(fake_platform, run_agent):
    config = fake_platform.boot_config(f"ws_{secrets.token_hex(6)}")
    del config["platform_credential_sha256"]
    proc, _url, log_path = run_agent(config)
    assert await asyncio.to_thread(proc.wait, 30) == 2
    assert fake_platform.registrations == []
    assert any(json.loads(line)["event"] == "bad_config" for line in log_path.read_text().splitlines())


def test_credential_is_derived_per_workspace_and_only_its_hash_leaves_the_worker():
    key = secrets.token_urlsafe(32)
    a, b = credentials.agent_access(key, "ws_000000000001"), credentials.agent_access(key, "ws_000000000002")
    assert a == credentials.agent_access(key, "ws_000000000001")  # retried launches render the same user data
    assert a.secret != b.secret and a.secret.startswith("tfa_")
    assert a.hash == hashlib.sha256(a.secret.encode()).hexdigest()
    registration = credentials.derive(credentials.REGISTRATION_TOKEN, key, "ws_000000000001:registration")
    assert registration.secret.split("_", 2)[2] != a.secret.split("_", 2)[2]  # a distinct purpose label


# -- the worker's pin -----------------------------------------------------------------------------


def worker_for(signing_key: str) -> AgentActivities:
    return AgentActivities(Settings(token_signing_key=signing_key))


async def test_worker_pins_the_registered_certificate_and_refuses_an_impersonator(fake_platform, run_agent, tmp_path):
    """Something else answering at the address the platform dials (another org's agent, or any
    TLS server) is refused on its certificate, before the credential is ever sent."""
    key = secrets.token_urlsafe(32)
    ws = f"ws_{secrets.token_hex(6)}"
    fake_platform.agent_credential = credentials.agent_access(key, ws).secret
    _ws, url = await boot(fake_platform, run_agent, workspace_id=ws)
    worker = worker_for(key)
    check = AgentCardCheck(workspace_id=ws, name="a", agent_url=url, agent_cert_sha256=fake_platform.cert_sha256(ws))
    await worker.check_agent_card(check)  # the real one passes

    # Another workspace's real agent, dialled as if it were ws's.
    other_ws, other_url = await boot(fake_platform, run_agent)
    der = await presented_certificate("127.0.0.1", port_of(other_url))
    assert hashlib.sha256(der).hexdigest() == fake_platform.cert_sha256(other_ws) != check.agent_cert_sha256
    with pytest.raises(ApplicationError) as refused:
        await worker.check_agent_card(check.model_copy(update={"agent_url": other_url}))
    assert refused.value.type == "AgentCertMismatch" and refused.value.non_retryable
    assert check.agent_cert_sha256 in str(refused.value)

    # A TLS server whose certificate even claims ws, recording what reaches it: nothing does.
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        writer.close()

    identity = load_or_create(tmp_path / "impostor.key", tmp_path / "impostor.crt", ws)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(identity.cert_path, identity.key_path)
    server = await asyncio.start_server(record, "127.0.0.1", 0, ssl=tls)
    impostor_url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        with pytest.raises(ApplicationError) as refused:
            await worker.check_agent_card(check.model_copy(update={"agent_url": impostor_url}))
        assert refused.value.type == "AgentCertMismatch"
        await asyncio.sleep(0.2)
        assert not any(received)  # no request, so no credential
    finally:
        server.close()
        await server.wait_closed()

    # An https agent that registered no certificate is never fetched without a pin.
    with pytest.raises(ApplicationError) as missing:
        await worker.check_agent_card(check.model_copy(update={"agent_cert_sha256": None}))
    assert missing.value.type == "AgentCertMismatch"


async def test_another_workspaces_credential_gets_401_through_the_pin(fake_platform, run_agent):
    ws = f"ws_{secrets.token_hex(6)}"
    key = secrets.token_urlsafe(32)
    fake_platform.agent_credential = credentials.agent_access(key, ws).secret
    _ws, url = await boot(fake_platform, run_agent, workspace_id=ws)
    pin = fake_platform.cert_sha256(ws)
    async with pinned_client(url, pin, credentials.agent_access(key, f"ws_{secrets.token_hex(6)}").secret) as http:
        assert (await http.get(f"{url}{CARD}")).status_code == 401
    async with pinned_client(url, pin, fake_platform.agent_credential) as http:
        assert (await http.get(f"{url}{CARD}")).status_code == 200


# -- two orgs' instances on one network (the boot emulator) ---------------------------------------


async def test_another_orgs_agent_on_the_same_network_can_neither_call_nor_impersonate(
    ec2, subnet, moto_endpoint, platform, cloud, emulator, tmp_path
):
    """Org B's instance shares org A's subnet: whoever gets through A's security group gets 401
    from A's agent without a credential and with B's workspace credential, and B's agent answering
    at the address the platform dials for A fails the worker's pin."""
    org_b = Cloud(ec2, subnet, platform)
    emulator_b = BootEmulator(
        moto_endpoint,
        log_dir=tmp_path / "boot-b",
        poll_interval=0.1,
        stop_timeout=5,
        tag_filters={"tenantflow:org-id": org_b.org_id},
        egress=[("127.0.0.1", platform.port)],
    )
    emulator_b.start()
    try:
        _a_id, a_ip, a_ws = cloud.launch()
        _b_id, b_ip, b_ws = org_b.launch()
        a_reg, b_reg = await wait_registered(cloud, a_ws), await wait_registered(org_b, b_ws)
        a_url, b_url = f"https://{a_ip}:{AGENT_PORT}/", f"https://{b_ip}:{AGENT_PORT}/"
        # Whoever gets through A's security group, with B's workspace credential or none: 401.
        b_credential = credentials.agent_access(SIGNING_KEY, b_ws).secret
        assert (await unpinned(a_url, CARD)).status_code == 401
        assert (await unpinned(a_url, CARD, {"Authorization": f"Bearer {b_credential}"})).status_code == 401

        worker = worker_for(SIGNING_KEY)
        check = AgentCardCheck(
            workspace_id=a_ws, name="a", agent_url=a_url, agent_cert_sha256=a_reg["body"]["agent_cert_sha256"]
        )
        await worker.check_agent_card(check)  # the platform reaches A
        with pytest.raises(ApplicationError) as refused:  # B answering at the address the platform dials
            await worker.check_agent_card(check.model_copy(update={"agent_url": b_url}))
        assert refused.value.type == "AgentCertMismatch"
        assert b_reg["body"]["agent_cert_sha256"] != a_reg["body"]["agent_cert_sha256"]
    finally:
        org_b.cleanup()
        await asyncio.to_thread(emulator_b.stop)


# -- token lifecycle (real Postgres) ---------------------------------------------------------------


async def test_token_of_a_failed_workspace_authenticates_nothing_and_heartbeats_write_nothing(pool):
    """Regression: a workspace token kept working after its workspace failed."""
    repo, ws, secret = await provisioning_workspace(pool)
    row, token = await repo.redeem_registration_token(secret, ws, "ab" * 32)
    assert row["agent_cert_sha256"] == "ab" * 32
    assert (await repo.authenticate_workspace_token(token))["id"] == ws
    assert await repo.record_heartbeat(ws, 1, 2.0)
    # Failed by a path that did not (or not yet) revoke the token: the status alone refuses it.
    await repo.update(ws, actor="test", status="failed")
    assert await repo.authenticate_workspace_token(token) is None
    assert not await repo.record_heartbeat(ws, 99, 2.0)  # checked before the failure, written after: no
    assert (await repo.get(ws))["tasks_handled"] == 1


async def test_token_inserted_by_a_registration_that_commits_after_revoke_tokens_is_revoked(pool):
    """Regression: registration spends its token and inserts a workspace token; revoke_tokens runs
    before that commits. The revocation must cover the new token (or the registration must fail)."""
    repo, ws, secret = await provisioning_workspace(pool)

    async def waiting_on_locks() -> int:
        async with pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).fetchone()
            return int(row["n"])

    async with pool.connection() as holder, holder.transaction():
        # Stalls the registration in the middle (its workspace-token insert or, now, its first lock).
        await holder.execute("SELECT 1 FROM workspaces WHERE id = %s FOR UPDATE", (ws,))
        redeem = asyncio.create_task(repo.redeem_registration_token(secret, ws, "cd" * 32))
        await eventually_async(lambda: waiting_on_locks(), 1)
        revoke = asyncio.create_task(repo.revoke_tokens(ws))
        await eventually_async(lambda: waiting_on_locks(), 2)
    outcome = await asyncio.gather(redeem, revoke, return_exceptions=True)
    assert outcome[1] is None
    if isinstance(outcome[0], TokenRefused):  # the revocation won the lock: no token was issued
        return
    _row, token = outcome[0]
    assert await repo.authenticate_workspace_token(token) is None
    async with pool.connection() as conn:
        live = await (
            await conn.execute(
                "SELECT count(*) AS n FROM workspace_tokens WHERE workspace_id = %s AND revoked_at IS NULL", (ws,)
            )
        ).fetchone()
    assert live["n"] == 0


async def eventually_async(probe, at_least: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await probe() < at_least:
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {at_least} waiting on a lock"
        await asyncio.sleep(0.02)
