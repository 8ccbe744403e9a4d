"""deploy.py's checks before anything changes, its --preview, and its artifact bucket.

Run for real with the `aws` CLI against a moto server (tests/operations/conftest.py).
"""

from __future__ import annotations

import json

import pytest

from scripts import deploy
from tests.operations.conftest import client, run_script
from tests.operations.test_deploy_script import moto_stack_inputs, write_parameters  # noqa: F401

pytestmark = pytest.mark.slow


def stacks(name: str) -> list[dict]:
    return [s for s in client("cloudformation").list_stacks()["StackSummaries"] if s["StackName"] == name]


@pytest.mark.parametrize(("args", "expected"), [
    (["--tag", "owner"], "'owner': give KEY=VALUE"),
    (["--tag", "=ops"], "give KEY=VALUE"),
    (["--stack-name", "1-mastodon"], "not a valid stack name"),
    (["--stack-name", "mastodon_prod"], "not a valid stack name"),
], ids=["tag without value", "tag without key", "leading digit", "underscore"])
def test_bad_arguments_end_with_a_message_not_a_traceback(aws_env, tmp_path, args, expected):
    parameters = write_parameters(tmp_path / "p.json", {"DomainName": "a.example.com"})
    result = run_script("deploy.py", "--stack-name", "mastodon", "--parameters", str(parameters), *args,
                        env=aws_env)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_without_any_region_the_script_says_where_it_looked(aws_env, tmp_path):
    env = {k: v for k, v in aws_env.items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    parameters = write_parameters(tmp_path / "p.json", {"DomainName": "a.example.com"})
    result = run_script("deploy.py", "--stack-name", "mastodon", "--parameters", str(parameters), env=env)
    assert result.returncode == 2
    assert "no region to deploy in" in result.stderr and "AWS_DEFAULT_REGION" in result.stderr


def test_an_unedited_example_file_is_warned_about(aws_env, moto_stack_inputs, tmp_path):  # noqa: F811
    prepared, values = moto_stack_inputs
    result = run_script("deploy.py", "--stack-name", "example", "--parameters",
                        str(write_parameters(tmp_path / "p.json", values)), "--template", str(prepared),
                        "--s3-bucket", "deploy-artifacts", "--preview", env=aws_env)
    assert "warning: DomainName=social.example.com is an example domain" in result.stderr
    assert "warning: AlertEmail=admin@example.com is an example address" in result.stderr


def test_a_missing_bucket_is_named_with_its_region_and_the_flag(aws_env, moto_stack_inputs, tmp_path):  # noqa: F811
    prepared, values = moto_stack_inputs
    result = run_script("deploy.py", "--stack-name", "nobucket", "--parameters",
                        str(write_parameters(tmp_path / "p.json", values)), "--template", str(prepared),
                        "--s3-bucket", "never-made", env=aws_env)
    assert result.returncode == 2
    assert "never-made does not exist" in result.stderr
    assert "us-east-1" in result.stderr and "--create-bucket" in result.stderr
    assert not stacks("nobucket")


def test_a_bucket_in_another_region_is_refused_before_the_upload(aws_env, moto_stack_inputs, tmp_path):  # noqa: F811
    prepared, values = moto_stack_inputs
    client("s3", "eu-west-1").create_bucket(Bucket="artifacts-in-ireland",
                                            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    result = run_script("deploy.py", "--stack-name", "elsewhere", "--parameters",
                        str(write_parameters(tmp_path / "p.json", values)), "--template", str(prepared),
                        "--s3-bucket", "artifacts-in-ireland", env=aws_env)
    assert result.returncode == 2
    assert "artifacts-in-ireland is in eu-west-1, the stack in us-east-1" in result.stderr
    assert not stacks("elsewhere")
    assert "Contents" not in client("s3", "eu-west-1").list_objects_v2(Bucket="artifacts-in-ireland")


def test_preview_creates_the_bucket_and_the_change_set_and_executes_nothing(aws_env, moto_stack_inputs,  # noqa: F811
                                                                            tmp_path):
    prepared, values = moto_stack_inputs
    result = run_script("deploy.py", "--stack-name", "previewed", "--parameters",
                        str(write_parameters(tmp_path / "p.json", values)), "--template", str(prepared),
                        "--s3-bucket", "fresh-artifacts", "--create-bucket", "--preview", env=aws_env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Created bucket fresh-artifacts in us-east-1." in result.stdout
    assert client("s3").get_bucket_location(Bucket="fresh-artifacts")["LocationConstraint"] is None
    assert "add" in result.stdout and "Database (AWS::RDS::DBInstance)" in result.stdout
    assert "Not executed" in result.stdout and "execute-change-set" in result.stdout
    # A new stack waits, empty, until the change set is executed or the stack deleted.
    assert "REVIEW_IN_PROGRESS" in result.stdout and "delete-stack" in result.stdout
    (summary,) = stacks("previewed")
    assert summary["StackStatus"] == "REVIEW_IN_PROGRESS"
    assert client("cloudformation").describe_stack_resources(StackName="previewed")["StackResources"] == []


CHANGES = [
    {"ResourceChange": {"Action": "Add", "LogicalResourceId": "NewAlarm",
                        "ResourceType": "AWS::CloudWatch::Alarm"}},
    {"ResourceChange": {"Action": "Modify", "Replacement": "False", "LogicalResourceId": "WebGroup",
                        "ResourceType": "AWS::AutoScaling::AutoScalingGroup"}},
    {"ResourceChange": {"Action": "Modify", "Replacement": "True", "LogicalResourceId": "Database",
                        "ResourceType": "AWS::RDS::DBInstance"}},
    {"ResourceChange": {"Action": "Modify", "Replacement": "Conditional", "LogicalResourceId": "MediaBucket",
                        "ResourceType": "AWS::S3::Bucket"}},
    {"ResourceChange": {"Action": "Modify", "Replacement": "True", "LogicalResourceId": "LaunchTemplate",
                        "ResourceType": "AWS::EC2::LaunchTemplate"}},
    {"ResourceChange": {"Action": "Remove", "LogicalResourceId": "AppSecret",
                        "ResourceType": "AWS::SecretsManager::Secret"}},
]


def test_the_preview_marks_replaced_or_removed_data_in_red_and_nothing_else():
    lines = deploy.change_lines(CHANGES, color=True)
    red = [line for line in lines if line.startswith(deploy.RED)]
    assert [json.dumps(line) for line in red] == [json.dumps(lines[i]) for i in (2, 3, 5)]
    assert "REPLACE" in lines[2] and "may REPLACE" in lines[3] and "REMOVE" in lines[5]
    assert "REPLACE" in lines[4] and "DATA" not in lines[4]  # a launch template holds no data
    assert lines[0].split()[:2] == ["add", "NewAlarm"] and lines[1].split()[:2] == ["modify", "WebGroup"]
    plain = deploy.change_lines(CHANGES, color=False)
    assert not any("\033[" in line for line in plain) and sum("!!" in line for line in plain) == 3


def test_removing_the_read_replica_is_no_data_loss():
    # Turning DatabaseReplicaClass off deletes the replica: it holds nothing its source does not.
    (line,) = deploy.change_lines([{"ResourceChange": {
        "Action": "Remove", "LogicalResourceId": "DatabaseReplica",
        "ResourceType": "AWS::RDS::DBInstance"}}], color=True)
    assert "REMOVE" in line and "DATA" not in line and "!!" not in line
    (line,) = deploy.change_lines([{"ResourceChange": {
        "Action": "Remove", "LogicalResourceId": "Database",
        "ResourceType": "AWS::RDS::DBInstance"}}], color=True)
    assert "DATA" in line


def test_removing_the_cache_only_redis_is_no_data_loss():
    # Turning SeparateCacheNodeType off removes RailsCache: a cache, recomputed on a miss.
    (line,) = deploy.change_lines([{"ResourceChange": {
        "Action": "Remove", "LogicalResourceId": "RailsCache",
        "ResourceType": "AWS::ElastiCache::ReplicationGroup"}}], color=True)
    assert "REMOVE" in line and "DATA" not in line and deploy.RED not in line
    (line,) = deploy.change_lines([{"ResourceChange": {
        "Action": "Remove", "LogicalResourceId": "Cache",
        "ResourceType": "AWS::ElastiCache::ReplicationGroup"}}], color=True)
    assert "DATA" in line
