"""The pipeline's functions refuse a malformed task input clearly, before any AWS call."""

from __future__ import annotations

from typing import Any

import pytest

import tests.lambdas.conftest  # noqa: F401  (Powertools and AWS environment first)
from lambdas import invalidate
from lambdas.rollout import aws as rollout_aws
from lambdas.rollout import handler as rollout
from tests.lambdas.conftest import LambdaContext

CASES = [
    # module, task input, what the error must say
    (rollout, {}, "unknown action"),
    (rollout, {"action": "explode", "state": {}}, "unknown action"),
    (rollout, {"action": "begin"}, "'state' object"),
    (rollout, {"action": "begin", "state": "v4.7.6"}, "'state' object"),
    (rollout, {"action": "migrate", "state": {}}, "phase"),
    (rollout, {"action": "migrate", "state": {}, "phase": "during"}, "phase"),
    (rollout, ["begin"], "must be an object"),
    (rollout, {"action": "verify", "state": {}, "phase": "post"}, "phase"),
    (rollout, {"action": "begin", "state": {"config": {}}}, "config lacks"),
    (rollout, {"action": "web", "state": {"config": "x", "execution": "e"}}, "'config'"),
    (invalidate, {}, "unknown action"),
    (invalidate, {"action": "start"}, "'state' object"),
]


@pytest.mark.parametrize(("module", "event", "message"), CASES,
                         ids=[f"{m.__name__.split('.')[-1]}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_a_malformed_task_input_fails_with_its_reason_and_no_aws_call(
    module: Any, event: Any, message: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_aws(*args: object, **kwargs: object) -> None:
        raise AssertionError("a malformed task input reached AWS")

    monkeypatch.setattr((rollout_aws if module is rollout else module).boto3, "client", no_aws)
    with pytest.raises(ValueError, match=message):
        module.lambda_handler(event, LambdaContext())
