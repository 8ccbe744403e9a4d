"""Sidekiq queue workers: off by default, and when on a group that scales on queue latency,
fed by metrics only the main worker may publish, watched by two alerts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from troposphere import Template, autoscaling

from scripts import costs
from scripts.template_values import Evaluator, parameter_values
from templates import alarms, compute, parameters, pipeline, scaling, sidekiq
from tests.support import props, resources

ROOT = Path(__file__).resolve().parents[2]
PRICES = json.loads((ROOT / "pricing" / "us-east-1.json").read_text())
ON = {"QueueWorkerMinSize": "1", "QueueWorkerMaxSize": "4"}
NAMESPACE = {"Fn::Sub": "Mastodon/${AWS::StackName}"}
QUEUE_RESOURCES = {
    compute.QUEUE_GROUP,
    compute.QUEUE_LAUNCH_TEMPLATE,
    compute.QUEUE_SERVER_ROLE,
    "QueueWorkerInstanceProfile",
    compute.QUEUE_METRICS_POLICY,
    pipeline.QUEUE_WORKERS_POLICY,
    scaling.QUEUE_SCALE_OUT_POLICY,
    scaling.QUEUE_SCALE_IN_POLICY,
    scaling.QUEUE_SCALE_OUT_ALARM,
    scaling.QUEUE_SCALE_IN_ALARM,
    alarms.SIDEKIQ_OLDEST_JOB_ALARM,
    alarms.SIDEKIQ_NO_PROCESS_ALARM,
}


def created(template: dict[str, Any], values: dict[str, str]) -> set[str]:
    ev = Evaluator(template, {**parameter_values(template, values), "AWS::Region": "us-east-1"})
    return {name for name in template["Resources"] if ev.creates(name)}


def stack_env(template: dict[str, Any], launch_template: str, values: dict[str, str]) -> dict[str, Any]:
    """The stack.env user data writes, with the parameter values given."""
    ev = Evaluator(template, {**parameter_values(template, values), "AWS::Region": "us-east-1"})
    parts = props(template, launch_template)["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]

    def resolve(node: Any) -> Any:
        if isinstance(node, dict) and "Fn::If" in node:
            name, when_true, when_false = node["Fn::If"]
            return resolve(when_true if ev.condition(name) else when_false)
        if isinstance(node, dict) and "Fn::Join" in node and isinstance(node["Fn::Join"][1], dict):
            separator, members = node["Fn::Join"]  # Join(",", Ref(list parameter))
            return separator.join(ev._members(ev.value(members)))
        if isinstance(node, dict) and "Ref" in node and node["Ref"] in ev.values:
            return ev.value(node)
        return node  # a resource's attribute, or a Sub: as the template has it

    env = {}
    for i, part in enumerate(parts[:-1]):
        if isinstance(part, str) and part.endswith("='"):
            env[part.split("\n")[-1][:-2]] = resolve(parts[i + 1])
    return env


def test_by_default_nothing_of_the_option_is_created(template):
    assert QUEUE_RESOURCES <= set(template["Resources"])
    assert not QUEUE_RESOURCES & created(template, {})
    assert {
        n for n, r in template["Resources"].items() if r.get("Condition") == parameters.HAS_QUEUE_WORKERS
    } == QUEUE_RESOURCES


def test_a_maximum_above_zero_creates_the_group_and_everything_it_needs(template):
    assert created(template, ON) - created(template, {}) == QUEUE_RESOURCES


def test_by_default_the_worker_runs_every_queue_and_publishes_nothing(template):
    env = stack_env(template, compute.WORKER_LAUNCH_TEMPLATE, {})
    assert env["MAIN_WORKER_QUEUES"] == sidekiq.ALL_QUEUES
    assert env["QUEUE_WORKER_MAX_SIZE"] == "0"
    assert env["METRICS_NAMESPACE"] == ""


def test_with_queue_workers_the_worker_publishes_into_the_stacks_namespace(template):
    env = stack_env(template, compute.WORKER_LAUNCH_TEMPLATE, ON)
    assert env["METRICS_NAMESPACE"] == NAMESPACE
    assert env["QUEUE_WORKER_MAX_SIZE"] == "4"
    assert env["QUEUE_WORKER_QUEUES"] == ",".join(sidekiq.DEFAULT_QUEUE_WORKER_QUEUES)


def test_queue_workers_boot_as_their_own_role_and_signal_their_own_group(template):
    env = stack_env(template, compute.QUEUE_LAUNCH_TEMPLATE, ON)
    assert env["ROLE"] == "queue"
    assert env["SIGNAL_RESOURCE"] == compute.QUEUE_GROUP
    assert env["INSTANCE_SCRIPTS"] == compute.QUEUE_LAUNCH_TEMPLATE
    # They count the whole fleet in their share of the connections, as the others do.
    assert env["QUEUE_WORKER_MAX_SIZE"] == "4" and env["WEB_MAX_SIZE"] == "2"
    assert "METRICS_NAMESPACE" not in env, "only the main worker publishes"
    data = props(template, compute.QUEUE_LAUNCH_TEMPLATE)["LaunchTemplateData"]
    assert data["InstanceType"] == {"Ref": "QueueWorkerInstanceType"}
    assert data["ImageId"]["Fn::If"][0] == parameters.QUEUE_WORKER_IS_ARM
    assert data["MetadataOptions"]["HttpTokens"] == "required"


def test_the_group_scales_between_its_parameters_with_no_load_balancer(template):
    group = template["Resources"][compute.QUEUE_GROUP]
    p = group["Properties"]
    assert (p["MinSize"], p["MaxSize"]) == ({"Ref": "QueueWorkerMinSize"}, {"Ref": "QueueWorkerMaxSize"})
    assert "DesiredCapacity" not in p, "an update would undo scaling"
    assert "TargetGroupARNs" not in p and "LifecycleHookSpecificationList" not in p
    assert p["HealthCheckType"] == "EC2"
    assert {"Key": compute.ROLE_TAG, "Value": "queue", "PropagateAtLaunch": True} in p["Tags"]
    assert group["CreationPolicy"]["ResourceSignal"]["Count"] == {"Ref": "QueueWorkerMinSize"}
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["WaitOnResourceSignals"] is True
    assert "AlarmNotification" in rolling["SuspendProcesses"], "scaling would fight the update"


def test_only_the_main_worker_may_publish_metrics_and_only_in_the_stacks_namespace(template):
    policy = props(template, compute.QUEUE_METRICS_POLICY)
    assert policy["Roles"] == [{"Ref": compute.WORKER_SERVER_ROLE}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["cloudwatch:PutMetricData"]
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": NAMESPACE}}
    for role in (compute.WEB_SERVER_ROLE, compute.WORKER_SERVER_ROLE, compute.QUEUE_SERVER_ROLE):
        assert "cloudwatch:PutMetricData" not in json.dumps(props(template, role))


def test_queue_workers_read_what_the_worker_reads_and_may_only_mark_their_own_group_unhealthy(template):
    [worker] = props(template, compute.WORKER_SERVER_ROLE)["Policies"]
    [queue] = props(template, compute.QUEUE_SERVER_ROLE)["Policies"]
    *same, health = queue["PolicyDocument"]["Statement"]
    assert same == worker["PolicyDocument"]["Statement"]
    # A failed boot marks its own server Unhealthy (bootstrap.sh): only in this stack's queue group.
    assert health["Action"] == ["autoscaling:SetInstanceHealth"]
    assert health["Condition"] == {"StringEquals": {
        "autoscaling:ResourceTag/aws:cloudformation:stack-id": {"Ref": "AWS::StackId"},
        "autoscaling:ResourceTag/aws:cloudformation:logical-id": compute.QUEUE_GROUP,
    }}
    for role in (compute.WEB_SERVER_ROLE, compute.WORKER_SERVER_ROLE):
        assert "SetInstanceHealth" not in json.dumps(props(template, role))


def test_the_group_scales_out_fast_and_in_slowly_on_its_queues_latency(template):
    out, scale_in = (
        props(template, n) for n in (scaling.QUEUE_SCALE_OUT_ALARM, scaling.QUEUE_SCALE_IN_ALARM)
    )
    for alarm in (out, scale_in):
        assert (alarm["Namespace"], alarm["MetricName"]) == (NAMESPACE, sidekiq.QUEUE_WORKER_LATENCY_METRIC)
        assert alarm["Period"] == sidekiq.METRICS_PERIOD_SECONDS
        # No data: the publisher is down; scaling either way on it would be a guess.
        assert alarm["TreatMissingData"] == "notBreaching"
    assert out["AlarmActions"] == [{"Ref": scaling.QUEUE_SCALE_OUT_POLICY}]
    assert scale_in["AlarmActions"] == [{"Ref": scaling.QUEUE_SCALE_IN_POLICY}]
    assert out["ComparisonOperator"] == "GreaterThanThreshold"
    assert scale_in["ComparisonOperator"] == "LessThanThreshold"
    assert scale_in["Threshold"] < out["Threshold"], "a gap between the two, or the group flaps"
    assert (
        scale_in["EvaluationPeriods"] * scale_in["Period"] >= 600 > out["EvaluationPeriods"] * out["Period"]
    )
    for name, sign in ((scaling.QUEUE_SCALE_OUT_POLICY, 1), (scaling.QUEUE_SCALE_IN_POLICY, -1)):
        policy = props(template, name)
        assert policy["AutoScalingGroupName"] == {"Ref": compute.QUEUE_GROUP}
        assert policy["PolicyType"] == "StepScaling"
        assert all(step["ScalingAdjustment"] * sign > 0 for step in policy["StepAdjustments"])
    assert props(template, scaling.QUEUE_SCALE_OUT_POLICY)["EstimatedInstanceWarmup"] >= 300


def test_the_alerts_watch_the_oldest_job_and_the_live_processes(template):
    oldest = props(template, alarms.SIDEKIQ_OLDEST_JOB_ALARM)
    assert (oldest["Namespace"], oldest["MetricName"]) == (NAMESPACE, sidekiq.OLDEST_JOB_METRIC)
    assert oldest["Threshold"] == alarms.OLDEST_JOB_ALERT_SECONDS
    assert oldest["Threshold"] > props(template, scaling.QUEUE_SCALE_OUT_ALARM)["Threshold"]
    alive = template["Resources"][alarms.SIDEKIQ_NO_PROCESS_ALARM]
    assert (alive["Properties"]["MetricName"], alive["Properties"]["Threshold"]) == (
        sidekiq.PROCESSES_METRIC,
        1,
    )
    assert alive["Properties"]["TreatMissingData"] == "breaching"
    assert alive["DependsOn"] == [compute.WORKER_GROUP]


def test_the_rollout_and_other_tiers_name_the_group_only_when_it_exists():
    t = Template()
    parameters.create_parameters(t)
    group = autoscaling.AutoScalingGroup(compute.QUEUE_GROUP)
    fake = compute.Compute(web_group=group, worker_group=group, log_groups={}, queue_group=group)
    assert fake.queue_group_name().to_dict() == {
        "Fn::If": [parameters.HAS_QUEUE_WORKERS, {"Ref": compute.QUEUE_GROUP}, ""]
    }
    arn = fake.queue_group_arn().to_dict()
    assert arn["Fn::Sub"].endswith(f"autoScalingGroupName/${{{compute.QUEUE_GROUP}}}")


def test_the_defaults_cost_nothing_more_and_the_option_itemises_its_metrics_and_servers(template):
    default = costs.estimate(template, {}, PRICES)
    assert default.component("custom metrics") == 0
    on = costs.estimate(template, ON, PRICES)
    assert on.component("custom metrics") == pytest.approx(
        sidekiq.CUSTOM_METRICS * PRICES["custom_metric_month"]
    )
    assert on.component("queueworker servers") == pytest.approx(
        PRICES["ec2_hourly"]["t4g.small"] * PRICES["hours_per_month"], abs=0.01
    )
    assert on.component("alarms") == pytest.approx(default.component("alarms") + 4 * PRICES["alarm_month"])


def test_every_metric_goes_out_in_one_put_metric_data_call():
    # 7 queues x (latency, size) + 5 fleet-wide; PutMetricData took 20 a call for years
    # (1,000 today): staying within 20 keeps one call, one request a minute.
    assert sidekiq.CUSTOM_METRICS == 2 * len(sidekiq.QUEUES) + 5 <= 20


def test_the_queue_workers_never_run_the_scheduler(template):
    allowed = template["Parameters"]["QueueWorkerQueues"]["AllowedValues"]
    assert sidekiq.SCHEDULER_QUEUE not in allowed
    assert set(allowed) | {sidekiq.SCHEDULER_QUEUE} == set(sidekiq.QUEUES)


@pytest.mark.slow
def test_cfn_lint_finds_nothing_with_queue_workers_on(template):
    from cfnlint.api import ManualArgs, lint

    on = copy.deepcopy(template)
    for name, value in ON.items():
        on["Parameters"][name]["Default"] = value
    found = lint(json.dumps(on), config=ManualArgs(regions=["us-east-1", "eu-central-1"]))
    assert [f"{m.rule.id} {m.message}" for m in found] == []


def test_the_option_has_its_own_console_group(template):
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    (group,) = [g for g in groups if g["Label"]["default"] == parameters.GROUP_QUEUE_WORKERS]
    assert set(group["Parameters"]) == {
        "QueueWorkerMinSize",
        "QueueWorkerMaxSize",
        "QueueWorkerInstanceType",
        "MainWorkerQueues",
        "QueueWorkerQueues",
    }
    assert resources(template, "AWS::AutoScaling::AutoScalingGroup").keys() >= {compute.QUEUE_GROUP}
