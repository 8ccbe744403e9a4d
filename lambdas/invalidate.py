"""CloudFront invalidation after an upgrade: one wildcard path, throttling retried, completion awaited.

Called by the rollout state machine with {"action": "start"|"check", "state": {...}}
and returns the state with "next" (wait, done) and "wait" (seconds). Waiting is the
state machine's: an invocation makes one or two API calls.

The caller reference is derived from the execution and the version, so a retried
"start" finds the invalidation it already created instead of making a second one.
Throttling (CloudFront allows few invalidations in progress) is answered with a
longer wait, up to MAX_ATTEMPTS; a failure to invalidate does not undo an upgrade
that every server already runs: it becomes a warning in the notification.
"""

from __future__ import annotations

import time
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

logger = Logger()

PATHS = ["/*"]
THROTTLED = {
    "Throttling",
    "TooManyInvalidationsInProgress",
    "ThrottlingException",
    "TooManyRequestsException",
}
MAX_ATTEMPTS = 8
FIRST_BACKOFF = 10
CHECK_EVERY = 15
GIVE_UP_AFTER = 3600


def now() -> float:
    return time.time()


# ---------------------------------------------------------------- pure decisions
def caller_reference(execution: str, version: str, desired_version: int) -> str:
    return f"{execution.rsplit(':', 1)[-1]}-{version}-{desired_version}"[:128]


def backoff(attempt: int) -> int:
    """Seconds to wait after the attempt-th throttled call: 10, 20, 40, ... at most 300."""
    return int(min(FIRST_BACKOFF * 2 ** (attempt - 1), 300))


def is_complete(status: str) -> bool:
    # AWS says "Completed", moto "COMPLETED".
    return status.lower() == "completed"


# ---------------------------------------------------------------- AWS calls
_clients: dict[str, Any] = {}


def cloudfront() -> Any:
    if "cloudfront" not in _clients:
        _clients["cloudfront"] = boto3.client("cloudfront")
    return _clients["cloudfront"]


def start(state: dict[str, Any]) -> dict[str, Any]:
    memory = dict(state.get("invalidation") or {})
    attempt = int(memory.get("attempts", 0)) + 1
    reference = caller_reference(state["execution"], state["target"], int(state.get("desired_version", 0)))
    try:
        response = cloudfront().create_invalidation(
            DistributionId=state["config"]["distribution_id"],
            InvalidationBatch={
                "Paths": {"Quantity": len(PATHS), "Items": PATHS},
                "CallerReference": reference,
            },
        )
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code in THROTTLED and attempt < MAX_ATTEMPTS:
            logger.info("CloudFront throttled the invalidation; waiting", extra={"attempt": attempt})
            return {**state, "invalidation": {"attempts": attempt}, "next": "retry", "wait": backoff(attempt)}
        logger.warning("Invalidation failed", extra={"code": code})
        return {
            **state,
            "invalidation": {"attempts": attempt},
            "next": "done",
            "warning": f"the CloudFront invalidation failed ({code}); invalidate /* by hand",
        }
    memory = {"attempts": attempt, "id": response["Invalidation"]["Id"], "since": now()}
    return {**state, "invalidation": memory, "next": "wait", "wait": CHECK_EVERY}


def check(state: dict[str, Any]) -> dict[str, Any]:
    memory = state.get("invalidation") or {}
    if memory.get("done"):
        return {**state, "next": "done"}
    if "id" not in memory:
        # The first call (before the post-deployment migrations) was throttled, or raised
        # (the state machine caught it: an error object in the warning; asking again is safe,
        # the caller reference finds an invalidation that call made): start it now. One that
        # CloudFront refused for good said so in a warning of ours: stop there.
        warning = state.get("warning")
        if isinstance(warning, str):
            return {**state, "next": "done"}
        return start({key: value for key, value in state.items() if key != "warning"})
    try:
        status = cloudfront().get_invalidation(
            DistributionId=state["config"]["distribution_id"], Id=memory["id"]
        )["Invalidation"]["Status"]
    except ClientError as error:
        if error.response["Error"]["Code"] in THROTTLED:
            return {**state, "next": "wait", "wait": CHECK_EVERY * 2}
        raise
    if is_complete(status):  # the notice says "invalidated" only when CloudFront said so
        return {**state, "invalidation": {**memory, "done": True}, "next": "done"}
    if now() > float(memory["since"]) + GIVE_UP_AFTER:
        return {
            **state,
            "next": "done",
            "warning": f"the CloudFront invalidation {memory['id']} "
            f"was still {status} after {GIVE_UP_AFTER}s",
        }
    return {**state, "next": "wait", "wait": CHECK_EVERY}


ACTIONS = {"start": start, "check": check}


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # A malformed task input fails here, with its reason, before any AWS call.
    if not isinstance(event, dict) or event.get("action") not in ACTIONS:
        action = event.get("action") if isinstance(event, dict) else None
        raise ValueError(f"unknown action {action!r}; expected one of {sorted(ACTIONS)}")
    if not isinstance(event.get("state"), dict):
        raise ValueError("the task input has no 'state' object")
    return ACTIONS[event["action"]](dict(event["state"]))
