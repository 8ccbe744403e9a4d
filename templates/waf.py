"""Optional AWS WAF on CloudFront: managed rule groups and a per-IP rate limit.

Off by default (it costs about $9/month plus $0.60 per million requests). Two ways
to turn it on, because a web ACL for CloudFront must live in us-east-1:
- WafEnabled=true creates the web ACL in this stack. CloudFormation can create a
  CLOUDFRONT-scope web ACL only in us-east-1, so a rule refuses it elsewhere, before
  anything is created, and says what to do instead.
- WafWebAclArn attaches a web ACL that already exists in us-east-1 (any stack
  region): created in the console, by Firewall Manager, or by a stack of this same
  template in us-east-1 shared between instances.
A custom resource creating the ACL in us-east-1 from any region was set aside: it
would be a fourth Lambda to own, and an ACL outliving a failed delete would keep
billing; bringing an ARN costs nothing and covers organizations with a shared ACL.

The rules, in order:
1. a rate limit per client IP over five minutes, not counting ActivityPub inbox
   deliveries (a large server federating with this one sends many from few IPs);
2. Amazon's IP reputation list (known bots and attackers);
3. the common rule set (OWASP-style), except its 8 KB body limit, which would block
   media uploads: that rule only counts;
4. known bad inputs (Log4Shell and similar).
"""

from __future__ import annotations

from dataclasses import dataclass

from troposphere import And, Equals, GetAtt, If, Not, Parameter, Ref, Template, wafv2

from templates.parameters import Parameters

WEB_ACL = "WebAcl"
CREATE_WAF = "CreateWaf"
ATTACH_WAF = "AttachExistingWaf"
WAF_RULE = "WafInUsEast1"

MANAGED_RULE_GROUPS = (
    ("AWSManagedRulesAmazonIpReputationList", ()),
    ("AWSManagedRulesCommonRuleSet", ("SizeRestrictions_BODY",)),
    ("AWSManagedRulesKnownBadInputsRuleSet", ()),
)
RATE_LIMIT_RULE = "RateLimitPerIp"
INBOX_SUFFIX = "/inbox"

@dataclass(frozen=True)
class Waf:
    enabled: Parameter
    web_acl_arn: Parameter
    rate_limit: Parameter
    web_acl_id: If  # for DistributionConfig.WebACLId


def create_waf_conditions(t: Template, p: Parameters) -> Waf:
    """The conditions and the rule over the WAF parameters, and the ACL to attach."""
    enabled, arn = p.waf_enabled, p.waf_web_acl_arn
    t.add_condition(CREATE_WAF, Equals(Ref(enabled), "true"))
    t.add_condition(ATTACH_WAF, And(Equals(Ref(enabled), "false"), Not(Equals(Ref(arn), ""))))
    t.add_rule(WAF_RULE, {
        "RuleCondition": {"Fn::Equals": [Ref(enabled), "true"]},
        "Assertions": [
            {"Assert": {"Fn::Equals": [Ref("AWS::Region"), "us-east-1"]},
             "AssertDescription": "WafEnabled creates a CloudFront web ACL, which only a stack in "
             "us-east-1 can do. Elsewhere, create the web ACL in us-east-1 and give its ARN "
             "as WafWebAclArn."},
            {"Assert": {"Fn::Equals": [Ref(arn), ""]},
             "AssertDescription": "Choose one: WafEnabled=true or WafWebAclArn, not both."},
        ],
    })
    web_acl_id = If(CREATE_WAF, GetAtt(WEB_ACL, "Arn"),
                    If(ATTACH_WAF, Ref(arn), Ref("AWS::NoValue")))
    return Waf(enabled=enabled, web_acl_arn=arn, rate_limit=p.waf_rate_limit, web_acl_id=web_acl_id)


def _visibility(name: str) -> wafv2.VisibilityConfig:
    return wafv2.VisibilityConfig(CloudWatchMetricsEnabled=True, MetricName=name,
                                  SampledRequestsEnabled=True)


def create_web_acl(t: Template, waf: Waf) -> wafv2.WebACL:
    not_an_inbox = wafv2.Statement(NotStatement=wafv2.NotStatement(Statement=wafv2.Statement(
        ByteMatchStatement=wafv2.ByteMatchStatement(
            FieldToMatch=wafv2.FieldToMatch(UriPath={}),
            PositionalConstraint="ENDS_WITH",
            SearchString=INBOX_SUFFIX,
            TextTransformations=[wafv2.TextTransformation(Priority=0, Type="NONE")],
        ))))
    rules = [wafv2.WebACLRule(
        Name=RATE_LIMIT_RULE, Priority=0,
        Action=wafv2.RuleAction(Block=wafv2.BlockAction(
            CustomResponse=wafv2.CustomResponse(ResponseCode=429))),
        Statement=wafv2.Statement(RateBasedStatement=wafv2.RateBasedStatement(
            AggregateKeyType="IP", Limit=Ref(waf.rate_limit), EvaluationWindowSec=300,
            ScopeDownStatement=not_an_inbox)),
        VisibilityConfig=_visibility(RATE_LIMIT_RULE),
    )]
    for priority, (group, count_only) in enumerate(MANAGED_RULE_GROUPS, start=1):
        count = wafv2.RuleAction(Count=wafv2.CountAction())
        overrides = [wafv2.RuleActionOverride(Name=rule, ActionToUse=count) for rule in count_only]
        statement = wafv2.ManagedRuleGroupStatement(VendorName="AWS", Name=group)
        if overrides:
            statement.RuleActionOverrides = overrides
        rules.append(wafv2.WebACLRule(
            Name=group, Priority=priority,
            OverrideAction=wafv2.OverrideAction(**{"None": {}}),  # the group's own actions
            Statement=wafv2.Statement(ManagedRuleGroupStatement=statement),
            VisibilityConfig=_visibility(group),
        ))
    return t.add_resource(wafv2.WebACL(
        WEB_ACL,
        Condition=CREATE_WAF,
        Scope="CLOUDFRONT",
        Description="Mastodon: rate limit, IP reputation, common and known-bad-input rules",
        DefaultAction=wafv2.DefaultAction(Allow=wafv2.AllowAction()),
        Rules=rules,
        VisibilityConfig=_visibility("Mastodon"),
    ))
