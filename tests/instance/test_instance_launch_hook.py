"""A web server joins the load balancer only once it serves, and signals only once it is served from.

The web group's launch hook (templates/compute.LAUNCH_HOOK) holds a new server in
Pending:Wait, outside the target groups, until bootstrap.sh lets it go on after
local health: a booting server is never a target, so the unhealthy-target alarms
stay quiet while servers boot (creation, scale-out, the rollout's surge). Then
bootstrap waits for both target groups to find it healthy before it signals, so a
first create ends, and its no-healthy-target alarms appear, with a serving target.
What Auto Scaling and the load balancer may do meanwhile: answer twice (a completion
whose answer is lost), hold no action (a second run, a server the hook already let
go), keep the target unhealthy (a security group that blocks the load balancer).
"""

from __future__ import annotations

from templates.compute import LAUNCH_HOOK
from tests.instance.instance_harness import (
    INSTANCE_ID,
    STREAMING_TARGET_GROUP_ARN,
    WEB_TARGET_GROUP_ARN,
)


def _aws(run, service: str, operation: str) -> list[int]:
    """Positions in the run's call log of one AWS CLI operation."""
    return [i for i, c in enumerate(run.calls) if c["cmd"] == "aws" and c["args"][:2] == [service, operation]]


def _signal_positions(run) -> list[int]:
    return _aws(run, "cloudformation", "signal-resource")


def _completions(run) -> list[str]:
    results = []
    for i in _aws(run, "autoscaling", "complete-lifecycle-action"):
        args = run.calls[i]["args"]
        results.append(args[args.index("--lifecycle-action-result") + 1])
    return results


def _local_health_checks(run) -> list[int]:
    return [i for i, c in enumerate(run.calls)
            if c["cmd"] == "curl" and any("/health" in a for a in c["args"])]


def test_a_web_server_lets_its_launch_go_on_after_local_health_and_signals_once_served(bootstrap):
    run = bootstrap("web")
    assert run.returncode == 0, run.output
    (complete,) = _aws(run, "autoscaling", "complete-lifecycle-action")
    args = run.calls[complete]["args"]
    assert args[args.index("--lifecycle-hook-name") + 1] == LAUNCH_HOOK
    assert args[args.index("--instance-id") + 1] == INSTANCE_ID
    assert args[args.index("--auto-scaling-group-name") + 1] == "mastodon-test-WebAutoScalingGroup-1A2B3C"
    assert _completions(run) == ["CONTINUE"]
    # Local health first, then the load balancer, then the signal.
    assert max(_local_health_checks(run)) < complete
    health = _aws(run, "elbv2", "describe-target-health")
    asked = {run.calls[i]["args"][run.calls[i]["args"].index("--target-group-arn") + 1] for i in health}
    assert asked == {WEB_TARGET_GROUP_ARN, STREAMING_TARGET_GROUP_ARN}
    assert complete < min(health) and max(health) < min(_signal_positions(run))
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_a_worker_has_no_launch_hook_and_no_target(worker_run):
    assert worker_run.returncode == 0, worker_run.output
    assert not _aws(worker_run, "autoscaling", "describe-auto-scaling-instances")
    assert not _aws(worker_run, "autoscaling", "complete-lifecycle-action")
    assert not _aws(worker_run, "elbv2", "describe-target-health")


def test_a_server_that_no_hook_holds_boots_without_completing_anything(bootstrap):
    # A second run on the same server, or one the hook already let go.
    run = bootstrap("web", lifecycle_state="InService")
    assert run.returncode == 0, run.output
    assert _completions(run) == []
    assert "no launch hook waits for this server (InService)" in run.log
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_a_completion_whose_answer_is_lost_is_not_a_failure(bootstrap):
    run = bootstrap("web", complete_fail="lost")
    assert run.returncode == 0, run.output
    # Retried, refused (the action is gone), then the state shows it went through.
    assert len(_completions(run)) > 1
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_a_launch_that_cannot_be_let_go_fails_the_boot_with_the_reason(bootstrap):
    run = bootstrap("web", complete_fail="refused")
    assert run.returncode != 0
    assert f"could not complete the launch hook {LAUNCH_HOOK}" in run.log
    assert [s["status"] for s in run.signals()] == ["FAILURE"]
    assert not _aws(run, "elbv2", "describe-target-health")


def test_a_server_that_never_gets_healthy_is_abandoned_not_let_into_the_load_balancer(bootstrap):
    run = bootstrap("web", health="down")
    assert run.returncode != 0
    assert _completions(run) == ["ABANDON"]
    assert [s["status"] for s in run.signals()] == ["FAILURE"]


def test_a_failure_before_the_instance_is_known_abandons_nothing(bootstrap):
    run = bootstrap("web", stack={"LAUNCH_HOOK": ""})
    assert run.returncode != 0
    assert "LAUNCH_HOOK is not set in stack.env" in run.log
    assert not _aws(run, "autoscaling", "complete-lifecycle-action")


def test_the_signal_waits_until_both_target_groups_find_the_server_healthy(bootstrap):
    run = bootstrap("web", target_health=["initial", "initial", "healthy"],
                    env={"BOOTSTRAP_TARGET_TIMEOUT": "30"})
    assert run.returncode == 0, run.output
    assert len(_aws(run, "elbv2", "describe-target-health")) == 4  # 3 for the first group, 1 for the second
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]


def test_a_server_the_load_balancer_cannot_reach_fails_with_the_reason_and_is_not_abandoned(bootstrap):
    run = bootstrap("web", target_health=["unhealthy"])
    assert run.returncode != 0
    assert "healthy on the server but unhealthy in target group mastodon-web/0123456789abcdef" in run.log
    assert "security groups" in run.log
    # The launch already went on: it is Auto Scaling's health check that replaces it.
    assert _completions(run) == ["CONTINUE"]
    assert [s["status"] for s in run.signals()] == ["FAILURE"]
