"""scripts/deploy.py, run for real with the `aws` CLI against a moto server.

moto's CloudFormation holds the prepared template (see tests/templates/
test_moto_deploy.py: what moto cannot create is removed), so this proves the
script's work — build or take a template, check the parameter file, run `aws
cloudformation deploy` through an S3 bucket with the right capabilities and tags,
follow the events, print the outputs, report failures — not the template's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from moto.cloudformation import models as cfn_models
from moto.cloudformation import parsing as cfn_parsing

from tests.operations.conftest import client, run_script
from tests.templates.test_moto_deploy import PARAMETERS, prepare_for_moto

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def change_sets_refresh_outputs(monkeypatch):
    """moto computes a stack's outputs from the template it had before the change set."""
    original = cfn_models.ChangeSet.apply

    def apply(self):
        original(self)
        self.stack.template_dict = self.template_dict
        self.stack.output_map = self.stack._create_output_map()

    monkeypatch.setattr(cfn_models.ChangeSet, "apply", apply)


def write_parameters(path: Path, values: dict[str, str]) -> Path:
    path.write_text(json.dumps([{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]))
    return path


@pytest.fixture
def moto_stack_inputs(aws_env, template, tmp_path):
    image_id = client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    certificate = client("acm").request_certificate(DomainName="social.example.com",
                                                    ValidationMethod="DNS")["CertificateArn"]
    prepared = tmp_path / "mastodon-moto.json"
    prepared.write_text(json.dumps(prepare_for_moto(template, image_id)))
    client("s3").create_bucket(Bucket="deploy-artifacts")
    values = {**PARAMETERS, "LoadBalancerCertificateArn": certificate, "WebMinSize": "1", "WebMaxSize": "2"}
    return prepared, values


def stack(name: str) -> dict:
    return client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]


def test_the_stack_is_created_from_a_parameter_file_through_the_bucket(aws_env, moto_stack_inputs, tmp_path):
    prepared, values = moto_stack_inputs
    assert prepared.stat().st_size > 51_200  # so the S3 path is the one exercised
    production = write_parameters(tmp_path / "production.json", values)

    created = run_script("deploy.py", "--stack-name", "mastodon-prod", "--parameters", str(production),
                         "--s3-bucket", "deploy-artifacts", "--template", str(prepared), "--poll", "0.2",
                         "--tag", "owner=ops", "--no-check", env=aws_env)

    assert created.returncode == 0, created.stderr + created.stdout
    described = stack("mastodon-prod")
    assert described["StackStatus"] == "CREATE_COMPLETE"
    assert {t["Key"]: t["Value"] for t in described["Tags"]}.items() >= {
        "project": "mastodon", "environment": "production", "owner": "ops"}.items()
    assert client("s3").list_objects_v2(Bucket="deploy-artifacts")["Contents"], "uploaded to the bucket"
    lines = created.stdout.splitlines()
    outputs = [line.strip() for line in lines[lines.index("mastodon-prod: CREATE_COMPLETE") + 1:]]
    assert outputs[0] == "InstanceUrl: https://social.example.com/"
    assert "AlertTopicArn: arn:aws:sns:us-east-1:" in created.stdout
    assert any("CREATE_COMPLETE" in line and "AWS::CloudFormation::Stack" in line for line in lines)
    # The data is guarded against replacement and deletion by the stack policy.
    body = client("cloudformation").get_stack_policy(StackName="mastodon-prod")["StackPolicyBody"]
    policy = json.loads(body)
    denied = next(s for s in policy["Statement"] if s["Effect"] == "Deny")
    assert "LogicalResourceId/Database" in denied["Resource"]
    assert "Update:Replace" in denied["Action"]


# moto cannot update the whole Mastodon template (its update re-parses every resource and
# trips over what the preparation removed), so the update runs on a small template of the
# same shape: a parameter that changes a resource's property, and the instance URL output.
SMALL_TEMPLATE = {
    "Parameters": {
        "DomainName": {"Type": "String", "AllowedPattern": "^[a-z.]+$"},
        "LogRetentionDays": {"Type": "Number", "Default": "30", "AllowedValues": ["7", "14", "30"]},
    },
    "Resources": {"SystemLogs": {"Type": "AWS::Logs::LogGroup", "Properties": {
        "LogGroupName": {"Fn::Sub": "/mastodon/${AWS::StackName}/system"},
        "RetentionInDays": {"Ref": "LogRetentionDays"}}}},
    "Outputs": {"InstanceUrl": {"Value": {"Fn::Join": ["", ["https://", {"Ref": "DomainName"}, "/"]]}},
                "AlertTopicArn": {"Value": "arn:aws:sns:us-east-1:123456789012:alerts"}},
}


def test_a_create_then_an_update_with_a_changed_parameter(aws_env, tmp_path):
    template = tmp_path / "small.json"
    template.write_text(json.dumps(SMALL_TEMPLATE))
    staging = write_parameters(tmp_path / "staging.json", {"DomainName": "staging.example.com"})
    args = ("--stack-name", "mastodon-staging", "--parameters", str(staging), "--template", str(template),
            "--poll", "0.2", "--no-check")

    created = run_script("deploy.py", *args, env=aws_env)
    assert created.returncode == 0, created.stderr + created.stdout
    logs = client("logs")
    (group,) = logs.describe_log_groups(logGroupNamePrefix="/mastodon/mastodon-staging/")["logGroups"]
    assert int(group["retentionInDays"]) == 30

    write_parameters(staging, {"DomainName": "staging.example.com", "LogRetentionDays": "7"})
    updated = run_script("deploy.py", *args, env=aws_env)

    assert updated.returncode == 0, updated.stderr + updated.stdout
    assert stack("mastodon-staging")["StackStatus"] == "UPDATE_COMPLETE"
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack("mastodon-staging")["Parameters"]}
    assert parameters["LogRetentionDays"] == "7"
    # (moto's update does not re-apply resource properties: the parameter is what it records.)
    assert "mastodon-staging: UPDATE_COMPLETE" in updated.stdout
    assert updated.stdout.splitlines()[-2].strip() == "InstanceUrl: https://staging.example.com/"

    # A second run with nothing to change succeeds (--no-fail-on-empty-changeset on AWS).
    assert run_script("deploy.py", *args, env=aws_env).returncode == 0


def test_a_parameter_file_the_template_refuses_stops_before_aws(aws_env, moto_stack_inputs, tmp_path):
    prepared, values = moto_stack_inputs
    bad = write_parameters(tmp_path / "bad.json", {**values, "WebMinSize": "0", "Typo": "x"})
    result = run_script("deploy.py", "--stack-name", "never", "--parameters", str(bad), "--s3-bucket",
                        "deploy-artifacts", "--template", str(prepared), env=aws_env)
    assert result.returncode == 2
    assert "WebMinSize='0': not one of 1, 2" in result.stderr
    assert "Typo is not a parameter of the template" in result.stderr
    assert not [s for s in client("cloudformation").list_stacks()["StackSummaries"]
                if s["StackName"] == "never"]


def test_a_large_template_without_a_bucket_is_refused(aws_env, moto_stack_inputs, tmp_path):
    prepared, values = moto_stack_inputs
    result = run_script("deploy.py", "--stack-name", "nobucket", "--parameters",
                        str(write_parameters(tmp_path / "p.json", values)), "--template", str(prepared),
                        env=aws_env)
    assert result.returncode == 2 and "give --s3-bucket" in result.stderr


class ResourceFailed(Exception):
    def __init__(self, logical_id: str, resource_type: str, reason: str) -> None:
        super().__init__(reason)
        self.logical_id, self.resource_type, self.reason = logical_id, resource_type, reason


@pytest.fixture
def moto_records_failures(monkeypatch):
    """moto raises where AWS records CREATE_FAILED and rolls back: teach it AWS's bookkeeping."""
    original_create = cfn_parsing.parse_and_create_resource
    original_execute = cfn_models.CloudFormationBackend.execute_change_set

    def create(logical_id, resource_json, *args, **kwargs):
        try:
            return original_create(logical_id, resource_json, *args, **kwargs)
        except Exception as error:
            raise ResourceFailed(logical_id, resource_json["Type"], str(error)) from error

    def execute(self, change_set_name, stack_name=None):
        try:
            return original_execute(self, change_set_name, stack_name)
        except ResourceFailed as failure:
            (stack,) = [s for s in self.stacks.values() if s.name in (stack_name, change_set_name)
                        or any(c.change_set_name == change_set_name for c in self.change_sets.values()
                               if c.stack_id == s.stack_id)]
            stack.events.append(cfn_models.Event(
                stack_id=stack.stack_id, stack_name=stack.name, logical_resource_id=failure.logical_id,
                physical_resource_id="", resource_type=failure.resource_type,
                resource_status="CREATE_FAILED", resource_status_reason=failure.reason,
                resource_properties=None))
            stack._add_stack_event("ROLLBACK_IN_PROGRESS", "The following resource(s) failed to create: "
                                   f"[{failure.logical_id}].")
            stack._add_stack_event("ROLLBACK_COMPLETE")
            stack.status = "ROLLBACK_COMPLETE"

    monkeypatch.setattr(cfn_parsing, "parse_and_create_resource", create)
    monkeypatch.setattr(cfn_models.CloudFormationBackend, "execute_change_set", execute)


def test_a_failed_deploy_prints_the_failing_resources_and_their_reasons(aws_env, moto_records_failures,
                                                                       tmp_path):
    template = tmp_path / "doomed.json"
    template.write_text(json.dumps({
        "Parameters": {"Name": {"Type": "String", "AllowedPattern": "^[a-z]+$"}},
        "Resources": {
            "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Ref": "Name"}}},
            "DoomedSubnet": {"Type": "AWS::EC2::Subnet", "Properties": {
                "VpcId": "vpc-0000000000doesnotexist", "CidrBlock": "10.9.0.0/24"}},
        },
    }))
    parameters = write_parameters(tmp_path / "doomed-parameters.json", {"Name": "doomed"})

    result = run_script("deploy.py", "--stack-name", "doomed", "--parameters", str(parameters),
                        "--template", str(template), "--poll", "0.2", env=aws_env)

    assert result.returncode == 1
    assert "failing resources:" in result.stderr
    failing = result.stderr.split("failing resources:")[1]
    assert "DoomedSubnet (AWS::EC2::Subnet): CREATE_FAILED" in failing
    assert "vpc-0000000000doesnotexist" in failing  # the reason, as the service gave it
    assert "Queue" not in failing


def test_the_deploy_command_acknowledges_iam_and_tolerates_an_empty_change_set(tmp_path):
    # moto keeps no Capabilities on a stack made from a change set: check what the script asks for.
    from scripts import deploy

    args = deploy.parse_args(["--stack-name", "s", "--parameters", "parameters/staging.json",
                              "--s3-bucket", "b", "--region", "eu-central-1"])
    command = deploy.deploy_command(args, tmp_path / "t.json", {"DomainName": "a.example.com"})
    capabilities = command[command.index("--capabilities") + 1:command.index("--no-fail-on-empty-changeset")]
    assert capabilities == ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
    assert command[command.index("--s3-bucket") + 1] == "b"
    assert command[-2:] == ["--region", "eu-central-1"]
    assert "DomainName=a.example.com" in command and "environment=staging" in command


# ---------------------------------------------------------------- long creates and failed ones
def cli_that_gives_up_waiting(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """An `aws` first on PATH whose `cloudformation deploy` gives up as the real one does after
    60 minutes (its waiter's 120 attempts); every other command is the real CLI's."""
    from scripts import awscli

    real = awscli.executable()
    wrapper = tmp_path / "bin" / "aws"
    wrapper.parent.mkdir()
    # Each describe-stacks after the give-up is counted: the stack settles on the second,
    # so the script has seen it still in progress whatever the machine's speed.
    wrapper.write_text(f"""#!/bin/sh
if [ "$1" = cloudformation ] && [ "$2" = deploy ]; then
  touch "{tmp_path}/gave-up"
  echo "Waiting for stack create/update to complete" >&2
  echo "Waiter StackCreateComplete failed: Max attempts exceeded" >&2
  exit 255
fi
if [ "$2" = describe-stacks ] && [ -e "{tmp_path}/gave-up" ]; then
  echo >> "{tmp_path}/described-after"
fi
exec "{real}" "$@"
""")
    wrapper.chmod(0o755)
    return {**env, "PATH": f"{wrapper.parent}:{env['PATH']}"}


def settle_after_the_cli_gave_up(tmp_path: Path, stack, status: str):  # type: ignore[no-untyped-def]
    """A thread that sets the moto stack's final status once the script, after the CLI
    gave up, has asked for the stack a second time (counted by cli_that_gives_up_waiting)."""
    import threading

    described = tmp_path / "described-after"

    def settle() -> None:
        while not (described.exists() and len(described.read_text().splitlines()) >= 2):
            time.sleep(0.05)  # ended with the test process (daemon), or by pytest's timeout
        stack.status = status

    thread = threading.Thread(target=settle, daemon=True)
    thread.start()
    return thread


def moto_stack(name: str):  # type: ignore[no-untyped-def]
    (found,) = [s for s in cfn_models.cloudformation_backends["123456789012"]["us-east-1"].stacks.values()
                if s.name == name]
    return found


@pytest.mark.parametrize(("stack", "meanwhile", "settles", "status"), [
    ("slow", "CREATE_IN_PROGRESS", "CREATE_COMPLETE", 0),
    ("slowfail", "ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE", 1),
], ids=["completes", "fails"])
def test_a_create_that_outlasts_the_cli_is_followed_until_it_settles(aws_env, tmp_path, stack, meanwhile,
                                                                     settles, status):
    template = tmp_path / "small.json"
    template.write_text(json.dumps(SMALL_TEMPLATE))
    parameters = write_parameters(tmp_path / "slow.json", {"DomainName": "slow.example.com"})
    # The stack the deploy started, still in progress when the CLI gives up: it settles later.
    client("cloudformation").create_stack(StackName=stack, TemplateBody=json.dumps(SMALL_TEMPLATE),
                                          Parameters=[{"ParameterKey": "DomainName",
                                                       "ParameterValue": "slow.example.com"}])
    slow = moto_stack(stack)
    slow.status = meanwhile
    settle_after_the_cli_gave_up(tmp_path, slow, settles)
    result = run_script("deploy.py", "--stack-name", stack, "--parameters", str(parameters),
                        "--template", str(template), "--poll", "0.2", "--no-check",
                        env=cli_that_gives_up_waiting(tmp_path, aws_env))

    assert result.returncode == status, result.stderr + result.stdout
    if status:
        assert f"the stack ended in {settles}" in result.stderr
        assert f"aws cloudformation delete-stack --stack-name {stack}" in result.stderr
        assert not client("cloudformation").get_stack_policy(StackName=stack).get("StackPolicyBody")
        return
    assert "following the stack until it settles" in result.stdout
    assert f"{stack}: {settles}" in result.stdout
    # The stack policy is set once the stack exists in full, not skipped.
    policy = json.loads(client("cloudformation").get_stack_policy(StackName=stack)["StackPolicyBody"])
    assert any(s["Effect"] == "Deny" for s in policy["Statement"])


def test_a_stack_whose_first_create_rolled_back_is_refused_with_what_to_do(aws_env, moto_records_failures,
                                                                          tmp_path):
    template = tmp_path / "doomed.json"
    template.write_text(json.dumps({"Resources": {"DoomedSubnet": {"Type": "AWS::EC2::Subnet", "Properties": {
        "VpcId": "vpc-0000000000doesnotexist", "CidrBlock": "10.9.0.0/24"}}}}))
    parameters = write_parameters(tmp_path / "none.json", {})
    args = ("--stack-name", "rolledback", "--parameters", str(parameters), "--template", str(template),
            "--poll", "0.2")
    first = run_script("deploy.py", *args, env=aws_env)  # a template without parameters, too
    assert first.returncode == 1 and stack("rolledback")["StackStatus"] == "ROLLBACK_COMPLETE"
    assert "delete-stack --stack-name rolledback" in first.stderr  # said at once
    change_sets = len(client("cloudformation").list_change_sets(StackName="rolledback")["Summaries"])

    again = run_script("deploy.py", *args, env=aws_env)

    assert again.returncode == 1
    assert "rolledback is in ROLLBACK_COMPLETE" in again.stderr
    assert "aws cloudformation delete-stack --stack-name rolledback" in again.stderr
    assert "aws cloudformation wait stack-delete-complete --stack-name rolledback" in again.stderr
    # Refused before any change set: CloudFormation would only fail it.
    assert len(client("cloudformation").list_change_sets(StackName="rolledback")["Summaries"]) == change_sets


def test_a_stack_whose_rollback_failed_names_what_is_left_and_how_to_remove_it(aws_env, tmp_path):
    client("cloudformation").create_stack(StackName="stuck", TemplateBody=json.dumps(SMALL_TEMPLATE),
                                          Parameters=[{"ParameterKey": "DomainName",
                                                       "ParameterValue": "stuck.example.com"}])
    stuck = moto_stack("stuck")
    stuck.events.append(cfn_models.Event(
        stack_id=stuck.stack_id, stack_name=stuck.name, logical_resource_id="Database",
        physical_resource_id="stuck-database-1a2b3c", resource_type="AWS::RDS::DBInstance",
        resource_status="DELETE_FAILED",
        resource_status_reason="Cannot delete protected DB Instance, please disable deletion protection",
        resource_properties=None))
    stuck._add_stack_event("ROLLBACK_FAILED")
    stuck.status = "ROLLBACK_FAILED"
    template = tmp_path / "small.json"
    template.write_text(json.dumps(SMALL_TEMPLATE))
    parameters = write_parameters(tmp_path / "stuck.json", {"DomainName": "stuck.example.com"})

    result = run_script("deploy.py", "--stack-name", "stuck", "--parameters", str(parameters),
                        "--template", str(template), "--region", "us-east-1", env=aws_env)

    assert result.returncode == 1
    assert "stuck is in ROLLBACK_FAILED" in result.stderr
    assert "Database (AWS::RDS::DBInstance) stuck-database-1a2b3c: Cannot delete protected" in result.stderr
    assert ("aws rds modify-db-instance --db-instance-identifier stuck-database-1a2b3c "
            "--no-deletion-protection --apply-immediately --region us-east-1") in result.stderr
    assert "aws cloudformation delete-stack --stack-name stuck --region us-east-1" in result.stderr
    assert "SystemLogs" not in result.stderr  # deleted or never failed: nothing to do about it
