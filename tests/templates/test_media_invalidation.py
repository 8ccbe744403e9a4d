"""Moderation at the edge, in the template: deletions reach the invalidation function, which may do
nothing else; media responses may be read cross-origin."""

from __future__ import annotations

import json
import re

from build import PRICES
from lambdas import media_invalidation as function_code
from scripts import costs
from templates import edge, media_invalidation
from templates.data import MEDIA_BUCKET
from tests.support import props, refs

QUEUE_ARN = {"Fn::GetAtt": [media_invalidation.QUEUE, "Arn"]}


def test_the_media_bucket_sends_its_events_to_eventbridge(template):
    configuration = props(template, MEDIA_BUCKET)["NotificationConfiguration"]
    assert configuration["EventBridgeConfiguration"] == {"EventBridgeEnabled": True}
    # The bucket itself is kept as it was: retained, never replaced.
    assert template["Resources"][MEDIA_BUCKET]["UpdateReplacePolicy"] == "Retain"


def test_every_deletion_request_on_this_bucket_and_nothing_else_is_queued(template):
    # Not the lifecycle's expiry of old versions, 30 days later: that would pay twice.
    rule = props(template, media_invalidation.DELETION_RULE)
    assert rule["EventPattern"] == {"source": ["aws.s3"], "detail-type": ["Object Deleted"],
                                    "detail": {"bucket": {"name": [{"Ref": MEDIA_BUCKET}]},
                                               "reason": ["DeleteObject"]}}
    (target,) = rule["Targets"]
    assert target["Arn"] == QUEUE_ARN


def test_only_the_deletion_rule_may_send_to_the_queue(template):
    policy = props(template, f"{media_invalidation.QUEUE}Policy")
    assert policy["Queues"] == [{"Ref": media_invalidation.QUEUE}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == ["sqs:SendMessage"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {
        "Fn::GetAtt": [media_invalidation.DELETION_RULE, "Arn"]}}}


def test_the_function_may_only_drain_its_queue_and_invalidate_this_distribution(template):
    role = props(template, f"{media_invalidation.FUNCTION}Role")
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    granted = {(action, json.dumps(resource, sort_keys=True))
               for s in statements for action in s["Action"] for resource in s["Resource"]}
    logs = {a for a, r in granted if a.startswith("logs:")}
    assert logs == {"logs:CreateLogStream", "logs:PutLogEvents"}
    others = {(a, r) for a, r in granted if not a.startswith("logs:")}
    distribution = [r for a, r in others if a == "cloudfront:CreateInvalidation"]
    assert {a for a, _ in others} == {"sqs:ReceiveMessage", "sqs:DeleteMessage",
                                      "cloudfront:CreateInvalidation", "cloudfront:ListInvalidations"}
    listing = [r for a, r in others if a == "cloudfront:ListInvalidations"]
    assert listing == distribution, "the monthly bound reads this distribution's invalidations only"
    assert {r for a, r in others if a.startswith("sqs:")} == {json.dumps(QUEUE_ARN)}
    assert len(distribution) == 1 and "distribution/${Distribution}" in distribution[0]
    assert all(s["Effect"] == "Allow" and "*" not in json.dumps(s["Action"]) for s in statements)


def test_the_function_runs_its_own_code_on_a_schedule_of_minutes_without_lambda_retries(template):
    function = props(template, media_invalidation.FUNCTION)
    assert function["Code"]["ZipFile"] == open(function_code.__file__).read()
    assert refs(function["Environment"]["Variables"]) == {media_invalidation.QUEUE, "Distribution"}
    schedule = props(template, media_invalidation.DRAIN_RULE)
    # A deleted file stays in CloudFront's cache for at most a few minutes.
    every = re.fullmatch(r"rate\((\d+) minutes?\)", schedule["ScheduleExpression"])
    assert every and 1 <= int(every.group(1)) <= 5
    (target,) = schedule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [media_invalidation.FUNCTION, "Arn"]}
    permission = props(template, f"{media_invalidation.FUNCTION}Schedule")
    assert permission["SourceArn"] == {"Fn::GetAtt": [media_invalidation.DRAIN_RULE, "Arn"]}
    assert props(template, f"{media_invalidation.FUNCTION}InvokeConfig")["MaximumRetryAttempts"] == 0


def test_a_message_is_never_in_two_runs_at_once(template):
    queue = props(template, media_invalidation.QUEUE)
    function = props(template, media_invalidation.FUNCTION)
    assert queue["VisibilityTimeout"] > function["Timeout"]
    assert queue["SqsManagedSseEnabled"] is True
    # The function stops receiving with time left for the invalidation and the deletions.
    assert function["Timeout"] * 1000 > function_code.RESERVE_MS


def test_a_run_never_asks_for_more_wildcards_than_cloudfront_lets_be_in_progress():
    # CloudFront: at most 15 wildcard paths in progress per distribution; the rollout's /*
    # is one more.
    assert function_code.MAX_PATHS + 1 <= 15


def test_media_responses_allow_any_origin_and_only_media_get_it(template):
    policy = props(template, edge.MEDIA_HEADERS_POLICY)["ResponseHeadersPolicyConfig"]
    cors = policy["CorsConfig"]
    assert cors["AccessControlAllowOrigins"] == {"Items": ["*"]}
    assert cors["AccessControlAllowCredentials"] is False and cors["OriginOverride"] is True
    assert "GET" in cors["AccessControlAllowMethods"]["Items"]
    config = props(template, edge.DISTRIBUTION)["DistributionConfig"]
    using = [b["PathPattern"] for b in config["CacheBehaviors"]
             if b.get("ResponseHeadersPolicyId") == {"Ref": edge.MEDIA_HEADERS_POLICY}]
    assert using == [f"{edge.MEDIA_PATH}/*"]
    assert "ResponseHeadersPolicyId" not in config["DefaultCacheBehavior"]


def test_the_estimate_counts_the_schedule_and_the_invalidation_paths(template):
    table = json.loads(PRICES.read_text())
    estimate = costs.estimate(template, {}, table)
    scheduled = [i for i in estimate.items if i.component == "scheduled functions"]
    assert [i.detail.split(":")[0] for i in scheduled] == [media_invalidation.DRAIN_RULE]
    runs = table["hours_per_month"] * 60 / media_invalidation.DRAIN_MINUTES
    assert f"{runs:,.0f} runs" in scheduled[0].detail and 0 < scheduled[0].monthly < 0.10
    paths = next(i for i in estimate.items if i.component == "invalidation paths")
    assert "assumed" in paths.detail
    # Past the free allowance, every path bills.
    more = {**table, "assumptions": {**table["assumptions"], "media_invalidation_paths_month": 3000}}
    assert costs.estimate(template, {}, more).component("invalidation paths") == 2000 * 0.005
    assert estimate.total <= 70.0
