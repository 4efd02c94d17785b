"""The local stack's EC2 server (``devstack.aws_server``) as a real process: it forgets terminated
instances after a while, as EC2 does, keeps serving while it does, and keeps its state across a
restart. (Its strict rules have their own tests, in test_ec2_strict.py.)"""

from __future__ import annotations

import secrets
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.moto_client import moto_ec2_client
from devstack.procs import free_port, spawn, stop, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
AMI = "ami-12c6146b"  # one of moto's built-in images


# The strict rules with no delays: instances change state and become visible at the next request.
NO_DELAYS = (
    "--pending-seconds",
    "0",
    "--stopping-seconds",
    "0",
    "--shutting-down-seconds",
    "0",
    "--visibility-lag-seconds",
    "0",
    "--eni-drain-seconds",
    "0",
)


def start_server(tmp_path: Path, port: int, forget_after: float, *options: str):
    proc = spawn(
        [
            sys.executable,
            "-m",
            "devstack.aws_server",
            "--port",
            str(port),
            "--state-file",
            str(tmp_path / "ec2.pickle"),
            "--forget-terminated-after",
            str(forget_after),
            *options,
        ],
        log_path=tmp_path / "aws.log",
        cwd=ROOT,
    )
    wait_for_port("127.0.0.1", port, proc=proc)
    return proc


def client(port: int):
    return moto_ec2_client(f"http://127.0.0.1:{port}")


@pytest.fixture
def server(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port, 2, *NO_DELAYS)
    ec2 = client(port)
    yield ec2
    stop(proc)


@pytest.fixture
def strict_server(tmp_path):
    """With the default (realistic) delays."""
    port = free_port()
    proc = start_server(tmp_path, port, 2)
    yield client(port)
    stop(proc)


def launch(ec2, tag: str, count: int = 1, **placement) -> list[str]:
    tags = [{"Key": "tenantflow:test", "Value": tag}]
    reservation = ec2.run_instances(
        ImageId=AMI,
        MinCount=count,
        MaxCount=count,
        **placement,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
    )
    return [i["InstanceId"] for i in reservation["Instances"]]


def tagged(ec2, tag: str) -> dict[str, str]:
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "tag:tenantflow:test", "Values": [tag]}])
    return {i["InstanceId"]: i["State"]["Name"] for p in pages for r in p["Reservations"] for i in r["Instances"]}


def tagged_resources(ec2, tag: str) -> set[str]:
    found = ec2.describe_tags(Filters=[{"Name": "value", "Values": [tag]}])["Tags"]
    return {t["ResourceId"] for t in found}


def until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)
    return result


def test_terminated_instances_are_forgotten_after_the_retention_and_live_ones_kept(server):
    ec2 = server
    tag = secrets.token_hex(4)
    keep, drop = launch(ec2, tag), launch(ec2, tag, count=2)
    ec2.terminate_instances(InstanceIds=drop)
    # Still visible (terminated) right after, as on EC2.
    assert {i: s for i, s in tagged(ec2, tag).items() if i in drop} == dict.fromkeys(drop, "terminated")

    until(lambda: set(tagged(ec2, tag)) == set(keep))

    assert tagged(ec2, tag) == {keep[0]: "running"}
    with pytest.raises(ec2.exceptions.ClientError) as err:
        ec2.describe_instances(InstanceIds=[drop[0]])
    assert err.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
    # The forgotten instances' tags and their deleted volumes' tags are gone; the live one keeps both.
    resources = tagged_resources(ec2, tag)
    assert keep[0] in resources and not resources & set(drop)
    assert [r for r in resources if r.startswith("vol-")], "the live instance's volume keeps its tags"
    assert len(resources) == 2


def test_a_forgotten_instance_gives_its_private_ip_back_to_the_subnet(server):
    """moto alone never does: a /28 (11 usable addresses) would refuse the 12th launch ever."""
    ec2 = server
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/28")["Subnet"]["SubnetId"]
    tag = secrets.token_hex(4)
    first = launch(ec2, tag, count=11, SubnetId=subnet)
    ec2.terminate_instances(InstanceIds=first)
    until(lambda: not tagged(ec2, tag))

    second = launch(ec2, tag, count=11, SubnetId=subnet)

    assert len(set(second) - set(first)) == 11
    assert not ec2.describe_network_interfaces(Filters=[{"Name": "attachment.instance-id", "Values": first}])[
        "NetworkInterfaces"
    ]


def test_requests_during_housekeeping_all_succeed(strict_server):
    """Launch, describe and terminate from many threads for longer than several housekeeping
    rounds (every 5 s), with the strict rules' default delays: every call answers, and every
    instance ends forgotten."""
    ec2 = strict_server
    tag = secrets.token_hex(4)
    launched: list[str] = []

    def churn(_):
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            ids = launch(ec2, tag)
            launched.extend(ids)
            until(lambda: set(ids) <= set(tagged(ec2, tag)))  # after the visibility lag
            ec2.terminate_instances(InstanceIds=ids)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(churn, range(8)))

    assert len(launched) > 16
    until(lambda: not tagged(ec2, tag))


def test_state_survives_a_restart_and_the_clock_restarts_with_it(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port, 3600, *NO_DELAYS)
    ec2 = client(port)
    tag = secrets.token_hex(4)
    live, gone = launch(ec2, tag), launch(ec2, tag)
    ec2.terminate_instances(InstanceIds=gone)
    stop(proc, sig=signal.SIGTERM)  # saves on the way out

    proc = start_server(tmp_path, port, 3600, *NO_DELAYS)
    try:
        assert tagged(ec2, tag) == {live[0]: "running", gone[0]: "terminated"}
    finally:
        stop(proc)
