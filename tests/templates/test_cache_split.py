"""Issue 13 item 4: Rails' cache apart from Sidekiq's jobs, and a replica of Sidekiq's Redis.

Both are options, off by default: the default stack keeps exactly its one Redis. The
template is read through the same evaluator the cost estimate uses, with the values an
operator would give.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

from scripts.template_values import Evaluator
from templates import parameters
from tests.support import props

CACHE_SPLIT = {"SeparateCacheNodeType": "cache.t4g.small"}


NO_VALUE = object()


def resolved(template: dict[str, Any], name: str, **values: str) -> dict[str, Any] | None:
    """`name`'s properties with every Fn::If decided for these values (references to other
    resources kept as they are); None when the resource is not created."""
    evaluator = Evaluator(template, {**_defaults(template), **values})
    if not evaluator.creates(name):
        return None
    return _decide(evaluator, props(template, name))


def _decide(evaluator: Evaluator, node: Any) -> Any:
    if isinstance(node, list):
        return [d for d in (_decide(evaluator, n) for n in node) if d is not NO_VALUE]
    if not isinstance(node, dict):
        return node
    if node == {"Ref": "AWS::NoValue"}:
        return NO_VALUE
    if set(node) == {"Fn::If"}:
        condition, when_true, when_false = node["Fn::If"]
        return _decide(evaluator, when_true if evaluator.condition(condition) else when_false)
    decided = {key: _decide(evaluator, value) for key, value in node.items()}
    return {key: value for key, value in decided.items() if value is not NO_VALUE}


def _defaults(template: dict[str, Any]) -> dict[str, str]:
    return {name: str(p["Default"]) for name, p in template["Parameters"].items() if "Default" in p}


# ---------------------------------------------------------------- off by default
def test_by_default_there_is_one_redis_exactly_as_before(template):
    assert resolved(template, "RailsCache") is None
    assert resolved(template, "RailsCacheParameterGroup") is None
    assert resolved(template, "RailsCacheMemoryAlarm") is None
    cache = resolved(template, "Cache")
    assert (cache["NumCacheClusters"], cache["AutomaticFailoverEnabled"]) == (1, False)
    # Absent, not false: a property that appears would update the group for nothing.
    assert "MultiAZEnabled" not in cache
    assert "SeparateCache" not in resolved(template, "AppSecretValues")


# ---------------------------------------------------------------- the cache-only Redis
def test_the_cache_only_redis_evicts_and_keeps_nothing(template):
    rails_cache = resolved(template, "RailsCache", **CACHE_SPLIT)
    assert rails_cache["CacheNodeType"] == {"Ref": "SeparateCacheNodeType"}
    settings = props(template, rails_cache["CacheParameterGroupName"]["Ref"])
    # Every key there can be recomputed: evict any, least recently used first.
    assert settings["Properties"]["maxmemory-policy"] == "allkeys-lru"
    assert rails_cache["SnapshotRetentionLimit"] == 0
    assert rails_cache["NumCacheClusters"] == 1


def test_the_cache_only_redis_is_the_same_engine_and_as_private_and_encrypted_as_the_main_one(template):
    main = props(template, "Cache")
    rails_cache = resolved(template, "RailsCache", **CACHE_SPLIT)
    settings = props(template, rails_cache["CacheParameterGroupName"]["Ref"])
    for key in ("Engine", "EngineVersion", "Port", "CacheSubnetGroupName", "SecurityGroupIds",
                "AtRestEncryptionEnabled", "TransitEncryptionEnabled"):
        assert rails_cache[key] == main[key], key
    assert settings["CacheParameterGroupFamily"] == props(
        template, main["CacheParameterGroupName"]["Ref"])["CacheParameterGroupFamily"]


def test_the_cache_only_redis_has_its_own_token_from_the_stacks_secret(template):
    rails_cache = template["Resources"]["RailsCache"]
    token = rails_cache["Properties"]["AuthToken"]
    assert token == {"Fn::Sub": "{{resolve:secretsmanager:${AppSecret}:SecretString:CACHE_REDIS_PASSWORD}}"}
    assert token != props(template, "Cache")["AuthToken"]
    # Resolved only once the function has filled the secret.
    assert "AppSecretValues" in rails_cache["DependsOn"]


def test_turning_the_cache_on_in_an_existing_stack_fills_its_token_first(template):
    # The function adds missing keys only when CloudFormation calls it: the option must
    # change its resource, or the Redis would resolve a key the secret does not have yet.
    off = resolved(template, "AppSecretValues")
    on = resolved(template, "AppSecretValues", **CACHE_SPLIT)
    assert on != off
    assert {k: v for k, v in on.items() if k != "SeparateCache"} == off


def test_the_sidekiq_redis_never_evicts_whether_or_not_the_cache_is_apart(template):
    for values in ({}, CACHE_SPLIT):
        cache = resolved(template, "Cache", **values)
        settings = props(template, cache["CacheParameterGroupName"]["Ref"])
        assert settings["Properties"]["maxmemory-policy"] == "noeviction"


def test_the_servers_learn_the_cache_only_redis_only_when_it_exists(template):
    for launch_template in ("WebLaunchTemplate", "WorkerLaunchTemplate"):
        for values, expected in (({}, ("", "")), (CACHE_SPLIT, ("RailsCache", "RailsCache"))):
            data = resolved(template, launch_template, **values)["LaunchTemplateData"]
            text, found = "", {}
            for part in data["UserData"]["Fn::Base64"]["Fn::Join"][1]:
                if isinstance(part, str):
                    text += part
                    continue
                key = re.search(r"(\w+)='$", text).group(1)
                if key.startswith("CACHE_REDIS_"):
                    found[key] = part["Fn::GetAtt"][0]
                    text += "value"
            # Off, the values are empty strings, kept in the text itself.
            for key in ("CACHE_REDIS_HOST", "CACHE_REDIS_PORT"):
                if f"\n{key}=''\n" in text:
                    found[key] = ""
            assert (found["CACHE_REDIS_HOST"], found["CACHE_REDIS_PORT"]) == expected, (
                launch_template, values)


def test_the_cache_only_redis_warns_when_it_stays_full(template):
    alarm = template["Resources"]["RailsCacheMemoryAlarm"]
    assert alarm["Condition"] == parameters.HAS_SEPARATE_CACHE
    assert alarm["Properties"]["Namespace"] == "AWS/ElastiCache"
    assert alarm["Properties"]["MetricName"] == "DatabaseMemoryUsagePercentage"
    (dimension,) = alarm["Properties"]["Dimensions"]
    assert dimension["Value"] == {"Fn::Join": ["", [{"Ref": "RailsCache"}, "-001"]]}
    assert resolved(template, "RailsCacheMemoryAlarm", **CACHE_SPLIT) is not None


# ---------------------------------------------------------------- the replica
@pytest.mark.parametrize(("mode", "nodes", "failover", "multi_az"), [
    ("none", 1, False, None),
    ("standby", 2, False, False),  # said, not left out: back from failover it must turn off
    ("failover", 2, True, True),
])
def test_the_sidekiq_redis_replica_in_each_mode(template, mode, nodes, failover, multi_az):
    cache = resolved(template, "Cache", CacheReplica=mode)
    assert cache["NumCacheClusters"] == nodes
    assert cache["AutomaticFailoverEnabled"] is failover
    assert cache.get("MultiAZEnabled") is multi_az
    # ElastiCache refuses failover without a replica, and Multi-AZ without failover.
    assert not failover or nodes >= 2
    assert not multi_az or failover
    assert (mode == "none") is ("MultiAZEnabled" not in cache)


def test_every_replica_mode_and_cache_node_type_is_an_update_in_place(template):
    # What the options change must not be create-only in CloudFormation's schema: a
    # replacement would be a new, empty Redis (Sidekiq's queued jobs and the feeds gone).
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(
        "us-east-1", "AWS::ElastiCache::ReplicationGroup").schema
    create_only = {p.removeprefix("/properties/") for p in schema["createOnlyProperties"]}
    variants = [resolved(template, "Cache", CacheReplica=mode, SeparateCacheNodeType=separate)
                for mode in parameters.CACHE_REPLICA_MODES
                for separate in ("", parameters.CACHE_NODE_TYPES[0])]
    changed = {key for variant in variants for key in set(variant) | set(variants[0])
               if variant.get(key) != variants[0].get(key)}
    assert changed == {"NumCacheClusters", "AutomaticFailoverEnabled", "MultiAZEnabled"}
    # CacheNodeType follows its parameter: a resize is an update too.
    assert props(template, "Cache")["CacheNodeType"] == {"Ref": "CacheNodeType"}
    assert not (changed | {"CacheNodeType"}) & create_only


def test_the_replica_steps_are_in_the_order_an_existing_stack_must_take_them(template):
    assert template["Parameters"]["CacheReplica"]["AllowedValues"] == ["none", "standby", "failover"]
    assert template["Parameters"]["CacheReplica"]["Default"] == "none"


# ---------------------------------------------------------------- lint, with the options on
LINT_REGIONS = ["us-east-1", "eu-central-1", "ap-northeast-1", "sa-east-1"]


@pytest.mark.parametrize("replica", ["standby", "failover"])
def test_cfn_lint_finds_nothing_with_the_options_on(template, replica):
    # cfn-lint reads parameter defaults when it resolves values: make the options the defaults.
    on = copy.deepcopy(template)
    on["Parameters"]["SeparateCacheNodeType"]["Default"] = "cache.t4g.small"
    on["Parameters"]["CacheReplica"]["Default"] = replica
    matches = lint(json.dumps(on), config=ManualArgs(regions=LINT_REGIONS))
    assert [f"{m.rule.id} {m.message}" for m in matches] == []
