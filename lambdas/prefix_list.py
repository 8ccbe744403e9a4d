"""Custom::ManagedPrefixList: the id of an AWS-managed prefix list, looked up by name.

CloudFormation has no lookup for AWS-managed prefix lists, and their ids differ
per region; the load balancer's security group admits only CloudFront's
origin-facing list ("com.amazonaws.global.cloudfront.origin-facing").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import (
    CloudFormationCustomResourceEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.custom_resource import Answer, handle

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


def resolve(event: CloudFormationCustomResourceEvent, physical_id: str) -> Answer:
    if event.request_type == "Delete":  # nothing was created
        return Answer(physical_id)
    name = parse_name(event.resource_properties)
    lists, region = find_prefix_lists(name)
    data = choose(lists, name, region)
    return Answer(data["Id"], data)


@logger.inject_lambda_context
def lambda_handler(raw_event: dict[str, Any], context: LambdaContext) -> None:
    physical_id = raw_event.get("PhysicalResourceId") or f"no-prefix-list-{raw_event.get('RequestId', '')}"
    handle(raw_event, context, lambda event: resolve(event, physical_id), logger, physical_id)
