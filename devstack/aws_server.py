"""moto's EC2 server, with its state saved to a file so a restarted local stack keeps its VPCs,
security groups and instances (moto itself keeps everything in memory).

    python -m devstack.aws_server --port 5055 --state-file .tenantflow/aws/moto-ec2.pickle
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import threading
from pathlib import Path

from moto.backends import get_backend
from moto.server import ThreadedMotoServer

_SAVE_EVERY_SECONDS = 5.0


def load_state(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path, "rb") as f:
        saved = pickle.load(f)  # our own file, written by save_state below
    get_backend("ec2").update(saved)
    return True


def save_state(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        data = pickle.dumps(get_backend("ec2"))
    except RuntimeError:
        return  # a request changed the backend mid-dump; the next round saves it
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--state-file", type=Path, default=None)
    args = parser.parse_args()

    if args.state_file:
        args.state_file.parent.mkdir(parents=True, exist_ok=True)
        load_state(args.state_file)
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Saved periodically too, so even a SIGKILLed stack loses at most a few seconds of state.
    while not stop.wait(_SAVE_EVERY_SECONDS):
        if args.state_file:
            save_state(args.state_file)
    server.stop()
    if args.state_file:
        save_state(args.state_file)


if __name__ == "__main__":
    main()
