"""Outgoing mail: an Amazon SES domain identity with DKIM, and an SMTP user for it.

With a hosted zone the DKIM records are created in it; without one they are listed
in the outputs. The SMTP password is derived from the user's access key by the
secrets custom resource and lands only in the stack's secret. An external SMTP
server given by parameters replaces all of this.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import ses as awacs_ses
from awacs.aws import Allow, PolicyDocument, Statement
from troposphere import GetAtt, If, Join, Ref, Sub, Template, iam, route53, ses

from templates import parameters
from templates.options import STACK_PREFIX
from templates.parameters import Parameters

EMAIL_IDENTITY = "EmailIdentity"
SMTP_USER = "SmtpUser"
SMTP_USER_PATH = f"{STACK_PREFIX}/"
DKIM_RECORDS = 3
# Amazon SES's SMTP interface in the stack's region, on its STARTTLS port
# (scripts/check.py compares what the servers use with these).
SES_SMTP_HOST = "email-smtp.{region}.amazonaws.com"
SES_SMTP_PORT = "587"


@dataclass(frozen=True)
class Mail:
    identity: ses.EmailIdentity
    smtp_user: iam.User
    from_address: If
    server: If
    port: If
    login: If


def create_mail(t: Template, p: Parameters) -> Mail:
    identity = t.add_resource(ses.EmailIdentity(
        EMAIL_IDENTITY,
        Condition=parameters.USE_SES,
        EmailIdentity=Ref(p.domain),
        DkimSigningAttributes=ses.DkimSigningAttributes(NextSigningKeyLength="RSA_2048_BIT"),
    ))
    for n in range(1, DKIM_RECORDS + 1):
        t.add_resource(route53.RecordSetType(
            f"DkimRecord{n}",
            Condition=parameters.USE_SES_WITH_ZONE,
            HostedZoneId=Ref(p.hosted_zone),
            Name=GetAtt(identity, f"DkimDNSTokenName{n}"),
            Type="CNAME",
            TTL="1800",
            ResourceRecords=[GetAtt(identity, f"DkimDNSTokenValue{n}")],
        ))
    user = t.add_resource(iam.User(
        SMTP_USER,
        Condition=parameters.USE_SES,
        Path=Sub(SMTP_USER_PATH),
        Policies=[iam.Policy(
            PolicyName="SendMailAsTheDomain",
            PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=[Statement(
                Effect=Allow,
                Action=[awacs_ses.SendRawEmail],
                Resource=[Sub("arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/${DomainName}")],
            )]),
        )],
    ))
    from_address = If(parameters.HAS_MAIL_FROM, Ref(p.mail_from),
                      Join("", ["notifications@", Ref(p.domain)]))
    return Mail(
        identity=identity,
        smtp_user=user,
        from_address=from_address,
        server=If(parameters.USE_SES, Sub(SES_SMTP_HOST.format(region="${AWS::Region}")), Ref(p.smtp_server)),
        port=If(parameters.USE_SES, SES_SMTP_PORT, Ref(p.smtp_port)),
        login=If(parameters.USE_SES, "", Ref(p.smtp_login)),
    )
