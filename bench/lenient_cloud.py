"""The local cloud made lenient at runtime, for ``bench.strict_cloud``: the product and the tests
have no switch for it (no environment variable), so this uses the servers' own admin APIs right
after they start - EC2 ``POST /__devstack/ec2/config {"strict": false}`` (what ``--lenient`` sets)
and Neon ``PATCH /__devstack/config`` with ``Strictness.lenient()`` (what its ``--lenient`` sets).

    python -m pytest -p bench.lenient_cloud tests/...                        # the test session's servers
    python -m bench.lenient_cloud --cloud lenient --orgs 4 --workspaces 8    # tools.soak (see ``soak``)
    python -m bench.lenient_cloud --cloud strict --orgs 4 --workspaces 8     # the same, cloud as configured
"""

from __future__ import annotations

import argparse
import sys

import pytest
import requests

from devstack.neon.strict import Strictness


def make_lenient(ec2_url: str | None = None, neon_url: str | None = None) -> None:
    """Switch the servers at these base URLs to lenient, and check that they say so."""
    if ec2_url:
        requests.post(f"{ec2_url}/__devstack/ec2/config", json={"strict": False}, timeout=10).raise_for_status()
        if requests.get(f"{ec2_url}/__devstack/ec2/config", timeout=10).json()["strict"] is not False:
            raise RuntimeError(f"the EC2 server at {ec2_url} is still strict")
    if neon_url:
        lenient = Strictness.lenient().to_json()
        requests.patch(f"{neon_url}/__devstack/config", json=lenient, timeout=10).raise_for_status()
        if requests.get(f"{neon_url}/__devstack/config", timeout=10).json() != lenient:
            raise RuntimeError(f"the Neon server at {neon_url} did not take the lenient settings")


SWITCHED: list[str] = []
SUMMARY = "lenient cloud switched:"


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """tests/conftest.py's session servers: ``moto_url`` (EC2) and ``neon_url`` ((url, key))."""
    result = yield
    if fixturedef.argname == "moto_url":
        make_lenient(ec2_url=result)
        SWITCHED.append("ec2")
    elif fixturedef.argname == "neon_url":
        make_lenient(neon_url=result[0])
        SWITCHED.append("neon")
    return result


def pytest_terminal_summary(terminalreporter):
    """Which servers were switched (none: the fixtures were renamed, and the run was strict)."""
    terminalreporter.write_line(f"{SUMMARY} {','.join(sorted(SWITCHED)) or 'none'}")


# Instance networks for the bench's soaks: outside the demo network every local stack uses
# (127.42.0.0/16) and outside the tests' random loopback VPCs (127.20-249.x.0/24).
OWN_NETWORKS = range(250, 255)


def own_network(harness) -> tuple[str, list[str]]:
    """A VPC in a loopback /16 nothing listens in, with two subnets in two zones (as the demo's)."""
    import psutil

    busy = {
        c.laddr.ip.split(".")[1]
        for c in psutil.net_connections(kind="tcp")
        if c.laddr and c.laddr.ip.startswith("127.")
    }
    octet = next(n for n in OWN_NETWORKS if str(n) not in busy)
    ec2 = harness.ec2()
    vpc_id = ec2.create_vpc(CidrBlock=f"127.{octet}.0.0/16")["Vpc"]["VpcId"]
    region = harness.settings.aws_region
    subnets = [
        ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"127.{octet}.{i}.0/24", AvailabilityZone=f"{region}{zone}")[
            "Subnet"
        ]["SubnetId"]
        for i, zone in enumerate("ab")
    ]
    return vpc_id, sorted(subnets)


def soak(argv: list[str], lenient: bool) -> int:
    """tools.soak, unchanged but for two things: its instances live in a loopback network of their
    own (another local stack on the machine, a chaos run say, answers for the demo network's
    addresses: AgentCardMismatch on both sides), and when ``lenient`` its stack is switched to
    lenient once it is up, before any org is driven."""
    from tools import soak as soak_tool

    start = soak_tool.StackHarness.start

    def started_as_asked(self):
        started = start(self)
        if lenient:
            make_lenient(self.stack.aws_endpoint, self.neon_base)
        return started

    soak_tool.StackHarness.start = started_as_asked
    soak_tool.StackHarness.network = own_network
    return soak_tool.main(argv)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="tools.soak as bench.strict_cloud runs it; other arguments go to it", allow_abbrev=False
    )
    parser.add_argument("--cloud", choices=("strict", "lenient"), required=True)
    known, rest = parser.parse_known_args()
    sys.exit(soak(rest, lenient=known.cloud == "lenient"))
