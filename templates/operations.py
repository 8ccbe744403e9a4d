"""Operations: the topic that carries alarms and upgrade notices to the admin."""

from __future__ import annotations

from troposphere import Ref, Sub, Template, kms, sns

from templates.parameters import Parameters

ALERT_TOPIC = "AlertTopic"


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
