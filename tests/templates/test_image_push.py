"""Upgrade on push in the template: nothing of it unless asked for and the web image is in
this account's ECR; with it, a rule for exactly the stack's repositories' pushes and a
function allowed exactly what it does."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.template_values import Evaluator, parameter_values
from templates.image_push import PUSH_FUNCTION, PUSH_RULE
from templates.options import CUSTOM_TAG_PATTERN

ACCOUNT = {"AWS::AccountId": "123456789012", "AWS::Region": "eu-central-1", "AWS::URLSuffix": "amazonaws.com",
           "AWS::Partition": "aws", "AWS::StackName": "social"}
HOST = "123456789012.dkr.ecr.eu-central-1.amazonaws.com"
ON = {"UpgradeOnImagePush": "true", "WebImageRepository": f"{HOST}/fork/mastodon",
      "StreamingImageRepository": f"{HOST}/fork/mastodon-streaming"}


def evaluate(template: dict[str, Any], given: dict[str, str]) -> Evaluator:
    return Evaluator(template, {**parameter_values(template, given), **ACCOUNT})


def push_resources(template: dict[str, Any]) -> list[str]:
    return [r for r in template["Resources"] if r.startswith("ImagePush")]


def test_the_push_rule_and_its_function_are_made_only_under_their_condition(template):
    assert set(push_resources(template)) >= {PUSH_FUNCTION, PUSH_RULE, "ImagePushPermission",
                                             "ImagePushFunctionRole", "ImagePushFunctionLogs"}
    for resource in push_resources(template):
        assert template["Resources"][resource]["Condition"] == "UpgradesOnImagePush", resource


@pytest.mark.parametrize("given", [
    {},  # the default stack
    {"UpgradeOnImagePush": "false", "WebImageRepository": f"{HOST}/fork/mastodon"},
    {"UpgradeOnImagePush": "true",  # another account's repository sends no event here
     "WebImageRepository": "210987654321.dkr.ecr.eu-central-1.amazonaws.com/fork/mastodon"},
    {"UpgradeOnImagePush": "true",  # another region's neither
     "WebImageRepository": "123456789012.dkr.ecr.us-east-1.amazonaws.com/fork/mastodon"},
    {"UpgradeOnImagePush": "true", "WebImageRepository": "ghcr.io/fork/mastodon"},
], ids=["default", "off", "other-account", "other-region", "public-registry"])
def test_without_the_option_or_an_ecr_web_image_nothing_of_it_exists(template, given):
    ev = evaluate(template, given)
    assert [r for r in push_resources(template) if ev.creates(r)] == []


def test_with_the_option_the_rule_takes_exactly_the_stacks_repositories_successful_tagged_pushes(template):
    ev = evaluate(template, ON)
    assert all(ev.creates(r) for r in push_resources(template))
    pattern = template["Resources"][PUSH_RULE]["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.ecr"] and pattern["detail-type"] == ["ECR Image Action"]
    detail = pattern["detail"]
    assert detail["action-type"] == ["PUSH"] and detail["result"] == ["SUCCESS"]
    assert detail["image-tag"] == [{"exists": True}]
    assert [ev.value(n) for n in ev.value(detail["repository-name"])] == ["fork/mastodon",
                                                                         "fork/mastodon-streaming"]


def test_with_the_streaming_image_elsewhere_only_the_web_repository_is_watched(template):
    ev = evaluate(template, {**ON, "StreamingImageRepository": "ghcr.io/fork/mastodon-streaming"})
    detail = template["Resources"][PUSH_RULE]["Properties"]["EventPattern"]["detail"]
    assert [ev.value(n) for n in ev.value(detail["repository-name"])] == ["fork/mastodon"]
    env = template["Resources"][PUSH_FUNCTION]["Properties"]["Environment"]["Variables"]
    assert ev.value(env["STREAMING_REPOSITORY"]) == ""


def test_a_china_region_repository_is_not_taken_for_the_stacks_ecr(template):
    """China's partition: no repository counts as in ECR (docs/design.md, the ECR conditions),
    so no push function is made there."""
    ev = Evaluator(template, {**parameter_values(template, {
        **ON, "WebImageRepository": "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/team/mastodon"}),
        **ACCOUNT, "AWS::Region": "cn-north-1", "AWS::URLSuffix": "amazonaws.com.cn"})
    assert not ev.condition("WebImageInEcr")
    assert not ev.condition("UpgradesOnImagePush")


def statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    role = template["Resources"]["ImagePushFunctionRole"]["Properties"]
    return [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]


def test_the_function_may_write_only_desired_version_and_read_only_its_repositories(template):
    ev = evaluate(template, ON)
    granted: dict[str, set[str]] = {}
    for statement in statements(template):
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = ev.value(statement["Resource"])
        for action in actions:
            # A parameter's ARN names it by its resource (Sub of ${Resource}): kept as written.
            granted.setdefault(action, set()).update(
                str(ev.value(r) if "${AWS::" not in str(r) or "Parameter}" not in str(r) else r)
                for r in resources)
    assert set(granted) == {"ssm:GetParameter", "ssm:PutParameter", "ecr:DescribeImages",
                            "logs:CreateLogStream", "logs:PutLogEvents"}
    assert all("*" not in r for r in granted["ssm:PutParameter"] | granted["ecr:DescribeImages"])
    assert [r.count("${DesiredVersionParameter}") for r in granted["ssm:PutParameter"]] == [1]
    assert granted["ecr:DescribeImages"] == {
        "arn:aws:ecr:eu-central-1:123456789012:repository/fork/mastodon",
        "arn:aws:ecr:eu-central-1:123456789012:repository/fork/mastodon-streaming"}


def test_the_push_settings_reach_the_function(template):
    env = template["Resources"][PUSH_FUNCTION]["Properties"]["Environment"]["Variables"]
    for given, expected in (({}, "false"), ({"RollRepushedTags": "true"}, "true")):
        assert evaluate(template, {**ON, **given}).value(env["ROLL_REPUSHED_TAGS"]) == expected
    assert evaluate(template, {**ON, "ImagePushTagPattern": "main-[0-9a-f]{7}"}).value(
        env["PUSH_TAG_PATTERN"]) == "main-[0-9a-f]{7}"
    assert evaluate(template, ON).value(env["TAG_RULE"]) == CUSTOM_TAG_PATTERN  # a fork's tags
