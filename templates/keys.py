"""The stack's customer-managed KMS key for operational data: logs and alerts.

One key ($1/month) encrypts every CloudWatch log group and the alert topic. The
topic needs a customer key rather than the AWS-managed aws/sns: CloudWatch alarms
and EventBridge publish to an encrypted topic only if the key policy lets their
service principals use the key, and an AWS-managed key's policy cannot be changed.
The servers' logs carry viewers' IP addresses and account names (personal data),
so they are worth encrypting with a key the account controls and can revoke.

The app secret is deliberately not under this key: it outlives the stack (retained
on deletion) and would become unreadable once a stack-owned key is deleted.
"""

from __future__ import annotations

from awacs import kms as awacs_kms
from awacs.aws import Allow, ArnLike, Condition, PolicyDocument, Principal, Statement
from troposphere import GetAtt, Sub, Template, kms, logs

OPERATIONS_KEY = "OperationsKey"

# Who may publish to the encrypted alert topic (besides roles the account grants).
# The topic's own policy (operations.py) lets them publish; this key policy lets them
# encrypt what they publish.
TOPIC_PUBLISHERS = ("cloudwatch.amazonaws.com", "events.amazonaws.com")


def create_operations_key(t: Template) -> kms.Key:
    """The key, with a policy for the account, alarm/event publishers and CloudWatch Logs."""
    account_root = Sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")
    policy = PolicyDocument(Version="2012-10-17", Statement=[
        # AWS's default key policy: the account administers the key and may grant its
        # use through IAM (the rollout pipeline's roles publish to the topic this way).
        # Without it the key could never be managed again.
        Statement(Sid="AccountAdministersTheKey", Effect=Allow,
                  Principal=Principal("AWS", account_root),
                  Action=[awacs_kms.Action("*")], Resource=["*"]),
        # What CloudWatch and EventBridge need to publish to an encrypted topic
        # (CloudWatch and EventBridge user guides). In a key policy "*" is this key.
        # No aws:SourceArn/SourceAccount condition: AWS documents that EventBridge's
        # KMS requests do not carry them, so its notices would be dropped.
        Statement(Sid="AlarmsAndEventsPublishToTheAlertTopic", Effect=Allow,
                  Principal=Principal("Service", list(TOPIC_PUBLISHERS)),
                  Action=[awacs_kms.Decrypt, awacs_kms.GenerateDataKey], Resource=["*"]),
        # CloudWatch Logs, only for this account's log groups in this region.
        Statement(Sid="CloudWatchLogsEncryptsThisAccountsLogGroups", Effect=Allow,
                  Principal=Principal("Service", Sub("logs.${AWS::Region}.amazonaws.com")),
                  Action=[awacs_kms.Encrypt, awacs_kms.Decrypt, awacs_kms.ReEncryptFrom,
                          awacs_kms.ReEncryptTo, awacs_kms.GenerateDataKey, awacs_kms.DescribeKey],
                  Resource=["*"],
                  Condition=Condition(ArnLike(
                      "kms:EncryptionContext:aws:logs:arn",
                      Sub("arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:*")))),
    ])
    return t.add_resource(kms.Key(
        OPERATIONS_KEY,
        Description=Sub("Mastodon ${AWS::StackName}: logs and alert topic"),
        EnableKeyRotation=True,
        KeyPolicy=policy,
    ))


def encrypt_every_log_group(t: Template, key: kms.Key) -> list[str]:
    """Put every log group of the stack under the key; call once all tiers are added.

    Returns the logical IDs it encrypted, so that a log group added later by any tier
    is covered without that tier knowing about the key.
    """
    encrypted = []
    for name, resource in t.resources.items():
        if isinstance(resource, logs.LogGroup):
            resource.KmsKeyId = GetAtt(key, "Arn")
            encrypted.append(name)
    return encrypted
