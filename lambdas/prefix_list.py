"""Custom::ManagedPrefixList: the id of an AWS-managed prefix list, looked up by name.

CloudFormation has no lookup for AWS-managed prefix lists, and their ids differ
per region; the load balancer's security group admits only CloudFront's
origin-facing list ("com.amazonaws.global.cloudfront.origin-facing").
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Mapping
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import (
    CloudFormationCustomResourceEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()

NAME = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")


def parse_name(properties: Mapping[str, Any]) -> str:
    name = properties.get("PrefixListName") or ""
    if not isinstance(name, str) or not NAME.match(name.strip()):
        raise ValueError(f"invalid PrefixListName {name!r}")
    return name.strip()


def choose(prefix_lists: list[dict[str, Any]], name: str, region: str) -> dict[str, Any]:
    """The AWS-owned list of that name, as CloudFormation attributes."""
    found = [p for p in prefix_lists if p.get("PrefixListName") == name and p.get("OwnerId") == "AWS"]
    if not found:
        raise ValueError(f"no AWS-managed prefix list named {name} in {region}")
    # AWS-managed lists may carry no MaxEntries; a security group rule costs that many entries.
    return {
        "Id": found[0]["PrefixListId"],
        "MaxEntries": str(found[0].get("MaxEntries") or ""),
    }


def find_prefix_lists(name: str) -> tuple[list[dict[str, Any]], str]:
    ec2 = boto3.client("ec2")
    pages = ec2.get_paginator("describe_managed_prefix_lists").paginate(
        Filters=[{"Name": "prefix-list-name", "Values": [name]}]
    )
    return [p for page in pages for p in page["PrefixLists"]], ec2.meta.region_name


def send_response(
    event: Mapping[str, Any],
    status: str,
    reason: str,
    physical_id: str,
    data: Mapping[str, str] | None = None,
) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:1000],
            "PhysicalResourceId": physical_id,
            "StackId": event.get("StackId", ""),
            "RequestId": event.get("RequestId", ""),
            "LogicalResourceId": event.get("LogicalResourceId", ""),
            "Data": dict(data or {}),
        }
    ).encode()
    url = str(event["ResponseURL"])
    if not url.startswith("https://"):
        raise ValueError("ResponseURL is not an https URL")
    request = urllib.request.Request(  # noqa: S310 - https only, checked above
        url,
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - https only
        logger.info(
            "Answered CloudFormation",
            extra={"status": status, "http_status": response.status},
        )


@logger.inject_lambda_context
def lambda_handler(raw_event: dict[str, Any], context: LambdaContext) -> None:
    event = CloudFormationCustomResourceEvent(raw_event)
    physical_id = event.physical_resource_id or f"no-prefix-list-{raw_event.get('RequestId', '')}"
    try:
        if event.request_type not in ("Create", "Update", "Delete"):
            raise ValueError(f"unknown RequestType {event.request_type!r}")
        if event.request_type == "Delete":  # nothing was created
            send_response(raw_event, "SUCCESS", "", physical_id)
            return
        name = parse_name(event.resource_properties)
        lists, region = find_prefix_lists(name)
        data = choose(lists, name, region)
        send_response(raw_event, "SUCCESS", "", data["Id"], data)
    except Exception as error:
        logger.exception("Request failed")
        reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        send_response(raw_event, "FAILED", reason, physical_id)
