"""The CloudFormation side of every custom-resource function: dispatch, and one answer.

A custom resource that never answers holds its stack for the resource's ServiceTimeout
(an hour by default), so `handle` answers every request exactly once:
- a request type other than Create, Update or Delete fails before the work runs;
- the work's exception fails the request with a reason (by default its message for a
  ValueError, which the functions raise for bad properties, else the error's type);
- shortly before Lambda's deadline a timer answers FAILED, so that a function cut off
  by its timeout does not leave CloudFormation waiting; the work's own answer, if it
  ever comes, is then dropped;
- the PUT to the presigned ResponseURL is tried again on a network or HTTP error; when
  every try fails the invocation fails, and Lambda's retry of the asynchronous
  invocation runs the (idempotent) work again.

The build places this module in each function's inline code next to the function's own
module (templates/functions.assemble), so the Lambda runs exactly what the tests import.
Events are read through Powertools' CloudFormationCustomResourceEvent, from the
Powertools layer every function carries.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import CloudFormationCustomResourceEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

REQUEST_TYPES = ("Create", "Update", "Delete")
# CloudFormation keeps at most this much of a reason.
REASON_LIMIT = 1000
# The deadline timer answers this long before Lambda stops the function.
DEADLINE_MARGIN_SECONDS = 10.0
# The PUT: tries, the wait before each retry, and each try's own timeout.
PUT_ATTEMPTS = 3
PUT_BACKOFF_SECONDS = 2.0
PUT_TIMEOUT_SECONDS = 15.0
# Replaced by tests: the wait between tries.
sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Answer:
    """What the function tells CloudFormation: the physical id, and GetAtt data on success."""

    physical_id: str
    data: Mapping[str, str] = field(default_factory=dict)
    status: str = "SUCCESS"
    reason: str = ""


def default_reason(error: Exception) -> str:
    return str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"


def response_body(event: Mapping[str, Any], answer: Answer, no_echo: bool = False) -> bytes:
    body: dict[str, Any] = {
        "Status": answer.status,
        "Reason": answer.reason[:REASON_LIMIT],
        "PhysicalResourceId": answer.physical_id,
        "StackId": event.get("StackId", ""),
        "RequestId": event.get("RequestId", ""),
        "LogicalResourceId": event.get("LogicalResourceId", ""),
    }
    if no_echo:
        body["NoEcho"] = True
    body["Data"] = dict(answer.data)
    return json.dumps(body).encode()


def send_response(
    event: Mapping[str, Any], answer: Answer, logger: Logger, no_echo: bool = False,
    attempts: int = PUT_ATTEMPTS,
) -> None:
    """PUT the answer to the event's ResponseURL; raises when every try failed."""
    body = response_body(event, answer, no_echo)
    url = str(event["ResponseURL"])
    if not url.startswith("https://"):
        raise ValueError("ResponseURL is not an https URL")
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(  # noqa: S310 - https only, checked above
            url, data=body, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(body))})
        try:
            with urllib.request.urlopen(request, timeout=PUT_TIMEOUT_SECONDS) as response:  # noqa: S310
                logger.info("Answered CloudFormation",
                            extra={"status": answer.status, "http_status": response.status})
                return
        except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError, timeouts
            if attempt == attempts:
                raise
            logger.warning("Answer not delivered; retrying",
                           extra={"attempt": attempt, "error": f"{type(error).__name__}: {error}"})
            sleep(PUT_BACKOFF_SECONDS * attempt)


class Responder:
    """Answers one request once, whichever comes first: the work or the deadline timer."""

    def __init__(self, event: Mapping[str, Any], logger: Logger, no_echo: bool) -> None:
        self.event, self.logger, self.no_echo = event, logger, no_echo
        self.lock = threading.Lock()
        self.answered = False

    def answer(self, answer: Answer, attempts: int = PUT_ATTEMPTS) -> None:
        with self.lock:
            if self.answered:
                self.logger.warning("Already answered; this answer is dropped",
                                    extra={"status": answer.status})
                return
            self.answered = True
        send_response(self.event, answer, self.logger, self.no_echo, attempts)

    def answer_timeout(self, physical_id: str) -> None:
        self.logger.error("Lambda's deadline is near: answering FAILED")
        reason = "the function ran out of time; see its log"
        self.answer(Answer(physical_id, status="FAILED", reason=reason), attempts=1)


def deadline_timer(context: LambdaContext, on_deadline: Callable[[], None]) -> threading.Timer:
    seconds = max(float(context.get_remaining_time_in_millis()) / 1000 - DEADLINE_MARGIN_SECONDS, 0.0)
    timer = threading.Timer(seconds, on_deadline)
    timer.daemon = True
    return timer


def handle(
    raw_event: dict[str, Any],
    context: LambdaContext,
    work: Callable[[CloudFormationCustomResourceEvent], Answer | None],
    logger: Logger,
    physical_id: str,
    reason: Callable[[Exception], str] = default_reason,
    no_echo: bool = False,
) -> None:
    """Run `work` on the event and answer CloudFormation once.

    `physical_id` is the id a failure answers: the resource's own, or for a Create one
    that says nothing exists, so that the Delete which follows a failed Create can
    recognize it and delete nothing. `work` returns None when a later invocation of the
    function takes the request over and answers it.
    """
    event = CloudFormationCustomResourceEvent(raw_event)
    responder = Responder(raw_event, logger, no_echo)
    timer = deadline_timer(context, lambda: responder.answer_timeout(physical_id))
    timer.start()
    try:
        try:
            if event.request_type not in REQUEST_TYPES:
                raise ValueError(f"unknown RequestType {event.request_type!r}")
            answer = work(event)
        except Exception as error:
            logger.exception("Request failed")
            answer = Answer(physical_id, status="FAILED", reason=reason(error))
        if answer is not None:
            responder.answer(answer)
    finally:
        timer.cancel()
