"""The emulated VPC's wire: security-group ingress on the host, egress out of an instance.

Ingress: for every TCP port an ingress rule of the instance's security groups admits, the host
listens on ``<private ip>:<port>``; each connection is admitted only if its source address matches
a rule for that port (else it is reset) and is then spliced to the same port inside the instance.
Ports no rule admits have no listener: the connection is refused. Rules are re-read every poll; as
on EC2, connections already established survive a revoke, new ones do not.

Egress: inside the instance, listeners on the configured destinations only, forwarded to the same
destinations on the host from the instance's private address, so the far side sees the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from devstack.netns import bind_listen

log = logging.getLogger("devstack.boot_emulator")

# A rule over more ports than this (all traffic, 0-65535 ...) is not listened on port by port:
# only the ports the instance really listens on inside get a host listener.
MAX_EXPANDED_RANGE = 256
_TCP_LISTEN = "0A"


@dataclass(frozen=True)
class IngressRule:
    from_port: int
    to_port: int
    sources: tuple[ipaddress.IPv4Network, ...]

    def covers(self, port: int) -> bool:
        return self.from_port <= port <= self.to_port


def ingress_rules(
    permissions: Iterable[dict], group_members: dict[str, list[str]], warn_once: Callable[[str], None]
) -> list[IngressRule]:
    """TCP rules from ``IpPermissions``; a group pair admits the private addresses of its members."""
    rules = []
    for perm in permissions:
        protocol = str(perm.get("IpProtocol"))
        if protocol not in ("tcp", "6", "-1"):
            warn_once(f"security group rule for protocol {protocol} not emulated (TCP only)")
            continue
        if perm.get("PrefixListIds") or perm.get("Ipv6Ranges"):
            warn_once("prefix-list and IPv6 sources in security groups are not emulated")
        low, high = (0, 65535) if protocol == "-1" else (int(perm["FromPort"]), int(perm["ToPort"]))
        sources = [ipaddress.IPv4Network(r["CidrIp"], strict=False) for r in perm.get("IpRanges", [])]
        sources += [
            ipaddress.IPv4Network(f"{ip}/32")
            for pair in perm.get("UserIdGroupPairs", [])
            for ip in group_members.get(pair.get("GroupId", ""), [])
        ]
        rules.append(IngressRule(low, high, tuple(sources)))
    return rules


def admitted(rules: Iterable[IngressRule], port: int, source: str) -> bool:
    address = ipaddress.IPv4Address(source)
    return any(rule.covers(port) and any(address in net for net in rule.sources) for rule in rules)


def ports_to_listen(rules: Iterable[IngressRule], holder_pid: int) -> set[int]:
    ports: set[int] = set()
    inside: set[int] | None = None
    for rule in rules:
        if rule.to_port - rule.from_port < MAX_EXPANDED_RANGE:
            ports.update(range(rule.from_port, rule.to_port + 1))
        else:
            inside = listening_ports(holder_pid) if inside is None else inside
            ports.update(p for p in inside if rule.covers(p))
    return ports


def listening_ports(holder_pid: int) -> set[int]:
    """TCP ports something listens on inside the holder's network namespace."""
    ports = set()
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{holder_pid}/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: what a refused or rejected peer sees."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def splice(a: socket.socket, b: socket.socket) -> None:
    loop = asyncio.get_running_loop()

    async def pump(src: socket.socket, dst: socket.socket) -> None:
        while data := await loop.sock_recv(src, 65536):
            await loop.sock_sendall(dst, data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    pumps = [asyncio.create_task(pump(a, b)), asyncio.create_task(pump(b, a))]
    try:
        done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        if pending and any(t.exception() for t in done):
            for t in pending:
                t.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        for t in pumps:
            t.cancel()
        a.close()
        b.close()


Handler = Callable[[socket.socket, str], Awaitable[None]]


class Listener:
    """Accepts on a listening socket and runs ``handler(conn, peer_address)`` per connection;
    ``close`` stops listening and cuts the connections it still carries."""

    def __init__(self, sock: socket.socket, handler: Handler):
        self.sock = sock
        self._handler = handler
        self._connections: set[asyncio.Task] = set()
        self._accepting = asyncio.create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as exc:
                log.warning("accept on %s failed: %s", self.sock.getsockname(), exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = asyncio.create_task(self._serve(conn, peer[0]))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, conn: socket.socket, peer: str) -> None:
        try:
            await self._handler(conn, peer)
        except Exception as exc:  # noqa: BLE001 - one broken connection must not stop the listener
            log.warning(
                "connection from %s to %s failed: %s: %s", peer, self.sock.getsockname(), type(exc).__name__, exc
            )
            reset(conn)

    def stop_listening(self) -> None:
        self._accepting.cancel()
        self.sock.close()

    async def close(self) -> None:
        self.stop_listening()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(self._accepting, *self._connections, return_exceptions=True)


async def connect_and_splice(
    conn: socket.socket,
    make_socket: Callable[[], Awaitable[socket.socket]],
    source: str | None,
    destination: tuple[str, int],
) -> None:
    """Dial ``destination`` from a socket ``make_socket`` gives (bound to ``source``, if any) and splice
    ``conn`` to it; a refused dial resets ``conn``, as the destination itself would have."""
    out = await make_socket()
    try:
        if source is not None:
            out.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(out, destination)
    except OSError:
        out.close()
        reset(conn)
        return
    await splice(conn, out)


async def host_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


def host_listen(host: str, port: int) -> socket.socket:
    return bind_listen(socket.socket(socket.AF_INET, socket.SOCK_STREAM), host, port)
