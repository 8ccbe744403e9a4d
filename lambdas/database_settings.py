"""Custom::DatabaseSettings: deletion protection and log export, once the stack stands.

The database is created without deletion protection: had it protection from the
start, a create that fails after the database exists could not delete it, and the
stack would end in ROLLBACK_FAILED with a database that bills. This resource comes
last in the create (after the servers have signalled) and turns protection on as
the DatabaseDeletionProtection parameter says; every update applies the parameter
again. Its Delete turns protection off only while CloudFormation rolls back a failed
create (stack status ROLLBACK_IN_PROGRESS), so that the database, whose final
snapshot its DeletionPolicy keeps, can go. A stack deletion, or an update's clean-up,
leaves protection as it is: deleting the stack still needs the parameter set to false.

It also turns on the export of the PostgreSQL log to CloudWatch Logs, once the
stack's log group (KMS-encrypted, with a retention) exists under the name RDS writes
to, so that RDS never creates an unencrypted one that keeps logs forever.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
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

# RDS DB instance identifiers: a letter, then letters, digits and single hyphens.
IDENTIFIER = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,62}$")
LOG_TYPES = {"postgresql", "upgrade", "iam-db-auth-error"}
# The only stack status in which a Delete means "a failed create is being undone".
CREATE_ROLLBACK = "ROLLBACK_IN_PROGRESS"
# RDS refuses changes while the instance is busy (its first backup, a modification).
RETRY_SECONDS = 20


# ---------------------------------------------------------------- decisions
def parse_properties(properties: Mapping[str, Any]) -> tuple[str, bool, list[str]]:
    """(instance identifier, deletion protection, log types); ValueError when invalid."""
    identifier = properties.get("DBInstanceIdentifier")
    protection = properties.get("DeletionProtection")
    log_types = properties.get("LogExports", [])
    if not isinstance(identifier, str) or not IDENTIFIER.match(identifier):
        raise ValueError(
            f"property DBInstanceIdentifier must be an RDS instance identifier, not {identifier!r}")
    if protection not in ("true", "false"):
        raise ValueError("property DeletionProtection must be 'true' or 'false'")
    if not isinstance(log_types, list) or not set(log_types) <= LOG_TYPES:
        raise ValueError(f"property LogExports must list log types among {sorted(LOG_TYPES)}")
    return identifier, protection == "true", sorted(log_types)


def changes(instance: Mapping[str, Any], protection: bool | None, log_types: list[str]) -> dict[str, Any]:
    """The ModifyDBInstance arguments that bring `instance` to the settings; {} when it has them."""
    wanted: dict[str, Any] = {}
    if protection is not None and bool(instance.get("DeletionProtection")) != protection:
        wanted["DeletionProtection"] = protection
    missing = [t for t in log_types if t not in instance.get("EnabledCloudwatchLogsExports", [])]
    if missing:
        wanted["CloudwatchLogsExportConfiguration"] = {"EnableLogTypes": missing}
    return wanted


def unprotect_on_delete(stack_status: str | None) -> bool:
    """Only a failed create's rollback may take the protection off."""
    return stack_status == CREATE_ROLLBACK


# ---------------------------------------------------------------- AWS calls
def describe(rds: Any, identifier: str) -> dict[str, Any] | None:
    try:
        (instance,) = rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "DBInstanceNotFound":
            return None
        raise
    found: dict[str, Any] = instance
    return found


def apply(rds: Any, identifier: str, protection: bool | None, log_types: list[str],
          time_left: Callable[[], float], sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Modify the instance until it has the settings; the changes made ({} if none)."""
    while True:
        instance = describe(rds, identifier)
        if instance is None:
            raise ValueError(f"database {identifier} does not exist")
        wanted = changes(instance, protection, log_types)
        if not wanted:
            return {}
        try:
            rds.modify_db_instance(DBInstanceIdentifier=identifier, ApplyImmediately=True, **wanted)
            return wanted
        except ClientError as error:
            busy = error.response["Error"]["Code"] == "InvalidDBInstanceState"
            if not busy or time_left() < RETRY_SECONDS + 30:
                raise
            logger.info("Database busy; retrying", extra={"database": identifier})
            sleep(RETRY_SECONDS)


def stack_status(stack_id: str) -> str | None:
    try:
        (stack,) = boto3.client("cloudformation").describe_stacks(StackName=stack_id)["Stacks"]
    except ClientError:
        return None
    status: str = stack["StackStatus"]
    return status


# ---------------------------------------------------------------- handler
def settle(event: CloudFormationCustomResourceEvent, physical_id: str, context: LambdaContext) -> Answer:
    def time_left() -> float:
        return float(context.get_remaining_time_in_millis()) / 1000

    if event.request_type == "Delete":
        status = stack_status(str(event.get("StackId", "")))
        identifier = str(event.resource_properties.get("DBInstanceIdentifier") or "")
        rds = boto3.client("rds")
        if unprotect_on_delete(status) and IDENTIFIER.match(identifier) and describe(rds, identifier):
            made = apply(rds, identifier, False, [], time_left)
            logger.info("Create rolled back: protection off", extra={"database": identifier,
                                                                      "changes": made})
        else:
            logger.info("Settings left as they are", extra={"stack_status": status})
        return Answer(physical_id)
    identifier, protection, log_types = parse_properties(event.resource_properties)
    made = apply(boto3.client("rds"), identifier, protection, log_types, time_left)
    logger.info("Database settings applied", extra={"database": identifier, "changes": made})
    return Answer(f"{identifier}-settings")


@logger.inject_lambda_context
def lambda_handler(raw_event: dict[str, Any], context: LambdaContext) -> None:
    physical_id = raw_event.get("PhysicalResourceId") or f"database-settings-{raw_event.get('RequestId', '')}"
    handle(raw_event, context, lambda event: settle(event, physical_id, context), logger, physical_id)
