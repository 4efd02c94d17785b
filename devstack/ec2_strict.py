"""Strict EC2: the rules that make moto's EC2 behave like the real service where tenantflow's
correctness depends on it. moto is kinder than EC2 (see DESIGN.md, "Facts verified on these
machines"); code that only ever met moto would break on its first day in AWS.

The rules run in moto's own process, in front of moto's handlers (``devstack.ec2_devtools``
parses each Query API call and hands it here) and around moto's in-process backend objects.
``--lenient`` (or ``{"strict": false}`` on the admin API) turns them off: plain moto, for demos.

1. ClientToken idempotency of RunInstances (``ClientTokens``).
   https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html
   - Same token, same parameters: the original reservation again (same instance ids, current
     states), no new instance. Every parameter except ``ClientToken`` is compared, UserData
     included; a difference is ``IdempotentParameterMismatch`` (400).
   - Same token after that launch's instance was terminated: ``IdempotentInstanceTerminated`` (400),
     so a relaunch needs a new token. Tokens are kept ``token_retention_hours`` (24) after the
     termination, whether or not the forgetter has already dropped the instance itself.
   - A token longer than 64 ASCII characters: ``InvalidParameterValue`` (400).
   - Tokens belong to one account and region, as on EC2.
2. The ``client-token`` filter of DescribeInstances (moto answers it with an HTTP 500) is answered
   from the token table: rewritten into an ``instance-id`` filter.
3. Slow state changes (``Transitions``); moto flips instances at once.
   https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-lifecycle.html
   RunInstances/StartInstances -> ``pending`` (0) for ``pending_seconds``, then ``running`` (16);
   StopInstances -> ``stopping`` (64) for ``stopping_seconds``, then ``stopped`` (80);
   TerminateInstances -> ``shutting-down`` (32) for ``shutting_down_seconds``, then ``terminated``
   (48). The backend's instance really holds the intermediate state, so answers, DescribeInstances
   and its ``instance-state-name`` filter all agree. States move on at the next request and in the
   server's housekeeping. Like EC2:
   - StopInstances of a ``pending``, ``shutting-down`` or ``terminated`` instance, and
     StartInstances of a ``stopping``, ``shutting-down`` or ``terminated`` one, answer
     ``IncorrectInstanceState`` (400) and change nothing (moto would even "stop" a terminated one).
     For a pending instance EC2 says "Instance '...' cannot be stopped as it has never reached the
     'running' state" (https://github.com/cloud-custodian/cloud-custodian/pull/6014).
   - Repeats change nothing: stopping a stopping/stopped instance, starting a pending/running one,
     terminating a shutting-down/terminated one answer the current state.
4. Eventual consistency (``VisibilityLag``) for ``visibility_lag_seconds`` after a resource is
   created. https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html
   - A new instance's id named in DescribeInstances, DescribeInstanceAttribute,
     DescribeInstanceStatus, Terminate/Stop/Start/RebootInstances, ModifyInstanceAttribute or
     Create/DeleteTags: ``InvalidInstanceID.NotFound`` (400), and nothing happens; in particular
     TerminateInstances does not terminate it ("this doesn't mean the instance has been or will be
     terminated"). DescribeInstances by filter or unfiltered leaves it out.
   - A new security group's id named in DescribeSecurityGroups, Authorize/RevokeSecurityGroup
     Ingress/Egress, DeleteSecurityGroup or Create/DeleteTags: ``InvalidGroup.NotFound`` (400).
     DescribeSecurityGroups by filter (or by name) leaves it out. CreateSecurityGroup's uniqueness
     check stays strongly consistent: a second group of that name in the VPC is
     ``InvalidGroup.Duplicate`` at once (moto's own check).
5. Network interfaces outlive their instance briefly (``EniDrain``): DeleteSecurityGroup of a
   group used by an instance (its groups or its network interfaces' groups) that is not
   terminated, or that terminated less than ``eni_drain_seconds`` ago, answers
   ``DependencyViolation`` (400); moto deletes it at once.
   https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteSecurityGroup.html

Timings are read at each check, so a change on the admin API applies to resources already in
flight. All times are wall-clock, because this state is saved with moto's (``StrictState``) and
must mean the same after a restart.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from moto.backends import get_backend
from moto.ec2.models.instances import InstanceState

from devstack.ec2_query import Answer, Ec2Call, Ec2Error, find_text, omit_items, run_answer_from, set_current_states

STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
MAX_TOKEN_LENGTH = 64
_NO_INSTANCE = "i-00000000000000000"  # matches nothing: a client-token filter for an unknown token

Moto = Callable[[Ec2Call], Answer]
Key = tuple[str, str, str]  # account, region, and an instance id, group id or client token

# The parameters that name existing resources, per action (for the visibility lag).
ID_PARAMETERS = {
    "DescribeInstances": "InstanceId",
    "DescribeInstanceAttribute": "InstanceId",
    "DescribeInstanceStatus": "InstanceId",
    "ModifyInstanceAttribute": "InstanceId",
    "TerminateInstances": "InstanceId",
    "StopInstances": "InstanceId",
    "StartInstances": "InstanceId",
    "RebootInstances": "InstanceId",
    "CreateTags": "ResourceId",
    "DeleteTags": "ResourceId",
    "DescribeSecurityGroups": "GroupId",
    "AuthorizeSecurityGroupIngress": "GroupId",
    "AuthorizeSecurityGroupEgress": "GroupId",
    "RevokeSecurityGroupIngress": "GroupId",
    "RevokeSecurityGroupEgress": "GroupId",
    "DeleteSecurityGroup": "GroupId",
}
# Where Describe answers list resources: action -> (the top-level list, the id in each item).
LISTED_IN = {
    "DescribeInstances": ("reservationSet", "instancesSet/item/instanceId"),
    "DescribeInstanceStatus": ("instanceStatusSet", "instanceId"),
    "DescribeSecurityGroups": ("securityGroupInfo", "groupId"),
}


@dataclass
class StrictConfig:
    strict: bool = True
    pending_seconds: float = 2.0
    stopping_seconds: float = 1.0
    shutting_down_seconds: float = 2.0
    visibility_lag_seconds: float = 1.0
    eni_drain_seconds: float = 3.0
    token_retention_hours: float = 24.0

    def update(self, changes: dict[str, Any]) -> None:
        """Applies all of ``changes`` or, on the first bad one, none (ValueError)."""
        known = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"{name}: unknown setting; known: {sorted(known)}")
            if name == "strict" and not isinstance(value, bool):
                raise ValueError("strict: expected true or false")
            if name != "strict" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name}: expected a number >= 0")
        for name, value in changes.items():
            setattr(self, name, value if name == "strict" else float(value))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenRecord:
    fingerprint: str
    instance_ids: list[str]
    terminated_at: float | None = None


@dataclass
class Transition:
    target: str  # the state it ends in: running, stopped or terminated
    since: float


@dataclass
class Drain:
    terminated_at: float
    group_ids: frozenset[str]


@dataclass
class StrictState:
    """What the rules remember; saved in the state file next to moto's backend."""

    tokens: dict[Key, TokenRecord] = field(default_factory=dict)
    transitions: dict[Key, Transition] = field(default_factory=dict)
    created: dict[Key, float] = field(default_factory=dict)
    draining: dict[Key, Drain] = field(default_factory=dict)

    def clear(self) -> None:
        for table in (self.tokens, self.transitions, self.created, self.draining):
            table.clear()


def ec2_backend(account: str, region: str) -> Any:
    return get_backend("ec2")[account][region]


def set_state(instance: Any, name: str) -> None:
    # moto copies the state object before changing it in place, so a fresh one is safe to assign.
    instance._state = InstanceState(name, STATE_CODES[name])


def instance_groups(instance: Any) -> frozenset[str]:
    """An instance's security groups, its own and its network interfaces' (moto keeps both)."""
    groups = {group.id for group in instance.security_groups}
    groups.update(group.id for nic in instance.nics.values() for group in nic.group_set)
    return frozenset(groups)


class ClientTokens:
    """Rules 1 and 2: RunInstances idempotency and the ``client-token`` filter."""

    _NOT_COMPARED = frozenset({"Action", "Version", "ClientToken"})

    def __init__(self, state: StrictState, config: StrictConfig) -> None:
        self._tokens = state.tokens
        self._config = config

    @staticmethod
    def token(call: Ec2Call) -> str | None:
        token = call.params.get("ClientToken") or None
        if token is not None and (len(token) > MAX_TOKEN_LENGTH or not token.isascii()):
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ({token}) for parameter clientToken is invalid. "
                f"The client token must be at most {MAX_TOKEN_LENGTH} ASCII characters.",
            )
        return token

    def _fingerprint(self, call: Ec2Call) -> str:
        compared = sorted((k, v) for k, v in call.params.items() if k not in self._NOT_COMPARED)
        return hashlib.sha256(json.dumps(compared).encode()).hexdigest()

    def earlier_launch(self, call: Ec2Call, token: str, now: float) -> TokenRecord | None:
        """The launch this call repeats, if any; an error if it may not repeat it."""
        record = self._tokens.get((*call.scope, token))
        if record is None:
            return None
        if record.fingerprint != self._fingerprint(call):
            raise Ec2Error(
                "IdempotentParameterMismatch",
                "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).",
            )
        if self._is_terminated(record, ec2_backend(*call.scope), now):
            raise Ec2Error(
                "IdempotentInstanceTerminated",
                "The client token you have provided is associated with a resource that is already "
                "deleted. Please use a different client token.",
            )
        return record

    @staticmethod
    def _is_terminated(record: TokenRecord, backend: Any, now: float) -> bool:
        # Also catches instances terminated while the rules were off (and since forgotten).
        if record.terminated_at is None:
            for instance_id in record.instance_ids:
                instance = backend.get_instance_by_id(instance_id)
                if instance is None or instance.state in ("shutting-down", "terminated"):
                    record.terminated_at = now
                    break
        return record.terminated_at is not None

    def remember(self, call: Ec2Call, token: str, instance_ids: list[str]) -> None:
        self._tokens[(*call.scope, token)] = TokenRecord(self._fingerprint(call), instance_ids)

    def terminated(self, scope: tuple[str, str], instance: Any, now: float) -> None:
        record = self._tokens.get((*scope, instance.client_token))
        if record is not None and instance.id in record.instance_ids and record.terminated_at is None:
            record.terminated_at = now

    def rewrite_filter(self, call: Ec2Call) -> Ec2Call:
        """The call with each ``client-token`` filter turned into an ``instance-id`` filter."""
        numbers = call.filter_numbers("client-token")
        if not numbers:
            return call
        params = dict(call.params)
        for number in numbers:
            prefix = f"Filter.{number}.Value"
            records = [self._tokens.get((*call.scope, token)) for token in call.values(prefix)]
            ids = [i for record in records if record for i in record.instance_ids] or [_NO_INSTANCE]
            for name in [name for name in params if name.startswith(prefix + ".")]:
                del params[name]
            params[f"Filter.{number}.Name"] = "instance-id"
            params.update({f"{prefix}.{n}": instance_id for n, instance_id in enumerate(ids, 1)})
        return call.with_params(params)

    def expire(self, now: float) -> None:
        retention = self._config.token_retention_hours * 3600
        for key, record in list(self._tokens.items()):
            if record.terminated_at is not None and now - record.terminated_at > retention:
                del self._tokens[key]


class Transitions:
    """Rule 3: instances pass through pending, stopping and shutting-down."""

    # action -> (the states it moves an instance from, the state it moves it to)
    _MOVES = {
        "RunInstances": (frozenset({"running"}), "running"),  # moto creates instances running
        "StartInstances": (frozenset({"stopped"}), "running"),
        "StopInstances": (frozenset({"running"}), "stopped"),
        "TerminateInstances": (frozenset({"pending", "running", "stopping", "stopped"}), "terminated"),
    }
    _DURING = {"running": "pending", "stopped": "stopping", "terminated": "shutting-down"}
    # action -> (states it accepts, for the error message); repeats are accepted and change nothing.
    _ACCEPTS = {
        "StartInstances": (frozenset({"stopped", "pending", "running"}), "started"),
        "StopInstances": (frozenset({"running", "stopping", "stopped"}), "stopped"),
    }

    def __init__(
        self, state: StrictState, config: StrictConfig, on_terminated: Callable[[Key, Any, float], None]
    ) -> None:
        self._transitions = state.transitions
        self._config = config
        self._on_terminated = on_terminated

    def _duration(self, target: str) -> float:
        return {
            "running": self._config.pending_seconds,
            "stopped": self._config.stopping_seconds,
            "terminated": self._config.shutting_down_seconds,
        }[target]

    def check(self, action: str, instances: Iterable[Any]) -> None:
        if action not in self._ACCEPTS:
            return
        accepted, verb = self._ACCEPTS[action]
        for instance in instances:
            if action == "StopInstances" and instance.state == "pending":  # EC2's own words for this case
                raise Ec2Error(
                    "IncorrectInstanceState",
                    f"Instance '{instance.id}' cannot be stopped as it has never reached the 'running' state.",
                )
            if instance.state not in accepted:
                raise Ec2Error(
                    "IncorrectInstanceState",
                    f"The instance '{instance.id}' is not in a state from which it can be {verb}.",
                )

    def moved(self, action: str, scope: tuple[str, str], instance: Any, before: str, now: float) -> str:
        """Puts the instance moto has just changed into the state EC2 would show; returns it."""
        moves_from, target = self._MOVES[action]
        if before in moves_from:
            set_state(instance, self._DURING[target])
            self._transitions[(*scope, instance.id)] = Transition(target, now)
        else:
            set_state(instance, before)  # a repeat: undo moto's flip, keep any move in progress
        return instance.state

    def advance(self, now: float) -> None:
        for key, transition in list(self._transitions.items()):
            done_at = transition.since + self._duration(transition.target)
            if now < done_at:
                continue
            del self._transitions[key]
            instance = ec2_backend(key[0], key[1]).get_instance_by_id(key[2])
            # Unless something else moved it meanwhile (a call made while the rules were off).
            if instance is not None and instance.state == self._DURING[transition.target]:
                set_state(instance, transition.target)
                if transition.target == "terminated":
                    self._on_terminated(key, instance, done_at)


class VisibilityLag:
    """Rule 4: new instances and security groups are invisible for a while."""

    def __init__(self, state: StrictState, config: StrictConfig) -> None:
        self._created = state.created
        self._config = config

    def created(self, scope: tuple[str, str], resource_ids: Iterable[str], now: float) -> None:
        self._created.update({(*scope, resource_id): now for resource_id in resource_ids})

    def hidden(self, scope: tuple[str, str], now: float) -> frozenset[str]:
        lag = self._config.visibility_lag_seconds
        return frozenset(key[2] for key, created in self._created.items() if key[:2] == scope and now - created < lag)

    @staticmethod
    def check(call: Ec2Call, hidden: frozenset[str]) -> None:
        name = ID_PARAMETERS.get(call.action)
        named = [i for i in call.values(name) if i in hidden] if name else []
        instances = [i for i in named if i.startswith("i-")]
        if instances:
            raise Ec2Error(
                "InvalidInstanceID.NotFound",
                f"The instance ID '{instances[0]}' does not exist"
                if len(instances) == 1
                else f"The instance IDs '{', '.join(instances)}' do not exist",
            )
        if named:
            raise Ec2Error("InvalidGroup.NotFound", f"The security group '{named[0]}' does not exist")

    @staticmethod
    def omit(action: str, answer: Answer, hidden: frozenset[str]) -> Answer:
        """The answer of a Describe call without the hidden resources."""
        if action not in LISTED_IN or not answer.ok or not any(i.encode() in answer.body for i in hidden):
            return answer
        return omit_items(answer, *LISTED_IN[action], hidden.__contains__)

    def expire(self, now: float) -> None:
        lag = self._config.visibility_lag_seconds
        for key, created in list(self._created.items()):
            if now - created >= lag:
                del self._created[key]


class EniDrain:
    """Rule 5: a security group stays in use while its instances' network interfaces drain."""

    def __init__(self, state: StrictState, config: StrictConfig) -> None:
        self._draining = state.draining
        self._config = config

    def terminated(self, key: Key, instance: Any, at: float) -> None:
        self._draining[key] = Drain(at, instance_groups(instance))

    def check_delete(self, call: Ec2Call, now: float) -> None:
        backend = ec2_backend(*call.scope)
        group_id = call.params.get("GroupId")
        if group_id is None and call.params.get("GroupName"):
            group = backend.get_security_group_from_name(call.params["GroupName"])
            group_id = group.id if group else None
        if group_id is None:
            return  # moto gives the error
        in_use = any(
            instance.state != "terminated" and group_id in instance_groups(instance)
            for instance in backend.all_instances()
        )
        draining = any(
            key[:2] == call.scope and group_id in drain.group_ids and self._draining_at(drain, now)
            for key, drain in self._draining.items()
        )
        if in_use or draining:
            raise Ec2Error("DependencyViolation", f"resource {group_id} has a dependent object")

    def _draining_at(self, drain: Drain, now: float) -> bool:
        return now - drain.terminated_at < self._config.eni_drain_seconds

    def expire(self, now: float) -> None:
        for key, drain in list(self._draining.items()):
            if not self._draining_at(drain, now):
                del self._draining[key]


class StrictEC2:
    """Runs one EC2 call through the rules; ``moto`` runs a call through moto itself.

    Calls that change state run one at a time (under ``_mutex``), so two launches with one token
    cannot both miss the token table, and no state moves on halfway through a call."""

    def __init__(
        self, config: StrictConfig, state: StrictState | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.state = state or StrictState()
        self._clock = clock
        self._mutex = threading.RLock()
        self.tokens = ClientTokens(self.state, config)
        self.drain = EniDrain(self.state, config)
        self.transitions = Transitions(self.state, config, self.drain.terminated)
        self.lag = VisibilityLag(self.state, config)
        self._handlers: dict[str, Callable[[Ec2Call, Moto, float], Answer]] = {
            "RunInstances": self._run_instances,
            "StartInstances": self._change_state,
            "StopInstances": self._change_state,
            "TerminateInstances": self._change_state,
            "DescribeInstances": self._describe_instances,
            "CreateSecurityGroup": self._create_security_group,
            "DeleteSecurityGroup": self._delete_security_group,
        }

    def handle(self, call: Ec2Call, moto: Moto) -> Answer:
        now = self._clock()
        with self._mutex:
            self.transitions.advance(now)  # even when lenient, so nothing stays half-way
            hidden = self.lag.hidden(call.scope, now)
        if not self.config.strict:
            return moto(call)
        try:
            self.lag.check(call, hidden)
            handler = self._handlers.get(call.action)
            return self.lag.omit(call.action, handler(call, moto, now) if handler else moto(call), hidden)
        except Ec2Error as err:
            return err.answer()

    def housekeeping(self) -> None:
        now = self._clock()
        with self._mutex:
            self.transitions.advance(now)
            self.tokens.expire(now)
            self.lag.expire(now)
            self.drain.expire(now)

    def reset(self) -> None:
        with self._mutex:
            self.state.clear()

    def _run_instances(self, call: Ec2Call, moto: Moto, now: float) -> Answer:
        token = self.tokens.token(call)
        with self._mutex:
            earlier = self.tokens.earlier_launch(call, token, now) if token else None
            if earlier is not None:  # answered with the original reservation as it is now
                ids = {f"InstanceId.{n}": instance_id for n, instance_id in enumerate(earlier.instance_ids, 1)}
                describe = {"Action": "DescribeInstances", "Version": call.params.get("Version", ""), **ids}
                return run_answer_from(moto(call.with_params(describe)))
            answer = moto(call)
            if answer.ok:
                reservation = ec2_backend(*call.scope).reservations[find_text(answer, "reservationId")]
                for instance in reservation.instances:
                    self.transitions.moved(call.action, call.scope, instance, "running", now)
                self.lag.created(call.scope, [i.id for i in reservation.instances], now)
                if token:
                    self.tokens.remember(call, token, [i.id for i in reservation.instances])
            return answer

    def _change_state(self, call: Ec2Call, moto: Moto, now: float) -> Answer:
        with self._mutex:
            backend = ec2_backend(*call.scope)
            named = [backend.get_instance_by_id(i) for i in call.values("InstanceId")]
            instances = {instance.id: instance for instance in named if instance is not None}
            self.transitions.check(call.action, instances.values())
            before = {instance_id: instance.state for instance_id, instance in instances.items()}
            answer = moto(call)
            if not answer.ok:
                return answer
            states = {}
            for instance_id, instance in instances.items():
                state = self.transitions.moved(call.action, call.scope, instance, before[instance_id], now)
                states[instance_id] = (state, STATE_CODES[state])
                if call.action == "TerminateInstances":
                    self.tokens.terminated(call.scope, instance, now)
            return set_current_states(answer, states)

    def _describe_instances(self, call: Ec2Call, moto: Moto, now: float) -> Answer:
        with self._mutex:
            call = self.tokens.rewrite_filter(call)
        return moto(call)  # not under the mutex: tag-filtered describes can be slow

    def _create_security_group(self, call: Ec2Call, moto: Moto, now: float) -> Answer:
        with self._mutex:
            answer = moto(call)
            if answer.ok:
                self.lag.created(call.scope, [find_text(answer, "groupId")], now)
            return answer

    def _delete_security_group(self, call: Ec2Call, moto: Moto, now: float) -> Answer:
        with self._mutex:
            self.drain.check_delete(call, now)
            return moto(call)
