"""Every secret of the stack, generated inside it and kept in Secrets Manager.

One secret holds Mastodon's keys (SECRET_KEY_BASE, OTP_SECRET, the Active Record
encryption keys, the VAPID pair), the database and Redis passwords, the SES SMTP
credentials and the header CloudFront shows the load balancer. The stack creates it
empty and a custom resource fills in whatever key is missing, never replacing one:
these keys encrypt users' data, and a new VAPID pair would break every push
subscription. The values reach the database and cache through dynamic references,
the servers through their role at boot; none is in the template, user data, a
function's environment or an output.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import iam as awacs_iam
from awacs import secretsmanager as awacs_sm
from awacs.aws import Allow, Statement
from troposphere import AWSObject, If, Ref, Sub, Template, secretsmanager

from templates import functions, parameters
from templates.options import STACK_PREFIX
from templates.parameters import Parameters

APP_SECRET = "AppSecret"
APP_SECRET_VALUES = "AppSecretValues"


@dataclass(frozen=True)
class Secrets:
    secret: secretsmanager.Secret
    values: AWSObject

    def reference(self, key: str) -> Sub:
        """A dynamic reference CloudFormation resolves when it creates a resource."""
        return Sub(f"{{{{resolve:secretsmanager:${{{APP_SECRET}}}:SecretString:{key}}}}}")


def create_secrets(t: Template, p: Parameters, code: str, smtp_user: Ref | None) -> Secrets:
    secret = t.add_resource(secretsmanager.Secret(
        APP_SECRET,
        Description=Sub("Mastodon keys and passwords of stack ${AWS::StackName}"),
        # Deleting the stack must not destroy the keys that decrypt users' data; a failed
        # first create, which encrypted nothing with them, removes the secret.
        DeletionPolicy="RetainExceptOnCreate",
        UpdateReplacePolicy="Retain",
        Metadata={"checkov": {"skip": [
            {"id": "CKV_AWS_149", "comment": "The secret outlives the stack (retained on "
             "deletion: its keys decrypt users' data). A key owned by the stack would be "
             "deleted with it and leave the secret unreadable, so it uses the AWS managed "
             "key aws/secretsmanager, which lasts as long as the account."},
        ]}},
    ))
    statements = [
        Statement(Effect=Allow, Action=[awacs_sm.GetSecretValue, awacs_sm.PutSecretValue],
                  Resource=[Ref(secret)]),
    ]
    if smtp_user is not None:
        statements.append(Statement(
            Effect=Allow,
            Action=[awacs_iam.CreateAccessKey, awacs_iam.DeleteAccessKey, awacs_iam.ListAccessKeys],
            # Only the stack's own SMTP user, by its path (see mail.SMTP_USER_PATH).
            Resource=[Sub(f"arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:user{STACK_PREFIX}/*")],
        ))
    function = functions.inline_function(
        t, "AppSecretsFunction", code, statements, Ref(p.log_retention), timeout=60,
        description="Fills the stack's secret with Mastodon's keys, once; derives SES SMTP credentials.",
    )
    values = functions.provided_resource(
        t, "AppSecrets", APP_SECRET_VALUES, function, 300,
        SecretId=Ref(secret),
        SmtpUserName=If(parameters.USE_SES, smtp_user, "") if smtp_user is not None else "",
        SmtpRegion=Ref("AWS::Region"),
        # Checked here, before the database exists: SES sends only from the domain.
        MailFromAddress=Ref(p.mail_from),
        DomainName=Ref(p.domain),
        # Present only with the cache-only Redis: turning that option on for an existing
        # stack changes this resource, so the function runs again and adds the Redis's
        # token (CACHE_REDIS_PASSWORD) before the Redis resolves it. Off, the properties
        # are what they always were: no update.
        SeparateCache=If(parameters.HAS_SEPARATE_CACHE, "true", Ref("AWS::NoValue")),
        # Likewise for search: turning it on runs the function again, which adds ES_PASS to
        # a secret made before it generated one (it fills missing keys, never replaces one).
        SearchEnabled=If(parameters.HAS_SEARCH, "true", Ref("AWS::NoValue")),
    )
    return Secrets(secret=secret, values=values)
