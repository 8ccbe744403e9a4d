"""Users' data survives stack deletion and any update that would replace where it lives."""

from __future__ import annotations

import pytest

from templates import data, stack_policy
from tests.support import props, refs

# Types that hold data or the keys to it; any new one must come with a keeping policy.
STATEFUL_TYPES = {
    "AWS::RDS::DBInstance": {"Snapshot"},
    "AWS::RDS::DBCluster": {"Snapshot"},
    "AWS::ElastiCache::ReplicationGroup": {"Snapshot"},
    "AWS::ElastiCache::CacheCluster": {"Snapshot"},
    # RetainExceptOnCreate: kept like Retain, but removed by the rollback of the create that
    # made it (empty then), so a failed first create leaves no bucket or secret billing.
    "AWS::S3::Bucket": {"Retain", "RetainExceptOnCreate"},
    "AWS::SecretsManager::Secret": {"Retain", "RetainExceptOnCreate"},
    "AWS::EFS::FileSystem": {"Retain", "Snapshot"},
    "AWS::DynamoDB::Table": {"Retain", "Snapshot"},
}


# Stores of a stateful type that hold nothing worth keeping, with why. Each must show it
# (test_a_store_exempt_from_keeping_holds_only_what_can_be_recomputed).
VOLATILE = {
    # Rails.cache alone: every entry is recomputed on a miss and expires within minutes; a
    # final snapshot would bill for stale entries and be restored nowhere.
    "RailsCache": "the cache-only Redis (SeparateCacheNodeType)",
}


def _stateful(template):
    # A read replica holds nothing its source does not: removing the option deletes it.
    return {n: r for n, r in template["Resources"].items()
            if r["Type"] in STATEFUL_TYPES and n not in VOLATILE
            and "SourceDBInstanceIdentifier" not in r.get("Properties", {})}


def test_every_store_of_data_or_keys_is_kept_on_deletion_and_on_replacement(template):
    stateful = _stateful(template)
    assert {"Database", "Cache", "MediaBucket", "AppSecret"} <= set(stateful)
    for name, resource in stateful.items():
        keeps = STATEFUL_TYPES[resource["Type"]]
        assert resource.get("DeletionPolicy") in keeps, f"{name} is lost when the stack is deleted"
        # UpdateReplacePolicy has no RetainExceptOnCreate: a replacement always keeps the old one.
        assert resource.get("UpdateReplacePolicy") in keeps - {"RetainExceptOnCreate"}, (
            f"{name} is lost when an update replaces it")


def test_a_failed_first_create_leaves_no_empty_bucket_or_secret_behind(template):
    for name in ("MediaBucket", "AppSecret"):
        assert template["Resources"][name]["DeletionPolicy"] == "RetainExceptOnCreate", name


def test_the_database_has_deletion_protection_on_by_default(template):
    settings = template["Resources"]["DatabaseSettings"]
    assert settings["Properties"]["DeletionProtection"] == {"Ref": "DatabaseDeletionProtection"}
    assert settings["Properties"]["DBInstanceIdentifier"] == {"Ref": "Database"}
    parameter = template["Parameters"]["DatabaseDeletionProtection"]
    assert parameter["Default"] == "true"
    assert parameter["AllowedValues"] == ["true", "false"]


def _depends_on(template, name):
    """Every resource `name` waits for: DependsOn, Ref and GetAtt, transitively."""
    seen, todo = set(), [name]
    while todo:
        resource = template["Resources"][todo.pop()]
        direct = set(resource.get("DependsOn", [])) | refs(resource.get("Properties", {}))
        for found in direct & set(template["Resources"]) - seen:
            seen.add(found)
            todo.append(found)
    return seen


def test_a_failed_first_create_can_delete_the_database(template):
    # Protected from the start, the database would make a failed create's rollback end in
    # ROLLBACK_FAILED, with a database that bills. It is created unprotected...
    assert props(template, "Database").get("DeletionProtection") in (None, False)
    # ...and protected only after the resources whose failure is the likely end of a first
    # create: the servers' signals and CloudFront.
    # Any update that modifies the database updates the settings resource after it.
    inputs = template["Resources"]["DatabaseSettings"]["Properties"]["DatabaseSettingsInputs"]
    shaping = {v["Ref"] for v in props(template, "Database").values()
               if isinstance(v, dict) and "Ref" in v and v["Ref"] in template["Parameters"]}
    assert shaping <= {i["Ref"] for i in inputs}
    waits_for = _depends_on(template, "DatabaseSettings")
    assert {"Database", "WebAutoScalingGroup", "WorkerAutoScalingGroup", "Distribution"} <= waits_for
    # Its failed-create Delete (lambdas/database_settings.py) may only touch this database.
    role = props(template, "DatabaseSettingsFunctionRole")
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    rds = [s for s in statements if any(a.startswith("rds:") for a in s["Action"])]
    assert rds and all(s["Resource"] == [{"Fn::Sub": "arn:${AWS::Partition}:rds:${AWS::Region}:"
                                          "${AWS::AccountId}:db:${Database}"}] for s in rds)


def test_the_cache_snapshot_and_database_backups_exist_before_anything_goes_wrong(template):
    assert props(template, "Cache")["SnapshotRetentionLimit"] >= 1
    assert int(template["Parameters"]["DatabaseBackupRetentionDays"]["MinValue"]) >= 1
    assert props(template, "MediaBucket")["VersioningConfiguration"] == {"Status": "Enabled"}


def test_the_stack_policy_forbids_replacing_or_deleting_every_stateful_resource(template):
    policy = stack_policy.stack_policy()
    (deny,) = [s for s in policy["Statement"] if s["Effect"] == "Deny"]
    assert set(deny["Action"]) == {"Update:Replace", "Update:Delete"}
    protected = {r.removeprefix("LogicalResourceId/") for r in deny["Resource"]}
    assert protected == set(_stateful(template))
    # Everything else stays updatable, or the policy would block ordinary upgrades.
    (allow,) = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert (allow["Action"], allow["Resource"]) == ("Update:*", "*")


@pytest.mark.parametrize("name", ["Database", "Cache", "MediaBucket", "AppSecret"])
def test_stateful_logical_ids_never_change(template, name):
    # A renamed logical ID is a new resource: CloudFormation would delete the old one.
    assert name in template["Resources"]
    assert name in stack_policy.PROTECTED_RESOURCES


def test_the_database_names_only_its_major_version_so_rds_may_retire_and_upgrade_minors(template):
    database = props(template, "Database")
    # "17", never "17.9": a pinned minor fails new stacks once RDS retires it, and
    # updates once AutoMinorVersionUpgrade has moved the instance past it.
    assert database["EngineVersion"].isdigit(), database["EngineVersion"]
    assert database["AutoMinorVersionUpgrade"] is True
    family = props(template, "DatabaseParameterGroup")["Family"]
    assert family == f"postgres{database['EngineVersion']}"


def test_sidekiqs_redis_refuses_writes_when_full_instead_of_evicting_jobs(template):
    cache = props(template, "Cache")
    group = cache["CacheParameterGroupName"]["Ref"]
    settings = template["Resources"][group]
    assert settings["Type"] == "AWS::ElastiCache::ParameterGroup"
    assert settings["Properties"]["Properties"]["maxmemory-policy"] == "noeviction"
    # A parameter group of another engine major is refused by ElastiCache.
    major = cache["EngineVersion"].split(".")[0]
    assert settings["Properties"]["CacheParameterGroupFamily"] == f"{cache['Engine']}{major}"
    # Full memory now means refused writes: the memory alarm is what warns first.
    memory = props(template, "CacheMemoryAlarm")
    assert memory["MetricName"] == "DatabaseMemoryUsagePercentage"
    assert memory["Dimensions"][0]["Value"] == {"Fn::Join": ["", [{"Ref": "Cache"}, "-001"]]}


@pytest.mark.parametrize("name", sorted(VOLATILE))
def test_a_store_exempt_from_keeping_holds_only_what_can_be_recomputed(template, name):
    resource = template["Resources"][name]
    settings = template["Resources"][resource["Properties"]["CacheParameterGroupName"]["Ref"]]
    # Evicting every key when full is what makes it a cache: nothing in it must survive.
    assert settings["Properties"]["Properties"]["maxmemory-policy"].startswith("allkeys-")
    assert resource["Properties"]["SnapshotRetentionLimit"] == 0
    assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Delete"
    # Not the Redis that Sidekiq's jobs live in.
    assert name != "Cache"


def test_the_deploy_preview_treats_as_disposable_exactly_the_stores_exempt_here():
    # The read replica is exempt by what it is (SourceDBInstanceIdentifier: it holds
    # nothing its source does not), not by name: see stateful_stores.
    assert set(data.DISPOSABLE) == set(VOLATILE) | {data.DATABASE_REPLICA}
