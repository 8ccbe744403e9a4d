"""tootctl: the on-instance wrapper under stub commands, the operator's command against moto,
and the stack's daily cleanup that uses the same wrapper."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from templates import capacity, maintenance
from templates.compute import WORKER_GROUP
from tests.instance.instance_harness import INSTANCE_DIR, STUB
from tests.operations.conftest import client, run_script
from tests.support import props

WRAPPER = INSTANCE_DIR / "tootctl.sh"


@pytest.fixture
def instance(tmp_path):
    """A fake server root with the files bootstrap.sh leaves, and a stub docker."""
    etc = tmp_path / "root" / "etc" / "mastodon"
    etc.mkdir(parents=True)
    (etc / "stack.env").write_text("MASTODON_IMAGE='ghcr.io/mastodon/mastodon'\nROLE='worker'\n")
    (etc / "version.env").write_text("MASTODON_VERSION=v4.7.9\n")
    (etc / "mastodon.env").write_text("LOCAL_DOMAIN=social.example.com\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(STUB)
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    env = {**os.environ, "MASTODON_ROOT": str(tmp_path / "root"), "STUB_DIR": str(stub_dir),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        result = subprocess.run(["bash", str(WRAPPER), *args], env=env, capture_output=True, text=True,
                                check=False, timeout=30)
        log = stub_dir / "calls.log"
        calls = [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []
        return result, calls

    return run, etc


def test_the_wrapper_runs_tootctl_in_a_one_off_container_of_the_deployed_version(instance):
    run, _ = instance
    result, calls = run("accounts", "modify", "alice smith", "--role", "Owner")
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call[:3] == ["docker", "run", "--rm"]
    assert "--network" in call and call[call.index("--network") + 1] == "host"
    assert call[call.index("--env-file") + 1] == "/etc/mastodon/mastodon.env"
    image = call.index("ghcr.io/mastodon/mastodon:v4.7.9")
    assert call[image + 1:] == ["bin/tootctl", "accounts", "modify", "alice smith", "--role", "Owner"]


def test_the_wrapper_refuses_to_run_before_the_server_has_booted(instance):
    run, etc = instance
    (etc / "mastodon.env").unlink()
    result, calls = run("media", "usage")
    assert result.returncode == 3 and "has not finished booting" in result.stderr
    assert calls == []


def test_the_wrapper_without_arguments_prints_its_usage(instance):
    run, _ = instance
    result, calls = run()
    assert result.returncode == 2 and "usage" in result.stderr and calls == []


def test_the_wrapper_pool_fits_the_one_off_reserve_and_the_cleanup_threads():
    pool = int(next(line.split("=")[1] for line in WRAPPER.read_text().splitlines()
                    if line.startswith("DB_POOL=")))
    assert maintenance.CLEANUP_CONCURRENCY < pool <= capacity.ONE_OFF_CONNECTIONS


def test_the_daily_cleanup_runs_both_removals_on_this_stacks_worker_only(template):
    properties = props(template, maintenance.CLEANUP_RULE)
    assert properties["ScheduleExpression"].startswith("cron(") and properties["State"] == "ENABLED"
    (target,) = properties["Targets"]
    assert target["Arn"]["Fn::Sub"].endswith(":document/AWS-RunShellScript")
    (selector,) = target["RunCommandParameters"]["RunCommandTargets"]
    assert selector == {"Key": "tag:aws:autoscaling:groupName", "Values": [{"Ref": WORKER_GROUP}]}
    commands = json.loads(target["Input"])["commands"]
    assert any(c.startswith(f"{maintenance.TOOTCTL} media remove --days ") for c in commands)
    assert any(c.startswith(f"{maintenance.TOOTCTL} preview_cards remove --days ") for c in commands)


def test_the_cleanup_role_may_only_send_run_shell_script_to_the_worker_group(template):
    role = props(template, maintenance.CLEANUP_ROLE)
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "events.amazonaws.com"}
    (policy,) = role["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    assert all(s["Action"] == ["ssm:SendCommand"] for s in statements)
    document, instances = statements
    assert document["Resource"][0]["Fn::Sub"].endswith(":document/AWS-RunShellScript")
    assert instances["Condition"] == {"StringEquals": {
        "ssm:resourceTag/aws:autoscaling:groupName": {"Ref": WORKER_GROUP}}}


@pytest.fixture
def worker_stack(aws_env):
    """A stack in moto whose worker group has one instance, as the real stack's does."""
    image_id = client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    vpc = client("ec2").create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = client("ec2").create_subnet(VpcId=vpc, CidrBlock="10.1.0.0/24")["Subnet"]["SubnetId"]
    body = {"Resources": {
        "WorkerLaunchTemplate": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {
            "LaunchTemplateData": {"ImageId": image_id, "InstanceType": "t4g.small"}}},
        WORKER_GROUP: {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": "1", "MaxSize": "1", "VPCZoneIdentifier": [subnet],
            "LaunchTemplate": {"LaunchTemplateId": {"Ref": "WorkerLaunchTemplate"},
                               "Version": {"Fn::GetAtt": ["WorkerLaunchTemplate", "LatestVersionNumber"]}}}},
    }}
    client("cloudformation").create_stack(StackName="tootctl-test", TemplateBody=json.dumps(body))
    group = client("cloudformation").describe_stack_resource(
        StackName="tootctl-test", LogicalResourceId=WORKER_GROUP)["StackResourceDetail"]["PhysicalResourceId"]
    (described,) = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"]
    return described["Instances"][0]["InstanceId"]


def test_the_operator_command_sends_tootctl_to_the_worker_and_prints_its_output(aws_env, worker_stack):
    result = run_script("tootctl.py", "--poll", "0.1", "tootctl-test", "accounts", "modify", "alice smith",
                        "--role", "Owner", env=aws_env)

    assert result.returncode == 0, result.stderr
    assert f"tootctl on {worker_stack}" in result.stderr
    sent = [c for c in client("ssm").list_commands()["Commands"] if c["Comment"].startswith("tootctl")][-1]
    assert sent["DocumentName"] == "AWS-RunShellScript"
    # moto widens InstanceIds to every instance (its bug); what the script asked for is above.
    assert worker_stack in sent["InstanceIds"]
    assert sent["Parameters"]["commands"] == [
        "/opt/mastodon-aws/tootctl.sh accounts modify 'alice smith' --role Owner"]


def test_the_operator_command_names_a_missing_stack(aws_env):
    result = run_script("tootctl.py", "no-such-stack", "media", "usage", env=aws_env)
    assert result.returncode == 1 and "tootctl.py: error:" in result.stderr
    assert "no-such-stack" in result.stderr or "does not exist" in result.stderr


def test_the_operator_command_needs_tootctl_arguments(aws_env):
    result = run_script("tootctl.py", "mastodon", env=aws_env)
    assert result.returncode == 2


def test_the_wrapper_is_delivered_to_every_server(template):
    assert "tootctl.sh" in template["Resources"]["WorkerLaunchTemplate"]["Metadata"]["Scripts"]

