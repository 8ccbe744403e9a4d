"""Custom::DatabaseSettings: protection on once the stack stands, off only for a failed create."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas import database_settings

DB = "mastodon-database-1a2b3c"


# ---------------------------------------------------------------- decisions
@pytest.mark.parametrize(
    ("status", "unprotect"),
    [
        ("ROLLBACK_IN_PROGRESS", True),  # a failed create: everything must go
        ("DELETE_IN_PROGRESS", False),  # deleting the stack: protection is the point
        ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", False),  # an update replaced this resource
        ("UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS", False),  # an update that added it failed
        ("UPDATE_ROLLBACK_IN_PROGRESS", False),
        (None, False),  # unknown: keep the database
    ],
)
def test_only_a_failed_creates_rollback_takes_the_protection_off(status: str | None, unprotect: bool) -> None:
    assert database_settings.unprotect_on_delete(status) is unprotect


def test_changes_are_only_what_the_instance_lacks() -> None:
    instance = {"DeletionProtection": False, "EnabledCloudwatchLogsExports": ["upgrade"]}
    assert database_settings.changes(instance, True, ["postgresql", "upgrade"]) == {
        "DeletionProtection": True,
        "CloudwatchLogsExportConfiguration": {"EnableLogTypes": ["postgresql"]},
    }
    settled = {"DeletionProtection": True, "EnabledCloudwatchLogsExports": ["postgresql"]}
    assert database_settings.changes(settled, True, ["postgresql"]) == {}


# ---------------------------------------------------------------- against moto
@pytest.fixture
def rds() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("rds")
        client.create_db_instance(DBInstanceIdentifier=DB, Engine="postgres", DBInstanceClass="db.t4g.micro",
                                  MasterUsername="mastodon", MasterUserPassword="x" * 20,
                                  AllocatedStorage=20)
        yield client


def instance(rds: Any) -> dict[str, Any]:
    found: dict[str, Any] = rds.describe_db_instances(DBInstanceIdentifier=DB)["DBInstances"][0]
    return found


def properties(protection: str = "true") -> dict[str, Any]:
    return {"DBInstanceIdentifier": DB, "DeletionProtection": protection, "LogExports": ["postgresql"]}


def test_create_turns_protection_and_the_log_export_on(rds: Any, answers: Any, cfn_event: Any,
                                                       context: Any) -> None:
    assert instance(rds)["DeletionProtection"] is False  # as the template creates it
    database_settings.lambda_handler(cfn_event("Create", properties()), context)
    assert answers.last["Status"] == "SUCCESS", answers.last["Reason"]
    assert instance(rds)["DeletionProtection"] is True
    assert instance(rds)["EnabledCloudwatchLogsExports"] == ["postgresql"]
    with pytest.raises(rds.exceptions.ClientError):
        rds.delete_db_instance(DBInstanceIdentifier=DB, SkipFinalSnapshot=True)


def test_an_update_applies_the_parameter_either_way(rds: Any, answers: Any, cfn_event: Any,
                                                    context: Any) -> None:
    database_settings.lambda_handler(cfn_event("Create", properties("true")), context)
    database_settings.lambda_handler(
        cfn_event("Update", properties("false"), properties("true"), f"{DB}-settings"), context)
    assert answers.last["Status"] == "SUCCESS"
    assert instance(rds)["DeletionProtection"] is False
    assert instance(rds)["EnabledCloudwatchLogsExports"] == ["postgresql"]


@pytest.mark.parametrize("status", ["DELETE_IN_PROGRESS", "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"])
def test_deleting_the_stack_keeps_the_database_protected(
    rds: Any, answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    database_settings.lambda_handler(cfn_event("Create", properties()), context)
    monkeypatch.setattr(database_settings, "stack_status", lambda stack_id: status)
    database_settings.lambda_handler(cfn_event("Delete", properties(), None, f"{DB}-settings"), context)
    assert answers.last["Status"] == "SUCCESS"
    assert instance(rds)["DeletionProtection"] is True


def test_a_failed_creates_rollback_unprotects_so_the_database_can_be_deleted(
    rds: Any, answers: Any, cfn_event: Any, context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_settings.lambda_handler(cfn_event("Create", properties()), context)
    monkeypatch.setattr(database_settings, "stack_status", lambda stack_id: "ROLLBACK_IN_PROGRESS")
    database_settings.lambda_handler(cfn_event("Delete", properties(), None, f"{DB}-settings"), context)
    assert answers.last["Status"] == "SUCCESS"
    assert instance(rds)["DeletionProtection"] is False
    # What CloudFormation then does, the DeletionPolicy keeping a final snapshot:
    rds.delete_db_instance(DBInstanceIdentifier=DB, FinalDBSnapshotIdentifier="final")


def test_a_rollback_after_the_database_is_gone_succeeds(rds: Any, answers: Any, cfn_event: Any, context: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rds.delete_db_instance(DBInstanceIdentifier=DB, SkipFinalSnapshot=True)
    monkeypatch.setattr(database_settings, "stack_status", lambda stack_id: "ROLLBACK_IN_PROGRESS")
    database_settings.lambda_handler(cfn_event("Delete", properties(), None, "whatever"), context)
    assert answers.last["Status"] == "SUCCESS"


def test_the_stack_status_is_read_from_cloudformation() -> None:
    with mock_aws():
        cfn = boto3.client("cloudformation")
        stack_id = cfn.create_stack(StackName="s", TemplateBody=json.dumps({"Resources": {
            "Topic": {"Type": "AWS::SNS::Topic"}}}))["StackId"]
        assert database_settings.stack_status(stack_id) == "CREATE_COMPLETE"
        missing = "arn:aws:cloudformation:us-east-1:123456789012:stack/x/y"
        assert database_settings.stack_status(missing) is None


def test_a_busy_database_is_retried_until_it_accepts(rds: Any) -> None:
    from botocore.exceptions import ClientError

    calls: list[dict[str, Any]] = []

    class Busy:
        """RDS refuses modifications while the first backup runs, then accepts."""

        def describe_db_instances(self, **kwargs: Any) -> Any:
            return rds.describe_db_instances(**kwargs)

        def modify_db_instance(self, **kwargs: Any) -> Any:
            calls.append(kwargs)
            if len(calls) < 3:
                raise ClientError({"Error": {"Code": "InvalidDBInstanceState", "Message": "backing-up"}},
                                  "ModifyDBInstance")
            return rds.modify_db_instance(**kwargs)

    slept: list[float] = []
    made = database_settings.apply(Busy(), DB, True, [], lambda: 600.0, slept.append)
    assert made == {"DeletionProtection": True} and len(calls) == 3 and len(slept) == 2
    assert instance(rds)["DeletionProtection"] is True
