"""Custom::CloudFrontCertificate: a DNS-validated ACM certificate in us-east-1.

CloudFront only accepts certificates from us-east-1, whatever the stack's region,
so AWS::CertificateManager::Certificate in the stack cannot serve it. This
function requests the certificate there, writes its validation CNAMEs into the
hosted zone and waits for ISSUED. Validation may outlast one invocation: the
function then re-invokes itself asynchronously with the certificate ARN, up to
WAIT_LIMIT_SECONDS in all (the custom resource's ServiceTimeout is one hour).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import (
    CloudFormationCustomResourceEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from lambdas.custom_resource import Answer, handle

logger = Logger()

CERTIFICATE_REGION = "us-east-1"
POLL_SECONDS = 10.0
RESERVE_MS = 60_000  # re-invoke when less than this is left
WAIT_LIMIT_SECONDS = 55 * 60
FINAL_FAILURES = {"FAILED", "VALIDATION_TIMED_OUT", "REVOKED", "EXPIRED", "INACTIVE"}
DOMAIN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
ZONE_ID = re.compile(r"^[A-Z0-9]{1,32}$")  # AWS ids start with Z; moto's do not
CERTIFICATE_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$")


# ---------------------------------------------------------------- decisions
def parse_properties(properties: Mapping[str, Any]) -> tuple[str, list[str], str]:
    """(domain, sorted SANs without the domain, zone id); ValueError when invalid."""
    domain = str(properties.get("DomainName") or "").strip().lower().rstrip(".")
    sans = properties.get("SubjectAlternativeNames") or []
    if isinstance(sans, str):
        sans = [s for s in sans.split(",") if s.strip()]
    names = sorted({str(s).strip().lower().rstrip(".") for s in sans} - {domain})
    zone = str(properties.get("HostedZoneId") or "").strip().removeprefix("/hostedzone/")
    for name in [domain, *names]:
        if len(name) > 253 or not DOMAIN.match(name):
            raise ValueError(f"invalid domain name {name!r} (property DomainName)")
    if not ZONE_ID.match(zone):
        raise ValueError(f"invalid HostedZoneId {zone!r}")
    return domain, names, zone


def names_outside_zone(names: list[str], zone_name: str) -> list[str]:
    zone = zone_name.lower().rstrip(".")
    bare = (n.removeprefix("*.") for n in names)
    return [n for n in bare if n != zone and not n.endswith("." + zone)]


def names_changed(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return parse_properties(new)[:2] != parse_properties(old)[:2]


def idempotency_token(request_id: str) -> str:
    """ACM allows \\w{1,32}; a retried invocation of one request gets the same certificate."""
    return hashlib.sha256(request_id.encode()).hexdigest()[:32]


def validation_records(certificate: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The CNAMEs to write, or None while ACM has not published them all yet."""
    options = certificate.get("DomainValidationOptions") or []
    if not options or any("ResourceRecord" not in o for o in options):
        return None
    unique = {o["ResourceRecord"]["Name"]: o["ResourceRecord"] for o in options}
    return list(unique.values())


def timeout_reason(domain: str, zone: str, waited_seconds: float) -> str:
    return (
        f"certificate for {domain} not validated after {int(waited_seconds // 60)} minutes: "
        f"is hosted zone {zone} authoritative for the domain?"
    )


# ---------------------------------------------------------------- AWS calls
def acm_client() -> Any:
    return boto3.client("acm", region_name=CERTIFICATE_REGION)


def zone_name(route53: Any, zone: str) -> str:
    try:
        return str(route53.get_hosted_zone(Id=zone)["HostedZone"]["Name"])
    except ClientError as error:
        if error.response["Error"]["Code"] == "NoSuchHostedZone":
            raise ValueError(f"hosted zone {zone} does not exist") from error
        raise


def request_certificate(acm: Any, domain: str, sans: list[str], request_id: str, stack_id: str) -> str:
    arguments: dict[str, Any] = {
        "DomainName": domain,
        "ValidationMethod": "DNS",
        "IdempotencyToken": idempotency_token(request_id),
        "Tags": [
            {"Key": "Name", "Value": domain},
            {"Key": "StackId", "Value": stack_id[:256]},
        ],
    }
    if sans:
        arguments["SubjectAlternativeNames"] = [domain, *sans]
    arn = str(acm.request_certificate(**arguments)["CertificateArn"])
    logger.info("Requested certificate", extra={"arn": arn, "domain": domain})
    return arn


def describe(acm: Any, arn: str) -> dict[str, Any]:
    return dict(acm.describe_certificate(CertificateArn=arn)["Certificate"])


def upsert_records(route53: Any, zone: str, records: list[dict[str, str]]) -> None:
    changes = [
        {
            "Action": "UPSERT",
            "ResourceRecordSet": {
                "Name": r["Name"],
                "Type": r["Type"],
                "TTL": 300,
                "ResourceRecords": [{"Value": r["Value"]}],
            },
        }
        for r in records
    ]
    route53.change_resource_record_sets(
        HostedZoneId=zone, ChangeBatch={"Comment": "ACM validation", "Changes": changes}
    )
    logger.info(
        "Upserted validation records",
        extra={"zone": zone, "names": [r["Name"] for r in records]},
    )


def reinvoke(function_arn: str, event: Mapping[str, Any]) -> None:
    boto3.client("lambda").invoke(
        FunctionName=function_arn,
        InvocationType="Event",
        Payload=json.dumps(event).encode(),
    )


def delete_certificate(acm: Any, arn: str, context: LambdaContext) -> None:
    # The validation CNAME stays: it is the same for every certificate of the
    # domain in this account, and other certificates (renewals too) rely on it.
    while True:
        try:
            acm.delete_certificate(CertificateArn=arn)
            return
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "ResourceNotFoundException":
                return
            # A distribution moving to the new certificate releases the old one late.
            if code != "ResourceInUseException" or context.get_remaining_time_in_millis() < RESERVE_MS:
                raise
            logger.info("Certificate still in use, retrying", extra={"arn": arn})
            time.sleep(POLL_SECONDS * 3)


# ---------------------------------------------------------------- the wait
def provide(event: dict[str, Any], context: LambdaContext) -> tuple[str, str, str] | None:
    """Create or replace the certificate and wait for it.

    Returns (status, reason, arn), or None when a later invocation takes over."""
    properties = event.get("ResourceProperties") or {}
    domain, sans, zone = parse_properties(properties)
    acm, route53 = acm_client(), boto3.client("route53")
    arn = str(event.get("CertificateArn") or "")
    started = float(event.get("CertificateStarted") or time.time())
    if not arn:
        outside = names_outside_zone([domain, *sans], zone_name(route53, zone))
        if outside:
            raise ValueError(f"{', '.join(outside)} not in hosted zone {zone}")
        arn = request_certificate(acm, domain, sans, event["RequestId"], event["StackId"])
        records = None
        while records is None:  # ACM publishes the records within seconds
            records = validation_records(describe(acm, arn))
            if records is None:
                if context.get_remaining_time_in_millis() < RESERVE_MS:
                    return (
                        "FAILED",
                        f"ACM published no validation records for {domain}",
                        arn,
                    )
                time.sleep(POLL_SECONDS / 5)
        upsert_records(route53, zone, records)
    while True:
        certificate = describe(acm, arn)
        status = certificate.get("Status", "")
        if status == "ISSUED":
            return "SUCCESS", "", arn
        if status in FINAL_FAILURES:
            return (
                "FAILED",
                f"certificate for {domain} is {status}: {certificate.get('FailureReason', '')}",
                arn,
            )
        if context.get_remaining_time_in_millis() < RESERVE_MS:
            waited = time.time() - started
            if waited >= WAIT_LIMIT_SECONDS:
                return "FAILED", timeout_reason(domain, zone, waited), arn
            attempt = int(event.get("CertificateAttempt") or 0) + 1
            follow_up = {
                **event,
                "CertificateArn": arn,
                "CertificateStarted": started,
                "CertificateAttempt": attempt,
            }
            reinvoke(context.invoked_function_arn, follow_up)
            logger.info("Still pending, re-invoked", extra={"arn": arn, "attempt": attempt})
            return None
        time.sleep(POLL_SECONDS)


def keep(event: dict[str, Any]) -> tuple[str, str, str]:
    """Update without a name change: same certificate; records into the (maybe new) zone."""
    arn = event["PhysicalResourceId"]
    _, _, zone = parse_properties(event["ResourceProperties"])
    records = validation_records(describe(acm_client(), arn))
    if records:
        upsert_records(boto3.client("route53"), zone, records)
    return "SUCCESS", "", arn


# ---------------------------------------------------------------- CloudFormation
def answer(status: str, reason: str, physical_id: str) -> Answer:
    """GetAtt Arn: the certificate, once issued."""
    issued = status == "SUCCESS" and CERTIFICATE_ARN.match(physical_id)
    return Answer(physical_id, {"Arn": physical_id} if issued else {}, status, reason)


def certify(
    event: CloudFormationCustomResourceEvent, physical_id: str, context: LambdaContext
) -> Answer | None:
    raw_event = event.raw_event
    kind = event.request_type
    if kind == "Delete":
        if CERTIFICATE_ARN.match(physical_id):
            delete_certificate(acm_client(), physical_id, context)
        result: tuple[str, str, str] | None = ("SUCCESS", "", physical_id)
    elif (
        kind == "Update"
        and "CertificateArn" not in raw_event
        and CERTIFICATE_ARN.match(physical_id)
        and not names_changed(event.resource_properties, event.old_resource_properties)
    ):
        result = keep(raw_event)
    else:
        result = provide(raw_event, context)  # Create, or Update to new names: new id
    return None if result is None else answer(*result)


@logger.inject_lambda_context
def lambda_handler(raw_event: dict[str, Any], context: LambdaContext) -> None:
    # Until a certificate exists, the id says so; a Delete of it does nothing.
    physical_id = raw_event.get("PhysicalResourceId") or f"no-certificate-{raw_event.get('RequestId', '')}"
    # A failure once a certificate was requested names it: the Delete that follows removes it.
    failed_id = str(raw_event.get("CertificateArn") or "") or physical_id
    handle(raw_event, context, lambda event: certify(event, physical_id, context), logger, failed_id)
