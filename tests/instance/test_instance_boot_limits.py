"""A server is never replaced, nor its stack operation failed, while it legitimately boots.

bootstrap.sh waits up to BOOT_DATABASE_WAIT_SECONDS for the database and up to
BOOT_HEALTH_WAIT_SECONDS for its containers, values it takes from stack.env; the
groups' health check grace period and signal timeout are sized on those very values.
"""

from __future__ import annotations

import re

import pytest

from tests.instance.test_instance_keep_alive import stack_env_value
from tests.support import props


def iso_minutes(duration: str) -> int:
    return int(re.fullmatch(r"PT(\d+)M", duration).group(1))


@pytest.mark.parametrize(("group", "launch_template"), [
    ("WebAutoScalingGroup", "WebLaunchTemplate"),
    ("WorkerAutoScalingGroup", "WorkerLaunchTemplate"),
])
def test_the_grace_period_and_the_signal_timeout_cover_bootstraps_own_waits(template, group, launch_template):
    waits = sum(int(stack_env_value(template, launch_template, key))
                for key in ("BOOT_DATABASE_WAIT_SECONDS", "BOOT_HEALTH_WAIT_SECONDS"))
    resource = template["Resources"][group]
    # Both waits and some time for everything else (Docker's install, the pulls).
    assert props(template, group)["HealthCheckGracePeriod"] > waits
    assert iso_minutes(resource["CreationPolicy"]["ResourceSignal"]["Timeout"]) * 60 > waits
    rolling = resource.get("UpdatePolicy", {}).get("AutoScalingRollingUpdate")
    if rolling:
        assert iso_minutes(rolling["PauseTime"]) * 60 > waits


def test_bootstrap_waits_as_long_as_stack_env_says(bootstrap):
    # Without the tests' shortcut, the wait for the database is stack.env's.
    run = bootstrap("web", db_state="empty", stack={"BOOT_DATABASE_WAIT_SECONDS": "1"},
                    env={"BOOTSTRAP_DB_WAIT_TIMEOUT": ""})
    assert run.returncode != 0
    assert "the database was not initialized within 1s" in run.log
    run = bootstrap("web", health="down", stack={"BOOT_HEALTH_WAIT_SECONDS": "1"},
                    env={"BOOTSTRAP_HEALTH_TIMEOUT": ""})
    assert run.returncode != 0
    assert "not healthy within 1s" in run.log


def test_a_boot_without_its_waits_in_stack_env_fails_with_the_reason(bootstrap):
    run = bootstrap("web", stack={"BOOT_HEALTH_WAIT_SECONDS": ""})
    assert run.returncode != 0
    assert "BOOT_HEALTH_WAIT_SECONDS is not set in stack.env" in run.log
