"""The EC2 Query API as the strict layer in front of moto sees it: a request (``Action=...`` and
flattened parameters such as ``InstanceId.1`` or ``Filter.1.Value.2``, in a POST form body as boto3
sends them, or a query string), the answer of a WSGI app, EC2's error XML, and the few XML edits
the strict rules make to moto's answers.

Error answers have the shape EC2 documents (no XML namespace, a ``RequestID``), which botocore
parses into ``ClientError`` with ``Error.Code`` and the HTTP status:
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html#api-error-response
"""

from __future__ import annotations

import io
import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode
from xml.sax.saxutils import escape

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import BaseResponse

EC2_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15"
ET.register_namespace("", EC2_NAMESPACE)  # so edited answers keep EC2's default namespace, unprefixed

_DEFAULT_REGION = "us-east-1"
_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status < 400

    def error_code(self) -> str | None:
        if self.ok:
            return None
        found = _ERROR_CODE.search(self.body)
        return found.group(1).decode() if found else f"HTTP {self.status}"

    def send(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        start_response(f"{self.status} {_phrase(self.status)}", [*headers, ("Content-Length", str(len(self.body)))])
        return [self.body]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def error_answer(code: str, message: str, status: int = 400) -> Answer:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(code)}</Code>'
        f"<Message>{escape(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return Answer(status, [("Content-Type", "text/xml;charset=UTF-8")], body.encode())


class Ec2Error(Exception):
    """An EC2 client error (HTTP 400 unless told), answered instead of calling moto."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def answer(self) -> Answer:
        return error_answer(self.code, self.message, self.status)


def call_wsgi(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Answer:
    """Runs a WSGI app to the end and keeps its whole answer."""
    captured: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        captured["status"], captured["headers"] = int(status.split()[0]), headers
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return Answer(captured["status"], captured["headers"], b"".join(chunks))


def read_body(environ: dict[str, Any]) -> bytes:
    """The request body; the environ gets a fresh stream over it, so the app can still read it."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


@dataclass
class Ec2Call:
    """One EC2 Query API request: its action, its flat parameters, and who it is for."""

    action: str
    params: dict[str, str]
    account: str
    region: str
    environ: dict[str, Any]

    @property
    def scope(self) -> tuple[str, str]:
        return self.account, self.region

    @classmethod
    def parse(cls, environ: dict[str, Any]) -> Ec2Call | None:
        """The EC2 call in this request, or None when it is not one (moto's own API, other
        services)."""
        if environ.get("PATH_INFO", "/") != "/" or _signed_for(environ) not in (None, "ec2"):
            return None
        params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        if environ.get("REQUEST_METHOD") == "POST":
            params.update(parse_qsl(read_body(environ).decode("utf-8", "replace"), keep_blank_values=True))
        if "Action" not in params:
            return None
        return cls(params["Action"], params, _account(environ), _region(environ), environ)

    def values(self, name: str) -> list[str]:
        """A parameter given once (``GroupId``) or as a list (``InstanceId.1``, ``InstanceId.2``)."""
        found = [
            (int(k[len(name) + 1 :]), v)
            for k, v in self.params.items()
            if k.startswith(name + ".") and k[len(name) + 1 :].isdigit()
        ]
        single = [self.params[name]] if name in self.params else []
        return single + [v for _n, v in sorted(found)]

    def filter_numbers(self, name: str) -> list[str]:
        """The N of each ``Filter.N.Name`` that names this filter."""
        return [k.split(".")[1] for k, v in self.params.items() if v == name and re.fullmatch(r"Filter\.\d+\.Name", k)]

    def with_params(self, params: dict[str, str]) -> Ec2Call:
        return Ec2Call(params.get("Action", self.action), params, self.account, self.region, self.environ)

    def environ_for_moto(self) -> dict[str, Any]:
        """The original request with these parameters, for moto (which checks no signature)."""
        environ = dict(self.environ)
        encoded = urlencode(self.params).encode()
        if environ.get("REQUEST_METHOD") == "POST":
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(encoded), str(len(encoded))
            environ["QUERY_STRING"] = ""
        else:
            environ["QUERY_STRING"] = encoded.decode()
        return environ


def _credential_scope(environ: dict[str, Any]) -> list[str]:
    # "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/ec2/aws4_request, SignedHeaders=..."
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" not in auth:
        return []
    return auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")


def _signed_for(environ: dict[str, Any]) -> str | None:
    scope = _credential_scope(environ)
    return scope[3].lower() if len(scope) == 5 else None


def _region(environ: dict[str, Any]) -> str:
    # moto's own order (BaseResponse.get_region_from_url): host name, user agent, credential scope.
    host_match = BaseResponse.region_regex.search(environ.get("HTTP_HOST", ""))
    agent_match = BaseResponse.region_from_useragent_regex.search(environ.get("HTTP_USER_AGENT", ""))
    if host_match or agent_match:
        return (host_match or agent_match).group(1)
    scope = _credential_scope(environ)
    return scope[2] if len(scope) == 5 else _DEFAULT_REGION


def _account(environ: dict[str, Any]) -> str:
    # moto's own order (BaseResponse.get_current_account).
    if "MOTO_ACCOUNT_ID" in os.environ:
        return os.environ["MOTO_ACCOUNT_ID"]
    if environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
        return environ["HTTP_X_MOTO_ACCOUNT_ID"]
    match = BaseResponse.access_key_regex.search(environ.get("HTTP_AUTHORIZATION", ""))
    if not match:
        return DEFAULT_ACCOUNT_ID
    from moto.iam.models import get_account_id_from  # moto imports IAM lazily too

    return get_account_id_from(match.group(1))


# -- edits of moto's XML answers ----------------------------------------------------------------


def _tag(root: ET.Element, path: str) -> str:
    """``path`` (``a/b/c``) with each step in the answer's namespace."""
    namespace = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    return "/".join(namespace + step for step in path.split("/"))


def edit_xml(answer: Answer, edit: Callable[[ET.Element, Callable[[str], str]], bool]) -> Answer:
    """``answer`` with its XML changed by ``edit(root, tag)``, which returns whether it changed
    anything (``tag`` qualifies a name with the answer's namespace)."""
    root = ET.fromstring(answer.body)
    if not edit(root, lambda name: _tag(root, name)):
        return answer
    return Answer(answer.status, answer.headers, ET.tostring(root, encoding="utf-8", xml_declaration=True))


def omit_items(answer: Answer, container: str, id_path: str, hidden: Callable[[str], bool]) -> Answer:
    """Drops the items of the top-level list ``container`` (e.g. ``securityGroupInfo``) that name a
    hidden id at ``id_path`` (e.g. ``groupId``, or ``instancesSet/item/instanceId``)."""

    def edit(root: ET.Element, tag: Callable[[str], str]) -> bool:
        changed = False
        for parent in root.findall(tag(container)):
            for item in parent.findall(tag("item")):
                if any(hidden(found.text or "") for found in item.findall(tag(id_path))):
                    parent.remove(item)
                    changed = True
        return changed

    return edit_xml(answer, edit)


def set_current_states(answer: Answer, states: dict[str, tuple[str, int]]) -> Answer:
    """Sets ``currentState`` of each instance named in ``states`` in a Start/Stop/TerminateInstances
    answer."""

    def edit(root: ET.Element, tag: Callable[[str], str]) -> bool:
        for item in root.iter(tag("item")):
            state = states.get(item.findtext(tag("instanceId")) or "")
            current = item.find(tag("currentState"))
            if state is not None and current is not None:
                current.find(tag("name")).text, current.find(tag("code")).text = state[0], str(state[1])
        return True

    return edit_xml(answer, edit)


def run_answer_from(described: Answer) -> Answer:
    """A RunInstances answer for the reservation in a DescribeInstances answer: both carry the same
    reservation fields (reservationId, ownerId, groupSet, instancesSet)."""
    if not described.ok:
        return described
    root = ET.fromstring(described.body)
    reservation = root.find(_tag(root, "reservationSet/item"))
    if reservation is None:
        raise Ec2Error("InternalError", "An internal error has occurred.", 500)
    run = ET.Element(_tag(root, "RunInstancesResponse"))
    run.extend(list(reservation))
    ET.SubElement(run, _tag(root, "requestId")).text = str(uuid.uuid4())
    return Answer(described.status, described.headers, ET.tostring(run, encoding="utf-8", xml_declaration=True))


def find_text(answer: Answer, name: str) -> str | None:
    """The first ``name`` element's text in the answer (e.g. ``groupId``, ``reservationId``)."""
    root = ET.fromstring(answer.body)
    return root.findtext(f".//{_tag(root, name)}")
