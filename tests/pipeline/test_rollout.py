"""The whole rollout against moto: the real state machine definition, the real handlers.

Each test builds a fleet (simulation.world.World), sets the desired version as an operator
would, runs the execution EventBridge would start, and checks the end state: which
version every server runs, the two version parameters, the notification, and that
healthy web capacity never fell below max(1, size - batch) at any step.
"""

from __future__ import annotations

import json
import urllib.error

import pytest
from botocore.exceptions import ClientError

from lambdas.rollout import aws as rollout_aws
from lambdas.rollout import handler as rollout_handler
from lambdas.rollout import steps
from lambdas.rollout.names import CUSTOM_TAG_PATTERN
from simulation.world import DEPLOYED, ECR_IMAGES, FORK, HANDLED, NEW, NEWER, OLD, Timing, World
from tests.lambdas.conftest import LambdaContext

# Short durations keep the simulated rollouts (and the tests) quick; the benchmark
# uses realistic ones.
QUICK = Timing(
    drain=10, pull=5, restart=5, health=5, boot=30, pre=10, post=10, worker=10, invalidation=5, settle=5
)


def every_server(world: World) -> dict[str, str]:
    return {i: world.versions[i] for i in world.instances("web") + world.instances("worker")}


def assert_all_on(world: World, version: str) -> None:
    assert set(every_server(world).values()) == {version}, every_server(world)
    for iid in world.instances("web"):
        assert world.in_target_groups(iid), f"{iid} was left out of the load balancer"
    assert world.min_capacity_margin() >= 0, "healthy capacity fell below the minimum"


# Upstream's images and a release, or a fork's images in the stack's ECR repository and a
# tag of its own (issue 15): (world settings, the version rolled out, the desired value).
# The fork's tag cannot be ordered against the release the servers run: the operator confirms.
STACKS = {
    "upstream": ({}, NEW, NEW),
    "fork-in-ecr": (
        {"images": ECR_IMAGES, "tag_pattern": CUSTOM_TAG_PATTERN}, FORK, f"{FORK} allow-downgrade"
    ),
}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("web, batch", [(1, 1), (2, 1), (5, 2)], ids=["1-web", "2-web", "5-web-batch-2"])
def test_a_desired_version_rolls_every_server_in_order_and_records_it(fleet, web, batch, stack):
    settings, version, desired = STACKS[stack]
    world = fleet(web=web, batch=batch, timing=QUICK, **settings)
    world.set_desired(desired)
    result = world.roll()
    assert result.status == "SUCCEEDED", result.output.get("failure")
    assert_all_on(world, version)
    assert world.parameter(DEPLOYED) == version
    # Each image's registry was asked: ECR's API for ECR's, the OCI API for ghcr.io's.
    in_ecr = stack == "fork-in-ecr"
    assert world.calls["DescribeImages"] == (2 if in_ecr else 0)
    assert bool(world.registry.requests) is not in_ecr
    assert len(world.instances("web")) == web, "the surge server was not retired"
    assert world.group("web")["MaxSize"] == max(web, 2)
    lines = world.commands_sent()
    assert lines[0].endswith(f"migrate pre {version}") and lines[-1].endswith(f"migrate post {version}")
    pulls = [line for line in lines[1:-1] if f" pull {version}" in line]
    assert lines[1 : 1 + len(pulls)] == pulls, "the pulls ahead come before any deploy"
    assert all(f"deploy {version}" in line for line in lines[1 + len(pulls) : -1])
    assert world.invalidations == 1
    assert world.notifications() == [
        (f"Mastodon upgraded to {version}", pytest.approx(world.notifications()[0][1]))
    ]


def test_with_one_web_server_a_new_one_serves_before_the_old_one_leaves(fleet):
    world = fleet(web=1, timing=QUICK)
    (original,) = world.instances("web")
    world.set_desired(NEW)
    assert world.roll().status == "SUCCEEDED"
    assert min(healthy for _, healthy, _ in world.capacity) >= 1
    assert world.instances("web") != [original], "the replacement should stay, the original go"


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("k", [1, 3])
def test_a_failing_deploy_on_the_kth_server_rolls_the_changed_ones_back(fleet, k, stack):
    settings, version, desired = STACKS[stack]
    world = fleet(web=5, batch=1, timing=QUICK, **settings)
    deploys: list[str] = []

    def fail_kth(iid: str, line: str) -> str | None:
        if f"deploy {version}" in line and iid in world.instances("web"):
            deploys.append(iid) if iid not in deploys else None
            if deploys.index(iid) == k - 1:
                return "docker pull ghcr.io/mastodon/mastodon:v4.7.6 failed after 4 attempts"
        return None

    world.command_faults.append(fail_kth)
    world.set_desired(desired)
    result = world.roll()
    assert result.status == "FAILED"
    assert_all_on(world, OLD)
    assert world.parameter(DEPLOYED) == OLD
    ((subject, message),) = world.notifications()
    assert subject == f"Mastodon upgrade to {version} failed"
    assert deploys[k - 1] in message and "docker pull" in message and "previous version" in message
    assert not any("migrate post" in line for line in world.commands_sent())


def test_a_server_that_never_turns_healthy_is_rolled_back_with_the_reason(fleet):
    world = fleet(web=3, timing=QUICK)
    sick = world.instances("web")[1]
    world.unhealthy.add((sick, NEW))
    world.set_desired(NEW)
    assert world.roll().status == "FAILED"
    assert_all_on(world, OLD)
    ((_, message),) = world.notifications()
    assert sick in message and "did not stay healthy" in message


def test_a_failed_pre_deployment_migration_changes_no_server(fleet):
    world = fleet(web=2, timing=QUICK)
    world.command_faults.append(lambda iid, line: "PG::DuplicateColumn" if "migrate pre" in line else None)
    world.set_desired(NEW)
    assert world.roll().status == "FAILED"
    assert not any(" deploy v" in line for line in world.commands_sent())
    assert_all_on(world, OLD)
    assert world.parameter(DEPLOYED) == OLD
    ((_, message),) = world.notifications()
    assert "pre-deployment migrations" in message and "PG::DuplicateColumn" in message


def test_servers_launched_or_terminated_during_the_rollout_all_end_on_the_new_version(fleet):
    world = fleet(web=3, timing=QUICK)
    autoscaling = rollout_aws._clients["autoscaling"]

    def scale(world: World, state: str, count: int) -> None:
        if state == "Web" and count == 2:  # scale-out: the new server boots the old version
            autoscaling.update_auto_scaling_group(AutoScalingGroupName="web", MaxSize=5)
            autoscaling.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=4)
        if state == "Web" and count == 6:  # scale-in of a server not being worked on
            group = world.group("web")
            idle = [i["InstanceId"] for i in group["Instances"] if not i["ProtectedFromScaleIn"]]
            autoscaling.terminate_instance_in_auto_scaling_group(
                InstanceId=idle[0], ShouldDecrementDesiredCapacity=True
            )

    world.hooks.append(scale)
    world.set_desired(NEW)
    assert world.roll().status == "SUCCEEDED"
    assert len(world.instances("web")) == 3
    assert_all_on(world, NEW)


def test_a_worker_replaced_during_the_rollout_is_converged_too(fleet):
    world = fleet(web=1, timing=QUICK)
    autoscaling = rollout_aws._clients["autoscaling"]

    def replace_worker(world: World, state: str, count: int) -> None:
        if state == "Record" and count == 1:
            (old_worker,) = world.instances("worker")
            autoscaling.terminate_instance_in_auto_scaling_group(
                InstanceId=old_worker, ShouldDecrementDesiredCapacity=False
            )

    world.hooks.append(replace_worker)
    world.set_desired(NEW)
    assert world.roll().status == "SUCCEEDED"
    assert_all_on(world, NEW)


def test_a_version_set_mid_rollout_is_applied_after_it(fleet):
    world = fleet(web=2, timing=QUICK)
    second: list[str] = []

    def operator_changes_mind(world: World, state: str, count: int) -> None:
        if state == "Web" and count == 3 and not second:
            world.set_desired(NEWER)
            second.append(world.start_execution())  # EventBridge starts a second execution

    world.hooks.append(operator_changes_mind)
    world.set_desired(NEW)
    first = world.roll()
    assert first.status == "SUCCEEDED"
    assert [s for s, _ in world.notifications()] == [
        f"Mastodon upgraded to {NEW}",
        f"Mastodon upgraded to {NEWER}",
    ]
    assert_all_on(world, NEWER)
    assert world.parameter(DEPLOYED) == NEWER
    sent = len(world.commands_sent())
    later = world.roll(second[0])
    assert later.status == "SUCCEEDED" and later.states[-1] == "Done"
    assert len(world.commands_sent()) == sent, "the second execution rolled again"


def two_executions(world: World) -> tuple[str, str]:
    """Two executions of one event, oldest first (started in the same millisecond, the ARN decides)."""
    started = [world.start_execution(), world.start_execution()]
    ahead = steps.queue_position(rollout_aws.running_executions(world.state_machine), started[1])
    return (started[0], started[1]) if ahead else (started[1], started[0])


@pytest.mark.parametrize("stack", STACKS)
def test_the_same_event_delivered_twice_rolls_once(fleet, stack):
    settings, _, desired = STACKS[stack]
    world = fleet(web=2, timing=QUICK, **settings)
    world.set_desired(desired)
    first, duplicate = two_executions(world)
    state = {
        "config": world.definition["States"]["Configure"]["Parameters"]["config"],
        "execution": duplicate,
        "state_machine": world.state_machine,
    }
    answer = rollout_handler.lambda_handler({"action": "begin", "state": state}, LambdaContext())
    assert answer["next"] == "queued"
    assert world.roll(first).status == "SUCCEEDED"
    sent = len(world.commands_sent())
    assert world.roll(duplicate).states[-1] == "Done"
    assert len(world.commands_sent()) == sent
    assert len(world.notifications()) == 1


def test_a_failed_rollout_is_not_retried_by_a_duplicate_event_but_by_a_new_put(fleet):
    world = fleet(web=1, timing=QUICK)
    world.command_faults.append(lambda iid, line: "boom" if "migrate pre" in line else None)
    world.set_desired(NEW)
    first, duplicate = two_executions(world)
    assert world.roll(first).status == "FAILED"
    assert world.roll(duplicate).states[-1] == "Done"
    world.command_faults.clear()
    world.set_desired(NEW)  # the operator puts the same value again: a new parameter version
    assert world.roll().status == "SUCCEEDED"
    assert_all_on(world, NEW)


@pytest.mark.parametrize(
    "version, reason",
    [
        ("v4.7", "is not a Mastodon release tag"),
        ("v4.9.9", "ghcr.io/mastodon/mastodon:v4.9.9 does not exist"),
    ],
)
def test_an_invalid_tag_or_a_missing_image_stops_before_touching_anything(fleet, version, reason):
    world = fleet(web=2, timing=QUICK)
    world.set_desired(version)
    assert world.roll().status == "FAILED"
    assert world.commands_sent() == []
    assert world.calls["DeregisterTargets"] == 0
    assert_all_on(world, OLD)
    ((_, message),) = world.notifications()
    assert reason in message and "Nothing was changed" in message


FORK_STACK = {"images": ECR_IMAGES, "tag_pattern": CUSTOM_TAG_PATTERN}


@pytest.mark.parametrize(
    "desired, reason",
    [
        ("v4.7.6+glitch allow-downgrade", "not v4.7.6+glitch"),
        (f"{FORK}", "cannot be ordered"),  # the operator did not confirm
        ("v4.7.8-glitch allow-downgrade", "forks/mastodon has no tag v4.7.8-glitch"),
    ],
    ids=["plus-sign", "unconfirmed", "missing-tag"],
)
def test_a_fork_s_bad_tag_unconfirmed_tag_or_missing_image_stops_before_touching_anything(
    fleet, desired, reason
):
    world = fleet(web=2, timing=QUICK, **FORK_STACK)
    world.set_desired(desired)
    assert world.roll().status == "FAILED"
    assert world.commands_sent() == [] and world.calls["DeregisterTargets"] == 0
    assert_all_on(world, OLD)
    ((_, message),) = world.notifications()
    assert reason in message and "Nothing was changed" in message


def test_a_fork_s_missing_streaming_image_in_ecr_stops_the_rollout_naming_it(fleet):
    world = fleet(web=1, timing=QUICK, **FORK_STACK)
    streaming = ECR_IMAGES[1].split("/", 1)[1]
    world.aws("ecr").batch_delete_image(repositoryName=streaming, imageIds=[{"imageTag": FORK}])
    world.set_desired(f"{FORK} allow-downgrade")
    assert world.roll().status == "FAILED"
    assert world.commands_sent() == []
    assert f"{ECR_IMAGES[1]}:{FORK} does not exist" in world.notifications()[0][1]
    assert world.calls["DescribeImages"] == 2, "both images are checked"


def test_ecr_throttling_beyond_boto3_s_retries_is_retried_then_reported_as_no_answer(fleet):
    world = fleet(web=1, timing=QUICK, **FORK_STACK)

    def throttled(operation, count, params):
        if operation == "DescribeImages":
            error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
            return ClientError(error, "DescribeImages")
        return None

    world.api_faults.append(throttled)
    world.set_desired(f"{FORK} allow-downgrade")
    assert world.roll().status == "FAILED"
    assert world.calls["DescribeImages"] == 1 + pipeline_retries()
    ((_, message),) = world.notifications()
    assert "Amazon ECR did not answer" in message and "Nothing was changed" in message
    assert world.commands_sent() == []


def test_a_missing_streaming_image_alone_is_enough_to_stop(fleet):
    world = fleet(web=1, timing=QUICK)
    world.registry.tags["mastodon/mastodon-streaming"].discard(NEWER)
    world.set_desired(NEWER)
    assert world.roll().status == "FAILED"
    assert "mastodon-streaming:v4.7.7 does not exist" in world.notifications()[0][1]


def test_cloudfront_throttling_is_waited_out_and_one_invalidation_made(fleet):
    world = fleet(web=1, timing=QUICK)
    world.cloudfront_throttles = 3
    world.set_desired(NEW)
    result = world.roll()
    assert result.status == "SUCCEEDED"
    assert world.invalidations == 1 and world.calls["CreateInvalidation"] == 4
    # The first call, before the post-deployment migrations, is throttled: the rollout does
    # not wait there; the calls after the final check wait the throttling out.
    assert result.states.index("InvalidateEarly") < result.states.index("PostMigrate")
    assert result.states.count("InvalidateRetry") == 2
    assert "Warning" not in world.notifications()[0][1]


def test_a_first_invalidation_call_that_raises_is_made_again_after_the_final_check(fleet):
    """The state machine catches the error (Lambda timed out, CloudFront unreachable): the
    migrations go on, and the call is made again later (the caller reference finds an
    invalidation the first call may have made)."""
    world = fleet(web=2, timing=QUICK)
    world.api_faults.append(
        lambda name, count, params: (
            RuntimeError("read timeout") if name == "CreateInvalidation" and count == 1 else None
        )
    )
    world.set_desired(NEW)
    result = world.roll()
    assert result.status == "SUCCEEDED"
    assert world.calls["CreateInvalidation"] == 2 and world.invalidations == 1
    ((_, message),) = world.notifications()
    assert "CloudFront was invalidated" in message and "Warning" not in message


def test_the_invalidation_runs_beside_the_post_deployment_migrations_and_is_awaited(fleet):
    world = fleet(web=2, timing=QUICK)
    made: list[str] = []

    def order(world: World, step: str) -> None:
        if world.invalidations and not made:
            made.append(step)
            assert not any("migrate post" in line for line in world.commands_sent()), "made after them"

    world.after_step.append(order)
    world.set_desired(NEW)
    result = world.roll()
    assert result.status == "SUCCEEDED"
    assert made == ["InvalidateEarly"] and world.invalidations == 1
    states = result.states
    assert states.index("FinalCheck") < states.index("InvalidateCheck") < states.index("Finish")
    assert "CloudFront was invalidated" in world.notifications()[0][1]


# ---------------------------------------------------------------- a step that crashes
def handled(world: World) -> dict:
    return json.loads(world.parameter(HANDLED))


@pytest.mark.parametrize(
    "fault, reason, retried",
    [
        (urllib.error.URLError(TimeoutError("timed out")), "ghcr.io did not answer", True),
        (
            urllib.error.HTTPError("https://ghcr.io/v2/x", 500, "Internal Server Error", {}, None),  # type: ignore[arg-type]
            "ghcr.io did not answer for ghcr.io/mastodon/mastodon:v4.7.6 (500",
            True,
        ),
        (
            urllib.error.HTTPError("https://ghcr.io/v2/x", 429, "Too Many Requests", {}, None),  # type: ignore[arg-type]
            "ghcr.io did not answer for ghcr.io/mastodon/mastodon:v4.7.6 (429",
            True,
        ),
        (  # an answer the rollout does not know: reported as it came, not retried
            urllib.error.HTTPError("https://ghcr.io/v2/x", 400, "Bad Request", {}, None),  # type: ignore[arg-type]
            "the registry ghcr.io answered 400",
            False,
        ),
    ],
    ids=["registry-timeout", "registry-500", "registry-429", "registry-400"],
)
def test_a_validation_that_crashes_is_reported_as_a_failure_and_changes_nothing(
    fleet, fault, reason, retried
):
    world = fleet(web=2, timing=QUICK)
    asked = []

    def unreachable(request, timeout=0):
        asked.append(request)
        raise fault

    world.registry.open = unreachable
    world.set_desired(NEW)
    result = world.roll()
    assert result.status == "FAILED"
    assert result.states.count("Begin") == 1, "a second rollout was started"
    # A registry that does not answer is asked again by the step's retries (the state
    # machine's, as for any transient error), then the rollout fails saying so.
    assert len(asked) == (1 + pipeline_retries() if retried else 1)
    ((subject, message),) = world.notifications()
    assert subject == f"Mastodon upgrade to {NEW} failed"
    assert reason in message and "Nothing was changed" in message
    assert handled(world)["result"] == "failed" and reason in handled(world)["reason"]
    assert world.parameter(DEPLOYED) == OLD
    assert world.commands_sent() == [] and world.calls["SuspendProcesses"] == 0
    assert_all_on(world, OLD)


def pipeline_retries() -> int:
    """How often the state machine runs a step again on a transient error (RegistryUnavailable)."""
    from templates.pipeline import TRANSIENT_ERRORS, _task

    retries = _task("f", "validate", "x", None)["Retry"]
    (policy,) = [r for r in retries if r["ErrorEquals"] == TRANSIENT_ERRORS]
    assert "RegistryUnavailable" in TRANSIENT_ERRORS
    return int(policy["MaxAttempts"])


def test_a_begin_that_crashes_ends_once_with_a_notice_and_keeps_the_last_record(fleet, monkeypatch):
    world = fleet(web=1, timing=QUICK)
    record = '{"desired_version": 1, "version": "v4.6.2", "result": "succeeded"}'
    world.aws("ssm").put_parameter(Name=HANDLED, Value=record, Type="String", Overwrite=True)

    def throttled(*args, **kwargs):
        error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
        raise ClientError(error, "ListExecutions")

    monkeypatch.setattr(steps, "queue_position", throttled)
    world.set_desired(NEW)
    result = world.roll(max_steps=200)
    assert result.status == "FAILED"
    assert result.states.count("Begin") == 1 and result.states.count("Finish") == 1
    ((subject, message),) = world.notifications()
    assert subject == "Mastodon upgrade could not start"
    assert "ThrottlingException" in message and "Nothing was changed" in message
    assert world.parameter(HANDLED) == record, "no version was handled"
    assert world.commands_sent() == [] and world.parameter(DEPLOYED) == OLD


def test_a_crashed_rollback_says_so_rather_than_that_the_servers_were_restored(fleet, monkeypatch):
    world = fleet(web=2, timing=QUICK)
    world.command_faults.append(lambda iid, line: "docker pull failed" if f"deploy {NEW}" in line else None)

    def crash(state):
        raise RuntimeError("elbv2 unreachable")

    monkeypatch.setitem(rollout_handler.ACTIONS, "rollback", crash)
    world.set_desired(NEW)
    assert world.roll().status == "FAILED"
    ((_, message),) = world.notifications()
    assert "docker pull failed" in message and "elbv2 unreachable" in message
    assert "repair by hand" in message.lower()
    assert "previous version again" not in message and "Nothing was changed" not in message
    assert world.group("web")["SuspendedProcesses"] == [], "scaling is resumed on every path"


# ---------------------------------------------------------------- Auto Scaling held
def suspended(world: World) -> set[str]:
    return {p["ProcessName"] for p in world.group("web")["SuspendedProcesses"]}


def watch_scaling(world: World) -> list[set[str]]:
    seen: list[set[str]] = []

    def look(world: World, state: str, count: int) -> None:
        if state == "Web" and count > 1:  # the first Web step suspends
            seen.append(suspended(world))

    world.hooks.append(look)
    return seen


HELD = {"AlarmNotification", "ScheduledActions", "AZRebalance"}


def test_scaling_cannot_replace_or_remove_a_web_server_while_the_web_group_rolls(fleet):
    world = fleet(web=1, timing=QUICK)
    seen = watch_scaling(world)
    world.set_desired(NEW)
    assert world.roll().status == "SUCCEEDED"
    assert seen and all(processes == HELD for processes in seen), seen
    assert suspended(world) == set(), "scaling was not resumed after the upgrade"


def test_scaling_is_resumed_after_a_failed_and_rolled_back_upgrade(fleet):
    world = fleet(web=1, timing=QUICK)
    seen = watch_scaling(world)
    world.command_faults.append(lambda iid, line: "boom" if f"deploy {NEW}" in line else None)
    world.set_desired(NEW)
    result = world.roll()
    assert result.status == "FAILED" and "Rollback" in result.states
    assert seen and all(processes == HELD for processes in seen), seen
    assert suspended(world) == set()


def test_a_process_the_operator_suspended_stays_suspended(fleet):
    world = fleet(web=2, timing=QUICK)
    world.aws("autoscaling").suspend_processes(AutoScalingGroupName="web", ScalingProcesses=["AZRebalance"])
    world.set_desired(NEW)
    assert world.roll().status == "SUCCEEDED"
    assert suspended(world) == {"AZRebalance"}


# ---------------------------------------------------------------- after the worker step
def test_failed_post_deployment_migrations_say_what_changed_and_what_to_do(fleet):
    world = fleet(web=2, timing=QUICK)
    world.command_faults.append(lambda iid, line: "PG::LockNotAvailable" if "migrate post" in line else None)
    world.set_desired(NEW)
    assert world.roll().status == "FAILED"
    assert_all_on(world, NEW)
    assert world.parameter(DEPLOYED) == NEW
    ((subject, message),) = world.notifications()
    assert subject == f"Mastodon upgrade to {NEW}: post-deployment step failed"
    assert "post-deployment migrations" in message and "PG::LockNotAvailable" in message
    assert f"Every server runs {NEW}; new servers boot it too" in message
    assert "Nothing was rolled back" in message
    assert f"/opt/mastodon-aws/deploy.sh migrate post {NEW}" in message
    assert "Nothing was changed" not in message and "previous version" not in message
    assert handled(world)["result"] == "failed"


def test_a_straggler_failing_after_the_post_deployment_migrations_rolls_nothing_back(fleet):
    # A server launched during the post-deployment migrations boots the new version
    # (deployed-version is written before them); if it then never turns healthy, the
    # schema has moved on: the servers stay on the new version and the notice says so.
    world = fleet(web=2, timing=QUICK)
    autoscaling = rollout_aws._clients["autoscaling"]
    stragglers: list[str] = []

    def scale_out_during_post(world: World, state: str, count: int) -> None:
        if state == "PostMigrate" and count == 1:
            before = set(world.instances("web"))
            autoscaling.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=len(before) + 1)
            stragglers.extend(set(world.instances("web")) - before)
            world.unhealthy.update((i, NEW) for i in stragglers)

    world.hooks.append(scale_out_during_post)
    world.set_desired(NEW)
    assert world.roll().status == "FAILED"
    assert stragglers, "the hook did not scale out"
    assert world.parameter(DEPLOYED) == NEW
    assert all(world.versions[i] == NEW for i in world.instances("web")), "a server runs the old version"
    ((subject, message),) = world.notifications()
    assert subject == f"Mastodon upgrade to {NEW}: post-deployment step failed"
    assert stragglers[0] in message and "not healthy" in message and "Nothing was rolled back" in message


def test_the_capacity_margin_is_measured_against_the_desired_capacity_not_what_is_left(fleet):
    # simulation/world.py's measure: a server that leaves must not lower the bar, or a
    # rollout that restarts a batch beside it would read as keeping its minimum.
    world = fleet(web=3, timing=QUICK)
    world.advance(5)
    assert world.min_capacity_margin() == 1  # 3 healthy against max(1, 3 - 1)
    for iid in world.instances("web")[:2]:
        world.terminate(iid)
    world.advance(5)
    assert world.min_capacity_margin() == -1, "one healthy server of three is below the minimum of two"


def test_a_scale_out_raises_the_capacity_bar_only_once_its_server_has_booted(fleet):
    scaled = fleet(web=2, timing=QUICK)
    scaled.aws("autoscaling").set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=3)
    scaled.advance(5)
    assert scaled.capacity[-1][2] == 2
    scaled.advance(QUICK.boot + 5)
    assert scaled.capacity[-1][2] == 3
