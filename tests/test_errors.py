"""How a failed client call reaches Temporal: classified errors keep their cause, unrecognised ones
pass through unchanged, and both convert to a Temporal failure (an error that is its own cause
made the SDK's converter recurse until RecursionError, so the activity retried forever with
"Failed building exception result")."""

from __future__ import annotations

import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from neon_api import NeonAPI
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DefaultFailureConverter, PayloadConverter
from temporalio.exceptions import ApplicationError

from activities.ec2 import call_ec2, make_ec2_client
from activities.errors import call_in_thread
from activities.neon import LOCKED_RETRY_SECONDS, call_neon
from tests.conftest import NEON_PROJECT
from tests.test_neon_server import BRANCHES_ROUTE


class _HtmlErrorPage(BaseHTTPRequestHandler):
    """What a crashed handler or a proxy in front of AWS answers: HTML, not AWS's XML."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = b"<!doctype html>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>\n"
        self.send_response(500)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def html_500_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlErrorPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def to_failure(err: BaseException) -> Failure:
    failure = Failure()
    DefaultFailureConverter().to_failure(err, PayloadConverter.default, failure)
    return failure


def raise_it(err: Exception):
    def call():
        raise err

    return call


async def test_an_unrecognised_error_passes_through_unchanged_and_converts():
    original = KeyError("no such thing")

    with pytest.raises(KeyError) as raised:
        await call_in_thread(lambda err: err, raise_it(original))

    assert raised.value is original
    assert raised.value.__cause__ is None
    assert to_failure(raised.value).message == "'no such thing'"


async def test_a_classified_error_keeps_the_original_as_its_cause():
    original = ConnectionResetError("peer went away")

    with pytest.raises(ApplicationError) as raised:
        await call_in_thread(lambda err: ApplicationError("mapped", type="Mapped"), raise_it(original))

    assert raised.value.__cause__ is original
    failure = to_failure(raised.value)
    assert failure.application_failure_info.type == "Mapped"
    assert failure.cause.message == "peer went away"


async def test_an_html_500_from_ec2_is_a_retryable_error(html_500_url, settings):
    client = make_ec2_client(settings.model_copy(update={"aws_endpoint_url": html_500_url}))

    with pytest.raises(ApplicationError) as raised:
        await call_ec2(client, "describe_instances")

    assert raised.value.type == "AwsBadResponse"
    assert not raised.value.non_retryable
    assert "500 Internal Server Error" in raised.value.message
    assert to_failure(raised.value).application_failure_info.type == "AwsBadResponse"


def neon_branch_create(neon_url):
    client = NeonAPI(neon_url[1], base_url=f"{neon_url[0]}/api/v2/")
    return call_neon(client.branch_create, NEON_PROJECT, branch={"name": f"tf-errors-{secrets.token_hex(4)}"})


async def test_a_locked_neon_project_is_retried_soon_not_after_the_backoff(neon_url, neon_faults):
    neon_faults(BRANCHES_ROUTE, 423, method="POST", count=5)

    delays = []
    for _ in range(5):
        with pytest.raises(ApplicationError) as raised:
            await neon_branch_create(neon_url)
        assert raised.value.type == "NeonLocked" and not raised.value.non_retryable
        delays.append(raised.value.next_retry_delay.total_seconds())

    low, high = LOCKED_RETRY_SECONDS
    assert all(low <= d <= high for d in delays), delays
    assert len(set(delays)) > 1, "jittered, so waiting orgs do not retry in step"


async def test_a_locked_answer_with_retry_after_is_retried_when_neon_says(neon_url, neon_faults):
    neon_faults(BRANCHES_ROUTE, 423, method="POST", retry_after=7)

    with pytest.raises(ApplicationError) as raised:
        await neon_branch_create(neon_url)

    assert raised.value.next_retry_delay.total_seconds() == 7
