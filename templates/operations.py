"""Operations: the topic that carries alarms and upgrade notices to the admin."""

from __future__ import annotations

from troposphere import Ref, Sub, Template, sns

from templates.parameters import Parameters

ALERT_TOPIC = "AlertTopic"


def create_alert_topic(t: Template, p: Parameters) -> sns.Topic:
    """An SNS topic with the alert e-mail subscribed (the admin confirms once by mail)."""
    return t.add_resource(sns.Topic(
        ALERT_TOPIC,
        DisplayName=Sub("Mastodon ${DomainName}"),
        Subscription=[sns.Subscription(Protocol="email", Endpoint=Ref(p.alert_email))],
        Metadata={"checkov": {"skip": [
            {"id": "CKV_AWS_26", "comment": "CloudWatch alarms and EventBridge cannot publish to "
             "a topic encrypted with the AWS managed key; the messages carry no secret, and a "
             "customer key would cost $1/month."},
        ]}},
    ))
