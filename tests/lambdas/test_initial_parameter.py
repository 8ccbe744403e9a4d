"""Custom::InitialParameter: the deployed-version parameter is written once, never overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas import initial_parameter

NAME = "/mastodon/mastodon/deployed-version"


@pytest.fixture
def ssm() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ssm")


def props(value: str = "v4.7.6", name: str = NAME) -> dict[str, str]:
    return {"Name": name, "Value": value, "Description": "boot version"}


def value(ssm: Any, name: str = NAME) -> str:
    return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])


def test_create_writes_the_value_and_names_the_parameter(ssm, answers, cfn_event, context):
    initial_parameter.lambda_handler(cfn_event("Create", props()), context)
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert answers.last["PhysicalResourceId"] == NAME  # Ref gives the name
    assert value(ssm) == "v4.7.6"


def test_an_update_with_a_newer_pinned_release_keeps_what_the_pipeline_wrote(
    ssm, answers, cfn_event, context
):
    initial_parameter.lambda_handler(cfn_event("Create", props("v4.7.6")), context)
    ssm.put_parameter(Name=NAME, Value="v4.7.7", Type="String", Overwrite=True)  # the pipeline
    initial_parameter.lambda_handler(
        cfn_event("Update", props("v4.8.0"), props("v4.7.6"), physical_id=NAME), context)
    assert answers.last["Status"] == "SUCCESS"
    assert value(ssm) == "v4.7.7"


def test_a_parameter_left_by_an_earlier_stack_is_kept(ssm, answers, cfn_event, context):
    ssm.put_parameter(Name=NAME, Value="v4.7.5", Type="String")
    initial_parameter.lambda_handler(cfn_event("Create", props("v4.7.6")), context)
    assert answers.last["Status"] == "SUCCESS"
    assert value(ssm) == "v4.7.5"


def test_delete_removes_the_parameter_and_tolerates_its_absence(ssm, answers, cfn_event, context):
    initial_parameter.lambda_handler(cfn_event("Create", props()), context)
    for _ in range(2):
        initial_parameter.lambda_handler(cfn_event("Delete", props(), physical_id=NAME), context)
        assert answers.last["Status"] == "SUCCESS"
    assert ssm.describe_parameters()["Parameters"] == []


def test_deleting_after_a_failed_create_touches_nothing(ssm, answers, cfn_event, context):
    ssm.put_parameter(Name=NAME, Value="v4.7.5", Type="String")
    initial_parameter.lambda_handler(cfn_event("Delete", props(), physical_id="no-parameter-1"), context)
    assert answers.last["Status"] == "SUCCESS"
    assert value(ssm) == "v4.7.5"


@pytest.mark.parametrize(("properties", "mentioned"), [
    ({"Value": "v4.7.6"}, "Name"),
    ({"Name": "relative/name", "Value": "v4.7.6"}, "Name"),
    ({"Name": NAME}, "Value"),
    ({"Name": NAME, "Value": ""}, "Value"),
    ({"Name": NAME, "Value": ["v4.7.6"]}, "Value"),
])
def test_bad_properties_fail_with_a_reason_and_create_nothing(
    ssm, answers, cfn_event, context, properties, mentioned
):
    initial_parameter.lambda_handler(cfn_event("Create", properties), context)
    assert answers.last["Status"] == "FAILED"
    assert mentioned in answers.last["Reason"]
    assert ssm.describe_parameters()["Parameters"] == []


DESIRED = "/mastodon/mastodon/desired-version"


def test_it_reports_the_desired_versions_current_value_so_an_update_writes_back_what_the_operator_put(
    ssm, answers, cfn_event, context
):
    reporting = {**props("v4.7.6"), "ReportValueOf": DESIRED}
    initial_parameter.lambda_handler(cfn_event("Create", reporting), context)
    assert answers.last["Data"] == {"ReportedValue": "v4.7.6"}, "on creation: the pinned release"
    ssm.put_parameter(Name=DESIRED, Value="v4.7.8", Type="String")  # the operator, later
    initial_parameter.lambda_handler(
        cfn_event("Update", {**reporting, "Value": "v4.9.0"}, reporting, physical_id=NAME), context)
    assert answers.last["Status"] == "SUCCESS"
    assert answers.last["Data"] == {"ReportedValue": "v4.7.8"}, "a newer build moved the desired version"


def test_a_malformed_parameter_to_report_is_refused(ssm, answers, cfn_event, context):
    initial_parameter.lambda_handler(cfn_event("Create", {**props(), "ReportValueOf": "no-slash"}), context)
    assert answers.last["Status"] == "FAILED" and "ReportValueOf" in answers.last["Reason"]
