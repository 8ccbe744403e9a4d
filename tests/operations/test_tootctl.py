"""tootctl: the on-instance wrapper under stub commands, the operator's command against moto,
and the stack's daily cleanup that uses the same wrapper."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from scripts import tootctl as tootctl_script
from templates import capacity, maintenance, stack
from templates.compute import WORKER_GROUP
from tests.instance.instance_harness import INSTANCE_DIR, STUB, stack_env
from tests.operations.conftest import REPO, client, launch_template_and_subnet, run_script
from tests.support import props

WRAPPER = INSTANCE_DIR / "tootctl.sh"


def write_stack_env(etc: Path, **overrides: str) -> None:
    settings = {key: value for key, value in stack_env("worker", **overrides).items() if value != "-"}
    (etc / "stack.env").write_text("".join(f"{key}='{value}'\n" for key, value in settings.items()))


@pytest.fixture
def worker_env(tmp_path):
    """A fake server root with the files bootstrap.sh leaves, and a stub docker: the environment."""
    etc = tmp_path / "root" / "etc" / "mastodon"
    etc.mkdir(parents=True)
    write_stack_env(etc)
    (etc / "version.env").write_text("MASTODON_VERSION=v4.7.9\n")
    (etc / "mastodon.env").write_text("LOCAL_DOMAIN=social.example.com\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(STUB)
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    return {**os.environ, "MASTODON_ROOT": str(tmp_path / "root"), "STUB_DIR": str(stub_dir),
            "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def stub_calls(env: dict[str, str]) -> list[list[str]]:
    log = Path(env["STUB_DIR"]) / "calls.log"
    return [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def instance(worker_env):
    env = worker_env

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        result = subprocess.run(["bash", str(WRAPPER), *args], env=env, capture_output=True, text=True,
                                check=False, timeout=30)
        return result, stub_calls(env)

    return run, Path(env["MASTODON_ROOT"]) / "etc" / "mastodon"


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


def test_the_one_off_pools_fit_the_reserve_and_the_cleanup_threads():
    assert maintenance.CLEANUP_CONCURRENCY < capacity.TOOTCTL_DB_POOL <= capacity.ONE_OFF_CONNECTIONS
    assert capacity.ONE_OFF_DB_POOL <= capacity.ONE_OFF_CONNECTIONS


def test_the_wrapper_takes_its_pool_from_stack_env(instance):
    run, etc = instance
    write_stack_env(etc, TOOTCTL_DB_POOL="5")
    result, calls = run("media", "usage")
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call[call.index("ghcr.io/mastodon/mastodon:v4.7.9") - 1] == "DB_POOL=5"


def test_the_wrapper_refuses_a_stack_env_without_its_pool(instance):
    run, etc = instance
    write_stack_env(etc, TOOTCTL_DB_POOL="-")
    result, calls = run("media", "usage")
    assert result.returncode != 0 and "TOOTCTL_DB_POOL is not set in stack.env" in result.stderr
    assert calls == []


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
def stack_name() -> str:
    """One stack per test: the moto server lives for the whole session."""
    return f"tootctl-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker_stack(aws_env, stack_name):
    """A stack in moto whose worker group has one instance, as the real stack's does."""
    template, subnet = launch_template_and_subnet("10.1.0.0/16", "10.1.0.0/24")
    body = {"Resources": {
        "WorkerLaunchTemplate": template,
        WORKER_GROUP: {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": "1", "MaxSize": "1", "VPCZoneIdentifier": [subnet],
            "LaunchTemplate": {"LaunchTemplateId": {"Ref": "WorkerLaunchTemplate"},
                               "Version": {"Fn::GetAtt": ["WorkerLaunchTemplate", "LatestVersionNumber"]}}}},
    }}
    client("cloudformation").create_stack(StackName=stack_name, TemplateBody=json.dumps(body))
    group = client("cloudformation").describe_stack_resource(
        StackName=stack_name, LogicalResourceId=WORKER_GROUP)["StackResourceDetail"]["PhysicalResourceId"]
    (described,) = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"]
    return described["Instances"][0]["InstanceId"]


def test_the_operator_command_sends_tootctl_to_the_worker_and_prints_its_output(aws_env, worker_stack,
                                                                                 stack_name):
    result = run_script("tootctl.py", "--poll", "0.1", stack_name, "accounts", "modify", "alice smith",
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



# ---------------------------------------------------------------- the owner on day one
# Registrations start closed and SES in its sandbox: the owner is made by tootctl, not by
# signing up. The worker's side runs for real: the lines the script sends, through the
# wrapper, against a stub docker that answers as tootctl v4.7 does.
PASSWORD = "5e3b9c0d7a1f4e2b8c6d0a9f1e3b5c7d"


def run_on_worker(env: dict[str, str], lines: list[str]) -> subprocess.CompletedProcess[str]:
    """What AWS-RunShellScript does with `commands`: one shell script, run by bash."""
    script = "\n".join(lines).replace(maintenance.TOOTCTL, str(WRAPPER))
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=False,
                          timeout=30)


def test_the_owner_is_created_confirmed_with_the_owner_role_and_then_approved(worker_env):
    (Path(worker_env["STUB_DIR"]) / "new_password").write_text(PASSWORD)
    result = run_on_worker(worker_env, tootctl_script.owner_commands("alice", "alice@example.com"))

    assert result.returncode == 0, result.stderr
    create, approve = [call[call.index("bin/tootctl") + 1:] for call in stub_calls(worker_env)]
    assert create == ["accounts", "create", "alice", "--email", "alice@example.com", "--confirmed",
                      "--role", "Owner"]
    assert approve == ["accounts", "approve", "alice"]
    code, out, err = tootctl_script.owner_outcome("alice", result.stdout, result.stderr, result.returncode)
    assert (code, out) == (0, PASSWORD + "\n") and PASSWORD not in err


@pytest.mark.parametrize(("case", "username", "expected"), [
    ("the account exists", "Alice", "to make it the owner: tootctl.py STACK accounts modify Alice"),
    ("tootctl refuses the username", "al-ice", "Mastodon refuses the username 'al-ice'"),
])
def test_a_refused_owner_is_neither_approved_nor_given_a_password(worker_env, case, username, expected):
    (Path(worker_env["STUB_DIR"]) / "accounts").write_text("alice old@example.com\n")
    result = run_on_worker(worker_env, tootctl_script.owner_commands(username, "new@example.com"))

    assert result.returncode == 1
    (call,) = stub_calls(worker_env)  # set -e: no approve after a failed create
    assert call[call.index("bin/tootctl") + 1:][:2] == ["accounts", "create"]
    code, out, err = tootctl_script.owner_outcome(username, result.stdout, result.stderr, result.returncode)
    assert code == 1 and out == "" and expected in err


def test_a_created_but_unapproved_owner_still_gets_its_password_and_the_next_step():
    code, out, err = tootctl_script.owner_outcome(
        "alice", f"OK\nNew password: {PASSWORD}\n", "No such account\n", 1)
    assert code == 1 and out == PASSWORD + "\n" and PASSWORD not in err
    assert "accounts approve alice" in err


@pytest.fixture
def worker_runs_commands(worker_env, monkeypatch):
    """moto's Run Command answers with what the sent lines print on the stub worker."""
    from moto.ssm import models as ssm_models

    original = ssm_models.Command.invocation_response
    runs: dict[str, subprocess.CompletedProcess[str]] = {}

    def invocation_response(self, instance_id, plugin_name):  # type: ignore[no-untyped-def]
        response = original(self, instance_id, plugin_name)
        # Once per command: moto makes an invocation for every instance in the region (its bug).
        if self.command_id not in runs:
            runs[self.command_id] = run_on_worker(worker_env, self.parameters["commands"])
        result = runs[self.command_id]
        response.update(StandardOutputContent=result.stdout, StandardErrorContent=result.stderr,
                        ResponseCode=result.returncode,
                        Status="Success" if result.returncode == 0 else "Failed")
        return response

    monkeypatch.setattr(ssm_models.Command, "invocation_response", invocation_response)
    (Path(worker_env["STUB_DIR"]) / "new_password").write_text(PASSWORD)
    return worker_env


def test_the_owner_command_prints_the_password_once_on_stdout_only(aws_env, worker_stack,
        worker_runs_commands, stack_name):
    result = run_script("tootctl.py", "--poll", "0.1", stack_name, "owner", "alice",
                        "--email", "alice@example.com", env=aws_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == PASSWORD + "\n"
    assert PASSWORD not in result.stderr and "created, confirmed and approved" in result.stderr
    sent = [c for c in client("ssm").list_commands()["Commands"] if c["Comment"].startswith("tootctl")][-1]
    assert sent["Comment"] == "tootctl owner alice"  # the command's listing names no secret
    assert sent["Parameters"]["commands"] == tootctl_script.owner_commands("alice", "alice@example.com")


def test_the_owner_command_on_a_taken_name_says_how_to_promote_it(aws_env, worker_stack,
        worker_runs_commands, stack_name):
    (Path(worker_runs_commands["STUB_DIR"]) / "accounts").write_text("alice alice@example.com\n")
    result = run_script("tootctl.py", "--poll", "0.1", stack_name, "owner", "alice",
                        "--email", "alice@example.com", env=aws_env)

    assert result.returncode == 1 and result.stdout == ""
    assert "accounts modify alice --role Owner --confirm --approve" in result.stderr


@pytest.mark.parametrize("username", ["al-ice", "a" * 31, "alice smith", ""])
def test_the_owner_command_refuses_a_username_mastodon_would_refuse_before_sending(aws_env, username):
    result = run_script("tootctl.py", "no-such-stack", "owner", username, "--email", "a@example.com",
                        env=aws_env)
    assert result.returncode == 2 and "is not a Mastodon username" in result.stderr


def test_the_owner_command_needs_an_email(aws_env):
    result = run_script("tootctl.py", "no-such-stack", "owner", "alice", env=aws_env)
    assert result.returncode == 2 and "--email" in result.stderr


def test_readme_help_and_outputs_give_the_same_owner_path(template):
    readme = (REPO / "README.md").read_text()
    help_text = run_script("tootctl.py", "--help", env=dict(os.environ)).stdout
    output = template["Outputs"][stack.OWNER_ACCOUNT_OUTPUT]["Value"]["Fn::Sub"]
    for text in (readme, help_text, output):
        flat = " ".join(text.split())
        assert re.search(r"\bowner [A-Z]+ --email [A-Z@.a-z]+", flat), text
        assert "password once" in flat and "Run Command" in flat  # where the password also stays
    assert "${AWS::StackName} owner NAME --email EMAIL" in output
    assert "--confirmed --role Owner" in readme and "accounts approve" in readme
    assert "sign up, and make yourself owner" not in readme
