"""A local server compatible with the Neon API v2 subset tenantflow uses, backed by real PostgreSQL.

Neon has no local server. This one answers the real ``neon-api`` client: a project is a
Postgres role plus a default branch ``main``; each branch is a database copied from its parent
(``CREATE DATABASE ... TEMPLATE``), exposed under the logical name ``neondb``. Mutations create
operations that move scheduling -> running -> finished over time, and while any is unfinished
further mutations of the project get 423 Locked, as on Neon. State lives in the ``neon_control``
database, so it survives restarts. ``/__devstack/`` routes inject faults and report request stats.

    python -m devstack.neon_server --port 4444 --pg-admin-url URL --api-key-file PATH \\
        [--pg-host 127.0.0.1] [--pg-port N] [--seed-project-id ID] [--seed-project-name NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from devstack.neon.app import NeonServerConfig, create_app, serve

__all__ = ["NeonServerConfig", "create_app", "serve", "main"]

log = logging.getLogger("devstack.neon_server")


def _parse_args(argv: list[str] | None) -> NeonServerConfig:
    parser = argparse.ArgumentParser(prog="python -m devstack.neon_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4444)
    parser.add_argument("--pg-admin-url", required=True, help="superuser URL to the `postgres` database")
    parser.add_argument("--pg-host", default="127.0.0.1", help="host written into connection URIs")
    parser.add_argument("--pg-port", type=int, default=None, help="port for connection URIs (default: the admin URL's)")
    parser.add_argument("--api-key-file", type=Path, help="file holding the API key (default: $NEON_API_KEY)")
    parser.add_argument("--seed-project-id")
    parser.add_argument("--seed-project-name", default="tenantflow-platform")
    parser.add_argument("--scheduling-seconds", type=float, default=0.2)
    parser.add_argument("--running-seconds", type=float, default=0.5)
    args = parser.parse_args(argv)
    api_key = args.api_key_file.read_text().strip() if args.api_key_file else os.environ.get("NEON_API_KEY", "")
    if not api_key:
        parser.error("an API key is required: --api-key-file PATH or $NEON_API_KEY")
    return NeonServerConfig(
        pg_admin_url=args.pg_admin_url,
        api_key=api_key,
        host=args.host,
        port=args.port,
        pg_host=args.pg_host,
        pg_port=args.pg_port,
        seed_project_id=args.seed_project_id,
        seed_project_name=args.seed_project_name,
        scheduling_seconds=args.scheduling_seconds,
        running_seconds=args.running_seconds,
    )


async def _run(config: NeonServerConfig) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    runner = await serve(config)
    log.info("local Neon API listening on http://%s:%s/api/v2/", config.host, config.port)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()
    log.info("local Neon API stopped")


def main(argv: list[str] | None = None) -> None:
    config = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(config))


if __name__ == "__main__":
    main()
