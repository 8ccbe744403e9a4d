"""Shared fixtures for the Lambda tests: environment, context, CloudFormation answers."""

from __future__ import annotations

import io
import json
import os
import sys
import types
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import pytest

# Before any Lambda module is imported: Powertools reads these at import time.
os.environ.update(
    POWERTOOLS_SERVICE_NAME="mastodon-test",
    POWERTOOLS_METRICS_NAMESPACE="MastodonTest",
    POWERTOOLS_TRACE_DISABLED="true",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SECURITY_TOKEN="testing",
    AWS_SESSION_TOKEN="testing",
)
os.environ.pop("POWERTOOLS_DEV", None)

# `import lambdas.x` from the repository root, until setup.cfg sets pytest's pythonpath.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from simulation.context import LambdaContext as SimulatedContext  # noqa: E402

RESPONSE_URL = "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/x?sig=1"
STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/mastodon/0f6a6c10-0000-0000-0000-000000000000"


@dataclass
class LambdaContext(SimulatedContext):
    """A custom-resource function's context (the simulation's, under its own name)."""

    function_name: str = "mastodon-custom-resource"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:mastodon-custom-resource"
    log_group_name: str = "/aws/lambda/mastodon-custom-resource"


@pytest.fixture
def context() -> LambdaContext:
    return LambdaContext()


def make_event(
    request_type: str,
    properties: dict[str, Any],
    old_properties: dict[str, Any] | None = None,
    physical_id: str | None = None,
    request_id: str = "11111111-2222-3333-4444-555555555555",
    resource_type: str = "Custom::Test",
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:mastodon-custom-resource",
        "ResponseURL": RESPONSE_URL,
        "StackId": STACK_ID,
        "RequestId": request_id,
        "LogicalResourceId": "Resource",
        "ResourceType": resource_type,
        "ResourceProperties": {"ServiceToken": "arn:...", **properties},
    }
    if old_properties is not None:
        event["OldResourceProperties"] = old_properties
    if physical_id is not None:
        event["PhysicalResourceId"] = physical_id
    return event


@pytest.fixture
def cfn_event() -> Callable[..., dict[str, Any]]:
    return make_event


@dataclass
class Answers:
    """Every response body PUT to the ResponseURL, decoded."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        assert self.bodies, "the function never answered CloudFormation"
        return self.bodies[-1]


class Response:
    """What urlopen gives back for a PUT that S3 accepted."""

    status = 200

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        return None


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> Answers:
    captured = Answers()

    def urlopen(request: urllib.request.Request, timeout: float = 0) -> Response:
        assert request.full_url == RESPONSE_URL
        assert request.get_method() == "PUT"
        data = request.data
        assert isinstance(data, bytes)
        captured.raw.append(data)
        captured.bodies.append(json.loads(data))
        return Response()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return captured


@pytest.fixture
def capture_logs() -> Iterator[Callable[[types.ModuleType], io.StringIO]]:
    """Redirects a Lambda module's Powertools logger into a buffer."""
    restore: list[tuple[Any, Any]] = []

    def capture(module: types.ModuleType) -> io.StringIO:
        buffer = io.StringIO()
        handler = module.logger.registered_handler
        restore.append((handler, handler.setStream(buffer)))
        return buffer

    yield capture
    for handler, stream in restore:
        handler.setStream(stream)
