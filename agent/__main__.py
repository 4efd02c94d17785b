"""``python -m agent --config PATH [--host H] [--port N] [--public-url URL]``"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agent.config import BootConfig
from agent.log import configure_logging, get_logger
from agent.runtime import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description="tenantflow workspace agent (A2A)")
    parser.add_argument("--config", type=Path, required=True, help="boot config JSON")
    parser.add_argument("--host", help="listen address (default: config listen_host, else 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (default: config listen_port)")
    parser.add_argument("--public-url", help="URL the card advertises and the platform calls "
                                             "(default: http://<host>:<port>)")
    args = parser.parse_args(argv)

    configure_logging()
    try:
        config = BootConfig.load(args.config)
    except (OSError, ValueError, TypeError) as exc:
        get_logger("agent").error("bad_config", path=str(args.config), problem=str(exc))
        return 2
    host = args.host or config.listen_host
    port = args.port if args.port is not None else config.listen_port
    public_url = (args.public_url or f"http://{host}:{port}").rstrip("/")

    # The workspace token lives beside the boot config, so a rebooted instance resumes heartbeats
    # instead of re-spending its (already dead) one-time registration token.
    token_path = args.config.with_suffix(".token")
    return asyncio.run(run(config, host=host, port=port, public_url=public_url, token_path=token_path))


if __name__ == "__main__":
    sys.exit(main())
