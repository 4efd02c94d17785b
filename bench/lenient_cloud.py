"""The local cloud made lenient at runtime, for ``bench.strict_cloud``: the product and the tests
have no switch for it (no environment variable), so this uses the servers' own admin APIs right
after they start - EC2 ``POST /__devstack/ec2/config {"strict": false}`` (what ``--lenient`` sets)
and Neon ``PATCH /__devstack/config`` with ``Strictness.lenient()`` (what its ``--lenient`` sets).

    python -m pytest -p bench.lenient_cloud tests/...        # the test session's EC2 and Neon servers
    python -m bench.lenient_cloud --orgs 4 --workspaces 8    # tools.soak on a lenient local stack
"""

from __future__ import annotations

import sys

import pytest
import requests

from devstack.neon.strict import Strictness


def make_lenient(ec2_url: str | None = None, neon_url: str | None = None) -> None:
    """Switch the servers at these base URLs to lenient, and check that they say so."""
    if ec2_url:
        config = requests.post(f"{ec2_url}/__devstack/ec2/config", json={"strict": False}, timeout=10)
        config.raise_for_status()
        assert requests.get(f"{ec2_url}/__devstack/ec2/config", timeout=10).json()["strict"] is False
    if neon_url:
        lenient = Strictness.lenient().to_json()
        requests.patch(f"{neon_url}/__devstack/config", json=lenient, timeout=10).raise_for_status()
        assert requests.get(f"{neon_url}/__devstack/config", timeout=10).json() == lenient


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """tests/conftest.py's session servers: ``moto_url`` (EC2) and ``neon_url`` ((url, key))."""
    result = yield
    if fixturedef.argname == "moto_url":
        make_lenient(ec2_url=result)
    elif fixturedef.argname == "neon_url":
        make_lenient(neon_url=result[0])
    return result


def soak(argv: list[str]) -> int:
    """tools.soak with its stack switched to lenient once it is up (before any org is driven)."""
    from tools import soak as soak_tool

    start = soak_tool.StackHarness.start

    def lenient_start(self):
        started = start(self)
        make_lenient(self.stack.aws_endpoint, self.neon_base)
        return started

    soak_tool.StackHarness.start = lenient_start
    return soak_tool.main(argv)


if __name__ == "__main__":
    sys.exit(soak(sys.argv[1:]))
