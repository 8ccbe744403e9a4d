"""Every custom-resource handler refuses a malformed event clearly and leaves AWS alone."""

from __future__ import annotations

from typing import Any

import pytest

from lambdas import (
    app_secrets,
    availability_zones,
    cloudfront_certificate,
    database_settings,
    initial_parameter,
    prefix_list,
)

HANDLERS = {"app_secrets": app_secrets, "availability_zones": availability_zones,
            "cloudfront_certificate": cloudfront_certificate, "database_settings": database_settings,
            "initial_parameter": initial_parameter, "prefix_list": prefix_list}

# handler, properties, what the reason must mention
CASES = [
    ("app_secrets", {}, "SecretId"),
    ("app_secrets", {"SecretId": ""}, "SecretId"),
    ("app_secrets", {"SecretId": ["not", "a", "string"]}, "SecretId"),
    ("availability_zones", {}, "Count"),
    ("availability_zones", {"Count": "eight"}, "Count"),
    ("availability_zones", {"Count": "2", "ExcludedZoneIds": "use1-az3"}, "ExcludedZoneIds"),
    ("availability_zones", {"Count": "2", "ExcludedZoneIds": ["us-east-1e"]}, "ExcludedZoneIds"),
    ("availability_zones", {"Count": "2", "SubnetLogicalIds": "PublicSubnetA"}, "SubnetLogicalIds"),
    ("availability_zones", {"Count": "2", "SubnetLogicalIds": ["Public-Subnet-A"]}, "SubnetLogicalIds"),
    ("cloudfront_certificate", {}, "DomainName"),
    ("cloudfront_certificate", {"DomainName": "social.example.com"}, "HostedZoneId"),
    ("cloudfront_certificate", {"DomainName": 42, "HostedZoneId": "Z123"}, "domain"),
    ("database_settings", {}, "DBInstanceIdentifier"),
    ("database_settings", {"DBInstanceIdentifier": "db-1", "DeletionProtection": True}, "DeletionProtection"),
    ("database_settings", {"DBInstanceIdentifier": "db-1", "DeletionProtection": "true",
                           "LogExports": ["audit"]}, "LogExports"),
    ("initial_parameter", {}, "Name"),
    ("initial_parameter", {"Name": "/mastodon/x/deployed-version", "Value": 4}, "Value"),
    ("prefix_list", {}, "PrefixListName"),
    ("prefix_list", {"PrefixListName": {"nested": True}}, "PrefixListName"),
]


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any AWS client a handler asks for is recorded, and fails the call."""
    asked: list[str] = []

    def client(service: str, *args: object, **kwargs: object) -> None:
        asked.append(service)
        raise AssertionError(f"a malformed event reached AWS ({service})")

    for module in HANDLERS.values():
        monkeypatch.setattr(module.boto3, "client", client)
    return asked


@pytest.mark.parametrize(("handler", "properties", "mentioned"), CASES,
                         ids=[f"{h}-{sorted(p)}-{i}" for i, (h, p, _) in enumerate(CASES)])
@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_missing_or_mistyped_properties_fail_with_a_reason_and_no_aws_call(
    handler: str, properties: dict[str, Any], mentioned: str, request_type: str,
    no_aws: list[str], answers: Any, cfn_event: Any, context: Any,
) -> None:
    old = properties if request_type == "Update" else None
    physical = "existing-id" if request_type == "Update" else None
    HANDLERS[handler].lambda_handler(cfn_event(request_type, properties, old, physical), context)
    assert answers.last["Status"] == "FAILED"
    assert mentioned.lower() in answers.last["Reason"].lower()
    assert no_aws == []


@pytest.mark.parametrize("handler", sorted(HANDLERS))
def test_an_unknown_request_type_fails_and_touches_nothing(
    handler: str, no_aws: list[str], answers: Any, cfn_event: Any, context: Any,
) -> None:
    event = cfn_event("Create", {"SecretId": "arn:x", "DomainName": "a.example.com",
                                 "HostedZoneId": "Z123", "PrefixListName": "com.amazonaws.x",
                                 "Name": "/mastodon/x/deployed-version", "Value": "v4.7.6",
                                 "Count": "2"})
    event["RequestType"] = "Replace"
    HANDLERS[handler].lambda_handler(event, context)
    assert answers.last["Status"] == "FAILED"
    assert "Replace" in answers.last["Reason"]
    assert no_aws == []
