"""A local server compatible with the Neon API v2 subset tenantflow uses, backed by real PostgreSQL.

Neon has no local server. This one answers the real ``neon-api`` client: a project is a
Postgres role plus a default branch ``main``; each branch is a database copied from its parent
(``CREATE DATABASE ... TEMPLATE``), exposed under the logical name ``neondb``. Mutations create
operations that move scheduling -> running -> finished over time, and while any is unfinished
further mutations of the project get 423 Locked, as on Neon. State lives in the ``neon_control``
database, so it survives restarts. ``/__devstack/`` routes inject faults and report request stats.

It is as strict as Neon by default (``devstack/neon/strict.py``): plan caps, rate limits, paged
lists, operations that fail and are retried, Neon's own background operations; ``--schema-drift``
adds answers a newer Neon would give. Every setting can be changed at runtime through
``PATCH /__devstack/config``; ``--lenient`` starts without throttling, default pages or randomness.

    python -m devstack.neon_server --port 4444 --pg-admin-url URL --api-key-file PATH \\
        [--pg-host 127.0.0.1] [--pg-port N] [--seed-project-id ID] [--seed-project-name NAME] \\
        [--plan free|launch|scale|business] [--lenient] [--no-rate-limit] [--rate-limit-per-minute N] \\
        [--rate-limit-burst N] [--rate-limit-retry-after] [--branch-page-size N] \\
        [--operation-failure-share F] [--operation-failures K] [--operation-cancel-share F] \\
        [--operation-retry-seconds S] [--background-operation-share F] [--background-operation-seconds S] \\
        [--schema-drift]

Admin API (unauthenticated, loopback only; the bodies are JSON):

    GET|PATCH /__devstack/config                   the strictness settings (devstack/neon/strict.py)
    POST|GET|DELETE /__devstack/faults             {"route", "status", "method"?, "count"?, "retry_after"?,
                                                    "message"?, "code"?}: answer the next requests so
    POST|GET|DELETE /__devstack/operation-outcomes {"count"?, "failures"?, "outcome"?, "action"?}: the
                                                    next operations fail K times / end cancelled
    POST /__devstack/background-operations         {"project_id", "action"?, "seconds"?}: Neon locks it now
    GET /__devstack/stats, POST /__devstack/reset-stats
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from devstack.neon.app import NeonServerConfig, create_app, serve
from devstack.neon.devtools import ApiError
from devstack.neon.strict import Strictness, patched
from domain.neon_plans import PLANS

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
    _add_strictness_args(parser)
    args = parser.parse_args(argv)
    api_key = args.api_key_file.read_text().strip() if args.api_key_file else os.environ.get("NEON_API_KEY", "")
    if not api_key:
        parser.error("an API key is required: --api-key-file PATH or $NEON_API_KEY")
    try:
        strict = _strictness(args)
    except ApiError as err:
        parser.error(err.message)
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
        strict=strict,
    )


# One flag per setting of ``Strictness``: (flag, section, setting, argparse options).
_STRICTNESS_FLAGS = [
    ("--plan", None, "plan", {"choices": sorted(PLANS)}),
    ("--no-rate-limit", "rate_limit", "enabled", {"action": "store_false"}),
    ("--rate-limit-per-minute", "rate_limit", "per_minute", {"type": int}),
    ("--rate-limit-burst", "rate_limit", "burst_per_route", {"type": int, "help": "requests a second per route"}),
    (
        "--rate-limit-retry-after",
        "rate_limit",
        "retry_after",
        {"action": "store_true", "help": "send Retry-After with 429 (Neon does not always)"},
    ),
    (
        "--branch-page-size",
        "pagination",
        "branch_page_size",
        {"type": int, "help": "page of list branches without a limit (0: all)"},
    ),
    ("--operation-failure-share", "operations", "failure_share", {"type": float}),
    ("--operation-failures", "operations", "failures", {"type": int, "help": "failures before it finishes"}),
    ("--operation-cancel-share", "operations", "cancel_share", {"type": float}),
    ("--operation-retry-seconds", "operations", "retry_seconds", {"type": float}),
    ("--background-operation-share", "background", "share", {"type": float, "help": "share of mutations locked"}),
    ("--background-operation-seconds", "background", "seconds", {"type": float}),
    ("--schema-drift", None, "schema_drift", {"action": "store_true"}),
]


def _add_strictness_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("strictness (defaults: as strict as Neon; see devstack/neon/strict.py)")
    group.add_argument("--lenient", action="store_true", help="no rate limit, default page, random failures or locks")
    for flag, section, setting, options in _STRICTNESS_FLAGS:
        group.add_argument(flag, dest=f"{section}.{setting}", default=None, **options)


def _strictness(args: argparse.Namespace) -> Strictness:
    """The strict (or lenient) defaults with the flags that were given."""
    patch: dict = {}
    for _, section, setting, _options in _STRICTNESS_FLAGS:
        value = getattr(args, f"{section}.{setting}")
        if value is not None:
            (patch.setdefault(section, {}) if section else patch)[setting] = value
    return patched(Strictness.lenient() if args.lenient else Strictness(), patch)


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
