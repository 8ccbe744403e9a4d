"""scripts/rollout.py: the current or last rollout, read from the stack's state machine.

The real `aws` CLI talks to a moto server. moto's Step Functions keeps executions but
returns a canned history (it does not run the definition without Docker-free Lambda
tasks of ours), so each test gives the execution the history AWS would record
(newest first, as --reverse-order asks), by patching moto's Execution in this process,
where the server runs. Servers are Auto Scaling instances tagged as the rollout tags them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from moto.stepfunctions import models as sfn_models

from lambdas.rollout.names import VERSION_TAG
from scripts import rollout
from tests.operations.conftest import client, run_script

pytestmark = pytest.mark.slow

NEW, OLD = "v4.7.7", "v4.7.6"


@dataclass
class Stack:
    """One test's stack (moto's server outlives a test: every name is unique)."""

    name: str
    machine: str = ""

    @property
    def web(self) -> str:
        return f"{self.name}-web"

    @property
    def worker(self) -> str:
        return f"{self.name}-worker"

    @property
    def record(self) -> str:
        return f"/mastodon/{self.name}/rollout-last"


CURRENT = Stack("social")


def state(**extra) -> dict:
    return {"config": {"web_group": CURRENT.web, "worker_group": CURRENT.worker,
                       "handled_parameter": CURRENT.record},
            "execution": "arn", "state_machine": "arn", "target": NEW, "previous": OLD, **extra}


def entered(name: str, data: dict) -> dict:
    return {"type": "TaskStateEntered", "id": 1, "timestamp": datetime.now(UTC),
            "stateEnteredEventDetails": {"name": name, "input": json.dumps(data)}}


def exited(name: str, data: dict) -> dict:
    return {"type": "TaskStateExited", "id": 1, "timestamp": datetime.now(UTC),
            "stateExitedEventDetails": {"name": name, "output": json.dumps(data)}}


@pytest.fixture
def history(monkeypatch):
    """The history (newest first) every execution answers."""
    events: list[dict] = []
    monkeypatch.setattr(sfn_models.Execution, "get_execution_history", lambda self, role: list(events))
    return events


@pytest.fixture
def rollout_stack(aws_env, monkeypatch):
    """A stack holding the rollout's state machine; web (2) and worker (1) groups beside it."""
    stack = Stack(f"social-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(CURRENT, "name", stack.name)
    image_id = client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    vpc = client("ec2").create_vpc(CidrBlock="10.2.0.0/16")["Vpc"]["VpcId"]
    subnet = client("ec2").create_subnet(VpcId=vpc, CidrBlock="10.2.0.0/24")["Subnet"]["SubnetId"]
    client("ec2").create_launch_template(LaunchTemplateName=stack.name, LaunchTemplateData={
        "ImageId": image_id, "InstanceType": "t4g.small"})
    versions = {}
    for group, size in ((stack.web, 2), (stack.worker, 1)):
        client("autoscaling").create_auto_scaling_group(
            AutoScalingGroupName=group, MinSize=size, MaxSize=size, VPCZoneIdentifier=subnet,
            LaunchTemplate={"LaunchTemplateName": stack.name})
        (described,) = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
            "AutoScalingGroups"]
        versions[group] = [i["InstanceId"] for i in described["Instances"]]
    # One web server is on the new version, the other and the worker still on the old.
    for instance, version in zip([*versions[stack.web], *versions[stack.worker]], [NEW, OLD, OLD],
                                 strict=True):
        client("ec2").create_tags(Resources=[instance], Tags=[{"Key": VERSION_TAG, "Value": version}])
    body = {"Resources": {"RolloutStateMachine": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
        "RoleArn": "arn:aws:iam::123456789012:role/rollout",
        "DefinitionString": json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})}}}}
    client("cloudformation").create_stack(StackName=stack.name, TemplateBody=json.dumps(body))
    stack.machine = client("cloudformation").describe_stack_resource(
        StackName=stack.name, LogicalResourceId="RolloutStateMachine"
    )["StackResourceDetail"]["PhysicalResourceId"]
    return stack


def start(stack: Stack) -> str:
    return client("stepfunctions").start_execution(stateMachineArn=stack.machine, input="{}")["executionArn"]


def test_status_shows_the_running_rollouts_version_step_and_servers(aws_env, rollout_stack, history):
    start(rollout_stack)
    history[:] = [entered("Web", state()), exited("PreMigrate", state())]
    result = run_script("rollout.py", rollout_stack.name, "status", env=aws_env, timeout=280)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(
        f"rollout of {NEW} (from {OLD}): upgrading the web servers, 1 of 3 servers on {NEW}")
    assert "elapsed" in first and "execution: arn:aws:states:us-east-1:" in result.stdout


def test_status_shows_the_queue_workers_progress_apart(aws_env, rollout_stack, history):
    queue = f"{rollout_stack.name}-queue"
    client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=queue, MinSize=0, MaxSize=3, DesiredCapacity=2,
        VPCZoneIdentifier=client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[rollout_stack.web])["AutoScalingGroups"][0]["VPCZoneIdentifier"],
        LaunchTemplate={"LaunchTemplateName": rollout_stack.name})
    (described,) = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[queue])[
        "AutoScalingGroups"]
    first, second = (i["InstanceId"] for i in described["Instances"])
    client("ec2").create_tags(Resources=[first], Tags=[{"Key": VERSION_TAG, "Value": NEW}])
    client("ec2").create_tags(Resources=[second], Tags=[{"Key": VERSION_TAG, "Value": OLD}])
    start(rollout_stack)
    with_queue = state()
    with_queue["config"]["queue_group"] = queue
    history[:] = [entered("Worker", with_queue), exited("Web", with_queue)]
    result = run_script("rollout.py", rollout_stack.name, "status", env=aws_env, timeout=280)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(
        f"rollout of {NEW} (from {OLD}): upgrading the worker and the queue workers, "
        f"2 of 5 servers on {NEW} (queue workers: 1 of 2)")


def test_status_of_a_failed_rollout_gives_the_reason_from_its_record(aws_env, rollout_stack, history):
    execution = start(rollout_stack)
    client("stepfunctions").stop_execution(executionArn=execution, error="RolloutFailed")
    reason = "web server i-1 did not stay healthy on v4.7.7; rolled back to v4.7.6"
    client("ssm").put_parameter(Name=rollout_stack.record, Type="String", Value=json.dumps({
        "desired_version": 3, "version": NEW, "result": "failed", "execution": execution.rsplit(":", 2)[-2]
        + ":" + execution.rsplit(":", 1)[-1], "reason": reason}))
    history[:] = [exited("Finish", state(rolling_back=True)), entered("Finish", state())]
    result = run_script("rollout.py", rollout_stack.name, "status", env=aws_env, timeout=280)
    assert result.returncode == 1
    assert f"rollout of {NEW} (from {OLD}): FAILED (aborted)" in result.stdout
    assert f"reason: {reason}" in result.stdout


def test_watch_follows_until_the_rollout_ends(aws_env, rollout_stack, history, monkeypatch):
    start(rollout_stack)
    looks = iter([
        [entered("PreMigrate", state())],
        [entered("Web", state())],
        [entered("Finish", state())],
    ])

    def next_look(self, role):  # self: moto's execution
        try:
            return next(looks)
        except StopIteration:  # the rollout ends after three looks
            self.status, self.stop_date = "SUCCEEDED", self.start_date + timedelta(minutes=9)
            return [entered("Done", state())]

    monkeypatch.setattr(sfn_models.Execution, "get_execution_history", next_look)
    result = run_script("rollout.py", "--poll", "0.1", rollout_stack.name, "watch", env=aws_env,
                        timeout=280)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(": ")[1].split(",")[0] for line in lines] == [
        "pre-deployment migrations", "upgrading the web servers", "finishing (scaling resumed", "done",
        "succeeded after 9m00s"]


def _rollout(status: str, target: str) -> rollout.Rollout:
    return rollout.Rollout(execution="arn:aws:states:us-east-1:123456789012:execution:m:e", status=status,
                           step="Done", started=None, stopped=None, target=target, previous=OLD,
                           failure=None, rolling_back=False, done=3, total=3)


def test_watch_right_after_a_put_waits_for_that_rollout_not_the_last_one(monkeypatch, capsys):
    # The README's order: put-parameter, then watch. The newest execution is still the
    # last rollout (of NEW) while desired-version already asks for another.
    monkeypatch.setattr(rollout.awscli, "region_in_use", lambda region: ("us-east-1", "--region"))
    monkeypatch.setattr(rollout.awscli, "stack_resource", lambda *args: "machine")
    monkeypatch.setattr(rollout, "desired_version", lambda *args: "v4.7.8")
    monkeypatch.setattr(rollout, "look", lambda machine, region: _rollout("SUCCEEDED", NEW))
    assert rollout.main(["--poll", "0.01", "--start-wait", "0.1", "mastodon", "watch"]) == 1
    out = capsys.readouterr()
    assert "waiting for the rollout of v4.7.8 to start" in out.out
    assert "no rollout of v4.7.8 started" in out.err
    assert f"rollout of {NEW}" not in out.out


def test_watch_follows_the_asked_for_rollout_once_it_starts(monkeypatch, capsys):
    looks = iter([_rollout("SUCCEEDED", NEW), _rollout("RUNNING", "v4.7.8"), _rollout("SUCCEEDED", "v4.7.8")])
    monkeypatch.setattr(rollout.awscli, "region_in_use", lambda region: ("us-east-1", "--region"))
    monkeypatch.setattr(rollout.awscli, "stack_resource", lambda *args: "machine")
    monkeypatch.setattr(rollout, "desired_version", lambda *args: "v4.7.8")
    monkeypatch.setattr(rollout, "look", lambda machine, region: next(looks))
    assert rollout.main(["--poll", "0.01", "--start-wait", "5", "mastodon", "watch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "waiting for the rollout of v4.7.8 to start"
    assert all("v4.7.8" in line for line in lines) and "succeeded" in lines[-1]


def test_a_stack_in_another_region_is_named_with_the_region_looked_in(aws_env):
    result = run_script("rollout.py", "--region", "eu-central-1", "nowhere", "status", env=aws_env,
                        timeout=280)
    assert result.returncode == 1
    assert "no stack nowhere in eu-central-1 (region from --region)" in result.stderr


def test_no_rollout_yet_says_how_to_start_one(aws_env, rollout_stack, history):
    result = run_script("rollout.py", rollout_stack.name, "status", env=aws_env, timeout=280)
    assert result.returncode == 0
    assert "no rollout has run yet in us-east-1" in result.stdout


def test_the_history_is_read_from_the_newest_event_that_holds_the_state():
    step, found = rollout.read_history([
        {"type": "TaskScheduled", "taskScheduledEventDetails": {"parameters": "{}"}},
        entered("WebWait", state(failure=None)),
        exited("Web", state(target="v9")),
    ])
    assert step == "WebWait" and found["target"] == NEW
