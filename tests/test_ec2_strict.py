"""The local EC2 server's strict rules (``devstack.ec2_strict``) and fault injection
(``devstack.ec2_devtools``), against the real server process, through boto3.

To see an intermediate state (pending, a lagging id, a draining group) a test makes that delay
long, checks, then makes it 0 on the admin API and polls: nothing depends on how fast this machine
is."""

from __future__ import annotations

import pickle
import secrets
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from devstack.moto_client import MOTO_CREDENTIALS, moto_ec2_client
from devstack.procs import free_port, spawn, stop, wait_for_port
from tests.test_aws_server import AMI, ROOT, start_server, until

LONG = 600  # seconds: "not before the test says so"
FAST = {
    "pending_seconds": 0,
    "stopping_seconds": 0,
    "shutting_down_seconds": 0,
    "visibility_lag_seconds": 0,
    "eni_drain_seconds": 0,
}


class Ec2Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ec2 = moto_ec2_client(url)

    def admin(self, method: str, route: str, body: dict | None = None, status: int = 200) -> dict:
        answer = requests.request(method, f"{self.url}/__devstack/ec2/{route}", json=body, timeout=30)
        assert answer.status_code == status, answer.text
        return answer.json()

    def configure(self, **settings: float | bool) -> dict:
        return self.admin("POST", "config", settings)

    def client(self, region: str = "us-east-1", **config) -> object:
        return boto3.client(
            "ec2",
            region_name=region,
            endpoint_url=self.url,
            config=Config(**config),
            aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=30).raise_for_status()
        self.admin("POST", "reset-stats")
        self.configure(strict=True, **FAST)


def spawn_server(log_dir: Path, *options: str):
    port = free_port()
    proc = spawn(
        [sys.executable, "-m", "devstack.aws_server", "--port", str(port), *options],
        log_path=log_dir / "aws.log",
        cwd=ROOT,
    )
    wait_for_port("127.0.0.1", port, proc=proc)
    return proc, Ec2Server(f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    proc, server = spawn_server(tmp_path_factory.mktemp("ec2-strict"))
    yield server
    stop(proc)


@pytest.fixture
def server(shared_server) -> Ec2Server:
    shared_server.reset()
    return shared_server


def run(ec2, token: str | None = None, **params) -> dict:
    token_param = {"ClientToken": token} if token else {}
    return ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, **token_param, **params)


def instance_id(reservation: dict) -> str:
    return reservation["Instances"][0]["InstanceId"]


def instances(ec2, **params) -> dict[str, str]:
    found = ec2.describe_instances(**params)["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in found for i in r["Instances"]}


def state(ec2, iid: str) -> str:
    return instances(ec2, InstanceIds=[iid])[iid]


def error(call, *args, **kwargs) -> tuple[str, int]:
    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    return err.value.response["Error"]["Code"], err.value.response["ResponseMetadata"]["HTTPStatusCode"]


def new_group(ec2, name: str | None = None) -> str:
    return ec2.create_security_group(GroupName=name or f"g-{secrets.token_hex(4)}", Description="test")["GroupId"]


# -- 1. ClientToken idempotency --------------------------------------------------------------------


def test_a_repeated_launch_with_the_same_token_returns_the_original_reservation(server):
    first = run(server.ec2, "ws-1", UserData="boot")
    again = run(server.ec2, "ws-1", UserData="boot")

    assert again["ReservationId"] == first["ReservationId"]
    assert instance_id(again) == instance_id(first)
    assert list(instances(server.ec2)) == [instance_id(first)]


def test_concurrent_launches_with_one_token_make_one_instance(server):
    with ThreadPoolExecutor(8) as pool:
        launched = set(pool.map(lambda _: instance_id(run(server.ec2, "ws-1")), range(8)))

    assert len(launched) == 1
    assert list(instances(server.ec2)) == list(launched)


def test_the_same_token_with_other_parameters_is_a_mismatch(server):
    first = run(server.ec2, "ws-1", UserData="boot")

    assert error(run, server.ec2, "ws-1", UserData="other") == ("IdempotentParameterMismatch", 400)
    assert error(run, server.ec2, "ws-1", UserData="boot", InstanceType="t3.large") == (
        "IdempotentParameterMismatch",
        400,
    )
    assert list(instances(server.ec2)) == [instance_id(first)]


def test_the_token_of_a_terminated_instance_is_refused(server):
    iid = instance_id(run(server.ec2, "ws-1"))
    server.ec2.terminate_instances(InstanceIds=[iid])

    assert error(run, server.ec2, "ws-1") == ("IdempotentInstanceTerminated", 400)
    assert list(instances(server.ec2)) == [iid]
    run(server.ec2, "ws-1-gen2")  # a relaunch needs a new token


def test_the_token_of_a_forgotten_instance_is_still_refused(tmp_path):
    """The forgetter drops terminated instances; their tokens stay for --token-retention-hours."""
    proc, server = spawn_server(tmp_path, "--forget-terminated-after", "0.5", "--visibility-lag-seconds", "0")
    try:
        iid = instance_id(run(server.ec2, "ws-1"))
        server.ec2.terminate_instances(InstanceIds=[iid])
        until(lambda: not instances(server.ec2), timeout=60)  # housekeeping runs every 5 s

        assert error(run, server.ec2, "ws-1") == ("IdempotentInstanceTerminated", 400)
    finally:
        stop(proc)


def test_tokens_are_at_most_64_ascii_characters(server):
    run(server.ec2, "t" * 64)

    assert error(run, server.ec2, "t" * 65) == ("InvalidParameterValue", 400)
    assert error(run, server.ec2, "jeton-é") == ("InvalidParameterValue", 400)
    assert len(instances(server.ec2)) == 1


def test_tokens_belong_to_one_region(server):
    east = instance_id(run(server.ec2, "ws-1"))
    west = instance_id(run(server.client("us-west-2"), "ws-1"))

    assert west != east


# -- 2. the client-token filter --------------------------------------------------------------------


def test_the_client_token_filter_finds_the_launch(server):
    iid = instance_id(run(server.ec2, "ws-1"))
    run(server.ec2, "ws-2")

    assert list(instances(server.ec2, Filters=[{"Name": "client-token", "Values": ["ws-1"]}])) == [iid]
    assert not instances(server.ec2, Filters=[{"Name": "client-token", "Values": ["unknown"]}])
    both = instances(
        server.ec2,
        Filters=[
            {"Name": "client-token", "Values": ["ws-1", "ws-2"]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ],
    )
    assert len(both) == 2


# -- 3. slow state changes -------------------------------------------------------------------------


def test_a_launched_instance_is_pending_then_running(server):
    server.configure(pending_seconds=LONG)
    launched = run(server.ec2, "ws-1")
    iid = instance_id(launched)

    assert launched["Instances"][0]["State"] == {"Code": 0, "Name": "pending"}
    assert state(server.ec2, iid) == "pending"
    assert run(server.ec2, "ws-1")["Instances"][0]["State"]["Name"] == "pending"  # the repeat: current state
    assert error(server.ec2.stop_instances, InstanceIds=[iid]) == ("IncorrectInstanceState", 400)

    server.configure(pending_seconds=0)
    until(lambda: state(server.ec2, iid) == "running")
    assert run(server.ec2, "ws-1")["Instances"][0]["State"]["Name"] == "running"


def test_a_stopped_instance_passes_through_stopping_and_starts_through_pending(server):
    iid = instance_id(run(server.ec2))
    until(lambda: state(server.ec2, iid) == "running")
    server.configure(stopping_seconds=LONG, pending_seconds=LONG)

    stopping = server.ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
    assert stopping["PreviousState"]["Name"] == "running"
    assert stopping["CurrentState"] == {"Code": 64, "Name": "stopping"}
    assert state(server.ec2, iid) == "stopping"
    assert server.ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]["CurrentState"]["Name"] == "stopping"
    assert error(server.ec2.start_instances, InstanceIds=[iid]) == ("IncorrectInstanceState", 400)

    server.configure(stopping_seconds=0)
    until(lambda: state(server.ec2, iid) == "stopped")
    starting = server.ec2.start_instances(InstanceIds=[iid])["StartingInstances"][0]
    assert starting["PreviousState"]["Name"] == "stopped"
    assert starting["CurrentState"] == {"Code": 0, "Name": "pending"}
    assert state(server.ec2, iid) == "pending"

    server.configure(pending_seconds=0)
    until(lambda: state(server.ec2, iid) == "running")


def test_a_terminated_instance_passes_through_shutting_down(server):
    iid = instance_id(run(server.ec2))
    server.configure(shutting_down_seconds=LONG)

    terminating = server.ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert terminating["CurrentState"] == {"Code": 32, "Name": "shutting-down"}
    assert state(server.ec2, iid) == "shutting-down"
    again = server.ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert again["PreviousState"]["Name"] == again["CurrentState"]["Name"] == "shutting-down"
    assert error(server.ec2.start_instances, InstanceIds=[iid]) == ("IncorrectInstanceState", 400)
    assert error(server.ec2.stop_instances, InstanceIds=[iid]) == ("IncorrectInstanceState", 400)

    server.configure(shutting_down_seconds=0)
    until(lambda: state(server.ec2, iid) == "terminated")
    final = server.ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert final["CurrentState"] == {"Code": 48, "Name": "terminated"}
    assert error(server.ec2.stop_instances, InstanceIds=[iid]) == ("IncorrectInstanceState", 400)


# -- 4. eventual consistency -----------------------------------------------------------------------


def test_a_new_instance_is_not_found_until_the_lag_has_passed(server):
    server.configure(visibility_lag_seconds=LONG)
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "test", "Value": "lag"}]}]
    iid = instance_id(run(server.ec2, TagSpecifications=tags))
    not_found = ("InvalidInstanceID.NotFound", 400)

    assert error(server.ec2.describe_instances, InstanceIds=[iid]) == not_found
    assert error(server.ec2.describe_instance_attribute, InstanceId=iid, Attribute="userData") == not_found
    assert error(server.ec2.create_tags, Resources=[iid], Tags=[{"Key": "k", "Value": "v"}]) == not_found
    assert error(server.ec2.stop_instances, InstanceIds=[iid]) == not_found
    assert error(server.ec2.start_instances, InstanceIds=[iid]) == not_found
    assert error(server.ec2.terminate_instances, InstanceIds=[iid]) == not_found
    assert not instances(server.ec2)
    assert not instances(server.ec2, Filters=[{"Name": "tag:test", "Values": ["lag"]}])

    server.configure(visibility_lag_seconds=0)
    # NotFound from TerminateInstances did not terminate it.
    until(lambda: instances(server.ec2, Filters=[{"Name": "tag:test", "Values": ["lag"]}]) == {iid: "running"})
    server.ec2.create_tags(Resources=[iid], Tags=[{"Key": "k", "Value": "v"}])


def test_a_new_security_group_is_not_found_until_the_lag_has_passed(server):
    server.configure(visibility_lag_seconds=LONG)
    gid = new_group(server.ec2, "web")
    not_found = ("InvalidGroup.NotFound", 400)
    ingress = [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}]

    assert error(server.ec2.describe_security_groups, GroupIds=[gid]) == not_found
    assert error(server.ec2.authorize_security_group_ingress, GroupId=gid, IpPermissions=ingress) == not_found
    assert error(server.ec2.revoke_security_group_ingress, GroupId=gid, IpPermissions=ingress) == not_found
    assert error(server.ec2.delete_security_group, GroupId=gid) == not_found
    by_name = [{"Name": "group-name", "Values": ["web"]}]
    assert not server.ec2.describe_security_groups(Filters=by_name)["SecurityGroups"]
    assert error(new_group, server.ec2, "web") == ("InvalidGroup.Duplicate", 400)  # strongly consistent

    server.configure(visibility_lag_seconds=0)
    until(lambda: server.ec2.describe_security_groups(Filters=by_name)["SecurityGroups"])
    server.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=ingress)
    server.ec2.delete_security_group(GroupId=gid)


# -- 5. network interfaces drain -------------------------------------------------------------------


def test_a_security_group_is_in_use_until_its_instances_network_interfaces_have_drained(server):
    server.configure(eni_drain_seconds=LONG)
    gid = new_group(server.ec2)
    iid = instance_id(run(server.ec2, SecurityGroupIds=[gid]))

    assert error(server.ec2.delete_security_group, GroupId=gid) == ("DependencyViolation", 400)
    server.ec2.terminate_instances(InstanceIds=[iid])
    until(lambda: state(server.ec2, iid) == "terminated")
    assert error(server.ec2.delete_security_group, GroupId=gid) == ("DependencyViolation", 400)

    server.configure(eni_drain_seconds=0)
    server.ec2.delete_security_group(GroupId=gid)


def test_a_network_interfaces_security_group_is_in_use_too(server):
    subnet = server.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    gid = new_group(server.ec2)
    iid = instance_id(run(server.ec2, NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [gid]}]))

    assert error(server.ec2.delete_security_group, GroupId=gid) == ("DependencyViolation", 400)
    server.ec2.terminate_instances(InstanceIds=[iid])
    until(lambda: state(server.ec2, iid) == "terminated")
    server.ec2.delete_security_group(GroupId=gid)


# -- 6. faults, stats, config ----------------------------------------------------------------------


def test_a_fault_before_answers_the_error_and_changes_nothing(server):
    server.admin("POST", "faults", {"action": "RunInstances", "code": "RequestLimitExceeded"}, status=201)
    ec2 = server.client(retries={"total_max_attempts": 1})

    assert error(run, ec2, "ws-1") == ("RequestLimitExceeded", 503)
    assert not instances(ec2)
    assert not server.admin("GET", "faults")["faults"]  # count 1: used up
    run(ec2, "ws-1")
    assert len(instances(ec2)) == 1


def test_a_fault_after_commits_the_change_and_the_same_token_recovers_it(server):
    server.admin(
        "POST",
        "faults",
        {"action": "RunInstances", "code": "InsufficientInstanceCapacity", "when": "after"},
        status=201,
    )
    ec2 = server.client(retries={"total_max_attempts": 1})

    assert error(run, ec2, "ws-1") == ("InsufficientInstanceCapacity", 500)
    created = instances(ec2, Filters=[{"Name": "client-token", "Values": ["ws-1"]}])
    assert len(created) == 1
    assert instance_id(run(ec2, "ws-1")) in created


def test_a_delayed_answer_times_out_but_the_instance_exists(server):
    server.admin("POST", "faults", {"action": "RunInstances", "when": "after", "delay_seconds": 3}, status=201)
    impatient = server.client(read_timeout=1, retries={"total_max_attempts": 1})

    with pytest.raises(ReadTimeoutError):
        run(impatient, "ws-1")
    assert len(instances(server.ec2, Filters=[{"Name": "client-token", "Values": ["ws-1"]}])) == 1


def test_a_fault_for_every_action_until_cleared(server):
    fault = server.admin("POST", "faults", {"action": "*", "code": "Unavailable", "count": -1}, status=201)["fault"]
    ec2 = server.client(retries={"total_max_attempts": 1})

    assert fault["status"] == 503
    assert error(ec2.describe_instances) == ("Unavailable", 503)
    assert error(ec2.describe_security_groups) == ("Unavailable", 503)
    assert server.admin("GET", "faults")["faults"][0]["hits"] == 2
    assert server.admin("DELETE", "faults") == {"cleared": 1}
    ec2.describe_instances()


@pytest.mark.parametrize(
    "fault",
    [
        {"action": "RunInstance", "code": "InternalError"},
        {"action": "RunInstances"},
        {"action": "RunInstances", "code": "SomethingNew"},
        {"action": "RunInstances", "code": "InternalError", "when": "later"},
        {"action": "RunInstances", "code": "InternalError", "count": 0},
        {"action": "RunInstances", "delay_seconds": -1},
    ],
)
def test_a_bad_fault_is_refused(server, fault):
    assert "error" in server.admin("POST", "faults", fault, status=400)


def test_stats_count_requests_and_errors_per_action(server):
    run(server.ec2, "ws-1")
    error(run, server.ec2, "ws-1", UserData="other")
    server.ec2.describe_instances()

    stats = server.admin("POST", "reset-stats")
    assert stats == {
        "requests": {"RunInstances": 2, "DescribeInstances": 1},
        "errors": {"RunInstances": {"IdempotentParameterMismatch": 1}},
    }
    assert server.admin("GET", "stats") == {"requests": {}, "errors": {}}


def test_the_config_is_read_and_changed_at_run_time(server):
    assert server.configure(pending_seconds=1.5)["pending_seconds"] == 1.5
    assert server.admin("GET", "config")["pending_seconds"] == 1.5
    assert "error" in server.admin("POST", "config", {"pending_seconds": -1}, status=400)
    assert "error" in server.admin("POST", "config", {"strict": "yes"}, status=400)
    assert "error" in server.admin("POST", "config", {"speed": 1}, status=400)
    assert server.admin("GET", "config")["pending_seconds"] == 1.5


def test_moto_reset_also_forgets_tokens_and_faults(server):
    first = instance_id(run(server.ec2, "ws-1"))
    server.admin("POST", "faults", {"action": "DescribeVpcs", "code": "InternalError", "count": -1}, status=201)

    requests.post(f"{server.url}/moto-api/reset", timeout=30).raise_for_status()

    assert instance_id(run(server.ec2, "ws-1")) != first
    assert not server.admin("GET", "faults")["faults"]


# -- lenient mode, restarts ------------------------------------------------------------------------


def test_lenient_is_plain_moto(tmp_path):
    proc, server = spawn_server(tmp_path, "--lenient")
    try:
        gid = new_group(server.ec2)
        first = run(server.ec2, "ws-1", SecurityGroupIds=[gid])
        second = run(server.ec2, "ws-1", UserData="other", SecurityGroupIds=[gid])

        assert instance_id(first) != instance_id(second)  # moto ignores the token
        assert state(server.ec2, instance_id(first)) == "running"  # at once, and found at once
        server.ec2.terminate_instances(InstanceIds=[instance_id(first)])
        assert state(server.ec2, instance_id(first)) == "terminated"
        server.ec2.delete_security_group(GroupId=gid)  # although an instance uses it
        assert server.admin("GET", "config")["strict"] is False
    finally:
        stop(proc)


def test_tokens_and_states_survive_a_restart(tmp_path):
    options = ("--state-file", str(tmp_path / "ec2.pickle"), "--forget-terminated-after", "0.5")
    proc, server = spawn_server(tmp_path, *options, "--pending-seconds", str(LONG))
    kept = instance_id(run(server.ec2, "ws-1"))
    gone = instance_id(run(server.ec2, "ws-2"))
    server.configure(visibility_lag_seconds=0)
    server.ec2.terminate_instances(InstanceIds=[gone])
    stop(proc, sig=signal.SIGTERM)  # saves on the way out

    proc, server = spawn_server(tmp_path, *options)  # default timings: pending 2 s
    try:
        until(lambda: state(server.ec2, kept) == "running")  # the move begun before the restart ends
        assert instance_id(run(server.ec2, "ws-1")) == kept
        until(lambda: gone not in instances(server.ec2), timeout=60)  # forgotten; its token is not
        assert error(run, server.ec2, "ws-2") == ("IdempotentInstanceTerminated", 400)
    finally:
        stop(proc)


def test_a_state_file_from_before_the_strict_layer_still_loads(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port, 3600)
    server = Ec2Server(f"http://127.0.0.1:{port}")
    server.configure(**FAST)
    iid = instance_id(run(server.ec2, "ws-1"))
    until(lambda: state(server.ec2, iid) == "running")  # as the server before the strict layer saved them
    stop(proc, sig=signal.SIGTERM)
    state_file = tmp_path / "ec2.pickle"
    state_file.write_bytes(pickle.dumps(pickle.loads(state_file.read_bytes())["ec2"]))  # moto's backend alone

    proc = start_server(tmp_path, port, 3600)
    try:
        assert state(server.ec2, iid) == "running"
        assert run(server.ec2, "ws-1")["Instances"][0]["InstanceId"] != iid  # no tokens in an old file
    finally:
        stop(proc)
