"""The custom-resource contract under faults: one answer, delivered, in time.

lambdas/custom_resource.py answers for every custom-resource function. What the other
side may do: S3 refuses or drops the PUT of the answer (the presigned ResponseURL),
the function runs into Lambda's timeout, CloudFormation sends a Delete for a resource
whose Create failed (with the physical id that failure answered).
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from moto import mock_aws

from lambdas import app_secrets, custom_resource
from lambdas.custom_resource import Answer, handle
from tests.lambdas.conftest import LambdaContext, Response
from tests.lambdas.test_malformed_events import HANDLERS as FUNCTIONS


class FlakyS3:
    """The ResponseURL: fails the first `failures` PUTs with `error`, then stores the answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error = failures, error
        self.tries = 0
        self.delivered: list[dict[str, Any]] = []
        self.first_delivery = threading.Event()

    def urlopen(self, request: urllib.request.Request, timeout: float = 0) -> Response:
        self.tries += 1
        assert timeout > 0, "every try needs its own timeout"
        if self.tries <= self.failures:
            raise self.error
        assert isinstance(request.data, bytes)
        self.delivered.append(json.loads(request.data))
        self.first_delivery.set()
        return Response()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(custom_resource, "sleep", slept.append)
    return slept


def s3(monkeypatch: pytest.MonkeyPatch, failures: int, error: Exception) -> FlakyS3:
    fake = FlakyS3(failures, error)
    monkeypatch.setattr(urllib.request, "urlopen", fake.urlopen)
    return fake


def succeed(event: Any) -> Answer:
    return Answer("the-id", {"Value": "x"})


ERRORS = {
    "connection refused": urllib.error.URLError(ConnectionRefusedError()),
    "HTTP 503": urllib.error.HTTPError("https://s3", 503, "Slow Down", http.client.HTTPMessage(),
                                       io.BytesIO()),
    "read timeout": TimeoutError("timed out"),
    "connection dropped": http.client.RemoteDisconnected("closed"),
}


@pytest.mark.parametrize("error", ERRORS.values(), ids=ERRORS.keys())
def test_an_answer_that_s3_refuses_once_is_sent_again_and_delivered_once(
    monkeypatch, waits, cfn_event, error
):
    fake = s3(monkeypatch, failures=1, error=error)
    handle(cfn_event("Create", {}), LambdaContext(), succeed, app_secrets.logger, "fallback")
    assert fake.tries == 2
    (answer,) = fake.delivered
    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", "the-id")
    assert answer["Data"] == {"Value": "x"}
    assert len(waits) == 1


def test_when_every_try_fails_the_invocation_fails_so_that_lambda_runs_it_again(
    monkeypatch, waits, cfn_event
):
    fake = s3(monkeypatch, failures=99, error=urllib.error.URLError("unreachable"))
    with pytest.raises(urllib.error.URLError):
        handle(cfn_event("Create", {}), LambdaContext(), succeed, app_secrets.logger, "fallback")
    assert fake.tries == custom_resource.PUT_ATTEMPTS
    assert waits == sorted(waits) and len(waits) == custom_resource.PUT_ATTEMPTS - 1


def test_a_failure_whose_answer_is_lost_once_still_reports_the_failure(monkeypatch, waits, cfn_event):
    fake = s3(monkeypatch, failures=1, error=urllib.error.URLError("reset"))

    def fail(event: Any) -> Answer:
        raise ValueError("property Name is wrong")

    handle(cfn_event("Create", {}), LambdaContext(), fail, app_secrets.logger, "no-thing-1")
    (answer,) = fake.delivered
    assert (answer["Status"], answer["Reason"], answer["PhysicalResourceId"]) == (
        "FAILED", "property Name is wrong", "no-thing-1")


def test_work_that_outlives_the_deadline_is_answered_failed_before_lambda_stops_it(monkeypatch, cfn_event):
    """The timer answers first; the work's late answer is dropped, so CloudFormation hears once."""
    fake = s3(monkeypatch, failures=0, error=OSError())
    # The timer fires almost at once: the deadline is just past the margin.
    context = LambdaContext(remaining_ms=int(custom_resource.DEADLINE_MARGIN_SECONDS * 1000) + 20)

    def slow(event: Any) -> Answer:
        assert fake.first_delivery.wait(timeout=10), "the deadline timer never answered"
        return Answer("late-id")

    handle(cfn_event("Create", {}), context, slow, app_secrets.logger, "no-thing-1")
    (answer,) = fake.delivered
    assert answer["Status"] == "FAILED"
    assert answer["PhysicalResourceId"] == "no-thing-1"
    assert "ran out of time" in answer["Reason"]


def test_work_that_finishes_in_time_leaves_the_deadline_timer_nothing_to_say(monkeypatch, cfn_event):
    fake = s3(monkeypatch, failures=0, error=OSError())
    started: list[threading.Timer] = []
    real_timer = custom_resource.deadline_timer

    def timer(context: Any, on_deadline: Any) -> threading.Timer:
        started.append(real_timer(context, on_deadline))
        return started[-1]

    monkeypatch.setattr(custom_resource, "deadline_timer", timer)
    handle(cfn_event("Create", {}), LambdaContext(), succeed, app_secrets.logger, "fallback")
    (running,) = started
    running.join(timeout=5)  # cancelled: the thread ends without calling on_deadline
    assert not running.is_alive()
    assert [a["Status"] for a in fake.delivered] == ["SUCCESS"]


def test_the_answer_of_the_stack_secret_never_echoes_its_data(monkeypatch, cfn_event):
    fake = s3(monkeypatch, failures=0, error=OSError())
    handle(cfn_event("Create", {}), LambdaContext(), succeed, app_secrets.logger, "x", no_echo=True)
    assert fake.delivered[0]["NoEcho"] is True


# A Create that each function refuses (no AWS call), and the id its failure answers.
FAILED_CREATES = {
    "app_secrets": {},
    "availability_zones": {"Count": "nine"},
    "cloudfront_certificate": {"DomainName": "-bad-"},
    "database_settings": {"DBInstanceIdentifier": "1-not-an-identifier"},
    "initial_parameter": {"Name": "no-slash", "Value": "v4.7.6"},
    "prefix_list": {"PrefixListName": "bad name"},
}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_the_delete_after_a_failed_create_succeeds_with_the_id_the_failure_answered(
    function, answers, cfn_event, context
):
    """Else the stack's rollback fails too (DELETE_FAILED) and the stack is stuck."""
    module = FUNCTIONS[function]
    properties = FAILED_CREATES[function]
    with mock_aws():
        module.lambda_handler(cfn_event("Create", properties), context)
        failed = answers.last
        assert failed["Status"] == "FAILED"
        module.lambda_handler(cfn_event("Delete", properties, physical_id=failed["PhysicalResourceId"]),
                              context)
    assert answers.last["Status"] == "SUCCESS"
    assert answers.last["PhysicalResourceId"] == failed["PhysicalResourceId"]
