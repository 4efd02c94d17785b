"""``python -m agent --config PATH [--host H] [--port N] [--public-url URL]``

On an instance only ``--config`` is given: the agent serves HTTPS on ``0.0.0.0:<listen_port>`` and
advertises ``https://<private IPv4 from the metadata service>:<listen_port>/``. ``--host``,
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
from agent.tls import TlsIdentity, load_or_create

log = get_logger("agent")


def state_path(config_path: Path, suffix: str) -> Path:
    """Where the agent keeps what must outlive a stop and start: the workspace token (so it resumes
    heartbeats instead of re-spending its dead one-time token) and its TLS key and certificate (so
    it still presents the registered one): systemd's StateDirectory= when the unit has one, else
    beside the boot config."""
    state_dirs = os.environ.get("STATE_DIRECTORY", "")
    if state_dirs:
        return Path(state_dirs.split(":")[0]) / f"agent{suffix}"
    return config_path.with_suffix(suffix)


def token_path(config_path: Path) -> Path:
    return state_path(config_path, ".token")


def tls_identity(config_path: Path, config: BootConfig) -> TlsIdentity:
    return load_or_create(state_path(config_path, ".key"), state_path(config_path, ".crt"), config.workspace_id)


async def _boot(args: argparse.Namespace, config: BootConfig) -> int:
    host = args.host or config.listen_host
    port = args.port if args.port is not None else config.listen_port
    if args.public_url:
        public_url = args.public_url
    else:
        try:
            public_url = f"https://{await private_ipv4()}:{port}"
        except ImdsUnavailable as exc:
            log.error(
                "imds_unavailable",
                endpoint=imds_endpoint(),
                problem=str(exc),
                detail="cannot learn the instance's private address; not serving",
            )
            return 3
    try:
        tls = tls_identity(args.config, config)
    except (OSError, ValueError) as exc:
        log.error("tls_unavailable", problem=f"{type(exc).__name__}: {exc}", detail="no certificate; not serving")
        return 4
    return await run(
        config,
        host=host,
        port=port,
        public_url=public_url.rstrip("/") + "/",
        tls=tls,
        token_path=token_path(args.config),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description="tenantflow workspace agent (A2A)")
    parser.add_argument("--config", type=Path, required=True, help="boot config JSON")
    parser.add_argument("--host", help="developer override of the listen address (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, help="developer override of the config's listen_port")
    parser.add_argument(
        "--public-url",
        help="developer override of the URL the card advertises (default: https://<private IPv4 from IMDSv2>:<port>/)",
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
