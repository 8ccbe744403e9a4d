"""Custom::AvailabilityZones: the zones the stack's subnets use, chosen by AZ ID.

CloudFront VPC origins do not work in some AZ IDs (use1-az3, usw1-az2, cac1-az3,
apne1-az3). Fn::GetAZs gives zone names, which map to zone ids differently in each
account, so only a lookup in the account can leave those ids out. Subnets, and the
database's subnet group with them, are replaced when their zone moves: once chosen,
the zones stay for the stack's life unless Count changes.

Stacks from an earlier template put their subnets in Fn::GetAZs zones and get this
resource created by an update. With SubnetLogicalIds, a Create first adopts the zones
those existing subnets use (found by the tags CloudFormation puts on every subnet it
creates), so the update does not replace them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import (
    CloudFormationCustomResourceEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.custom_resource import Answer, handle

logger = Logger()

MIN_COUNT, MAX_COUNT = 2, 6
# AZ ids: region code and digit, "-az", number (use1-az1, apne1-az4, euc1-az2, usgw1-az1).
# Local and Wavelength Zone ids (usw2-lax1-az1, usw2-wl1-las-wlz1) do not match: never chosen.
ZONE_ID = re.compile(r"^[a-z]{2,}[0-9]+-az[0-9]+$")
COUNT = re.compile(r"^[0-9]{1,2}$")
# CloudFormation logical IDs: alphanumeric, at most 255 characters.
LOGICAL_ID = re.compile(r"^[A-Za-z0-9]{1,255}$")
MAX_SUBNET_LOGICAL_IDS = 6
# Tags CloudFormation puts on every subnet it creates.
STACK_ID_TAG, LOGICAL_ID_TAG = "aws:cloudformation:stack-id", "aws:cloudformation:logical-id"


# ---------------------------------------------------------------- decisions
def parse_count(properties: Mapping[str, Any]) -> int:
    """Count as an int; CloudFormation passes every scalar as a string."""
    raw = properties.get("Count")
    if isinstance(raw, str) and COUNT.match(raw):
        count = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        count = raw
    else:
        raise ValueError(
            f"property Count must be a whole number from {MIN_COUNT} to {MAX_COUNT}, not {raw!r}"
        )
    if not MIN_COUNT <= count <= MAX_COUNT:
        raise ValueError(f"property Count must be from {MIN_COUNT} to {MAX_COUNT}, not {count}")
    return count


def parse_excluded(properties: Mapping[str, Any]) -> tuple[str, ...]:
    """ExcludedZoneIds, sorted and without duplicates; absent means none."""
    raw = properties.get("ExcludedZoneIds")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError(f"property ExcludedZoneIds must be a list of AZ ids such as use1-az3, not {raw!r}")
    bad = [z for z in raw if not isinstance(z, str) or not ZONE_ID.match(z)]
    if bad:
        raise ValueError(f"property ExcludedZoneIds holds {bad!r}: not AZ ids such as use1-az3")
    return tuple(sorted(set(raw)))


def parse_properties(properties: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    return parse_count(properties), parse_excluded(properties)


def parse_subnet_logical_ids(properties: Mapping[str, Any]) -> tuple[str, ...]:
    """SubnetLogicalIds, in zone order; absent or empty means adopt nothing."""
    raw = properties.get("SubnetLogicalIds")
    if raw is None or raw == []:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_SUBNET_LOGICAL_IDS:
        raise ValueError(
            f"property SubnetLogicalIds must be a list of 1 to {MAX_SUBNET_LOGICAL_IDS} logical IDs "
            f"such as PublicSubnetA, not {raw!r}"
        )
    bad = [i for i in raw if not isinstance(i, str) or not LOGICAL_ID.match(i)]
    if bad:
        raise ValueError(
            f"property SubnetLogicalIds holds {bad!r}: not logical IDs (1 to 255 letters and digits)"
        )
    return tuple(raw)


def usable(zones: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Available availability zones (the API filters already; this guards the decision), by name."""
    return sorted(
        (
            z
            for z in zones
            if z.get("State", "available") == "available"
            and z.get("ZoneType", "availability-zone") == "availability-zone"
        ),
        key=lambda z: str(z["ZoneName"]),
    )


def zones_by_logical_id(subnets: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Logical ID -> the zone (ZoneName, ZoneId) of the stack's subnet with that ID.

    Two subnets under one logical ID in different zones (one left over from a replacement
    that could not be deleted) fail: guessing wrong would replace the other.
    """
    found: dict[str, dict[str, str]] = {}
    seen: dict[str, list[str]] = {}
    for subnet in subnets:
        tags = {t["Key"]: t["Value"] for t in subnet.get("Tags", [])}
        logical_id = tags.get(LOGICAL_ID_TAG)
        if not logical_id:
            continue
        zone = {"ZoneName": str(subnet["AvailabilityZone"]), "ZoneId": str(subnet["AvailabilityZoneId"])}
        seen.setdefault(logical_id, []).append(f"{subnet.get('SubnetId', '?')} in {zone['ZoneName']}")
        if found.setdefault(logical_id, zone) != zone:
            raise ValueError(
                f"the stack has several subnets {logical_id} in different zones "
                f"({', '.join(seen[logical_id])}): delete the one that is not in use, then retry"
            )
    return found


def adopt(found: Mapping[str, Mapping[str, str]], logical_ids: Sequence[str]) -> list[Mapping[str, str]]:
    """The zones of the listed subnets that exist, in list order, each zone once."""
    adopted: list[Mapping[str, str]] = []
    for logical_id in logical_ids:
        zone = found.get(logical_id)
        if zone is not None and zone["ZoneName"] not in {z["ZoneName"] for z in adopted}:
            adopted.append(zone)
    return adopted


def choose(
    zones: Sequence[Mapping[str, Any]],
    count: int,
    excluded: Sequence[str],
    region: str,
    adopted: Sequence[Mapping[str, Any]] = (),
) -> list[Mapping[str, Any]]:
    """The adopted zones (at most `count`, excluded or not: moving them would replace the
    subnets), then the first zones by name whose id is not excluded, up to `count`."""
    kept = list(adopted[:count])
    taken = {z["ZoneName"] for z in kept}
    candidates = usable(zones)
    left = [z for z in candidates if z["ZoneId"] not in excluded and z["ZoneName"] not in taken]
    needed = count - len(kept)
    if len(left) < needed:
        dropped = [f"{z['ZoneId']} ({z['ZoneName']})" for z in candidates if z["ZoneId"] in excluded]
        using = f"the stack's subnets use {', '.join(sorted(taken))}; " if kept else ""
        wanted = f"the {needed} more needed for Count {count}" if kept else f"Count {count}"
        # The zone IDs are excluded for a CloudFront VPC origin; without one none are.
        hint = "; LoadBalancerScheme=internet-facing excludes no zone" if dropped else ""
        raise ValueError(
            f"{region} has {len(candidates)} available zones; {using}excluding "
            f"{', '.join(dropped) or 'none'} leaves {len(left)}, fewer than {wanted}{hint}"
        )
    return kept + left[:needed]


def keep(physical_id: str, count: int, zones: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]] | None:
    """The zones already chosen, when there are `count` of them; else None (choose anew).

    A chosen zone that is not available right now fails the update rather than move
    the subnets: the next update, once the zone is back, keeps it.
    """
    names = physical_id.split(",") if physical_id else []
    if len(names) != count or len(set(names)) != count:
        return None
    by_name = {z["ZoneName"]: z for z in usable(zones)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"the stack's zones {', '.join(missing)} are not available now; "
            "they are kept (moving them would replace the subnets): retry later"
        )
    return [by_name[n] for n in names]


def physical_id_of(chosen: Sequence[Mapping[str, Any]]) -> str:
    return ",".join(str(z["ZoneName"]) for z in chosen)


def as_data(chosen: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Zone1..ZoneN (names) and ZoneId1..ZoneIdN, for GetAtt."""
    data: dict[str, str] = {}
    for number, zone in enumerate(chosen, start=1):
        data[f"Zone{number}"] = str(zone["ZoneName"])
        data[f"ZoneId{number}"] = str(zone["ZoneId"])
    return data


# ---------------------------------------------------------------- AWS calls
def available_zones() -> tuple[list[dict[str, Any]], str]:
    """The region's available availability zones (no Local or Wavelength Zones), and the region."""
    ec2 = boto3.client("ec2")
    found = ec2.describe_availability_zones(
        Filters=[
            {"Name": "state", "Values": ["available"]},
            {"Name": "zone-type", "Values": ["availability-zone"]},
        ]
    )
    return list(found["AvailabilityZones"]), ec2.meta.region_name


def stack_subnets(stack_id: str) -> list[dict[str, Any]]:
    """The subnets CloudFormation created for this stack (ec2:DescribeSubnets)."""
    pages = (
        boto3.client("ec2")
        .get_paginator("describe_subnets")
        .paginate(Filters=[{"Name": f"tag:{STACK_ID_TAG}", "Values": [stack_id]}])
    )
    return [subnet for page in pages for subnet in page["Subnets"]]


# ---------------------------------------------------------------- handler
def created_zones(
    stack_id: str, logical_ids: Sequence[str], count: int, excluded: Sequence[str]
) -> list[Mapping[str, str]]:
    """On Create: the zones the stack's existing subnets already use (none in a new stack)."""
    if not logical_ids:
        return []
    found = zones_by_logical_id(stack_subnets(stack_id))
    adopted = adopt(found, logical_ids)
    logger.info(
        "Zones of the stack's existing subnets",
        extra={"found": {i: found[i]["ZoneName"] for i in logical_ids if i in found}},
    )
    if len(adopted) > count:
        logger.warning(
            "The stack's subnets use more zones than Count: subnets in the others will move",
            extra={"zones": [z["ZoneName"] for z in adopted[count:]]},
        )
    if adopted_excluded := [z["ZoneId"] for z in adopted[:count] if z["ZoneId"] in excluded]:
        logger.warning(
            "Keeping excluded zones of existing subnets: moving them would replace the subnets",
            extra={"zone_ids": adopted_excluded},
        )
    return adopted


def locate(event: CloudFormationCustomResourceEvent, physical_id: str) -> Answer:
    kind = event.request_type
    if kind == "Delete":  # nothing was created
        return Answer(physical_id)
    count, excluded = parse_properties(event.resource_properties)
    logical_ids = parse_subnet_logical_ids(event.resource_properties)
    zones, region = available_zones()
    # Update: the zones stay (moving them replaces subnets and the database's subnet
    # group) unless Count changed.
    chosen = keep(event.physical_resource_id, count, zones) if kind == "Update" else None
    kept = chosen is not None
    if chosen is None:
        adopted = created_zones(event.stack_id, logical_ids, count, excluded) if kind == "Create" else []
        chosen = choose(zones, count, excluded, region, adopted)
    elif now_excluded := [z["ZoneId"] for z in chosen if z["ZoneId"] in excluded]:
        logger.warning("Keeping zones that are now excluded", extra={"zone_ids": now_excluded})
    logger.info("Zones", extra={"region": region, "kept": kept, "zones": as_data(chosen)})
    return Answer(physical_id_of(chosen), as_data(chosen))


@logger.inject_lambda_context
def lambda_handler(raw_event: dict[str, Any], context: LambdaContext) -> None:
    physical_id = raw_event.get("PhysicalResourceId") or f"no-zones-{raw_event.get('RequestId', '')}"
    handle(raw_event, context, lambda event: locate(event, physical_id), logger, physical_id)
