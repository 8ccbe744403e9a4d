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
    keys = ["BOOT_DATABASE_WAIT_SECONDS", "BOOT_HEALTH_WAIT_SECONDS"]
    if group == "WebAutoScalingGroup":
        keys.append("BOOT_TARGET_WAIT_SECONDS")  # then the wait for the target groups
    waits = sum(int(stack_env_value(template, launch_template, key)) for key in keys)
    resource = template["Resources"][group]
    # Both waits and some time for everything else (Docker's install, the pulls). A web
    # server's grace starts only once its launch hook has let it in (it covers the wait
    # for the target groups), the hook covering the boot before that.
    covered = props(template, group)["HealthCheckGracePeriod"] + sum(
        hook["HeartbeatTimeout"] for hook in props(template, group).get("LifecycleHookSpecificationList", []))
    assert covered > waits
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


def test_a_web_server_that_fails_once_it_serves_is_replaced_within_minutes(template):
    # The grace period starts when the launch hook lets the server in: beyond the time
    # the target groups take to find it healthy, it would only delay a replacement.
    from templates import compute

    web = props(template, compute.WEB_GROUP)
    assert web["HealthCheckGracePeriod"] <= compute.BOOT_TARGET_WAIT_SECONDS
    (hook,) = web["LifecycleHookSpecificationList"]
    # The hook's clock starts at launch: it outlasts every one of bootstrap's own waits
    # plus its allowances, so bootstrap, not the hook, ends a slow boot, with the reason.
    timeout = hook["HeartbeatTimeout"]
    assert timeout > compute.BOOT_DATABASE_WAIT_SECONDS + compute.BOOT_HEALTH_WAIT_SECONDS \
        + compute.BOOT_OTHER_STEPS_SECONDS
    signal = template["Resources"][compute.WEB_GROUP]["CreationPolicy"]["ResourceSignal"]["Timeout"]
    assert iso_minutes(signal) * 60 >= timeout + compute.BOOT_TARGET_WAIT_SECONDS
