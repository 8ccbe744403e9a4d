"""The optional WAF: off by default, the right rules when on, never blocking Mastodon's own traffic."""

from __future__ import annotations

from tests.support import props


def test_waf_is_off_by_default_and_attached_only_when_asked(template):
    assert template["Parameters"]["WafEnabled"]["Default"] == "false"
    assert template["Parameters"]["WafWebAclArn"]["Default"] == ""
    assert template["Resources"]["WebAcl"]["Condition"] == "CreateWaf"
    web_acl_id = props(template, "Distribution")["DistributionConfig"]["WebACLId"]
    assert web_acl_id == {"Fn::If": ["CreateWaf", {"Fn::GetAtt": ["WebAcl", "Arn"]},
                                     {"Fn::If": ["AttachExistingWaf", {"Ref": "WafWebAclArn"},
                                                 {"Ref": "AWS::NoValue"}]}]}


def test_the_web_acl_protects_cloudfront_with_managed_rules_and_a_rate_limit(template):
    acl = props(template, "WebAcl")
    assert acl["Scope"] == "CLOUDFRONT" and "Allow" in acl["DefaultAction"]
    groups = {r["Statement"]["ManagedRuleGroupStatement"]["Name"] for r in acl["Rules"]
              if "ManagedRuleGroupStatement" in r["Statement"]}
    assert groups == {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesAmazonIpReputationList",
                      "AWSManagedRulesKnownBadInputsRuleSet"}
    (rate,) = [r for r in acl["Rules"] if "RateBasedStatement" in r["Statement"]]
    assert rate["Statement"]["RateBasedStatement"]["Limit"] == {"Ref": "WafRateLimit"}
    assert rate["Action"]["Block"]["CustomResponse"]["ResponseCode"] == 429
    priorities = [r["Priority"] for r in acl["Rules"]]
    assert len(set(priorities)) == len(priorities)
    assert all(r["VisibilityConfig"]["CloudWatchMetricsEnabled"] for r in acl["Rules"])


def test_media_uploads_and_federation_are_not_blocked(template):
    acl = props(template, "WebAcl")
    common = next(r for r in acl["Rules"] if r["Name"] == "AWSManagedRulesCommonRuleSet")
    overrides = common["Statement"]["ManagedRuleGroupStatement"]["RuleActionOverrides"]
    # The common set blocks bodies over 8 KB: every media upload.
    assert overrides == [{"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}}]
    (rate,) = [r for r in acl["Rules"] if "RateBasedStatement" in r["Statement"]]
    scope = rate["Statement"]["RateBasedStatement"]["ScopeDownStatement"]["NotStatement"]["Statement"]
    match = scope["ByteMatchStatement"]
    assert (match["SearchString"], match["PositionalConstraint"]) == ("/inbox", "ENDS_WITH")
