"""The optional pooler and read replica in the template (issue 13 items 2 and 3): off by
default without a trace in what the stack creates or the servers receive; on, a replica
built as RDS and CloudFormation require, alarmed, priced, and refused when too small."""

from __future__ import annotations

import json
from typing import Any

import pytest

from build import PRICES
from scripts import costs, parameter_files
from scripts.template_values import Evaluator, parameter_values
from templates import capacity, parameters
from templates.alarms import REPLICA_LAG_ALARM
from templates.data import DATABASE_REPLICA
from templates.options import PGBOUNCER_IMAGE

TABLE = json.loads(PRICES.read_text())
REQUIRED = {"DomainName": "social.example.com", "HostedZoneId": "Z0123456789ABCDEFGHIJ",
            "AlertEmail": "admin@example.com"}
BOTH_ON = {"DatabasePooler": "true", "DatabaseReplicaClass": "db.r7g.large",
           "DatabaseInstanceClass": "db.r7g.large"}
GROWTH_KEYS = ("DB_POOLER", "PGBOUNCER_", "REPLICA_")


def user_data(template: dict[str, Any], launch_template: str, values: dict[str, str]) -> str:
    """The launch template's user data as CloudFormation would resolve it (GetAtt left as text)."""
    ev = Evaluator(template, parameter_values(template, {**REQUIRED, **values}))
    data = template["Resources"][launch_template]["Properties"]["LaunchTemplateData"]["UserData"]
    parts = data["Fn::Base64"]["Fn::Join"][1]
    out = []
    for part in parts:
        if isinstance(part, dict) and "Fn::If" in part:
            name, then, otherwise = part["Fn::If"]
            part = then if ev.condition(name) else otherwise
        if isinstance(part, dict) and "Fn::Join" in part:
            part = "".join(p if isinstance(p, str) else json.dumps(p) for p in part["Fn::Join"][1])
        out.append(part if isinstance(part, str) else json.dumps(part))
    return "".join(out)


@pytest.mark.parametrize("launch_template", ["WebLaunchTemplate", "WorkerLaunchTemplate"])
def test_off_by_default_the_servers_are_told_both_options_are_off(template, launch_template):
    text = user_data(template, launch_template, {})
    lines = {line for line in text.splitlines() if line.startswith(GROWTH_KEYS)}
    assert lines == {"DB_POOLER='false'", "PGBOUNCER_IMAGE=''", "PGBOUNCER_PORT=''", "REPLICA_DB_HOST=''",
                     "REPLICA_DB_PORT=''", "REPLICA_MAX_CONNECTIONS=''"}


@pytest.mark.parametrize("launch_template", ["WebLaunchTemplate", "WorkerLaunchTemplate"])
def test_on_the_servers_receive_the_pooler_and_the_replica(template, launch_template):
    text = user_data(template, launch_template, BOTH_ON)
    lines = [line for line in text.splitlines() if line.startswith(GROWTH_KEYS)]
    assert "DB_POOLER='true'" in lines
    assert f"PGBOUNCER_IMAGE='{PGBOUNCER_IMAGE}'" in lines
    assert "PGBOUNCER_PORT='6432'" in lines
    replica = [line for line in lines if line.startswith("REPLICA_")]
    assert {line.split("=")[0] for line in replica} == {
        "REPLICA_DB_HOST", "REPLICA_DB_PORT", "REPLICA_MAX_CONNECTIONS"}
    assert DATABASE_REPLICA in next(line for line in replica if line.startswith("REPLICA_DB_HOST"))


def test_the_pooler_image_is_pinned_to_one_release():
    repository, tag = PGBOUNCER_IMAGE.rsplit(":", 1)
    assert repository == "ghcr.io/cloudnative-pg/pgbouncer"
    assert tag.count(".") == 2 and all(part.isdigit() for part in tag.split("."))


def test_off_by_default_no_replica_exists(template):
    ev = Evaluator(template, parameter_values(template, REQUIRED))
    for name in (DATABASE_REPLICA, "DatabaseReplicaParameterGroup", REPLICA_LAG_ALARM):
        assert template["Resources"][name]["Condition"] == parameters.HAS_DATABASE_REPLICA
        assert not ev.creates(name)
    assert Evaluator(template, parameter_values(template, {**REQUIRED, **BOTH_ON})).creates(DATABASE_REPLICA)


def test_the_replica_copies_the_database_as_rds_requires(template):
    replica = template["Resources"][DATABASE_REPLICA]
    props = replica["Properties"]
    assert props["SourceDBInstanceIdentifier"] == {"Ref": "Database"}
    # A replica takes none of these (RDS: created without backups, encrypted like its source).
    assert not {"BackupRetentionPeriod", "DBName", "MasterUsername", "MasterUserPassword",
                "StorageEncrypted", "KmsKeyId", "DBSnapshotIdentifier", "PreferredBackupWindow"} & set(props)
    assert props["DBInstanceClass"] == {"Ref": "DatabaseReplicaClass"}
    assert props["VPCSecurityGroups"] == [{"Ref": "DatabaseSecurityGroup"}]
    assert props["DBSubnetGroupName"] == {"Ref": "DatabaseSubnetGroup"}
    assert props["PubliclyAccessible"] is False
    assert replica["DeletionPolicy"] == replica["UpdateReplacePolicy"] == "Delete"


def test_the_replicas_settings_budget_its_connections_and_keep_long_reads(template):
    name = template["Resources"][DATABASE_REPLICA]["Properties"]["DBParameterGroupName"]["Ref"]
    settings = template["Resources"][name]["Properties"]["Parameters"]
    assert settings["max_connections"] == {"Fn::FindInMap": [
        parameters.DATABASE_CONNECTIONS_MAP, {"Ref": "DatabaseReplicaClass"}, "MaxConnections"]}
    assert settings["rds.force_ssl"] == "1"
    assert settings["hot_standby_feedback"] == "1"


def test_replica_lag_alarms_the_alert_topic(template):
    alarm = template["Resources"][REPLICA_LAG_ALARM]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/RDS", "ReplicaLag")
    assert alarm["Dimensions"] == [{"Name": "DBInstanceIdentifier", "Value": {"Ref": DATABASE_REPLICA}}]
    assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "AlertTopic"}]
    # The dashboard names only alarms that always exist.
    body = json.dumps(template["Resources"]["Dashboard"]["Properties"]["DashboardBody"])
    assert REPLICA_LAG_ALARM not in body


@pytest.mark.parametrize("primary", capacity.DATABASE_CLASSES, ids=lambda d: d.name)
def test_a_replica_smaller_than_the_database_is_refused(template, primary):
    for replica in capacity.DATABASE_CLASSES:
        values = {**REQUIRED, "DatabaseInstanceClass": primary.name, "DatabaseReplicaClass": replica.name}
        refused = [p for p in parameter_files.problems(template, values, "us-east-1")
                   if p.startswith("rule ReadReplicaAtLeastTheDatabase:")]
        smaller = replica.memory_mib < primary.memory_mib or replica.vcpus < primary.vcpus
        assert bool(refused) == smaller, replica.name
    assert not parameter_files.problems(template, {**REQUIRED, "DatabaseInstanceClass": primary.name},
                                        "us-east-1")


def test_a_replica_with_the_memory_but_fewer_vcpus_is_refused(template):
    # db.r7g.xlarge has db.m7g.2xlarge's 32 GiB but half its vCPUs: RDS gives it fewer
    # max_worker_processes, which PostgreSQL refuses on a hot standby.
    values = {**REQUIRED, "DatabaseInstanceClass": "db.m7g.2xlarge", "DatabaseReplicaClass": "db.r7g.xlarge"}
    assert [p for p in parameter_files.problems(template, values, "us-east-1")
            if p.startswith("rule ReadReplicaAtLeastTheDatabase:")]


def test_the_replica_bills_like_a_second_database_and_the_pooler_costs_nothing(template):
    def estimate(**values: str) -> costs.Estimate:
        return costs.estimate(template, values, TABLE)

    base = estimate(DatabaseInstanceClass="db.r7g.large", DatabaseAllocatedStorage="100")
    pooled = estimate(DatabaseInstanceClass="db.r7g.large", DatabaseAllocatedStorage="100",
                      DatabasePooler="true")
    assert pooled.total == base.total
    both = estimate(DatabaseInstanceClass="db.r7g.large", DatabaseAllocatedStorage="100",
                    DatabasePooler="true", DatabaseReplicaClass="db.r7g.xlarge")
    hours = TABLE["hours_per_month"]
    replica = [i for i in both.items if i.detail.startswith(f"{DATABASE_REPLICA}:")]
    assert [i.monthly for i in replica] == [
        pytest.approx(TABLE["rds_postgresql_single_az_hourly"]["db.r7g.xlarge"] * hours)]
    storage = 100 * TABLE["rds_storage_gb_month"]["gp3"]
    alarm = TABLE["alarm_month"]
    assert both.total == pytest.approx(base.total + replica[0].monthly + storage + alarm, abs=0.02)


def test_the_console_groups_both_options_with_labels(template):
    interface = template["Metadata"]["AWS::CloudFormation::Interface"]
    [group] = [g for g in interface["ParameterGroups"]
               if g["Label"]["default"] == parameters.GROUP_DATABASE_GROWTH]
    assert group["Parameters"] == ["DatabasePooler", "DatabaseReplicaClass"]
    for name in group["Parameters"]:
        assert template["Parameters"][name]["Default"] in ("false", "")
        assert name in interface["ParameterLabels"]


def test_a_replicas_source_always_keeps_backups(template):
    # RDS refuses a read replica of a database without automated backups. The template
    # never allows one without them: a change that allowed 0 days would need a rule here.
    assert template["Parameters"]["DatabaseBackupRetentionDays"]["MinValue"] >= 1
    assert template["Resources"]["Database"]["Properties"]["BackupRetentionPeriod"] == {
        "Ref": "DatabaseBackupRetentionDays"}


def test_every_replica_the_rule_allows_has_at_least_the_databases_max_connections():
    # PostgreSQL refuses queries on a hot standby whose max_connections is below its
    # primary's; each side's parameter group sets it from its own class.
    for primary in capacity.DATABASE_CLASSES:
        for name in parameters.replica_classes_for(primary):
            replica = next(d for d in capacity.DATABASE_CLASSES if d.name == name)
            assert replica.max_connections >= primary.max_connections, (primary.name, name)
