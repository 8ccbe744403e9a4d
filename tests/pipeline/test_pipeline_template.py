"""The upgrade pipeline as the template declares it: trigger, state machine, functions, least privilege."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

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


def test_the_rollout_may_tag_only_the_version_its_images_and_its_journal_and_only_on_this_stacks_servers(
        template):
    (tagging,) = [s for s in _statements(template, "RolloutFunctionRole") if "ec2:CreateTags" in s["Action"]]
    assert set(tagging["Action"]) == {"ec2:CreateTags", "ec2:DeleteTags"}
    assert tagging["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] == [
        "mastodon:version", "mastodon:rollout", "mastodon:images"]
    assert "aws:ResourceTag/aws:autoscaling:groupName" in tagging["Condition"]["StringEquals"]


def test_the_rollout_may_record_only_its_hold_and_surge_on_the_web_group(template):
    (tagging,) = [s for s in _statements(template, "RolloutFunctionRole")
                  if "autoscaling:CreateOrUpdateTags" in s["Action"]]
    assert tagging["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] == [
        "mastodon:rollout-hold", "mastodon:rollout-surge"]
    (arn,) = tagging["Resource"]
    assert arn["Fn::Sub"].endswith("autoScalingGroupName/${WebAutoScalingGroup}")


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
    for path in [LAMBDAS / "invalidate.py", *sorted((LAMBDAS / "rollout").glob("*.py"))]:
        name = path.stem
        tree = ast.parse(path.read_text())
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
                own = module.startswith("lambdas.rollout") and path.parent.name == "rollout"
                assert own or top in allowed or top in sys.stdlib_module_names, f"{name} imports {module}"


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
        if any(a.startswith("autoscaling:") and a not in reads for a in s["Action"]) and "Condition" not in s
    ]
    (web,) = scaling
    assert {"autoscaling:SuspendProcesses", "autoscaling:ResumeProcesses"} <= set(web["Action"])
    (arn,) = web["Resource"]
    assert arn["Fn::Sub"].endswith("autoScalingGroupName/${WebAutoScalingGroup}")


def test_the_inline_rollout_code_runs_the_same_modules_in_a_fresh_interpreter(template, tmp_path):
    """The assembled ZipFile, as Lambda would load it (index.py, no project on the path)."""
    import subprocess
    import sys

    code = props(template, "RolloutFunction")["Code"]["ZipFile"]
    (tmp_path / "index.py").write_text(code)
    probe = (
        "import index, sys, types\n"
        "assert sys.modules['lambdas.rollout.plan'].plan_group\n"
        "try:\n"
        "    context = types.SimpleNamespace(function_name='f', memory_limit_in_mb=256, "
        "invoked_function_arn='arn', aws_request_id='r')\n"
        "    index.lambda_handler({'action': 'explode', 'state': {}}, context)\n"
        "except ValueError as error:\n"
        "    print('refused:', error)\n"
    )
    env = {"POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "refused: unknown action 'explode'" in done.stdout
    for name in ("names", "plan", "state", "aws", "fleet", "steps", "handler"):
        assert (LAMBDAS / "rollout" / f"{name}.py").read_text() in code, f"{name}.py is not inlined verbatim"


def test_a_stack_update_never_writes_the_build_s_release_into_the_desired_version(template):
    desired = props(template, "DesiredVersionParameter")
    assert desired["Value"] == {"Fn::GetAtt": ["DeployedVersionParameter", "ReportedValue"]}
    reporter = props(template, "DeployedVersionParameter")
    assert reporter["ReportValueOf"] == desired["Name"]
    # Any other change to desired-version makes CloudFormation ask the reporter again first,
    # so the value it writes back is the one the parameter holds, not a stale one.
    others = {k: v for k, v in desired.items() if k not in ("Name", "Value", "Type", "Tier")}
    assert reporter["Reporting"] == others


@pytest.mark.parametrize("value, accepted", [
    ("v4.7.6", True), ("v5.0.0", True), ("v4.7.5 allow-downgrade", True),
    ("v4.7.5 allow-downgrade ", False), ("allow-downgrade", False), ("v4.7.5 please", False),
    ("v4.2.0", False),
])
def test_the_desired_version_accepts_a_release_tag_and_the_downgrade_flag_only(template, value, accepted):
    import re

    condition, upstream, _ = props(template, "DesiredVersionParameter")["AllowedPattern"]["Fn::If"]
    assert condition == "ImagesAreUpstream"
    assert bool(re.fullmatch(upstream, value, re.ASCII)) is accepted


@pytest.mark.parametrize("value, accepted", [
    ("v4.7.6", True), ("v4.7.6-glitch", True), ("2026-12-01", True), ("3f9c2e1", True),
    ("v4.7.6-glitch allow-downgrade", True), ("latest", True), ("x" * 128, True),
    ("x" * 129, False), ("v4.7.6+glitch", False), ("-rc1", False), (".hidden", False),
    ("v4.7.6;reboot", False), ("../v4", False), ("v4 7", False), ("v4.7.6 please", False), ("", False),
])
def test_the_desired_version_of_your_own_images_accepts_any_oci_tag(template, value, accepted):
    """Not upstream's images: any tag of the OCI distribution spec's grammar, nothing else."""
    import re

    _, _, custom = props(template, "DesiredVersionParameter")["AllowedPattern"]["Fn::If"]
    assert bool(re.fullmatch(custom, value, re.ASCII)) is accepted


def test_the_rollout_leaves_a_booting_server_alone_as_long_as_auto_scaling_does(template):
    """A server is ready for the rollout when Auto Scaling would judge its health (item 10).

    The worker's grace runs from launch; a web server's from the end of its launch hook,
    which lasts at most the hook's timeout.
    """
    from tests.support import props as properties

    config = definition(template)["States"]["Configure"]["Parameters"]["config"]
    assert config["boot_grace"] == properties(template, "WorkerAutoScalingGroup")["HealthCheckGracePeriod"]
    web = properties(template, "WebAutoScalingGroup")
    (hook,) = web["LifecycleHookSpecificationList"]
    assert config["boot_grace"] >= hook["HeartbeatTimeout"] + web["HealthCheckGracePeriod"]
