"""Custom::InitialParameter: an SSM parameter the stack creates but never overwrites.

The deployed-version parameter holds the version every process last ran; only the
upgrade pipeline may change it. As an AWS::SSM::Parameter, CloudFormation would write
the template's value into it whenever a new build pins another release, and servers
launched afterwards would boot code whose migrations never ran. This resource writes
the value once, when the parameter does not exist, and leaves it alone on every
update; deleting the stack deletes the parameter.

With ReportValueOf (another parameter's name), every Create and Update answers that
parameter's current value as the attribute ReportedValue (or Value, while it does not
exist yet). The desired-version parameter takes its template value from it, so that
a stack update that pins another release writes back the version the operator asked
for instead of the build's: a stack update never changes the desired version.
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
from botocore.exceptions import ClientError

from lambdas.custom_resource import Answer, handle

logger = Logger()

# SSM parameter names: a path of letters, digits and .-_/ (at most 1011 characters).
NAME = re.compile(r"^/[a-zA-Z0-9_.\-/]{1,1010}$")


# ---------------------------------------------------------------- decisions
def parse_properties(properties: Mapping[str, Any]) -> tuple[str, str, str, str | None]:
    """(name, initial value, description, the parameter to report); ValueError when invalid."""
    name, value = properties.get("Name"), properties.get("Value")
    description = properties.get("Description") or ""
    report = properties.get("ReportValueOf")
    if report is not None and (not isinstance(report, str) or not NAME.match(report)):
        raise ValueError(f"property ReportValueOf must be an SSM parameter path, not {report!r}")
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"property Name must be an SSM parameter path, not {name!r}")
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise ValueError("property Value must be a non-empty string of at most 4096 characters")
    if not isinstance(description, str):
        raise ValueError("property Description must be a string")
    return name, value, description[:1024], report


# ---------------------------------------------------------------- AWS calls
def create_if_missing(name: str, value: str, description: str) -> bool:
    """Write the value unless the parameter exists; True when it was written."""
    try:
        boto3.client("ssm").put_parameter(
            Name=name, Value=value, Type="String", Description=description, Overwrite=False)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ParameterAlreadyExists":
            return False
        raise
    return True


def current_value(name: str) -> str | None:
    try:
        return str(boto3.client("ssm").get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as error:
        if error.response["Error"]["Code"] == "ParameterNotFound":
            return None
        raise


def delete(name: str) -> None:
    try:
        boto3.client("ssm").delete_parameter(Name=name)
    except ClientError as error:
        if error.response["Error"]["Code"] != "ParameterNotFound":
            raise


# ---------------------------------------------------------------- handler
def ensure(event: CloudFormationCustomResourceEvent, physical_id: str) -> Answer:
    if event.request_type == "Delete":
        if NAME.match(physical_id):  # a failed Create left nothing to delete
            delete(physical_id)
        return Answer(physical_id)
    name, value, description, report = parse_properties(event.resource_properties)
    # Update: a new name is a new parameter (CloudFormation then deletes the old id);
    # the same name keeps whatever value the pipeline has written since.
    written = create_if_missing(name, value, description)
    data = {"ReportedValue": (current_value(report) if report else None) or value}
    logger.info("Parameter ensured", extra={"parameter": name, "written": written, **data})
    return Answer(name, data)


@logger.inject_lambda_context
def lambda_handler(raw_event: dict[str, Any], context: LambdaContext) -> None:
    # The physical id is the parameter's name: Ref gives the name, like AWS::SSM::Parameter.
    physical_id = raw_event.get("PhysicalResourceId") or f"no-parameter-{raw_event.get('RequestId', '')}"
    handle(raw_event, context, lambda event: ensure(event, physical_id), logger, physical_id)
