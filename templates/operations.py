"""Operations: the topic that carries alarms and upgrade notices to the admin, and who may publish.

Three kinds of publisher reach the topic: the stack's CloudWatch alarms, EventBridge
rules (a failed rollout), and the rollout function's role (its own notices). The
topic's policy names the first two; the role publishes through its IAM policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from awacs import sns as awacs_sns
from awacs.aws import (
    Allow,
    ArnEquals,
    ArnLike,
    Bool,
    Condition,
    Deny,
    PolicyDocument,
    Principal,
    Statement,
    StringEquals,
)
from troposphere import GetAtt, Ref, Sub, Template, events, kms, sns

from templates.parameters import Parameters

ALERT_TOPIC = "AlertTopic"
ALERT_TOPIC_POLICY = "AlertTopicPolicy"

# What AWS's default topic policy lets the owning account do.
OWNER_ACTIONS = [
    awacs_sns.GetTopicAttributes, awacs_sns.SetTopicAttributes, awacs_sns.AddPermission,
    awacs_sns.RemovePermission, awacs_sns.DeleteTopic, awacs_sns.Subscribe,
    awacs_sns.ListSubscriptionsByTopic, awacs_sns.Publish,
]


def create_alert_topic(t: Template, p: Parameters, key: kms.Key) -> sns.Topic:
    """An SNS topic with the alert e-mail subscribed (the admin confirms once by mail).

    Encrypted with the stack's operations key, whose policy lets CloudWatch alarms and
    EventBridge publish (they cannot use the AWS managed key aws/sns). A role that
    publishes needs kms:GenerateDataKey and kms:Decrypt on that key besides sns:Publish.
    """
    return t.add_resource(sns.Topic(
        ALERT_TOPIC,
        DisplayName=Sub("Mastodon ${DomainName}"),
        KmsMasterKeyId=Ref(key),
        Subscription=[sns.Subscription(Protocol="email", Endpoint=Ref(p.alert_email))],
    ))


def create_alert_topic_policy(t: Template, topic: sns.Topic,
                              event_rules: Sequence[events.Rule]) -> sns.TopicPolicy:
    """The topic's policy: this account's alarms and the given EventBridge rules may publish.

    It replaces AWS's default policy, so it grants again what that one did: the account
    manages the topic, and CloudWatch alarms publish. Call once, with every rule that
    targets the topic (EventBridge publishes only with the topic policy's permission).
    """
    topic_arn = Ref(topic)
    policy = PolicyDocument(Version="2012-10-17", Statement=[
        # AWS's default grants these to "*" on condition of AWS:SourceOwner; naming the
        # account root grants the same without a public principal. The account's roles
        # (the rollout function) publish through their IAM policies: within one account
        # either policy suffices.
        Statement(Sid="AccountManagesTheTopic", Effect=Allow,
                  Principal=Principal("AWS", Sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")),
                  Action=OWNER_ACTIONS, Resource=[topic_arn]),
        # Any alarm of this account and region (the CloudWatch user guide's confused-deputy
        # conditions): a new alarm needs no change here.
        Statement(Sid="ThisAccountsAlarmsPublish", Effect=Allow,
                  Principal=Principal("Service", "cloudwatch.amazonaws.com"),
                  Action=[awacs_sns.Publish], Resource=[topic_arn],
                  Condition=Condition([
                      StringEquals("aws:SourceAccount", Ref("AWS::AccountId")),
                      ArnLike("aws:SourceArn",
                              Sub("arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:*")),
                  ])),
        # Only these rules, not any rule of any account.
        Statement(Sid="TheStacksEventRulesPublish", Effect=Allow,
                  Principal=Principal("Service", "events.amazonaws.com"),
                  Action=[awacs_sns.Publish], Resource=[topic_arn],
                  Condition=Condition(ArnEquals("aws:SourceArn", [GetAtt(r, "Arn") for r in event_rules]))),
        # SNS security best practices: no message in clear text on the way in. AWS
        # services publish over TLS, so this refuses no one above.
        Statement(Sid="PublishOnlyOverTls", Effect=Deny, Principal=Principal("*"),
                  Action=[awacs_sns.Publish], Resource=[topic_arn],
                  Condition=Condition(Bool("aws:SecureTransport", "false"))),
    ])
    return t.add_resource(sns.TopicPolicy(ALERT_TOPIC_POLICY, Topics=[topic_arn], PolicyDocument=policy))
