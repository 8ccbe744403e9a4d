"""scripts/settings.py against moto: every server in service reads its settings again, the worker
first and then one web server at a time, and the first failure stops it."""

from __future__ import annotations

import json
import uuid

import pytest

from templates.compute import DEPLOY_SCRIPT, QUEUE_GROUP, WEB_GROUP, WORKER_GROUP
from tests.operations.conftest import client, launch_template_and_subnet, run_script


@pytest.fixture
def stack_name() -> str:
    return f"settings-{uuid.uuid4().hex[:8]}"


def group(size: int, subnet: str) -> dict:
    return {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
        "MinSize": str(size), "MaxSize": str(size), "DesiredCapacity": str(size),
        "VPCZoneIdentifier": [subnet],
        "LaunchTemplate": {"LaunchTemplateId": {"Ref": "ServerLaunchTemplate"},
                           "Version": {"Fn::GetAtt": ["ServerLaunchTemplate", "LatestVersionNumber"]}}}}


@pytest.fixture
def fleet(aws_env, stack_name) -> dict[str, list[str]]:
    """A stack in moto with one worker and two web servers (no queue workers: the option is
    off); their instance ids by group."""
    return make_fleet(stack_name, {WORKER_GROUP: 1, WEB_GROUP: 2})


def make_fleet(stack_name: str, sizes: dict[str, int]) -> dict[str, list[str]]:
    template, subnet = launch_template_and_subnet("10.2.0.0/16", "10.2.0.0/24")
    body = {"Resources": {
        "ServerLaunchTemplate": template,
        **{logical_id: group(size, subnet) for logical_id, size in sizes.items()},
    }}
    client("cloudformation").create_stack(StackName=stack_name, TemplateBody=json.dumps(body))
    found = {}
    for logical_id in sizes:
        name = client("cloudformation").describe_stack_resource(
            StackName=stack_name, LogicalResourceId=logical_id)["StackResourceDetail"]["PhysicalResourceId"]
        (described,) = client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[name])["AutoScalingGroups"]
        found[logical_id] = sorted(i["InstanceId"] for i in described["Instances"])
    return found


@pytest.fixture
def servers_answer(monkeypatch):
    """moto's Run Command answers as deploy.sh would; FAILING holds instances whose run fails.
    Returns (the instances asked, in order, once each; the failing set)."""
    from moto.ssm import models as ssm_models

    original = ssm_models.Command.get_invocation
    asked: list[str] = []
    failing: set[str] = set()

    # What the script asked about (moto gives every command an invocation on every instance).
    def get_invocation(self, instance_id, plugin_name):  # type: ignore[no-untyped-def]
        response = dict(original(self, instance_id, plugin_name))
        if instance_id not in asked:
            asked.append(instance_id)
        assert self.parameters["commands"] == [f"{DEPLOY_SCRIPT} settings"]
        if instance_id in failing:
            response.update(Status="Failed", ResponseCode=1, StandardOutputContent="",
                            StandardErrorContent="2026-12-04T00:00:00Z deploy FAILED: Mastodon's other "
                            "settings: settings refused, none applied: refused DB_HOST (parameter "
                            "/mastodon/x/settings/DB_HOST): the stack sets it itself; nothing changed\n")
        else:
            response.update(Status="Success", ResponseCode=0,
                            StandardOutputContent="applied the settings on web (v4.7.6)\n")
        return response

    monkeypatch.setattr(ssm_models.Command, "get_invocation", get_invocation)
    return asked, failing


def test_apply_asks_the_worker_first_then_each_web_server_once(aws_env, fleet, servers_answer, stack_name):
    asked, _ = servers_answer
    result = run_script("settings.py", "--poll", "0.05", stack_name, "apply", env=aws_env)
    assert result.returncode == 0, result.stderr
    assert asked == fleet[WORKER_GROUP] + fleet[WEB_GROUP]
    assert "runs the current settings" in result.stdout


def test_the_queue_workers_are_asked_too_when_the_stack_has_them(aws_env, servers_answer, stack_name):
    queue_fleet = make_fleet(stack_name, {WORKER_GROUP: 1, QUEUE_GROUP: 2, WEB_GROUP: 1})
    asked, _ = servers_answer
    result = run_script("settings.py", "--poll", "0.05", stack_name, "apply", env=aws_env)
    assert result.returncode == 0, result.stderr
    assert asked == queue_fleet[WORKER_GROUP] + queue_fleet[QUEUE_GROUP] + queue_fleet[WEB_GROUP]


def test_the_first_failure_stops_apply_and_names_the_reason_and_who_was_not_asked(
        aws_env, fleet, servers_answer, stack_name):
    asked, failing = servers_answer
    first_web, second_web = fleet[WEB_GROUP]
    failing.add(first_web)
    result = run_script("settings.py", "--poll", "0.05", stack_name, "apply", env=aws_env)
    assert result.returncode == 1
    assert asked == [*fleet[WORKER_GROUP], first_web]
    assert f"{first_web} ({WEB_GROUP}) failed" in result.stderr and "refused DB_HOST" in result.stderr
    assert f"not asked: {second_web}" in result.stderr


def test_apply_names_a_missing_stack(aws_env):
    result = run_script("settings.py", "no-such-stack", "apply", env=aws_env)
    assert result.returncode == 1
    assert "no stack no-such-stack" in result.stderr


def test_a_server_gone_meanwhile_is_skipped_and_the_others_still_asked(aws_env, fleet, servers_answer,
                                                                     stack_name, monkeypatch):
    # SendCommand refuses an instance that is shutting down (a scale-in, a replacement).
    from moto.ssm import models as ssm_models
    from moto.ssm.exceptions import SSMException

    asked, _ = servers_answer
    gone = fleet[WEB_GROUP][0]
    original = ssm_models.SimpleSystemManagerBackend.send_command

    def send_command(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if gone in kwargs.get("instance_ids", args[3] if len(args) > 3 else []):
            raise SSMException("InvalidInstanceId", "Instances not in a valid state for account")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ssm_models.SimpleSystemManagerBackend, "send_command", send_command)
    result = run_script("settings.py", "--poll", "0.05", stack_name, "apply", env=aws_env)
    assert result.returncode == 0, result.stderr
    assert f"{gone} is no longer reachable" in result.stderr
    assert asked == [*fleet[WORKER_GROUP], fleet[WEB_GROUP][1]]
