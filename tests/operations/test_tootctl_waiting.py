"""scripts/tootctl.py says where it looked for the stack and that it is still waiting."""

from __future__ import annotations

import pytest

from scripts import tootctl
from tests.operations.conftest import run_script


@pytest.mark.slow
@pytest.mark.parametrize(("args", "where"), [
    (["--region", "eu-central-1"], "in eu-central-1 (region from --region)"),
    ([], "in us-east-1 (region from env AWS_DEFAULT_REGION)"),
], ids=["flag", "environment"])
def test_a_missing_stack_is_named_with_the_region_looked_in_and_why(aws_env, args, where):
    result = run_script("tootctl.py", *args, "no-such-stack", "media", "usage", env=aws_env)
    assert result.returncode == 1
    assert f"no stack no-such-stack {where}; if it is in another region, give --region" in result.stderr


def test_a_long_tootctl_run_is_announced_every_half_minute_not_every_poll():
    notes = []
    noted = 0.0
    for waited in [2.0 * n for n in range(1, 61)]:  # two minutes of polls every 2 s
        note = tootctl.waiting_note("InProgress", waited, noted)
        if note:
            notes.append(note)
            noted = waited
    assert notes == [f"  still waiting for tootctl (InProgress, {t})" for t in ("0m30s", "1m00s", "1m30s",
                                                                                 "2m00s")]
