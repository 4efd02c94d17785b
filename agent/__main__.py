"""``python -m agent --config PATH [--host H] [--port N] [--public-url URL]``

On an instance only ``--config`` is given: the agent listens on ``0.0.0.0:<listen_port>`` and
advertises ``http://<private IPv4 from the metadata service>:<listen_port>/``. ``--host``,
``--port`` and ``--public-url`` are developer overrides (the agent's unit tests use them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from agent.config import BootConfig
from agent.imds import ImdsUnavailable, imds_endpoint, private_ipv4
from agent.log import configure_logging, get_logger
from agent.runtime import run

log = get_logger("agent")


def token_path(config_path: Path) -> Path:
    """Where the workspace token is kept, so that a stopped and started instance resumes heartbeats
    instead of re-spending its (dead) one-time registration token: systemd's StateDirectory= when
    the unit has one, else beside the boot config."""
    state_dirs = os.environ.get("STATE_DIRECTORY", "")
    if state_dirs:
        return Path(state_dirs.split(":")[0]) / "agent.token"
    return config_path.with_suffix(".token")


async def _boot(args: argparse.Namespace, config: BootConfig) -> int:
    host = args.host or config.listen_host
    port = args.port if args.port is not None else config.listen_port
    if args.public_url:
        public_url = args.public_url
    else:
        try:
            public_url = f"http://{await private_ipv4()}:{port}"
        except ImdsUnavailable as exc:
            log.error(
                "imds_unavailable",
                endpoint=imds_endpoint(),
                problem=str(exc),
                detail="cannot learn the instance's private address; not serving",
            )
            return 3
    return await run(
        config, host=host, port=port, public_url=public_url.rstrip("/") + "/", token_path=token_path(args.config)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description="tenantflow workspace agent (A2A)")
    parser.add_argument("--config", type=Path, required=True, help="boot config JSON")
    parser.add_argument("--host", help="developer override of the listen address (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, help="developer override of the config's listen_port")
    parser.add_argument(
        "--public-url",
        help="developer override of the URL the card advertises (default: http://<private IPv4 from IMDSv2>:<port>/)",
    )
    args = parser.parse_args(argv)

    configure_logging()
    try:
        config = BootConfig.load(args.config)
    except (OSError, ValueError, TypeError) as exc:
        log.error("bad_config", path=str(args.config), problem=str(exc))
        return 2
    return asyncio.run(_boot(args, config))


if __name__ == "__main__":
    sys.exit(main())
