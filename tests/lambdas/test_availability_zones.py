"""Custom::AvailabilityZones: the subnets' zones avoid excluded AZ ids and never move.

moto knows each region's zones with real-looking ids (us-east-1: a=use1-az6,
b=use1-az1, c=use1-az2, d=use1-az4, e=use1-az3, f=use1-az5) and applies the state and
zone-type filters; the expectations below are read from moto, not copied from it.

A Create adopts the zones of the stack's existing subnets (a stack from an earlier
template, updated): moto keeps the aws:cloudformation:* tags a test puts on subnets and
filters describe_subnets by them, as EC2 does for the tags CloudFormation puts there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from lambdas import availability_zones
from tests.lambdas.conftest import STACK_ID

# Where CloudFront documents that VPC origins do not work.
CLOUDFRONT_VPC_ORIGIN_EXCLUDED = ["use1-az3", "usw1-az2", "cac1-az3", "apne1-az3"]


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield boto3.client("ec2")


def zone_ids(ec2: Any) -> dict[str, str]:
    """Zone name -> zone id, as the region reports them."""
    return {z["ZoneName"]: z["ZoneId"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}


def expected_data(ec2: Any, names: list[str]) -> dict[str, str]:
    ids = zone_ids(ec2)
    data = {f"Zone{i}": name for i, name in enumerate(names, start=1)}
    data.update({f"ZoneId{i}": ids[name] for i, name in enumerate(names, start=1)})
    return data


def zone(name: str, zone_id: str, **extra: str) -> dict[str, str]:
    return {
        "ZoneName": name,
        "ZoneId": zone_id,
        "State": "available",
        "ZoneType": "availability-zone",
        **extra,
    }


EU = [zone("eu-central-1c", "euc1-az3"), zone("eu-central-1a", "euc1-az2"), zone("eu-central-1b", "euc1-az1")]
OTHER_STACK_ID = STACK_ID.replace("stack/mastodon/0f6a6c10", "stack/other/9e9e9e9e")


def existing_subnets(ec2: Any, stack_id: str, subnets: dict[str, str]) -> None:
    """Subnets as CloudFormation leaves them: logical id -> zone name, tagged with the stack."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    for number, (logical_id, name) in enumerate(subnets.items()):
        tags = [
            {"Key": "aws:cloudformation:stack-id", "Value": stack_id},
            {"Key": "aws:cloudformation:logical-id", "Value": logical_id},
            {"Key": "aws:cloudformation:stack-name", "Value": stack_id.split("/")[1]},
        ]
        ec2.create_subnet(
            VpcId=vpc,
            CidrBlock=f"10.0.{number}.0/24",
            AvailabilityZone=name,
            TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}],
        )


def warnings(logs: Any) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "WARNING"]


def subnet(logical_id: str | None, name: str, zone_id: str, subnet_id: str = "subnet-1") -> dict[str, Any]:
    tags = [{"Key": "aws:cloudformation:stack-id", "Value": STACK_ID}]
    if logical_id:
        tags.append({"Key": "aws:cloudformation:logical-id", "Value": logical_id})
    return {"SubnetId": subnet_id, "AvailabilityZone": name, "AvailabilityZoneId": zone_id, "Tags": tags}


# ---------------------------------------------------------------- the choice itself
def test_zones_are_taken_in_name_order_not_in_the_order_aws_lists_them() -> None:
    chosen = availability_zones.choose(EU, 2, (), "eu-central-1")
    assert [z["ZoneName"] for z in chosen] == ["eu-central-1a", "eu-central-1b"]


def test_an_excluded_zone_id_is_skipped_and_the_next_zone_by_name_taken() -> None:
    chosen = availability_zones.choose(EU, 2, ("euc1-az1",), "eu-central-1")
    assert [z["ZoneName"] for z in chosen] == ["eu-central-1a", "eu-central-1c"]


def test_local_wavelength_and_impaired_zones_are_never_chosen() -> None:
    zones = [
        zone("us-west-2-lax-1a", "usw2-lax1-az1", ZoneType="local-zone"),
        zone("us-west-2-wl1-las-wlz-1", "usw2-wl1-las-wlz1", ZoneType="wavelength-zone"),
        zone("us-west-2a", "usw2-az2", State="impaired"),
        zone("us-west-2b", "usw2-az1"),
        zone("us-west-2c", "usw2-az3"),
    ]
    chosen = availability_zones.choose(zones, 2, (), "us-west-2")
    assert [z["ZoneName"] for z in chosen] == ["us-west-2b", "us-west-2c"]


def test_too_few_zones_left_names_the_region_the_count_and_what_was_excluded() -> None:
    with pytest.raises(ValueError) as raised:
        availability_zones.choose(EU, 3, ("euc1-az1", "use1-az3"), "eu-central-1")
    assert str(raised.value) == (
        "eu-central-1 has 3 available zones; excluding euc1-az1 (eu-central-1b) leaves 2, fewer than Count 3"
        "; LoadBalancerScheme=internet-facing excludes no zone"
    )


def test_the_data_numbers_names_and_ids_from_one_and_all_are_strings() -> None:
    chosen = availability_zones.choose(EU, 3, (), "eu-central-1")
    assert availability_zones.as_data(chosen) == {
        "Zone1": "eu-central-1a",
        "Zone2": "eu-central-1b",
        "Zone3": "eu-central-1c",
        "ZoneId1": "euc1-az2",
        "ZoneId2": "euc1-az1",
        "ZoneId3": "euc1-az3",
    }
    assert availability_zones.physical_id_of(chosen) == "eu-central-1a,eu-central-1b,eu-central-1c"


# ---------------------------------------------------------------- adopting existing subnets' zones
def test_existing_subnets_are_known_by_their_logical_id_tag() -> None:
    found = availability_zones.zones_by_logical_id(
        [
            subnet("PublicSubnetA", "eu-central-1c", "euc1-az3"),
            subnet("DataSubnetA", "eu-central-1c", "euc1-az3"),
            subnet(None, "eu-central-1a", "euc1-az2"),  # not made by CloudFormation: no logical id
            {"SubnetId": "subnet-9", "AvailabilityZone": "eu-central-1b", "AvailabilityZoneId": "euc1-az1"},
        ]
    )
    assert found == {
        "PublicSubnetA": {"ZoneName": "eu-central-1c", "ZoneId": "euc1-az3"},
        "DataSubnetA": {"ZoneName": "eu-central-1c", "ZoneId": "euc1-az3"},
    }


def test_two_subnets_under_one_logical_id_in_different_zones_are_not_guessed_between() -> None:
    with pytest.raises(ValueError, match=r"several subnets PublicSubnetA in different zones") as raised:
        availability_zones.zones_by_logical_id(
            [
                subnet("PublicSubnetA", "eu-central-1c", "euc1-az3", "subnet-old"),
                subnet("PublicSubnetA", "eu-central-1a", "euc1-az2", "subnet-new"),
            ]
        )
    assert "subnet-old in eu-central-1c" in str(raised.value)
    assert "subnet-new in eu-central-1a" in str(raised.value)


FOUND = {
    "PublicSubnetA": {"ZoneName": "eu-central-1c", "ZoneId": "euc1-az3"},
    "PublicSubnetB": {"ZoneName": "eu-central-1a", "ZoneId": "euc1-az2"},
    "DataSubnetA": {"ZoneName": "eu-central-1c", "ZoneId": "euc1-az3"},
}


@pytest.mark.parametrize(
    ("case", "logical_ids", "adopted"),
    [
        (
            "in list order, not by name",
            ["PublicSubnetA", "PublicSubnetB"],
            ["eu-central-1c", "eu-central-1a"],
        ),
        ("the other order", ["PublicSubnetB", "PublicSubnetA"], ["eu-central-1a", "eu-central-1c"]),
        (
            "a zone once",
            ["PublicSubnetA", "DataSubnetA", "PublicSubnetB"],
            ["eu-central-1c", "eu-central-1a"],
        ),
        ("missing ones skipped", ["PublicSubnetC", "PublicSubnetB"], ["eu-central-1a"]),
        ("none found: a new stack", ["PublicSubnetC"], []),
        ("none asked", [], []),
    ],
)
def test_the_listed_subnets_zones_are_adopted(case: str, logical_ids: list[str], adopted: list[str]) -> None:
    assert [z["ZoneName"] for z in availability_zones.adopt(FOUND, logical_ids)] == adopted


@pytest.mark.parametrize(
    ("case", "adopted", "count", "excluded", "chosen"),
    [
        ("nothing adopted: today's choice", [], 2, (), ["eu-central-1a", "eu-central-1b"]),
        (
            "adopted first, in their order",
            ["eu-central-1c", "eu-central-1b"],
            2,
            (),
            ["eu-central-1c", "eu-central-1b"],
        ),
        (
            "filled up by name, skipping the adopted",
            ["eu-central-1a"],
            2,
            (),
            ["eu-central-1a", "eu-central-1b"],
        ),
        (
            "filled up after an adopted later zone",
            ["eu-central-1c"],
            3,
            (),
            ["eu-central-1c", "eu-central-1a", "eu-central-1b"],
        ),
        (
            "filling skips excluded ids",
            ["eu-central-1c"],
            2,
            ("euc1-az2",),
            ["eu-central-1c", "eu-central-1b"],
        ),
        (
            "an adopted zone is kept though excluded",
            ["eu-central-1b"],
            2,
            ("euc1-az1",),
            ["eu-central-1b", "eu-central-1a"],
        ),
        (
            "more adopted than Count: the first Count",
            ["eu-central-1c", "eu-central-1b", "eu-central-1a"],
            2,
            (),
            ["eu-central-1c", "eu-central-1b"],
        ),
    ],
)
def test_adopted_zones_come_first_and_the_choice_rule_fills_up(
    case: str, adopted: list[str], count: int, excluded: tuple[str, ...], chosen: list[str]
) -> None:
    by_name = {z["ZoneName"]: z for z in EU}
    result = availability_zones.choose(EU, count, excluded, "eu-central-1", [by_name[n] for n in adopted])
    assert [z["ZoneName"] for z in result] == chosen


def test_an_adopted_zone_that_is_unavailable_now_is_still_kept() -> None:
    impaired = zone("eu-central-1d", "euc1-az4", State="impaired")
    adopted = [{"ZoneName": "eu-central-1d", "ZoneId": "euc1-az4"}]
    result = availability_zones.choose([*EU, impaired], 2, (), "eu-central-1", adopted)
    assert [z["ZoneName"] for z in result] == ["eu-central-1d", "eu-central-1a"]


def test_too_few_zones_to_fill_up_names_the_adopted_zones() -> None:
    adopted = [{"ZoneName": "eu-central-1c", "ZoneId": "euc1-az3"}]
    with pytest.raises(ValueError) as raised:
        availability_zones.choose(EU, 3, ("euc1-az1",), "eu-central-1", adopted)
    assert str(raised.value) == (
        "eu-central-1 has 3 available zones; the stack's subnets use eu-central-1c; excluding "
        "euc1-az1 (eu-central-1b) leaves 1, fewer than the 2 more needed for Count 3"
        "; LoadBalancerScheme=internet-facing excludes no zone"
    )


@pytest.mark.parametrize(
    ("case", "physical_id", "count", "kept"),
    [
        (
            "the same zones, in their order",
            "eu-central-1c,eu-central-1a",
            2,
            ["eu-central-1c", "eu-central-1a"],
        ),
        ("count grew", "eu-central-1a,eu-central-1b", 3, None),
        ("count shrank", "eu-central-1a,eu-central-1b,eu-central-1c", 2, None),
        ("a zone twice", "eu-central-1a,eu-central-1a", 2, None),
        ("a failed create's id", "no-zones-1111", 2, None),
        ("no id", "", 2, None),
    ],
)
def test_existing_zones_are_kept_while_count_is_unchanged(
    case: str, physical_id: str, count: int, kept: list[str] | None
) -> None:
    found = availability_zones.keep(physical_id, count, EU)
    assert (None if found is None else [z["ZoneName"] for z in found]) == kept


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize(
    ("case", "properties", "mentioned"),
    [
        ("Count missing", {}, "Count"),
        ("Count empty", {"Count": ""}, "Count"),
        ("Count a word", {"Count": "three"}, "Count"),
        ("Count a decimal", {"Count": "3.0"}, "Count"),
        ("Count negative", {"Count": "-2"}, "Count"),
        ("Count padded", {"Count": " 3"}, "Count"),
        ("Count a float", {"Count": 3.0}, "Count"),
        ("Count a boolean", {"Count": True}, "Count"),
        ("Count a list", {"Count": ["3"]}, "Count"),
        ("Count one", {"Count": "1"}, "from 2 to 6, not 1"),
        ("Count seven", {"Count": 7}, "from 2 to 6, not 7"),
        ("Count zero", {"Count": "0"}, "from 2 to 6, not 0"),
        ("ids as a string", {"Count": "2", "ExcludedZoneIds": "use1-az3"}, "ExcludedZoneIds must be a list"),
        (
            "ids as a map",
            {"Count": "2", "ExcludedZoneIds": {"use1-az3": True}},
            "ExcludedZoneIds must be a list",
        ),
        ("a zone name, not an id", {"Count": "2", "ExcludedZoneIds": ["us-east-1e"]}, "'us-east-1e'"),
        ("an empty id", {"Count": "2", "ExcludedZoneIds": ["use1-az3", ""]}, "['']"),
        ("a number", {"Count": "2", "ExcludedZoneIds": [3]}, "[3]"),
        ("upper case", {"Count": "2", "ExcludedZoneIds": ["USE1-AZ3"]}, "'USE1-AZ3'"),
        ("no region digit", {"Count": "2", "ExcludedZoneIds": ["use-az3"]}, "'use-az3'"),
        ("no zone number", {"Count": "2", "ExcludedZoneIds": ["use1-az"]}, "'use1-az'"),
        ("a local zone id", {"Count": "2", "ExcludedZoneIds": ["usw2-lax1-az1"]}, "'usw2-lax1-az1'"),
        (
            "a comma list in one",
            {"Count": "2", "ExcludedZoneIds": ["use1-az3,usw1-az2"]},
            "use1-az3,usw1-az2",
        ),
    ],
)
def test_bad_properties_are_refused_with_a_reason(
    case: str, properties: dict[str, Any], mentioned: str
) -> None:
    with pytest.raises(ValueError, match=r"Count|ExcludedZoneIds") as raised:
        availability_zones.parse_properties(properties)
    assert mentioned in str(raised.value)


@pytest.mark.parametrize(
    ("properties", "parsed"),
    [
        ({"Count": "2"}, (2, ())),
        ({"Count": 6, "ExcludedZoneIds": []}, (6, ())),
        (
            {"Count": "3", "ExcludedZoneIds": CLOUDFRONT_VPC_ORIGIN_EXCLUDED},
            (3, ("apne1-az3", "cac1-az3", "use1-az3", "usw1-az2")),
        ),
        (
            {"Count": "2", "ExcludedZoneIds": ["euc1-az2", "usw2-az1", "apne1-az4", "usgw1-az1", "euc1-az2"]},
            (2, ("apne1-az4", "euc1-az2", "usgw1-az1", "usw2-az1")),
        ),
    ],
)
def test_good_properties_parse(properties: dict[str, Any], parsed: tuple[int, tuple[str, ...]]) -> None:
    assert availability_zones.parse_properties(properties) == parsed


@pytest.mark.parametrize(
    ("case", "properties", "parsed"),
    [
        ("absent: adopt nothing", {"Count": "2"}, ()),
        ("empty: adopt nothing", {"Count": "2", "SubnetLogicalIds": []}, ()),
        ("one", {"SubnetLogicalIds": ["PublicSubnetA"]}, ("PublicSubnetA",)),
        (
            "order kept",
            {"SubnetLogicalIds": ["PublicSubnetB", "PublicSubnetA", "Subnet3"]},
            ("PublicSubnetB", "PublicSubnetA", "Subnet3"),
        ),
        ("six", {"SubnetLogicalIds": [f"S{i}" for i in range(6)]}, tuple(f"S{i}" for i in range(6))),
        ("255 characters", {"SubnetLogicalIds": ["A" * 255]}, ("A" * 255,)),
    ],
)
def test_good_subnet_logical_ids_parse(
    case: str, properties: dict[str, Any], parsed: tuple[str, ...]
) -> None:
    assert availability_zones.parse_subnet_logical_ids(properties) == parsed


@pytest.mark.parametrize(
    ("case", "value", "mentioned"),
    [
        ("a string", "PublicSubnetA", "must be a list of 1 to 6 logical IDs"),
        ("a comma list", "PublicSubnetA,PublicSubnetB", "must be a list of 1 to 6 logical IDs"),
        ("a map", {"PublicSubnetA": "us-east-1a"}, "must be a list of 1 to 6 logical IDs"),
        ("seven", [f"S{i}" for i in range(7)], "must be a list of 1 to 6 logical IDs"),
        ("a hyphen", ["Public-Subnet-A"], "'Public-Subnet-A'"),
        ("a space", ["PublicSubnetA", "Public SubnetB"], "'Public SubnetB'"),
        ("empty", [""], "['']"),
        ("a subnet id, not a logical id", ["subnet-0123abcd"], "'subnet-0123abcd'"),
        ("256 characters", ["A" * 256], "not logical IDs"),
        ("a number", [3], "[3]"),
        ("a nested list", [["PublicSubnetA"]], "not logical IDs"),
    ],
)
def test_bad_subnet_logical_ids_are_refused_with_a_reason(case: str, value: Any, mentioned: str) -> None:
    with pytest.raises(ValueError, match=r"^property SubnetLogicalIds ") as raised:
        availability_zones.parse_subnet_logical_ids({"Count": "2", "SubnetLogicalIds": value})
    assert mentioned in str(raised.value)


# ---------------------------------------------------------------- the function against moto
def test_create_in_us_east_1_avoids_use1_az3_and_answers_names_and_ids(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    event = cfn_event("Create", {"Count": "5", "ExcludedZoneIds": CLOUDFRONT_VPC_ORIGIN_EXCLUDED})
    availability_zones.lambda_handler(event, context)

    names = sorted(n for n, i in zone_ids(ec2).items() if i != "use1-az3")
    assert len(names) == 5
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == ",".join(names)
    assert answers.last["Data"] == expected_data(ec2, names)
    assert "use1-az3" not in answers.last["Data"].values()
    assert len(answers.bodies) == 1


def test_create_without_exclusions_takes_the_first_zones_by_name(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    availability_zones.lambda_handler(cfn_event("Create", {"Count": 2}), context)
    assert answers.last["PhysicalResourceId"] == "us-east-1a,us-east-1b"
    assert answers.last["Data"] == expected_data(ec2, ["us-east-1a", "us-east-1b"])


ADOPT = {
    "Count": "2",
    "ExcludedZoneIds": CLOUDFRONT_VPC_ORIGIN_EXCLUDED,
    "SubnetLogicalIds": ["PublicSubnetA", "PublicSubnetB"],
}


def test_create_in_a_stack_from_the_old_template_adopts_its_subnets_zones_in_order(
    ec2: Any, answers: Any, cfn_event: Any, context: Any, capture_logs: Any
) -> None:
    # The old template's Select(n, GetAZs("")) zones; us-east-1e is use1-az3, excluded.
    assert zone_ids(ec2)["us-east-1e"] == "use1-az3"
    existing_subnets(ec2, STACK_ID, {"PublicSubnetA": "us-east-1e", "PublicSubnetB": "us-east-1c"})
    logs = capture_logs(availability_zones)
    availability_zones.lambda_handler(cfn_event("Create", ADOPT), context)

    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == "us-east-1e,us-east-1c"
    assert answers.last["Data"] == expected_data(ec2, ["us-east-1e", "us-east-1c"])
    warned = warnings(logs)
    assert [w["zone_ids"] for w in warned] == [["use1-az3"]]
    assert "would replace the subnets" in warned[0]["message"]


def test_subnets_of_another_stack_are_not_adopted(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    existing_subnets(ec2, OTHER_STACK_ID, {"PublicSubnetA": "us-east-1d", "PublicSubnetB": "us-east-1f"})
    availability_zones.lambda_handler(cfn_event("Create", ADOPT), context)
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == "us-east-1a,us-east-1b"


def test_one_existing_subnet_is_adopted_and_the_first_other_zone_added(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    existing_subnets(ec2, STACK_ID, {"PublicSubnetB": "us-east-1c"})
    existing_subnets(ec2, OTHER_STACK_ID, {"PublicSubnetA": "us-east-1d"})
    availability_zones.lambda_handler(cfn_event("Create", ADOPT), context)
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == "us-east-1c,us-east-1a"
    assert answers.last["Data"] == expected_data(ec2, ["us-east-1c", "us-east-1a"])


def test_only_the_listed_subnets_are_adopted(ec2: Any, answers: Any, cfn_event: Any, context: Any) -> None:
    existing_subnets(ec2, STACK_ID, {"DataSubnetA": "us-east-1f", "PublicSubnetA": "us-east-1d"})
    availability_zones.lambda_handler(cfn_event("Create", ADOPT), context)
    assert answers.last["PhysicalResourceId"] == "us-east-1d,us-east-1a"


def test_more_adopted_zones_than_count_keeps_the_first_and_warns(
    ec2: Any, answers: Any, cfn_event: Any, context: Any, capture_logs: Any
) -> None:
    existing_subnets(
        ec2,
        STACK_ID,
        {"PublicSubnetA": "us-east-1f", "PublicSubnetB": "us-east-1d", "PublicSubnetC": "us-east-1a"},
    )
    logs = capture_logs(availability_zones)
    three = {**ADOPT, "SubnetLogicalIds": ["PublicSubnetA", "PublicSubnetB", "PublicSubnetC"]}
    availability_zones.lambda_handler(cfn_event("Create", three), context)
    assert answers.last["PhysicalResourceId"] == "us-east-1f,us-east-1d"
    assert [w.get("zones") for w in warnings(logs)] == [["us-east-1a"]]


@pytest.mark.parametrize(
    "properties",
    [
        {"Count": "2", "ExcludedZoneIds": CLOUDFRONT_VPC_ORIGIN_EXCLUDED},
        {"Count": "2", "ExcludedZoneIds": CLOUDFRONT_VPC_ORIGIN_EXCLUDED, "SubnetLogicalIds": []},
        ADOPT,
    ],
    ids=["absent", "empty", "none found"],
)
def test_a_new_stack_gets_todays_choice(
    properties: dict[str, Any], ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    availability_zones.lambda_handler(cfn_event("Create", properties), context)
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == "us-east-1a,us-east-1b"
    assert answers.last["Data"] == expected_data(ec2, ["us-east-1a", "us-east-1b"])


def test_without_subnet_logical_ids_no_subnets_are_looked_up(
    ec2: Any, answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability_zones, "stack_subnets", None)  # a call would raise
    availability_zones.lambda_handler(cfn_event("Create", {"Count": "2", "SubnetLogicalIds": []}), context)
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]


def test_the_stacks_subnets_are_asked_for_by_stack_id_on_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    class Paginator:
        def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
            asked.append(("paginate", kwargs))
            yield {"Subnets": [subnet("PublicSubnetA", "us-east-1c", "use1-az2", "subnet-1")]}
            yield {"Subnets": [subnet("PublicSubnetB", "us-east-1e", "use1-az3", "subnet-2")]}

    class Client:
        def get_paginator(self, name: str) -> Paginator:
            asked.append((name, {}))
            return Paginator()

    monkeypatch.setattr(availability_zones.boto3, "client", lambda service: Client())
    found = availability_zones.stack_subnets(STACK_ID)
    assert [s["SubnetId"] for s in found] == ["subnet-1", "subnet-2"]
    assert asked == [
        ("describe_subnets", {}),
        ("paginate", {"Filters": [{"Name": "tag:aws:cloudformation:stack-id", "Values": [STACK_ID]}]}),
    ]


def test_bad_subnet_logical_ids_fail_the_create_with_the_reason(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability_zones.boto3, "client", None)
    availability_zones.lambda_handler(
        cfn_event("Create", {"Count": "2", "SubnetLogicalIds": ["PublicSubnetA", "Public-Subnet-B"]}), context
    )
    assert answers.last["Status"] == "FAILED"
    assert answers.last["Reason"] == (
        "property SubnetLogicalIds holds ['Public-Subnet-B']: not logical IDs (1 to 255 letters and digits)"
    )
    assert answers.last["PhysicalResourceId"].startswith("no-zones-")


def test_a_denied_subnet_lookup_fails_rather_than_moving_the_subnets(
    ec2: Any, answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(stack_id: str) -> None:
        raise ClientError(
            {"Error": {"Code": "UnauthorizedOperation", "Message": "ec2:DescribeSubnets"}}, "DescribeSubnets"
        )

    monkeypatch.setattr(availability_zones, "stack_subnets", denied)
    availability_zones.lambda_handler(cfn_event("Create", ADOPT), context)
    assert answers.last["Status"] == "FAILED"
    assert "UnauthorizedOperation" in answers.last["Reason"]


@pytest.mark.parametrize(
    ("case", "old_count", "physical_id", "answered"),
    [
        ("the zones are kept", "2", "us-east-1d,us-east-1f", "us-east-1d,us-east-1f"),
        ("another Count chooses as today", "3", "us-east-1d,us-east-1e,us-east-1f", "us-east-1a,us-east-1b"),
    ],
)
def test_update_does_not_adopt(
    case: str,
    old_count: str,
    physical_id: str,
    answered: str,
    ec2: Any,
    answers: Any,
    cfn_event: Any,
    context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    existing_subnets(ec2, STACK_ID, {"PublicSubnetA": "us-east-1c", "PublicSubnetB": "us-east-1e"})
    monkeypatch.setattr(availability_zones, "stack_subnets", None)  # a call would raise
    event = cfn_event("Update", ADOPT, {**ADOPT, "Count": old_count}, physical_id=physical_id)
    availability_zones.lambda_handler(event, context)
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == answered


def test_delete_with_subnet_logical_ids_does_nothing(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability_zones.boto3, "client", None)
    event = cfn_event(
        "Delete", {**ADOPT, "SubnetLogicalIds": "not even a list"}, physical_id="us-east-1c,us-east-1e"
    )
    availability_zones.lambda_handler(event, context)
    assert answers.last["Status"] == "SUCCESS"
    assert answers.last["PhysicalResourceId"] == "us-east-1c,us-east-1e"


def test_update_keeps_the_zones_it_has_even_if_a_new_choice_would_differ(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    # A fresh choice would be us-east-1a,us-east-1b; and us-east-1e is now excluded.
    kept = ["us-east-1d", "us-east-1e"]
    event = cfn_event(
        "Update", {"Count": "2", "ExcludedZoneIds": ["use1-az3"]}, {"Count": "2"}, physical_id=",".join(kept)
    )
    availability_zones.lambda_handler(event, context)

    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == ",".join(kept)
    assert answers.last["Data"] == expected_data(ec2, kept)


def test_update_with_another_count_chooses_again(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    event = cfn_event(
        "Update",
        {"Count": "3", "ExcludedZoneIds": ["use1-az3"]},
        {"Count": "2", "ExcludedZoneIds": ["use1-az3"]},
        physical_id="us-east-1d,us-east-1f",
    )
    availability_zones.lambda_handler(event, context)

    names = sorted(n for n, i in zone_ids(ec2).items() if i != "use1-az3")[:3]
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == ",".join(names)
    assert answers.last["Data"] == expected_data(ec2, names)


def test_a_kept_zone_that_is_unavailable_is_not_replaced_by_another() -> None:
    with pytest.raises(ValueError, match=r"eu-central-1d are not available now; they are kept"):
        availability_zones.keep("eu-central-1a,eu-central-1d", 2, EU)


def test_update_whose_zone_is_unavailable_fails_rather_than_moving_the_subnets(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    event = cfn_event("Update", {"Count": "2"}, {"Count": "2"}, physical_id="us-east-1a,us-east-1z")
    availability_zones.lambda_handler(event, context)
    assert answers.last["Status"] == "FAILED"
    assert answers.last["PhysicalResourceId"] == "us-east-1a,us-east-1z"
    assert "us-east-1z are not available now" in answers.last["Reason"]


def test_delete_does_nothing_and_succeeds(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability_zones.boto3, "client", None)  # any AWS call would raise
    availability_zones.lambda_handler(
        cfn_event("Delete", {"Count": "2"}, physical_id="us-east-1a,us-east-1b"), context
    )
    assert answers.last == {
        **answers.last,
        "Status": "SUCCESS",
        "PhysicalResourceId": "us-east-1a,us-east-1b",
        "Data": {},
    }


def test_delete_after_a_failed_create_succeeds_too(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability_zones.boto3, "client", None)
    availability_zones.lambda_handler(
        cfn_event("Delete", {"Count": "nine"}, physical_id="no-zones-1"), context
    )
    assert answers.last["Status"] == "SUCCESS"


# ---------------------------------------------------------------- failures answer FAILED
def test_too_few_zones_after_exclusion_fails_with_the_reason(
    ec2: Any, answers: Any, cfn_event: Any, context: Any
) -> None:
    event = cfn_event("Create", {"Count": "6", "ExcludedZoneIds": CLOUDFRONT_VPC_ORIGIN_EXCLUDED})
    availability_zones.lambda_handler(event, context)
    name = next(n for n, i in zone_ids(ec2).items() if i == "use1-az3")
    assert answers.last["Status"] == "FAILED"
    assert answers.last["Reason"] == (
        f"us-east-1 has 6 available zones; excluding use1-az3 ({name}) leaves 5, fewer than Count 6"
        "; LoadBalancerScheme=internet-facing excludes no zone"
    )
    assert answers.last["PhysicalResourceId"].startswith("no-zones-")


def test_a_region_with_two_zones_cannot_give_three(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-1")
    with mock_aws():
        availability_zones.lambda_handler(cfn_event("Create", {"Count": "3"}), context)
    assert answers.last["Status"] == "FAILED"
    assert "us-west-1 has 2 available zones" in answers.last["Reason"]
    assert "fewer than Count 3" in answers.last["Reason"]


def test_an_aws_error_fails_with_its_name_and_message(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Denied:
        def describe_availability_zones(self, **kwargs: Any) -> None:
            raise ClientError(
                {"Error": {"Code": "UnauthorizedOperation", "Message": "not allowed"}},
                "DescribeAvailabilityZones",
            )

    monkeypatch.setattr(availability_zones.boto3, "client", lambda service: Denied())
    availability_zones.lambda_handler(cfn_event("Create", {"Count": "2"}), context)
    assert answers.last["Status"] == "FAILED"
    assert answers.last["Reason"].startswith("ClientError: ")
    assert "UnauthorizedOperation" in answers.last["Reason"]


def test_bad_properties_on_update_fail_and_keep_the_physical_id(
    answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability_zones.boto3, "client", None)
    event = cfn_event("Update", {"Count": "8"}, {"Count": "2"}, physical_id="us-east-1a,us-east-1b")
    availability_zones.lambda_handler(event, context)
    assert answers.last["Status"] == "FAILED"
    assert answers.last["Reason"] == "property Count must be from 2 to 6, not 8"
    assert answers.last["PhysicalResourceId"] == "us-east-1a,us-east-1b"


def test_the_api_is_asked_for_available_availability_zones_only(
    ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[dict[str, Any]] = []
    real = boto3.client

    def client(service: str) -> Any:
        made = real(service)
        original = made.describe_availability_zones

        def describe(**kwargs: Any) -> Any:
            asked.append(kwargs)
            return original(**kwargs)

        made.describe_availability_zones = describe
        return made

    monkeypatch.setattr(availability_zones.boto3, "client", client)
    zones, region = availability_zones.available_zones()
    assert region == "us-east-1" and len(zones) == 6
    assert asked == [
        {
            "Filters": [
                {"Name": "state", "Values": ["available"]},
                {"Name": "zone-type", "Values": ["availability-zone"]},
            ]
        }
    ]
