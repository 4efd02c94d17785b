"""The local stack: every server the product needs, started from PyPI wheels on loopback.

Temporal dev server (Web UI, history in a SQLite file) -> PostgreSQL -> moto EC2 -> local Neon
API -> worker -> API. State lives under ``TENANTFLOW_STATE_DIR`` (default ``.tenantflow``), so a
restart keeps orgs, workflow histories, EC2 resources and tenant databases.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.moto_client import MOTO_CREDENTIALS, ensure_anchor_bucket
from devstack.postgres import PostgresServer, app_role_url, ensure_app_role, ensure_database, start_postgres
from devstack.procs import spawn, stop, wait_for_port
from devstack.settings import StackSettings
from domain.operations import SEARCH_ATTRIBUTES

NEON_PLATFORM_PROJECT = "tenantflow-platform"


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file that is 0600 from its creation: never readable by
    others, not even between a write and a chmod, and never seen half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash; O_EXCL below refuses to reuse it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_secret(state_dir: Path, name: str, value: str) -> None:
    path = state_dir / "secrets.json"
    values = json.loads(path.read_text())
    values[name] = value
    write_private(path, json.dumps(values))


# Secrets added after the first state directories were made: generated when missing.
_LATER_SECRETS = {
    "token_signing_key": lambda: secrets.token_urlsafe(32),
    "audit_hmac_key": lambda: secrets.token_urlsafe(32),
    "app_role_password": lambda: secrets.token_urlsafe(24),
}


def load_or_create_secrets(state_dir: Path) -> dict[str, str]:
    path = state_dir / "secrets.json"
    if path.exists():
        values = json.loads(path.read_text())
        for name, make in _LATER_SECRETS.items():
            if name not in values:
                save_secret(state_dir, name, make())
        return dict(json.loads(path.read_text()))
    values = {
        "provision_secret": f"tfp_{secrets.token_urlsafe(32)}",
        "neon_api_key": f"neon_local_{secrets.token_urlsafe(24)}",
        **{name: make() for name, make in _LATER_SECRETS.items()},
    }
    write_private(path, json.dumps(values))
    return values


@dataclass
class LocalStack:
    settings: StackSettings
    with_worker: bool = True
    with_api: bool = True
    # Plain moto and a Neon without limits, for demos only (the default is as strict as AWS and Neon).
    lenient: bool = False
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    postgres: PostgresServer | None = None

    @property
    def state_dir(self) -> Path:
        return Path(self.settings.state_dir).resolve()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    @property
    def temporal_ui_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.temporal_ui_port}"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.settings.temporal_port}"

    @property
    def aws_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.settings.moto_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.settings.s3_port}"

    def _log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _start(
        self, name: str, args: list[str], port: int, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> None:
        proc = spawn(args, log_path=self._log(name), env=env, cwd=Path(__file__).resolve().parent.parent)
        self.procs.append((name, proc))
        try:
            wait_for_port("127.0.0.1", port, timeout=timeout, proc=proc)
        except Exception as err:
            tail = self._log(name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} did not start: {err}\n--- {self._log(name)} ---\n{tail}") from err

    def service_env(self) -> dict[str, str]:
        """The environment the worker and API run with: the same variables a deployment sets."""
        s = self.settings
        creds = load_or_create_secrets(self.state_dir)
        assert self.postgres is not None
        return {
            **MOTO_CREDENTIALS,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TEMPORAL_NAMESPACE": "default",
            # The application role: it may append to the audit trail and read it, nothing more.
            "TENANTFLOW_DATABASE_URL": app_role_url(self.postgres, "tenantflow", creds["app_role_password"]),
            "TENANTFLOW_AUDIT_HMAC_KEY": creds["audit_hmac_key"],
            "TENANTFLOW_AUDIT_ANCHOR_ENDPOINT_URL": self.s3_endpoint,
            "TENANTFLOW_AUDIT_ANCHOR_BUCKET": s.audit_anchor_bucket,
            "TENANTFLOW_PROVISION_SECRET": creds["provision_secret"],
            "TENANTFLOW_API_HOST": "127.0.0.1",
            "TENANTFLOW_API_PORT": str(s.api_port),
            "TENANTFLOW_PUBLIC_URL": self.api_url,
            "TENANTFLOW_AWS_ENDPOINT_URL": self.aws_endpoint,
            "TENANTFLOW_AWS_REGION": s.aws_region,
            # The worker dials agents from 127.0.0.1: the only source the security groups admit.
            "TENANTFLOW_PLATFORM_CIDR": "127.0.0.1/32",
            "TENANTFLOW_TOKEN_SIGNING_KEY": creds["token_signing_key"],
            "TENANTFLOW_NEON_API_KEY": creds["neon_api_key"],
            "TENANTFLOW_NEON_BASE_URL": f"http://127.0.0.1:{s.neon_port}/api/v2/",
            "TENANTFLOW_NEON_PROJECT_ID": NEON_PLATFORM_PROJECT,
            "TENANTFLOW_NEON_MODE": s.neon_mode,
            "TENANTFLOW_TASK_QUEUE": s.task_queue,
            "TENANTFLOW_LOG_LEVEL": s.log_level,
            "TENANTFLOW_STATE_DIR": str(self.state_dir),
            "TENANTFLOW_WORKER_HEALTH_PORT": str(s.worker_health_port),
            "TENANTFLOW_WORKER_SDK_METRICS_PORT": str(s.worker_sdk_metrics_port),
        }

    def start(self) -> None:
        s = self.settings
        self.state_dir.mkdir(parents=True, exist_ok=True)
        creds = load_or_create_secrets(self.state_dir)
        temporal = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
        self._start(
            "temporal",
            [
                temporal,
                "server",
                "start-dev",
                "--db-filename",
                str(self.state_dir / "temporal.db"),
                "--ip",
                "127.0.0.1",
                "--port",
                str(s.temporal_port),
                "--ui-port",
                str(s.temporal_ui_port),
                "--ui-disable-news-fetch",
                "--log-level",
                "warn",
                *[arg for name, kind in SEARCH_ATTRIBUTES.items() for arg in ("--search-attribute", f"{name}={kind}")],
            ],
            s.temporal_port,
        )

        self.postgres = start_postgres(self.state_dir, s.postgres_port)
        owner_url = ensure_database(self.postgres, "tenantflow")
        ensure_app_role(self.postgres, creds["app_role_password"])
        # The owner migrates (and grants the application role); the services never hold its password.
        migrated = subprocess.run(
            [sys.executable, "-m", "db.migrate"],
            env={**os.environ, "TENANTFLOW_MIGRATION_DATABASE_URL": owner_url},
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"migrations failed (python -m db.migrate):\n{migrated.stderr[-2000:]}")

        self._start("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s.s3_port)], s.s3_port)
        ensure_anchor_bucket(self.s3_endpoint, s.aws_region, s.audit_anchor_bucket)

        strictness = ["--lenient"] if self.lenient else []
        self._start(
            "aws",
            [
                sys.executable,
                "-m",
                "devstack.aws_server",
                "--port",
                str(s.moto_port),
                "--state-file",
                str(self.state_dir / "aws" / "moto-ec2.pickle"),
                *strictness,
            ],
            s.moto_port,
        )

        # Instances reach the platform API, and nothing else (a VPC route to the platform only).
        self._start(
            "boot",
            [
                sys.executable,
                "-m",
                "devstack.boot_emulator",
                "--ec2-endpoint",
                self.aws_endpoint,
                "--region",
                s.aws_region,
                "--log-dir",
                str(self.state_dir / "boot"),
                "--admin-port",
                str(s.boot_emulator_port),
                "--egress",
                f"127.0.0.1:{s.api_port}",
            ],
            s.boot_emulator_port,
        )

        key_file = self.state_dir / "neon-api-key"
        write_private(key_file, creds["neon_api_key"])
        self._start(
            "neon",
            [
                sys.executable,
                "-m",
                "devstack.neon_server",
                "--port",
                str(s.neon_port),
                "--pg-admin-url",
                self.postgres.url("postgres"),
                "--pg-port",
                str(s.postgres_port),
                "--api-key-file",
                str(key_file),
                "--seed-project-id",
                NEON_PLATFORM_PROJECT,
                *strictness,
            ],
            s.neon_port,
        )

        env = self.service_env()
        if self.with_worker:
            self.start_worker(env)
        if self.with_api:
            self._start("api", [sys.executable, "-m", "api"], s.api_port, env=env)

    def start_worker(self, env: dict[str, str] | None = None) -> None:
        proc = spawn(
            [sys.executable, "worker.py"],
            log_path=self._log("worker"),
            env=env or self.service_env(),
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.procs.append(("worker", proc))

    def stop_process(self, name: str) -> None:
        for entry in [e for e in self.procs if e[0] == name]:
            stop(entry[1])
            self.procs.remove(entry)

    def stop(self) -> None:
        # Reverse order: clients before the servers they use.
        for _, proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None


def wait_http_ok(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(0.2)
