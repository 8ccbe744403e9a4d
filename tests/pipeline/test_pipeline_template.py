"""The upgrade pipeline as the template declares it: trigger, state machine, functions, least privilege."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from templates.pipeline import LAMBDA_ERRORS
from tests.support import props, resources

LAMBDAS = Path(__file__).resolve().parents[2] / "lambdas"


def definition(template):
    return props(template, "RolloutStateMachine")["Definition"]


def test_a_change_of_the_desired_version_starts_the_rollout(template):
    rule = props(template, "RolloutTrigger")
    assert rule["EventPattern"]["detail"] == {
        "name": [{"Ref": "DesiredVersionParameter"}],
        "operation": ["Update"],
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Ref": "RolloutStateMachine"}
    (statement,) = props(template, "RolloutTriggerRole")["Policies"][0]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["states:StartExecution"] and statement["Resource"] == [
        {"Ref": "RolloutStateMachine"}
    ]


def test_every_task_retries_lambda_service_errors_and_has_a_timeout(template):
    tasks = {n: s for n, s in definition(template)["States"].items() if s["Type"] == "Task"}
    assert len(tasks) >= 10
    for name, task in tasks.items():
        assert task["Retry"][0]["ErrorEquals"] == LAMBDA_ERRORS, name
        assert 0 < task["TimeoutSeconds"] <= 120, name
        assert task.get("Catch"), f"{name} lets an error end the rollout unhandled"


def test_every_step_that_changes_servers_rolls_back_on_error(template):
    states = definition(template)["States"]
    for name in ("PreMigrate", "Web", "Worker"):
        assert states[name]["Catch"][0]["Next"] == "Rollback", name
        choices = {c["StringEquals"]: c["Next"] for c in states[f"{name}Next"]["Choices"]}
        assert choices["failed"] == "Rollback" and states[f"{name}Next"]["Default"] == "Rollback", name
    assert states["Rollback"]["Catch"][0]["Next"] == "Finish"


def test_waiting_is_done_by_the_state_machine_not_by_a_function(template):
    states = definition(template)["States"]
    waits = [s for s in states.values() if s["Type"] == "Wait"]
    assert waits and all(s["SecondsPath"] == "$.wait" for s in waits)
    for name in ("RolloutFunction", "InvalidateFunction"):
        assert props(template, name)["Timeout"] <= 60


def test_functions_and_state_machine_log_to_groups_with_retention(template):
    for name in ("RolloutFunction", "InvalidateFunction"):
        group = props(template, name)["LoggingConfig"]["LogGroup"]["Ref"]
        assert props(template, group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    destination = props(template, "RolloutStateMachine")["LoggingConfiguration"]["Destinations"][0]
    group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert props(template, group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def _statements(template, role):
    return [s for p in props(template, role)["Policies"] for s in p["PolicyDocument"]["Statement"]]


def test_run_command_is_allowed_only_with_the_shell_document_on_this_stacks_servers(template):
    sends = [s for s in _statements(template, "RolloutFunctionRole") if "ssm:SendCommand" in s["Action"]]
    resources_ = [json.dumps(s["Resource"]) for s in sends]
    assert any("document/AWS-RunShellScript" in r for r in resources_)
    (on_instances,) = [s for s in sends if "instance/*" in json.dumps(s["Resource"])]
    groups = on_instances["Condition"]["StringEquals"]["ssm:resourceTag/aws:autoscaling:groupName"]
    assert groups == [{"Ref": "WebAutoScalingGroup"}, {"Ref": "WorkerAutoScalingGroup"}]


def test_the_rollout_may_tag_only_the_version_and_only_on_this_stacks_servers(template):
    (tagging,) = [s for s in _statements(template, "RolloutFunctionRole") if "ec2:CreateTags" in s["Action"]]
    assert tagging["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] == ["mastodon:version"]
    assert "aws:ResourceTag/aws:autoscaling:groupName" in tagging["Condition"]["StringEquals"]


def test_only_the_deployed_version_and_the_rollout_record_are_written(template):
    (put,) = [s for s in _statements(template, "RolloutFunctionRole") if "ssm:PutParameter" in s["Action"]]
    written = json.dumps(put["Resource"])
    assert "DeployedVersionParameter" in written and "RolloutStateParameter" in written
    assert "DesiredVersionParameter" not in written


def test_the_invalidation_function_touches_only_this_distribution(template):
    (statement,) = [
        s for s in _statements(template, "InvalidateFunctionRole") if s["Action"][0].startswith("cloudfront")
    ]
    assert set(statement["Action"]) == {"cloudfront:CreateInvalidation", "cloudfront:GetInvalidation"}
    assert "${Distribution}" in statement["Resource"][0]["Fn::Sub"]


def test_the_batch_size_is_a_constrained_parameter(template):
    batch = template["Parameters"]["RollingBatchSize"]
    assert (batch["Default"], batch["MinValue"], batch["MaxValue"]) == ("1", 1, 5)
    assert props(template, "RolloutStateMachine")["DefinitionSubstitutions"]["BatchSize"] == {
        "Ref": "RollingBatchSize"
    }


def test_the_rollout_functions_import_only_the_standard_library_boto3_and_powertools():
    import sys

    allowed = {"boto3", "botocore", "aws_lambda_powertools", "__future__"}
    for name in ("rollout", "invalidate"):
        tree = ast.parse((LAMBDAS / f"{name}.py").read_text())
        for node in ast.walk(tree):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for module in modules:
                top = module.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{name} imports {module}"


def test_the_definition_is_accepted_by_step_functions_in_moto(template):
    import boto3
    from moto import mock_aws

    text = json.dumps(definition(template))
    for key in props(template, "RolloutStateMachine")["DefinitionSubstitutions"]:
        text = text.replace("${" + key + "}", f"arn:aws:lambda:us-east-1:123456789012:function:{key}")
    with mock_aws():
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        arn = sfn.create_state_machine(
            name="rollout", definition=text, roleArn="arn:aws:iam::123456789012:role/r"
        )["stateMachineArn"]
        assert (
            json.loads(sfn.describe_state_machine(stateMachineArn=arn)["definition"])["StartAt"]
            == "Configure"
        )
    assert len(resources(template, "AWS::StepFunctions::StateMachine")) == 1


def test_the_rollout_may_hold_scaling_of_the_web_group_only_and_never_touches_the_worker_group(template):
    reads = {"autoscaling:DescribeAutoScalingGroups"}
    scaling = [
        s
        for s in _statements(template, "RolloutFunctionRole")
        if any(a.startswith("autoscaling:") and a not in reads for a in s["Action"])
    ]
    (web,) = scaling
    assert {"autoscaling:SuspendProcesses", "autoscaling:ResumeProcesses"} <= set(web["Action"])
    (arn,) = web["Resource"]
    assert arn["Fn::Sub"].endswith("autoScalingGroupName/${WebAutoScalingGroup}")
