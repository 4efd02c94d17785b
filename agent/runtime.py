"""The agent process: an A2A server (JSON-RPC over HTTPS, for the platform's credential only) that
registers with the platform, then sends heartbeats until it is stopped.

The platform derives the agent's URL from the instance's private address itself, so neither the
registration nor the heartbeats carry one; the registration carries the fingerprint of the
certificate the agent serves, which the platform pins.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from pathlib import Path

import httpx
import uvicorn
from a2a.helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.utils.errors import TaskNotCancelableError
from starlette.applications import Starlette

from agent.auth import RequirePlatform
from agent.card import build_agent_card
from agent.config import BootConfig
from agent.log import add_secret, get_logger
from agent.tls import TlsIdentity

log = get_logger("agent")

REGISTER_DEADLINE_SECONDS = 120.0
REGISTER_MAX_DELAY_SECONDS = 10.0
# The token is dead or belongs to another workspace: retrying cannot help.
_REGISTER_FATAL = {401, 403, 404, 409}


class RegistrationFailed(Exception):
    pass


class Stats:
    """What the heartbeats report: messages handled and their average handling time."""

    def __init__(self) -> None:
        self.tasks_handled = 0
        self._total_ms = 0.0

    def record(self, elapsed_ms: float) -> None:
        self.tasks_handled += 1
        self._total_ms += elapsed_ms

    @property
    def avg_response_time_ms(self) -> float:
        return self._total_ms / self.tasks_handled if self.tasks_handled else 0.0


class EchoExecutor(AgentExecutor):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        started = time.perf_counter()
        try:
            reply = new_text_message(f"echo: {context.get_user_input()}", context_id=context.context_id)
            await event_queue.enqueue_event(reply)
        finally:
            self.stats.record((time.perf_counter() - started) * 1000.0)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise TaskNotCancelableError()  # every reply is immediate: there is never a task to cancel


def build_app(config: BootConfig, public_url: str, stats: Stats) -> tuple[Starlette, DefaultRequestHandler]:
    card = build_agent_card(config, public_url)
    handler = DefaultRequestHandler(agent_executor=EchoExecutor(stats), task_store=InMemoryTaskStore(), agent_card=card)
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(RequirePlatform, credential_sha256=config.platform_credential_sha256)
    return app, handler


async def register(
    client: httpx.AsyncClient,
    config: BootConfig,
    cert_sha256: str,
    *,
    deadline_seconds: float = REGISTER_DEADLINE_SECONDS,
) -> dict:
    """Exchange the one-time registration token (and the fingerprint of the agent's certificate)
    for a workspace token; retries only transient failures."""
    url = f"{config.platform_url.rstrip('/')}/api/v1/registry/register"
    body = {"workspace_id": config.workspace_id, "agent_cert_sha256": cert_sha256}
    headers = {"Authorization": f"Bearer {config.registration_token}"}
    deadline = time.monotonic() + deadline_seconds
    delay = 0.5
    for attempt in range(1, 10_000):
        retry_after = 0.0
        try:
            resp = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if resp.status_code == 200:
                try:
                    answer = resp.json()
                    if not answer["workspace_token"]:
                        raise ValueError("empty workspace_token")
                    return answer
                except (ValueError, KeyError, TypeError) as exc:
                    problem = f"malformed register answer: {type(exc).__name__}"
            elif resp.status_code >= 500 or resp.status_code in (408, 429):
                problem = f"HTTP {resp.status_code}"
                with contextlib.suppress(ValueError):
                    retry_after = float(resp.headers.get("Retry-After", 0))
            else:
                # 401/403/404/409 (and any other 4xx): another attempt would get the same answer.
                raise RegistrationFailed(f"platform refused registration: HTTP {resp.status_code}")
        wait = min(max(delay, retry_after), REGISTER_MAX_DELAY_SECONDS) * random.uniform(0.8, 1.2)
        if time.monotonic() + wait > deadline:
            raise RegistrationFailed(f"gave up registering after {attempt} attempts: {problem}")
        log.warning("register_retry", attempt=attempt, problem=problem, retry_in_s=round(wait, 2))
        await asyncio.sleep(wait)
        delay *= 2
    raise AssertionError("unreachable")


async def heartbeat_loop(
    client: httpx.AsyncClient, config: BootConfig, workspace_token: str, interval: float, stats: Stats
) -> None:
    """Heartbeat every ``interval`` seconds until the platform answers 401 (token revoked)."""
    url = f"{config.platform_url.rstrip('/')}/api/v1/registry/heartbeat"
    headers = {"Authorization": f"Bearer {workspace_token}"}
    while True:
        body = {
            "workspace_id": config.workspace_id,
            "tasks_handled": stats.tasks_handled,
            "avg_response_time_ms": round(stats.avg_response_time_ms, 3),
        }
        try:
            resp = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("heartbeat_failed", problem=f"{type(exc).__name__}: {exc}")
        else:
            if resp.status_code == 401:
                log.error("heartbeat_unauthorized", detail="workspace token revoked; heartbeats stopped")
                return
            if not resp.is_success:
                log.warning("heartbeat_failed", problem=f"HTTP {resp.status_code}")
        await asyncio.sleep(interval)


class _Server(uvicorn.Server):
    # uvicorn re-raises a captured SIGTERM once it has shut down, which would kill the process with
    # the signal instead of a clean exit; run() owns SIGTERM/SIGINT instead.
    @contextlib.contextmanager
    def capture_signals(self):
        yield

    async def serve(self, sockets=None) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn's answer to a port already in use; run() reports it
            await super().serve(sockets)


def _load_token(path: Path | None) -> str | None:
    if path is None or not path.exists():
        return None
    token = path.read_text().strip()
    return token or None


def _save_token(path: Path | None, token: str) -> None:
    if path is None:
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


async def _register_and_heartbeat(
    config: BootConfig, stats: Stats, cert_sha256: str, token_path: Path | None = None
) -> bool:
    """False if the agent should exit (registration refused or given up)."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        saved = _load_token(token_path)
        if saved is not None:
            add_secret(saved)
            log.info(
                "resuming", workspace_id=config.workspace_id, detail="saved workspace token; not registering again"
            )
            await heartbeat_loop(client, config, saved, config.heartbeat_interval_seconds, stats)
            return True
        try:
            answer = await register(client, config, cert_sha256)
            token = answer["workspace_token"]
            add_secret(token)
            interval = max(0.1, float(answer.get("heartbeat_interval_seconds") or config.heartbeat_interval_seconds))
        except RegistrationFailed as exc:
            log.error("register_failed", reason=str(exc))
            return False
        except Exception:
            log.exception("register_failed")
            return False
        _save_token(token_path, token)
        log.info("registered", workspace_id=config.workspace_id, heartbeat_interval_seconds=interval)
        await heartbeat_loop(client, config, token, interval, stats)
        return True


async def run(
    config: BootConfig, *, host: str, port: int, public_url: str, tls: TlsIdentity, token_path: Path | None = None
) -> int:
    """Serve HTTPS until SIGTERM/SIGINT; the exit status (non-zero if registration failed)."""
    add_secret(config.registration_token)
    stats = Stats()
    app, handler = build_app(config, public_url, stats)
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_keyfile=str(tls.key_path),
            ssl_certfile=str(tls.cert_path),
        )
    )

    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("stopping", signal=sig.name)
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if not server.started:
        log.error("server_failed_to_start", host=host, port=port)
        return 1
    log.info(
        "serving", workspace_id=config.workspace_id, host=host, port=port, public_url=public_url, cert_sha256=tls.sha256
    )

    lifecycle = asyncio.create_task(_register_and_heartbeat(config, stats, tls.sha256, token_path))
    exit_code = 0
    done, _ = await asyncio.wait({serving, lifecycle}, return_when=asyncio.FIRST_COMPLETED)
    if lifecycle in done and not lifecycle.result():
        exit_code = 1
        server.should_exit = True
    await serving
    lifecycle.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lifecycle
    await handler.aclose()
    log.info("stopped", exit_code=exit_code)
    return exit_code
