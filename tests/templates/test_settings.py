"""Mastodon's other settings in the template: off by default, and the servers may read exactly
the stack's settings path and the one secret named, only while each option is on."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from cfnlint.api import ManualArgs, lint

from scripts import costs, parameter_files
from templates import parameters, settings
from templates.compute import (
    QUEUE_SERVER_ROLE,
    WEB_LAUNCH_TEMPLATE,
    WEB_SERVER_ROLE,
    WORKER_LAUNCH_TEMPLATE,
    WORKER_SERVER_ROLE,
)
from tests.support import props

PRODUCTION = Path(__file__).resolve().parents[2] / "parameters" / "production.json"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mastodon-settings-AbCdEf"
ON = {"MastodonSettings": "true", "MastodonSettingsSecretArn": SECRET_ARN}


def policy(template: dict, logical_id: str) -> dict:
    return template["Resources"][logical_id]


def test_both_options_are_off_by_default(template):
    assert template["Parameters"]["MastodonSettings"]["Default"] == "false"
    assert template["Parameters"]["MastodonSettingsSecretArn"]["Default"] == ""
    assert template["Conditions"][parameters.HAS_MASTODON_SETTINGS] == {
        "Fn::Equals": [{"Ref": "MastodonSettings"}, "true"]}


def test_each_grant_exists_only_while_its_option_is_on(template):
    reads_parameters = policy(template, settings.READ_PARAMETERS_POLICY)
    reads_secret = policy(template, settings.READ_SECRET_POLICY)
    assert reads_parameters["Condition"] == parameters.HAS_MASTODON_SETTINGS
    assert reads_secret["Condition"] == parameters.HAS_MASTODON_SETTINGS_SECRET
    # Nothing else grants them: the server roles' own policies do not mention either.
    for role in (WEB_SERVER_ROLE, WORKER_SERVER_ROLE):
        text = json.dumps(props(template, role))
        assert "GetParametersByPath" not in text
        assert "MastodonSettingsSecretArn" not in text


# The queue workers' role exists only with the option, so the grants name it only then.
QUEUE_ROLE_WHILE_ON = {
    "Fn::If": [parameters.HAS_QUEUE_WORKERS, {"Ref": QUEUE_SERVER_ROLE}, {"Ref": "AWS::NoValue"}]}


def test_the_servers_read_exactly_the_settings_path(template):
    document = props(template, settings.READ_PARAMETERS_POLICY)["PolicyDocument"]
    (statement,) = document["Statement"]
    assert statement["Action"] == ["ssm:GetParametersByPath"]
    assert statement["Resource"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
                    "/mastodon/${AWS::StackName}/settings"}]
    assert props(template, settings.READ_PARAMETERS_POLICY)["Roles"] == [
        {"Ref": WEB_SERVER_ROLE}, {"Ref": WORKER_SERVER_ROLE}, QUEUE_ROLE_WHILE_ON]


def test_the_servers_read_exactly_the_secret_named(template):
    document = props(template, settings.READ_SECRET_POLICY)["PolicyDocument"]
    (statement,) = document["Statement"]
    assert statement["Action"] == ["secretsmanager:GetSecretValue"]
    assert statement["Resource"] == [{"Ref": "MastodonSettingsSecretArn"}]
    assert props(template, settings.READ_SECRET_POLICY)["Roles"] == [
        {"Ref": WEB_SERVER_ROLE}, {"Ref": WORKER_SERVER_ROLE}, QUEUE_ROLE_WHILE_ON]


def stack_env_value(template: dict, launch_template: str, key: str):
    parts = props(template, launch_template)["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    for before, value in itertools.pairwise(parts):
        if isinstance(before, str) and (before == f"{key}='" or before.endswith(f"\n{key}='")):
            return value
    raise AssertionError(f"{key} is not in the user data")


@pytest.mark.parametrize("launch_template", [WEB_LAUNCH_TEMPLATE, WORKER_LAUNCH_TEMPLATE])
def test_the_servers_learn_the_sources_and_nothing_when_off(template, launch_template):
    # Off: both are empty strings, which the scripts read as "no settings".
    assert stack_env_value(template, launch_template, "SETTINGS_PATH") == {
        "Fn::If": [parameters.HAS_MASTODON_SETTINGS, {"Fn::Sub": "/mastodon/${AWS::StackName}/settings"}, ""]}
    assert stack_env_value(template, launch_template, "SETTINGS_SECRET_ARN") == {
        "Ref": "MastodonSettingsSecretArn"}


def test_the_name_rule_reaches_the_servers_from_one_definition(template):
    for key, value in settings.SERVER_FACTS.items():
        assert stack_env_value(template, WEB_LAUNCH_TEMPLATE, key) == value


def test_the_name_pattern_is_the_one_the_brief_asks_for_and_bounded():
    rule = re.compile(settings.NAME_PATTERN)
    for good in ("HCAPTCHA_SITE_KEY", "OIDC_CLIENT_ID", "A", "X" * 100):
        assert rule.fullmatch(good)
    for bad in ("hcaptcha", "1A", "A-B", "A B", "X" * 101, "", "É"):
        assert not rule.fullmatch(bad)


def test_no_stack_env_value_carries_a_quote(template):
    # stack.env single-quotes every value.
    for value in settings.SERVER_FACTS.values():
        assert "'" not in value


@pytest.mark.parametrize(("value", "accepted"), [
    ("", True),
    (SECRET_ARN, True),
    ("mastodon-settings", False),
    ("arn:aws:ssm:us-east-1:123456789012:parameter/x", False),
])
def test_the_secret_parameter_takes_only_a_secret_arn(template, value, accepted):
    values = {**parameter_files.read(PRODUCTION), "MastodonSettingsSecretArn": value}
    problems = parameter_files.problems(template, values)
    assert (not any("MastodonSettingsSecretArn" in p for p in problems)) == accepted


def test_the_parameter_option_takes_only_true_or_false(template):
    values = {**parameter_files.read(PRODUCTION), "MastodonSettings": "yes"}
    assert any(p.startswith("MastodonSettings='yes'") for p in parameter_files.problems(template, values))


@pytest.mark.slow
@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "ap-northeast-1", "sa-east-1"])
def test_cfn_lint_finds_nothing_with_both_options_on(template, region):
    values = {**parameter_files.read(PRODUCTION), **ON}
    values["MastodonSettingsSecretArn"] = SECRET_ARN.replace("us-east-1", region)
    matches = lint(json.dumps(template), config=ManualArgs(regions=[region], parameters=[values]))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []


def estimate(template: dict, values: dict[str, str]) -> costs.Estimate:
    prices = json.loads((PRODUCTION.parents[1] / "pricing" / "us-east-1.json").read_text())
    return costs.estimate(template, {**parameter_files.read(PRODUCTION), **values}, prices)


def test_the_settings_secret_is_priced_only_when_named(template):
    assert costs.SETTINGS_SECRET_PARAMETER in template["Parameters"]
    off = estimate(template, {})
    on = estimate(template, ON)
    (item,) = [i for i in on.items if i.component == "settings secret"]
    assert item.monthly == 0.40
    assert not [i for i in off.items if i.component == "settings secret"]
    # And the refusal alarm ($0.10); Parameter Store's standard parameters cost nothing.
    assert round(on.total - off.total, 2) == 0.50


def test_a_refused_boot_raises_an_alarm_only_while_a_source_is_configured(template):
    names = (settings.REFUSED_FILTER, settings.REFUSED_ALARM)
    for name in names:
        assert template["Resources"][name]["Condition"] == parameters.HAS_ANY_MASTODON_SETTINGS
    assert template["Conditions"][parameters.HAS_ANY_MASTODON_SETTINGS] == {"Fn::Or": [
        {"Condition": parameters.HAS_MASTODON_SETTINGS},
        {"Condition": parameters.HAS_MASTODON_SETTINGS_SECRET}]}
    log_filter = props(template, settings.REFUSED_FILTER)
    assert log_filter["LogGroupName"] == {"Ref": "SystemLogs"}
    # bootstrap.sh fails with "FAILED: <SETTINGS_FAILURE>: ..." (tests/instance/test_instance_settings.py).
    assert log_filter["FilterPattern"] == f'"FAILED: {settings.SETTINGS_FAILURE}"'
    (transformation,) = log_filter["MetricTransformations"]
    alarm = props(template, settings.REFUSED_ALARM)
    assert (alarm["Namespace"], alarm["MetricName"]) == (
        transformation["MetricNamespace"], transformation["MetricName"])
    assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}]
    assert (alarm["Statistic"], alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "Sum", "GreaterThanOrEqualToThreshold", 1)


def test_the_alarm_is_priced_only_with_a_source(template):
    off = estimate(template, {})
    on = estimate(template, {"MastodonSettings": "true"})
    alarms = {e: next(i for i in e.items if i.component == "alarms") for e in (off, on)}
    assert round(alarms[on].monthly - alarms[off].monthly, 2) == 0.10
