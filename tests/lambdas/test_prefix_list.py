"""Custom::ManagedPrefixList: the id of an AWS-managed prefix list in the stack's region.

moto knows the AWS-managed lists (S3, DynamoDB, CloudFront origin-facing, ...)
in every region, owned by "AWS" and, as AWS does, without MaxEntries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas import prefix_list

CLOUDFRONT = "com.amazonaws.global.cloudfront.origin-facing"


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    with mock_aws():
        yield boto3.client("ec2")


def aws_list_id(ec2: Any, name: str) -> str:
    found = ec2.describe_managed_prefix_lists(Filters=[{"Name": "prefix-list-name", "Values": [name]}])
    return str(found["PrefixLists"][0]["PrefixListId"])


def test_the_cloudfront_origin_facing_list_is_found_in_the_stacks_region(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    prefix_list.lambda_handler(cfn_event("Create", {"PrefixListName": CLOUDFRONT}), context)

    expected = aws_list_id(ec2, CLOUDFRONT)
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == expected
    assert answers.last["Data"]["Id"] == expected
    assert "MaxEntries" in answers.last["Data"]


def test_a_customer_list_with_the_same_name_is_not_taken_for_the_aws_one(
    ec2: Any,
) -> None:
    own = {
        "PrefixListId": "pl-own",
        "PrefixListName": CLOUDFRONT,
        "OwnerId": "123456789012",
        "MaxEntries": 5,
    }
    aws = {
        "PrefixListId": "pl-aws",
        "PrefixListName": CLOUDFRONT,
        "OwnerId": "AWS",
        "MaxEntries": 55,
    }
    assert prefix_list.choose([own, aws], CLOUDFRONT, "eu-west-3") == {
        "Id": "pl-aws",
        "MaxEntries": "55",
    }


def test_update_to_another_name_returns_the_other_list(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    old_id = aws_list_id(ec2, CLOUDFRONT)
    name = "com.amazonaws.eu-west-3.s3"
    event = cfn_event(
        "Update",
        {"PrefixListName": name},
        {"PrefixListName": CLOUDFRONT},
        physical_id=old_id,
    )
    prefix_list.lambda_handler(event, context)
    assert answers.last["PhysicalResourceId"] == aws_list_id(ec2, name) != old_id


@pytest.mark.parametrize(
    ("case", "name", "reason"),
    [
        (
            "unknown list",
            "com.amazonaws.global.nothing",
            "no AWS-managed prefix list named com.amazonaws.global.nothing in eu-west-3",
        ),
        ("missing name", "", "invalid PrefixListName"),
        ("junk", "a b", "invalid PrefixListName"),
    ],
)
def test_a_list_that_is_not_there_fails_with_a_clear_reason(
    ec2: Any,
    answers: Any,
    cfn_event: Any,
    context: Any,
    case: str,
    name: str,
    reason: str,
) -> None:
    prefix_list.lambda_handler(cfn_event("Create", {"PrefixListName": name}), context)
    assert answers.last["Status"] == "FAILED"
    assert answers.last["Reason"] == reason or reason in answers.last["Reason"]


def test_delete_does_nothing_and_succeeds(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefix_list.boto3, "client", None)  # any AWS call would raise
    prefix_list.lambda_handler(
        cfn_event("Delete", {"PrefixListName": CLOUDFRONT}, physical_id="pl-1"), context
    )
    assert answers.last == {
        **answers.last,
        "Status": "SUCCESS",
        "PhysicalResourceId": "pl-1",
    }
