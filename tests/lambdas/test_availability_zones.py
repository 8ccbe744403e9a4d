"""Custom::AvailabilityZones: the subnets' zones avoid excluded AZ ids and never move.

moto knows each region's zones with real-looking ids (us-east-1: a=use1-az6,
b=use1-az1, c=use1-az2, d=use1-az4, e=use1-az3, f=use1-az5) and applies the state and
zone-type filters; the expectations below are read from moto, not copied from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from lambdas import availability_zones

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
