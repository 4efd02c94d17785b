"""The workspace agent as a real process (``python -m agent``) against a fake platform registry and
a fake instance metadata service.

The fake platform implements only ``/registry/register`` and ``/registry/heartbeat`` with the
platform's contract; it stands in for our own API, whose tests cover the real endpoints. The fake
IMDS speaks IMDSv2 on a loopback port that ``TENANTFLOW_IMDS_ENDPOINT`` points the agent to.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.helpers import get_stream_response_text, new_text_message
from a2a.types import Role, SendMessageRequest
from aiohttp import web

from activities.a2a import pinned_client, presented_certificate
from agent.card import workspace_id_from_card
from agent.imds import IMDS_ENDPOINT_ENV, ImdsUnavailable, private_ipv4
from agent.log import add_secret, scrub
from devstack.procs import free_port, spawn, stop

ROOT = Path(__file__).resolve().parents[1]


class LocalServer:
    """A fake's aiohttp app on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.add_routes(app.router)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.stop()


class FakePlatform(LocalServer):
    """``/registry/register`` and ``/registry/heartbeat`` as the platform serves them, recording every call."""

    def __init__(self, *, heartbeat_interval: float = 0.2) -> None:
        super().__init__()
        self.heartbeat_interval = heartbeat_interval
        self.registration_token = f"tfr_{secrets.token_urlsafe(24)}"
        # What the platform presents to the agents it launched (each agent holds only its hash).
        self.agent_credential = f"tfa_{secrets.token_urlsafe(24)}"
        self.workspace_tokens: dict[str, str] = {}  # workspace_id -> the token it was issued
        self.registrations: list[dict] = []  # {"authorization": ..., "body": ..., "remote": peer address}
        self.heartbeats: list[dict] = []
        # Statuses to answer in turn before succeeding, e.g. [503, 503] or [401].
        self.register_failures: list[int] = []
        self.heartbeat_status = 200

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.registrations.append(
            {"authorization": request.headers.get("Authorization"), "body": body, "remote": request.remote}
        )
        if self.register_failures:
            status = self.register_failures.pop(0)
            return web.json_response({"error": "nope"}, status=status)
        if request.headers.get("Authorization") != f"Bearer {self.registration_token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        token = self.workspace_tokens.setdefault(body["workspace_id"], f"tfw_{secrets.token_urlsafe(24)}")
        return web.json_response(
            {
                "workspace_id": body["workspace_id"],
                "workspace_token": token,
                "heartbeat_interval_seconds": self.heartbeat_interval,
            }
        )

    async def _heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append(
            {
                "authorization": request.headers.get("Authorization"),
                "body": await request.json(),
                "remote": request.remote,
            }
        )
        if self.heartbeat_status != 200:
            return web.json_response({"error": "revoked"}, status=self.heartbeat_status)
        return web.json_response({"ok": True})

    def cert_sha256(self, workspace_id: str) -> str:
        """The fingerprint the workspace's agent registered."""
        return next(
            r["body"]["agent_cert_sha256"] for r in self.registrations if r["body"]["workspace_id"] == workspace_id
        )

    def client(self, agent_url: str, workspace_id: str):
        """The platform's pinned, credentialed client for that workspace's agent."""
        return pinned_client(agent_url, self.cert_sha256(workspace_id), self.agent_credential)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/v1/registry/register", self._register)
        router.add_post("/api/v1/registry/heartbeat", self._heartbeat)

    def boot_config(self, workspace_id: str, **overrides) -> dict:
        return {
            "workspace_id": workspace_id,
            "workspace_name": "production-agent-1",
            "org_slug": "acme",
            "role": "Production inference worker",
            "runtime": "hermes",
            "model": "claude-sonnet-4",
            "tier": 3,
            "platform_url": self.url,
            "registration_token": self.registration_token,
            "platform_credential_sha256": hashlib.sha256(self.agent_credential.encode()).hexdigest(),
            "listen_port": 443,
            "heartbeat_interval_seconds": 15,
            **overrides,
        }


class FakeImds(LocalServer):
    """IMDSv2 as EC2 serves it, for one address: a token from ``PUT /latest/api/token`` (TTL header
    required), then ``GET /latest/meta-data/local-ipv4`` with that token; no token is a 401."""

    def __init__(self, local_ipv4: str = "127.0.0.1", *, token_status: int = 200) -> None:
        super().__init__()
        self.local_ipv4 = local_ipv4
        self.token_status = token_status
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._tokens: set[str] = set()

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        if self.token_status != 200:
            return web.Response(status=self.token_status)
        if "X-aws-ec2-metadata-token-ttl-seconds" not in request.headers:
            return web.Response(status=400)
        token = secrets.token_urlsafe(16)
        self._tokens.add(token)
        return web.Response(text=token)

    async def _local_ipv4(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        if request.headers.get("X-aws-ec2-metadata-token") not in self._tokens:
            return web.Response(status=401)
        return web.Response(text=self.local_ipv4)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_put("/latest/api/token", self._token)
        router.add_get("/latest/meta-data/local-ipv4", self._local_ipv4)


async def eventually(check: Callable[[], object], what: str, timeout: float = 30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode} while waiting for {what}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def fake_platform():
    async with FakePlatform() as fake:
        yield fake


@pytest.fixture
async def fake_imds():
    async with FakeImds() as fake:
        yield fake


@pytest.fixture
def run_agent(tmp_path, fake_imds):
    """Start ``python -m agent`` on a free loopback port, finding its address through the fake IMDS
    (or, with ``public_url=True``, told its URL by the developer override); returns (proc, url, log)."""
    procs: list[subprocess.Popen] = []

    def start(
        config: dict, *, public_url: bool = False, env: dict[str, str] | None = None, config_path: Path | None = None
    ) -> tuple[subprocess.Popen, str, Path]:
        n = len(procs)
        config_path = config_path or tmp_path / f"agent-{n}.json"
        config_path.write_text(json.dumps(config))
        port = free_port()
        url = f"https://127.0.0.1:{port}/"
        log_path = tmp_path / f"agent-{n}.log"
        args = [sys.executable, "-m", "agent", "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
        if public_url:
            args += ["--public-url", url]
        proc = spawn(args, log_path=log_path, cwd=ROOT, env={IMDS_ENDPOINT_ENV: fake_imds.url, **(env or {})})
        procs.append(proc)
        return proc, url, log_path

    yield start
    for proc in procs:
        stop(proc, timeout=5)


def assert_clean_log(log_path: Path, *secrets_: str) -> list[dict]:
    """Every line is JSON, no token appears, and nothing even tried to log one (no redaction happened)."""
    text = log_path.read_text()
    for secret in secrets_:
        assert secret not in text
    assert "[REDACTED]" not in text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_registers_heartbeats_serves_card_and_echoes(fake_platform, fake_imds, run_agent):
    ws = f"ws_{secrets.token_hex(6)}"
    proc, url, log_path = run_agent(fake_platform.boot_config(ws))

    reg = await eventually(lambda: fake_platform.registrations, "registration", proc=proc)
    assert reg[0]["authorization"] == f"Bearer {fake_platform.registration_token}"
    # The platform derives the URL from the instance; the agent registers its certificate.
    cert_pem = log_path.with_name("agent-0.crt").read_text()
    assert reg[0]["body"] == {
        "workspace_id": ws,
        "agent_cert_sha256": hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest(),
    }
    # IMDSv2: a session token first, then the address with it.
    assert fake_imds.requests == [("PUT", "/latest/api/token"), ("GET", "/latest/meta-data/local-ipv4")]

    # The register answer's interval (0.2 s) wins over the config's 15 s.
    await eventually(lambda: len(fake_platform.heartbeats) >= 2, "two heartbeats", proc=proc)
    token = fake_platform.workspace_tokens[ws]
    for hb in fake_platform.heartbeats:
        assert hb["authorization"] == f"Bearer {token}"
        assert hb["body"] == {"workspace_id": ws, "tasks_handled": 0, "avg_response_time_ms": 0.0}

    async with fake_platform.client(url, ws) as http:
        card = await A2ACardResolver(http, url).get_agent_card()
        raw = (await http.get(f"{url}.well-known/agent-card.json")).json()
    assert card.name == "production-agent-1"
    assert card.description == "Production inference worker"
    # The advertised URL is built from the metadata service's address and the listen port.
    assert card.supported_interfaces[0].url == url and raw["url"] == url
    assert list(card.default_input_modes) == ["text"] and list(card.default_output_modes) == ["text"]
    echo = next(s for s in card.skills if s.id == "echo")
    assert f"workspace:{ws}" in echo.tags and "runtime:hermes" in echo.tags and "model:claude-sonnet-4" in echo.tags
    assert workspace_id_from_card(card) == ws == workspace_id_from_card(raw)

    async with fake_platform.client(url, ws) as http:
        client = await create_client(url, client_config=ClientConfig(httpx_client=http))
        try:
            request = SendMessageRequest(message=new_text_message("hello", role=Role.ROLE_USER))
            replies = [get_stream_response_text(event) async for event in client.send_message(request)]
        finally:
            await client.close()
    assert replies == ["echo: hello"]

    hb = await eventually(
        lambda: [h for h in fake_platform.heartbeats if h["body"]["tasks_handled"] >= 1],
        "a heartbeat counting the message",
        proc=proc,
    )
    assert isinstance(hb[0]["body"]["avg_response_time_ms"], float)

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    events = {line["event"] for line in assert_clean_log(log_path, fake_platform.registration_token, token)}
    assert {"serving", "registered", "stopping", "stopped"} <= events


async def test_public_url_override_skips_the_metadata_service(fake_platform, fake_imds, run_agent):
    ws = f"ws_{secrets.token_hex(6)}"
    proc, url, _log = run_agent(fake_platform.boot_config(ws), public_url=True)
    await eventually(lambda: fake_platform.registrations, "registration", proc=proc)
    async with fake_platform.client(url, ws) as http:
        assert (await http.get(f"{url}.well-known/agent-card.json")).json()["url"] == url
    assert fake_imds.requests == []


async def test_metadata_service_refusing_exits_nonzero_without_serving_or_registering(
    fake_platform, fake_imds, run_agent
):
    fake_imds.token_status = 403  # IMDS disabled on the instance: no retry can help
    proc, url, log_path = run_agent(fake_platform.boot_config(f"ws_{secrets.token_hex(6)}"))
    assert await asyncio.to_thread(proc.wait, 30) == 3
    assert fake_platform.registrations == []
    failure = next(
        line
        for line in assert_clean_log(log_path, fake_platform.registration_token)
        if line["event"] == "imds_unavailable"
    )
    assert "HTTP 403" in failure["problem"] and failure["level"] == "error"


async def test_unreachable_metadata_service_is_retried_then_given_up():
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ImdsUnavailable, match="gave up after"):
        await private_ipv4(closed, deadline_seconds=0.5)


async def test_register_401_exits_nonzero_without_retrying(fake_platform, run_agent):
    fake_platform.register_failures = [401]
    proc, _url, log_path = run_agent(fake_platform.boot_config(f"ws_{secrets.token_hex(6)}"))
    assert await asyncio.to_thread(proc.wait, 30) != 0
    await asyncio.sleep(0.5)
    assert len(fake_platform.registrations) == 1
    assert fake_platform.heartbeats == []
    lines = assert_clean_log(log_path, fake_platform.registration_token)
    assert any(line["event"] == "register_failed" for line in lines)


async def test_register_retries_5xx_and_heartbeat_401_stops_heartbeats_only(fake_platform, run_agent):
    fake_platform.register_failures = [503, 429]
    ws = f"ws_{secrets.token_hex(6)}"
    proc, url, log_path = run_agent(fake_platform.boot_config(ws))
    await eventually(lambda: fake_platform.heartbeats, "first heartbeat", proc=proc)
    assert len(fake_platform.registrations) == 3

    fake_platform.heartbeat_status = 401
    before = len(fake_platform.heartbeats)
    await eventually(lambda: len(fake_platform.heartbeats) > before, "a rejected heartbeat", proc=proc)
    count = len(fake_platform.heartbeats)
    await asyncio.sleep(1.0)  # five intervals
    assert len(fake_platform.heartbeats) == count
    async with fake_platform.client(url, ws) as http:  # the server keeps serving
        assert (await http.get(f"{url}.well-known/agent-card.json")).status_code == 200
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    assert_clean_log(log_path, fake_platform.registration_token, fake_platform.workspace_tokens[ws])


def test_log_scrubber_redacts_token_shapes_and_known_values():
    odd = secrets.token_hex(16)  # a token without the tfr_/tfw_ prefix
    add_secret(odd)
    line = json.dumps({"event": f"oops tfr_abc-DEF_1 and Bearer xyz and {odd}", "token": "tfw_Q9"})
    scrubbed = scrub(None, "info", line)
    for leaked in ("tfr_abc", "xyz", odd, "tfw_Q9"):
        assert leaked not in scrubbed


async def serving_certificate(port: int, proc, timeout: float = 30.0) -> str:
    """The SHA-256 of the certificate the agent on ``port`` presents, once it serves."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return hashlib.sha256(await presented_certificate("127.0.0.1", port)).hexdigest()
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the agent never served TLS"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("state_directory", [False, True], ids=["beside-config", "systemd-state-directory"])
async def test_restarted_agent_resumes_with_its_saved_token(fake_platform, run_agent, tmp_path, state_directory):
    """A stopped and started instance runs the agent again: it must not spend the (dead) one-time
    token a second time, but resume heartbeats with its saved workspace token, and present the
    certificate it registered. Under systemd they live in the unit's StateDirectory=
    (``$STATE_DIRECTORY``), else beside the config."""
    ws = f"ws_{secrets.token_hex(6)}"
    config_path = tmp_path / "agent.json"
    env = {"STATE_DIRECTORY": str(tmp_path / "state")} if state_directory else {}
    if state_directory:
        (tmp_path / "state").mkdir(mode=0o700)
    logs, presented = [], []
    for boot in range(2):
        proc, url, log_path = run_agent(
            fake_platform.boot_config(ws, heartbeat_interval_seconds=0.2), env=env, config_path=config_path
        )
        logs.append(log_path)
        seen = len(fake_platform.heartbeats)
        try:
            await eventually(lambda: len(fake_platform.heartbeats) > seen, f"heartbeat from boot {boot}", proc=proc)
            # (A heartbeat of the previous boot can still be in flight: wait for this one's server.)
            presented.append(await serving_certificate(int(url.rsplit(":", 1)[1].rstrip("/")), proc))
        finally:
            stop(proc, timeout=5)
    assert len(fake_platform.registrations) == 1
    assert presented == [fake_platform.cert_sha256(ws)] * 2  # the registered certificate, after a restart too
    key_file = tmp_path / "state" / "agent.key" if state_directory else config_path.with_suffix(".key")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    token_file = tmp_path / "state" / "agent.token" if state_directory else config_path.with_suffix(".token")
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert token_file.read_text() == fake_platform.workspace_tokens[ws]
    last = fake_platform.heartbeats[-1]
    assert last["authorization"] == f"Bearer {fake_platform.workspace_tokens[ws]}"
    resumed = {
        line["event"]
        for line in assert_clean_log(logs[1], fake_platform.registration_token, fake_platform.workspace_tokens[ws])
    }
    assert "resuming" in resumed and "registered" not in resumed
