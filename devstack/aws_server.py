"""moto's EC2 server, as strict as real EC2 where it matters (``devstack.ec2_strict``: ClientToken
idempotency, slow state changes, eventual consistency, security groups held by draining network
interfaces), with injectable faults and request stats (``devstack.ec2_devtools``, admin API under
``/__devstack/ec2/``), its state saved to a file so a restarted local stack keeps its VPCs,
security groups, instances and client tokens (moto itself keeps everything in memory), and
terminated instances forgotten a while after they terminate, as EC2 forgets them after about an
hour.

    python -m devstack.aws_server --port 5055 --state-file .tenantflow/aws/moto-ec2.pickle
    python -m devstack.aws_server --lenient     # plain moto (instant, forgiving): demos only

Forgetting matters for long runs: moto keeps every instance ever launched, and its tag filters
scan every tag of every resource once per instance, so a ``describe_instances`` by tag grows with
the square of the instances ever launched (8.8 s at ~500 in the soak); and it never gives a
terminated instance's private IP back, so a subnet refuses launches (HTTP 500) once as many
instances as it has addresses have ever run in it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from moto.backends import get_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from devstack.ec2_devtools import Ec2Frontend
from devstack.ec2_strict import StrictConfig, StrictEC2, StrictState

_HOUSEKEEPING_EVERY_SECONDS = 5.0
_DEFAULT_FORGET_AFTER_SECONDS = 300.0


class SharedExclusiveLock:
    """Requests share it; housekeeping (saving, forgetting) takes it alone, so it never sees or
    changes the backend while a request is halfway through. A waiting housekeeper holds back new
    requests, so a steady stream of them cannot starve it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharers = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._exclusive_waiting)
            self._sharers += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._exclusive_waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._sharers)
            self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class TerminatedInstanceForgetter:
    """Removes instances that have been terminated for ``after_seconds``, with their network
    interfaces (giving their private IPs back to the subnet), their tags, and the tags of the
    volumes terminating deleted (moto keeps tags of deleted resources)."""

    def __init__(self, after_seconds: float) -> None:
        self._after = after_seconds
        self._terminated_since: dict[str, float] = {}

    def sweep(self, backends: Iterable[Any]) -> None:
        now = time.monotonic()
        for backend in backends:
            for reservation_id, reservation in list(backend.reservations.items()):
                kept = []
                for instance in reservation.instances:
                    if instance.state != "terminated":
                        kept.append(instance)
                    elif now - self._terminated_since.setdefault(instance.id, now) < self._after:
                        kept.append(instance)
                    else:
                        self._forget(backend, instance)
                reservation.instances = kept
                if not kept:
                    del backend.reservations[reservation_id]
            for resource_id in [r for r in backend.tags if r.startswith("vol-") and r not in backend.volumes]:
                del backend.tags[resource_id]

    def _forget(self, backend: Any, instance: Any) -> None:
        # moto keeps a terminated instance's network interface, and with it its private IP, so
        # without this a subnet runs out of addresses after as many launches as it has addresses.
        for nic in instance.nics.values():
            if nic.id in backend.enis:
                nic.delete()
            backend.tags.pop(nic.id, None)
        backend.tags.pop(instance.id, None)
        self._terminated_since.pop(instance.id)


def ec2_backends() -> list[Any]:
    return [backend for _account, _region, backend in get_backend("ec2").iter_backends()]


def load_state(path: Path) -> StrictState | None:
    """Loads moto's EC2 backend from the file; returns the strict layer's state saved with it."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        saved = pickle.load(f)  # our own file, written by save_state below
    if type(saved) is dict and "ec2" in saved:
        saved, strict = saved["ec2"], saved["strict"]
    else:
        strict = None  # a file from before the strict layer: moto's backend alone
    get_backend("ec2").update(saved)
    return strict


def save_state(path: Path, strict: StrictState) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps({"ec2": get_backend("ec2"), "strict": strict}))
    os.replace(tmp, path)


def strict_config(args: argparse.Namespace) -> StrictConfig:
    timings = {f.name: getattr(args, f.name) for f in fields(StrictConfig) if f.name != "strict"}
    return StrictConfig(strict=not args.lenient, **timings)


def parse_args() -> argparse.Namespace:
    defaults = StrictConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--state-file", type=Path, default=None)
    parser.add_argument(
        "--forget-terminated-after",
        type=float,
        default=_DEFAULT_FORGET_AFTER_SECONDS,
        metavar="SECONDS",
        help="how long a terminated instance stays visible (default %(default)s)",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="plain moto: no token checks, instant state changes, no lag, no drain (demos only)",
    )
    timings = {
        "--pending-seconds": "how long RunInstances/StartInstances leave an instance pending",
        "--stopping-seconds": "how long StopInstances leaves an instance stopping",
        "--shutting-down-seconds": "how long TerminateInstances leaves an instance shutting-down",
        "--visibility-lag-seconds": "how long a new instance or security group is not found by id",
        "--eni-drain-seconds": "how long a terminated instance still holds its security groups",
        "--token-retention-hours": "how long a ClientToken is remembered after its instance terminated",
    }
    for option, help_text in timings.items():
        default = getattr(defaults, option.removeprefix("--").replace("-", "_"))
        parser.add_argument(option, type=float, default=default, metavar="N", help=f"{help_text} (default %(default)s)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    saved = None
    if args.state_file:
        args.state_file.parent.mkdir(parents=True, exist_ok=True)
        saved = load_state(args.state_file)
    lock = SharedExclusiveLock()
    strict = StrictEC2(strict_config(args), saved)
    app = Ec2Frontend(DomainDispatcherApplication(create_backend_app), lock, strict)
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    forgetter = TerminatedInstanceForgetter(args.forget_terminated_after)

    def housekeeping() -> None:
        with lock.exclusive():
            strict.housekeeping()
            forgetter.sweep(ec2_backends())
            if args.state_file:
                save_state(args.state_file, strict.state)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Saved periodically too, so even a SIGKILLed stack loses at most a few seconds of state.
    while not stop.wait(_HOUSEKEEPING_EVERY_SECONDS):
        housekeeping()
    server.shutdown()
    housekeeping()


if __name__ == "__main__":
    main()
