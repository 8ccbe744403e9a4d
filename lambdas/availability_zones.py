"""Custom::AvailabilityZones: the zones the stack's subnets use, chosen by AZ ID.

CloudFront VPC origins do not work in some AZ IDs (use1-az3, usw1-az2, cac1-az3,
apne1-az3). Fn::GetAZs gives zone names, which map to zone ids differently in each
account, so only a lookup in the account can leave those ids out. Subnets, and the
database's subnet group with them, are replaced when their zone moves: once chosen,
the zones stay for the stack's life unless Count changes.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import (
    CloudFormationCustomResourceEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()

MIN_COUNT, MAX_COUNT = 2, 6
# AZ ids: region code and digit, "-az", number (use1-az1, apne1-az4, euc1-az2, usgw1-az1).
# Local and Wavelength Zone ids (usw2-lax1-az1, usw2-wl1-las-wlz1) do not match: never chosen.
ZONE_ID = re.compile(r"^[a-z]{2,}[0-9]+-az[0-9]+$")
COUNT = re.compile(r"^[0-9]{1,2}$")


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


def choose(
    zones: Sequence[Mapping[str, Any]], count: int, excluded: Sequence[str], region: str
) -> list[Mapping[str, Any]]:
    """The first `count` zones by name whose id is not excluded."""
    candidates = usable(zones)
    left = [z for z in candidates if z["ZoneId"] not in excluded]
    if len(left) < count:
        dropped = [f"{z['ZoneId']} ({z['ZoneName']})" for z in candidates if z["ZoneId"] in excluded]
        raise ValueError(
            f"{region} has {len(candidates)} available zones; excluding "
            f"{', '.join(dropped) or 'none'} leaves {len(left)}, fewer than Count {count}"
        )
    return left[:count]


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
        raise ValueError(f"the stack's zones {', '.join(missing)} are not available now; "
                         "they are kept (moving them would replace the subnets): retry later")
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


# ---------------------------------------------------------------- handler
@logger.inject_lambda_context
def lambda_handler(raw_event: dict[str, Any], context: LambdaContext) -> None:
    event = CloudFormationCustomResourceEvent(raw_event)
    physical_id = event.physical_resource_id or f"no-zones-{raw_event.get('RequestId', '')}"
    try:
        kind = event.request_type
        if kind not in ("Create", "Update", "Delete"):
            raise ValueError(f"unknown RequestType {kind!r}")
        if kind == "Delete":  # nothing was created
            send_response(raw_event, "SUCCESS", "", physical_id)
            return
        count, excluded = parse_properties(event.resource_properties)
        zones, region = available_zones()
        # Update: the zones stay (moving them replaces subnets and the database's subnet
        # group) unless Count changed.
        chosen = keep(event.physical_resource_id, count, zones) if kind == "Update" else None
        kept = chosen is not None
        if chosen is None:
            chosen = choose(zones, count, excluded, region)
        elif now_excluded := [z["ZoneId"] for z in chosen if z["ZoneId"] in excluded]:
            logger.warning("Keeping zones that are now excluded", extra={"zone_ids": now_excluded})
        logger.info("Zones", extra={"region": region, "kept": kept, "zones": as_data(chosen)})
        send_response(raw_event, "SUCCESS", "", physical_id_of(chosen), as_data(chosen))
    except Exception as error:
        logger.exception("Request failed")
        reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        send_response(raw_event, "FAILED", reason, physical_id)
