"""Parameters: few required, all described, constrained and placed in the console."""

from __future__ import annotations

import re

import pytest

from templates import capacity

REQUIRED = {"DomainName", "AlertEmail"}


def test_only_the_domain_and_alert_email_lack_a_default(template):
    # The hosted zone has an empty default so that the no-zone path stays possible.
    without_default = {n for n, p in template["Parameters"].items() if "Default" not in p}
    assert without_default == REQUIRED
    assert "HostedZoneId" in template["Parameters"]


def test_every_parameter_is_described_and_constrained(template):
    for name, parameter in template["Parameters"].items():
        assert len(parameter.get("Description", "")) >= 20, name
        constraints = {"AllowedPattern", "AllowedValues", "MinValue", "MaxValue"} & parameter.keys()
        assert constraints, f"{name} accepts anything"
        if "AllowedPattern" in parameter:
            assert parameter.get("ConstraintDescription"), f"{name} rejects without saying why"


def test_every_parameter_has_a_labelled_place_in_the_console(template):
    interface = template["Metadata"]["AWS::CloudFormation::Interface"]
    grouped = [n for g in interface["ParameterGroups"] for n in g["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"]), "a parameter is outside every group"
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    labels = interface["ParameterLabels"]
    assert set(labels) == set(template["Parameters"])
    assert all(g["Label"]["default"] for g in interface["ParameterGroups"])
    # The required inputs come first in the console.
    assert REQUIRED <= set(interface["ParameterGroups"][0]["Parameters"])


def test_every_default_meets_its_own_constraint(template):
    for name, parameter in template["Parameters"].items():
        default = parameter.get("Default")
        if default is None:
            continue
        if "AllowedPattern" in parameter:
            assert re.fullmatch(parameter["AllowedPattern"], str(default)), name
        if "AllowedValues" in parameter:
            # A list's every member must be allowed (as cfn-lint checks it: E2015).
            members = str(default).split(",") if parameter["Type"] == "CommaDelimitedList" else [str(default)]
            assert set(members) <= set(parameter["AllowedValues"]), name
        if "MinValue" in parameter:
            assert float(parameter["MinValue"]) <= float(default) <= float(parameter["MaxValue"]), name


PATTERN_CASES = [
    # parameter, value, accepted
    ("DomainName", "social.example.com", True),
    ("DomainName", "example.social", True),
    ("DomainName", "Social.Example.com", False),
    ("DomainName", "https://social.example.com", False),
    ("DomainName", "social.example.com.", False),
    ("DomainName", "localhost", False),
    ("DomainName", "-bad.example.com", False),
    ("AlertEmail", "admin@example.com", True),
    ("AlertEmail", "admin@", False),
    ("AlertEmail", "", False),
    ("HostedZoneId", "", True),
    ("HostedZoneId", "Z0123456789ABCDEFGHIJ", True),
    ("HostedZoneId", "z0123", False),
    ("HostedZoneId", "/hostedzone/Z0123", False),
    ("CloudFrontCertificateArn", "", True),
    ("CloudFrontCertificateArn",
     "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012", True),
    ("CloudFrontCertificateArn", "arn:aws:acm:us-east-1:123456789012:certificate/nope", False),
    ("SmtpPasswordSecretArn", "", True),
    ("SmtpPasswordSecretArn", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:smtp-AbC123", True),
    ("SmtpPasswordSecretArn", "hunter2", False),
    ("SmtpServer", "", True),
    ("SmtpServer", "smtp.mailgun.org", True),
    ("SmtpServer", "smtp.mailgun.org:587", False),
    ("MailFromAddress", "", True),
    ("MailFromAddress", "notifications@social.example.com", True),
    ("MailFromAddress", "notifications", False),
    ("SmtpLogin", "postmaster@mg.example.com", True),
    ("SmtpLogin", "has space", False),
]


@pytest.mark.parametrize(("name", "value", "accepted"), PATTERN_CASES,
                         ids=[f"{n}={v!r}" for n, v, _ in PATTERN_CASES])
def test_patterns_accept_good_values_and_reject_bad_ones(template, name, value, accepted):
    # CloudFormation anchors AllowedPattern to the whole value, as fullmatch does.
    assert bool(re.fullmatch(template["Parameters"][name]["AllowedPattern"], value)) is accepted


def test_sizes_offered_are_the_ones_capacity_plans_for(template):
    params = template["Parameters"]
    web, worker = params["WebInstanceType"]["AllowedValues"], params["WorkerInstanceType"]["AllowedValues"]
    assert web == [t.name for t in capacity.WEB_INSTANCE_TYPES]
    assert worker == [t.name for t in capacity.WORKER_INSTANCE_TYPES]
    assert set(web) | set(worker) == set(template["Mappings"]["InstanceArchitecture"]), "each finds its AMI"
    assert params["DatabaseInstanceClass"]["AllowedValues"] == [d.name for d in capacity.DATABASE_CLASSES]


def test_the_worker_may_run_on_a_1_gib_micro_and_does_by_default_but_the_web_servers_may_not(template):
    web, worker = template["Parameters"]["WebInstanceType"], template["Parameters"]["WorkerInstanceType"]
    assert {"t4g.micro", "t3.micro"} <= set(worker["AllowedValues"]), "Graviton and x86 both have one"
    assert worker["Default"] == "t4g.micro"
    # Puma and the streaming server need 2 GiB or more.
    assert not {"t4g.micro", "t3.micro"} & set(web["AllowedValues"])
    assert all(capacity.INSTANCE_TYPES_BY_NAME[name].memory_mib >= 2048 for name in web["AllowedValues"])
    assert web["Default"] == "t4g.small"
    assert template["Mappings"]["InstanceArchitecture"]["t4g.micro"]["Architecture"] == "arm64"
    assert template["Mappings"]["InstanceArchitecture"]["t3.micro"]["Architecture"] == "x86_64"


def test_without_a_hosted_zone_both_certificates_are_required(template):
    rule = template["Rules"]["CertificatesWithoutHostedZone"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "HostedZoneId"}, ""]}
    asserted = str(rule["Assertions"])
    assert "CloudFrontCertificateArn" in asserted and "LoadBalancerCertificateArn" in asserted


def test_an_external_smtp_server_requires_its_login_and_password_secret(template):
    asserted = str(template["Rules"]["ExternalSmtpNeedsLogin"]["Assertions"])
    assert "SmtpLogin" in asserted and "SmtpPasswordSecretArn" in asserted
