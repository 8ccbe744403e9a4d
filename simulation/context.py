"""The Lambda context the handlers and Powertools read, for tests and the simulation.

Kept apart from world.py, which imports moto: the unit tests need only this.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LambdaContext:
    """The parts of the Lambda context the handlers and Powertools read (the rollout's)."""

    remaining_ms: int = 600_000
    function_name: str = "mastodon-rollout"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:mastodon-rollout"
    aws_request_id: str = "00000000-0000-0000-0000-000000000001"
    log_group_name: str = "/aws/lambda/mastodon-rollout"
    log_stream_name: str = "2026/01/01/[$LATEST]0123"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
