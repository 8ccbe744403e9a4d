"""Custom::CloudFrontCertificate: a DNS-validated certificate in us-east-1, whatever the stack's region.

moto's ACM returns the DNS validation records at once and turns a certificate
ISSUED once it is older than moto.settings.ACM_VALIDATION_WAIT seconds (60 by
default): the tests set that to 0 ("validates at once") or to an hour ("never
validates") instead of patching ACM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import moto.settings
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from lambdas import cloudfront_certificate as certificate

DOMAIN = "social.example.com"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")  # the stack's region
    monkeypatch.setattr(moto.settings, "ACM_VALIDATION_WAIT", 0)
    monkeypatch.setattr(certificate, "POLL_SECONDS", 0.0)
    with mock_aws():
        route53 = boto3.client("route53")
        zone = route53.create_hosted_zone(Name="example.com", CallerReference="t")["HostedZone"]
        yield {
            "acm": boto3.client("acm", region_name="us-east-1"),
            "route53": route53,
            "zone": zone["Id"].removeprefix("/hostedzone/"),
        }


@pytest.fixture
def reinvocations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(certificate, "reinvoke", lambda arn, event: calls.append((arn, event)))
    return calls


def props(aws: dict[str, Any], domain: str = DOMAIN, **extra: Any) -> dict[str, Any]:
    return {"DomainName": domain, "HostedZoneId": aws["zone"], **extra}


def certificates(aws: dict[str, Any]) -> list[str]:
    summaries = aws["acm"].list_certificates()["CertificateSummaryList"]
    return [c["CertificateArn"] for c in summaries]


def cnames(aws: dict[str, Any]) -> dict[str, str]:
    records = aws["route53"].list_resource_record_sets(HostedZoneId=aws["zone"])
    return {
        r["Name"]: r["ResourceRecords"][0]["Value"]
        for r in records["ResourceRecordSets"]
        if r["Type"] == "CNAME"
    }


def never_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto.settings, "ACM_VALIDATION_WAIT", 3600)


# ---------------------------------------------------------------- decisions
@pytest.mark.parametrize(
    ("case", "properties", "message"),
    [
        ("no domain", {"HostedZoneId": "Z123"}, "domain"),
        (
            "domain with a space",
            {"DomainName": "a b.com", "HostedZoneId": "Z123"},
            "domain",
        ),
        (
            "bad SAN",
            {
                "DomainName": "a.com",
                "SubjectAlternativeNames": ["-x.a.com"],
                "HostedZoneId": "Z1",
            },
            "domain",
        ),
        ("no zone", {"DomainName": "a.com"}, "HostedZoneId"),
        (
            "zone id with junk",
            {"DomainName": "a.com", "HostedZoneId": "Z12; drop"},
            "HostedZoneId",
        ),
    ],
)
def test_invalid_properties_are_rejected(case: str, properties: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        certificate.parse_properties(properties)


def test_names_are_normalised_so_that_a_cosmetic_change_keeps_the_certificate() -> None:
    old = {
        "DomainName": "Social.Example.com.",
        "HostedZoneId": "Z1",
        "SubjectAlternativeNames": ["b.example.com", "a.example.com"],
    }
    new = {
        "DomainName": "social.example.com",
        "HostedZoneId": "Z2",
        "SubjectAlternativeNames": ["a.example.com", "b.example.com"],
    }
    assert not certificate.names_changed(new, old)
    assert certificate.names_changed({**new, "SubjectAlternativeNames": ["c.example.com"]}, old)


def test_names_outside_the_hosted_zone_are_found() -> None:
    names = [
        "example.com",
        "*.example.com",
        "social.example.com",
        "example.org",
        "badexample.com",
    ]
    assert certificate.names_outside_zone(names, "example.com.") == [
        "example.org",
        "badexample.com",
    ]


def test_validation_records_wait_for_every_name_and_are_written_once() -> None:
    record = {
        "Name": "_x.example.com.",
        "Type": "CNAME",
        "Value": "_y.acm-validations.aws.",
    }
    assert certificate.validation_records({"DomainValidationOptions": []}) is None
    pending = [
        {"DomainName": "example.com", "ResourceRecord": record},
        {"DomainName": "*.example.com"},
    ]
    assert certificate.validation_records({"DomainValidationOptions": pending}) is None
    both = [
        {"DomainName": "example.com", "ResourceRecord": record},
        {"DomainName": "*.example.com", "ResourceRecord": record},
    ]
    assert certificate.validation_records({"DomainValidationOptions": both}) == [record]


def test_idempotency_token_is_stable_per_request_and_valid_for_acm() -> None:
    token = certificate.idempotency_token("11111111-2222-3333-4444-555555555555")
    assert token == certificate.idempotency_token("11111111-2222-3333-4444-555555555555")
    assert token != certificate.idempotency_token("another-request")
    assert token.isalnum() and len(token) <= 32


# ---------------------------------------------------------------- create
def test_create_requests_a_certificate_in_us_east_1_and_validates_it_by_dns(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    certificate.lambda_handler(cfn_event("Create", props(aws)), context)

    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    arn = answers.last["PhysicalResourceId"]
    assert arn.startswith("arn:aws:acm:us-east-1:")
    assert answers.last["Data"] == {"Arn": arn}
    assert certificates(aws) == [arn]
    details = aws["acm"].describe_certificate(CertificateArn=arn)["Certificate"]
    assert details["DomainName"] == DOMAIN
    record = details["DomainValidationOptions"][0]["ResourceRecord"]
    assert cnames(aws) == {record["Name"]: record["Value"]}


def test_a_retried_invocation_of_the_same_request_reuses_the_certificate(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    event = cfn_event("Create", props(aws, SubjectAlternativeNames=[f"*.{DOMAIN}"]))
    certificate.lambda_handler(event, context)
    certificate.lambda_handler(event, context)
    assert answers.bodies[0]["PhysicalResourceId"] == answers.bodies[1]["PhysicalResourceId"]
    assert len(certificates(aws)) == 1


def test_a_slow_validation_continues_in_a_new_invocation(
    aws: dict[str, Any],
    answers: Any,
    cfn_event: Any,
    context: Any,
    reinvocations: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    never_validates(monkeypatch)
    context.remaining_ms = 30_000  # less than the reserve: hand over at once
    event = cfn_event("Create", props(aws))

    certificate.lambda_handler(event, context)

    assert answers.bodies == [], "CloudFormation is answered by the last invocation only"
    [(function_arn, follow_up)] = reinvocations
    assert function_arn == context.invoked_function_arn
    assert follow_up["CertificateArn"] == certificates(aws)[0]
    assert follow_up["CertificateAttempt"] == 1
    assert {k: follow_up[k] for k in event} == event

    monkeypatch.setattr(moto.settings, "ACM_VALIDATION_WAIT", 0)  # DNS has propagated
    certificate.lambda_handler(follow_up, context)

    assert answers.last["Status"] == "SUCCESS"
    assert answers.last["PhysicalResourceId"] == follow_up["CertificateArn"]
    assert len(certificates(aws)) == 1, "the follow-up does not request another certificate"


@pytest.fixture
def handed_over(aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any, reinvocations: Any,
                monkeypatch: pytest.MonkeyPatch) -> None:
    """A create whose certificate never validates, handed over to a follow-up invocation at once."""
    never_validates(monkeypatch)
    context.remaining_ms = 30_000
    certificate.lambda_handler(cfn_event("Create", props(aws)), context)


def test_each_follow_up_counts_its_attempt_and_keeps_the_start_time(
    handed_over: None, context: Any, reinvocations: Any
) -> None:
    certificate.lambda_handler(reinvocations[0][1], context)
    first, second = (call[1] for call in reinvocations)
    assert second["CertificateAttempt"] == 2
    assert second["CertificateStarted"] == first["CertificateStarted"]


def test_after_55_minutes_it_fails_with_the_likely_cause_and_the_certificate_to_clean_up(
    handed_over: None, aws: dict[str, Any], answers: Any, context: Any, reinvocations: Any
) -> None:
    follow_up = {**reinvocations[0][1], "CertificateStarted": time.time() - 56 * 60}

    certificate.lambda_handler(follow_up, context)

    assert len(reinvocations) == 1
    assert answers.last["Status"] == "FAILED"
    assert answers.last["Reason"] == (
        f"certificate for {DOMAIN} not validated after 56 minutes: "
        f"is hosted zone {aws['zone']} authoritative for the domain?"
    )
    # The rollback's Delete receives this id and removes the pending certificate.
    assert answers.last["PhysicalResourceId"] == follow_up["CertificateArn"]


@pytest.mark.parametrize(
    ("case", "domain", "zone", "reason"),
    [
        ("invalid domain", "not a domain", None, "invalid domain name"),
        ("invalid zone id", DOMAIN, "zone-1", "invalid HostedZoneId"),
        ("unknown zone", DOMAIN, "Z0000000000000000000", "does not exist"),
        ("domain outside the zone", "social.example.org", None, "not in hosted zone"),
    ],
)
def test_bad_input_fails_clearly_and_creates_nothing(
    aws: dict[str, Any],
    answers: Any,
    cfn_event: Any,
    context: Any,
    case: str,
    domain: str,
    zone: str | None,
    reason: str,
) -> None:
    properties = {"DomainName": domain, "HostedZoneId": zone or aws["zone"]}
    certificate.lambda_handler(cfn_event("Create", properties), context)
    assert answers.last["Status"] == "FAILED"
    assert reason in answers.last["Reason"]
    assert certificates(aws) == []
    assert not certificate.CERTIFICATE_ARN.match(answers.last["PhysicalResourceId"])


# ---------------------------------------------------------------- update and delete
def test_update_with_the_same_names_keeps_the_certificate(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    certificate.lambda_handler(cfn_event("Create", props(aws)), context)
    arn = answers.last["PhysicalResourceId"]
    update = cfn_event(
        "Update",
        props(aws, DOMAIN.upper()),
        props(aws),
        physical_id=arn,
        request_id="r2",
    )

    certificate.lambda_handler(update, context)

    assert answers.last["Status"] == "SUCCESS"
    assert answers.last["PhysicalResourceId"] == arn
    assert answers.last["Data"] == {"Arn": arn}
    assert certificates(aws) == [arn]


def test_update_with_new_names_creates_a_new_certificate(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    certificate.lambda_handler(cfn_event("Create", props(aws)), context)
    old_arn = answers.last["PhysicalResourceId"]
    new = props(aws, "mastodon.example.com")
    update = cfn_event("Update", new, props(aws), physical_id=old_arn, request_id="r2")

    certificate.lambda_handler(update, context)

    assert answers.last["Status"] == "SUCCESS"
    new_arn = answers.last["PhysicalResourceId"]
    assert new_arn != old_arn  # CloudFormation then deletes the old one
    assert sorted(certificates(aws)) == sorted([old_arn, new_arn])


def test_delete_removes_the_certificate_and_keeps_the_validation_record(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    certificate.lambda_handler(cfn_event("Create", props(aws)), context)
    arn = answers.last["PhysicalResourceId"]
    records = cnames(aws)

    certificate.lambda_handler(cfn_event("Delete", props(aws), physical_id=arn), context)

    assert answers.last["Status"] == "SUCCESS"
    assert certificates(aws) == []
    assert cnames(aws) == records


def test_delete_of_a_certificate_already_gone_succeeds(
    aws: dict[str, Any], answers: Any, cfn_event: Any, context: Any
) -> None:
    arn = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
    certificate.lambda_handler(cfn_event("Delete", props(aws), physical_id=arn), context)
    assert answers.last["Status"] == "SUCCESS"


def test_delete_after_a_failed_create_succeeds_without_aws(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(certificate.boto3, "client", None)  # any AWS call would raise
    event = cfn_event("Delete", {"DomainName": "x"}, physical_id="no-certificate-1234")
    certificate.lambda_handler(event, context)
    assert answers.last["Status"] == "SUCCESS"
    assert answers.last["PhysicalResourceId"] == "no-certificate-1234"


class InUseThenDeleted:
    """An ACM client whose certificate is released by CloudFront after `busy` tries."""

    def __init__(self, busy: int) -> None:
        self.busy, self.calls = busy, 0

    def delete_certificate(self, CertificateArn: str) -> None:
        self.calls += 1
        if self.calls <= self.busy:
            error = {"Error": {"Code": "ResourceInUseException", "Message": "in use"}}
            raise ClientError(error, "DeleteCertificate")  # type: ignore[arg-type]


def test_delete_retries_while_a_distribution_still_uses_the_certificate(
    context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(certificate, "POLL_SECONDS", 0.0)
    acm = InUseThenDeleted(busy=2)
    certificate.delete_certificate(acm, "arn", context)
    assert acm.calls == 3


def test_delete_gives_up_before_the_invocation_times_out(
    context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(certificate, "POLL_SECONDS", 0.0)
    context.remaining_ms = 30_000
    with pytest.raises(ClientError, match="ResourceInUseException"):
        certificate.delete_certificate(InUseThenDeleted(busy=10**6), "arn", context)
