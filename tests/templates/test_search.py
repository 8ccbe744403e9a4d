"""Full-text search (SearchEnabled): nothing with it off; with it on, a private, encrypted
OpenSearch domain that only the servers reach, as a user whose password never appears
in the template, wired to every server and alarmed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scripts import parameter_files
from scripts.template_values import Evaluator, parameter_values
from templates import parameters
from templates.search import (
    SEARCH_DEPLOY_FAILED,
    SEARCH_DOMAIN,
    SEARCH_MARKER_INDEX,
    SEARCH_PRESETS,
    SEARCH_SERVICE_NAME,
    SEARCH_SERVICE_ROLE,
)

ON = {"SearchEnabled": "true"}
SEARCH_RESOURCES = {
    "SearchDomain",
    "SearchSecurityGroup",
    "SearchServiceLinkedRole",
    "SearchClusterRedAlarm",
    "SearchClusterYellowAlarm",
    "SearchStorageAlarm",
    "SearchDeployAlarm",
    "SearchDeployFailureFilter",
}
LAUNCH_TEMPLATES = ("WebLaunchTemplate", "WorkerLaunchTemplate")


def resolve(ev: Evaluator, node: Any) -> Any:
    """The node with every Fn::If and parameter Ref resolved (AWS::NoValue dropped)."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, when_true, when_false = node["Fn::If"]
            return resolve(ev, when_true if ev.condition(name) else when_false)
        if set(node) == {"Ref"} and node["Ref"] in ev.values:
            return ev.values[node["Ref"]]
        if node == {"Ref": "AWS::NoValue"}:
            return None
        return {k: r for k, v in node.items() if (r := resolve(ev, v)) is not None}
    if isinstance(node, list):
        return [r for v in node if (r := resolve(ev, v)) is not None]
    return node


def evaluator(template: dict[str, Any], **given: str) -> Evaluator:
    return Evaluator(template, {**parameter_values(template, given), "AWS::Region": "us-east-1"})


def created(template: dict[str, Any], ev: Evaluator) -> set[str]:
    return {name for name in template["Resources"] if ev.creates(name)}


def domain(template: dict[str, Any], **given: str) -> dict[str, Any]:
    ev = evaluator(template, **{**ON, **given})
    assert ev.creates(SEARCH_DOMAIN)
    return resolve(ev, template["Resources"][SEARCH_DOMAIN])


def stack_env(template: dict[str, Any], launch_template: str, **given: str) -> dict[str, Any]:
    """KEY -> value of a launch template's stack.env (user data), resolved for `given`."""
    ev = evaluator(template, **given)
    data = template["Resources"][launch_template]["Properties"]["LaunchTemplateData"]
    parts = resolve(ev, data["UserData"]["Fn::Base64"]["Fn::Join"][1])
    return {
        part[:-2]: parts[i + 1]
        for i, part in enumerate(parts)
        if isinstance(part, str) and part.endswith("='") and "\n" not in part
    }


# ---------------------------------------------------------------- off


def test_with_search_off_nothing_of_it_is_created(template):
    ev = evaluator(template)
    assert SEARCH_RESOURCES <= set(template["Resources"])
    assert not SEARCH_RESOURCES & created(template, ev)
    for name in LAUNCH_TEMPLATES:
        env = stack_env(template, name)
        assert env["ES_ENABLED"] == "false"
        assert all(env[k] == "" for k in ("ES_HOST", "ES_PORT", "ES_USER", "ES_PRESET"))


def test_turning_search_on_adds_only_search_resources(template):
    off, on = created(template, evaluator(template)), created(template, evaluator(template, **ON))
    assert on - off == SEARCH_RESOURCES - {"SearchClusterYellowAlarm"}
    assert off <= on


def test_the_dashboard_names_no_alarm_that_may_not_exist(template):
    body = json.dumps(template["Resources"]["Dashboard"]["Properties"]["DashboardBody"])
    assert "Search" not in body


# ---------------------------------------------------------------- the domain


def test_the_domain_is_encrypted_everywhere_and_speaks_only_modern_https(template):
    props = domain(template)["Properties"]
    assert props["EncryptionAtRestOptions"] == {"Enabled": True}
    assert props["NodeToNodeEncryptionOptions"] == {"Enabled": True}
    assert props["DomainEndpointOptions"] == {
        "EnforceHTTPS": True,
        "TLSSecurityPolicy": "Policy-Min-TLS-1-2-PFS-2023-10",
    }
    assert props["EBSOptions"] == {"EBSEnabled": True, "VolumeType": "gp3", "VolumeSize": "10"}


def test_the_engine_is_opensearch_2_which_mastodon_works_with(template):
    # OpenSearch 3 makes Mastodon's admin dashboard report an incompatible version.
    version = domain(template)["Properties"]["EngineVersion"]
    assert version.startswith("OpenSearch_2.")


def test_only_the_internal_user_gets_in_with_a_password_from_the_stacks_secret(template):
    security = domain(template)["Properties"]["AdvancedSecurityOptions"]
    assert security["Enabled"] is True and security["InternalUserDatabaseEnabled"] is True
    user = security["MasterUserOptions"]
    assert user["MasterUserName"] == "mastodon"
    assert user["MasterUserPassword"] == {
        "Fn::Sub": "{{resolve:secretsmanager:${AppSecret}:SecretString:ES_PASS}}"
    }
    # The domain waits for the function that generates the password.
    assert "AppSecretValues" in domain(template)["DependsOn"]


def test_the_access_policy_names_no_iam_principal_so_basic_auth_works(template):
    [statement] = domain(template)["Properties"]["AccessPolicies"]["Statement"]
    assert statement["Principal"] == {"AWS": "*"}
    assert statement["Effect"] == "Allow" and statement["Action"] == "es:ESHttp*"


@pytest.mark.parametrize(
    ("count", "subnets", "zones", "preset"),
    [
        ("1", ["DataSubnetA"], None, SEARCH_PRESETS["single"]),
        ("2", ["DataSubnetA", "DataSubnetB"], 2, SEARCH_PRESETS["small"]),
        ("4", ["DataSubnetA", "DataSubnetB"], 2, SEARCH_PRESETS["small"]),
        ("6", ["DataSubnetA", "DataSubnetB"], 2, SEARCH_PRESETS["large"]),
    ],
)
def test_nodes_sit_in_one_data_subnet_per_zone_and_mastodon_gets_the_matching_preset(
    template, count, subnets, zones, preset
):
    props = domain(template, SearchInstanceCount=count)["Properties"]
    cluster = props["ClusterConfig"]
    assert cluster["InstanceCount"] == count
    assert props["VPCOptions"]["SubnetIds"] == [{"Ref": s} for s in subnets]
    assert cluster["ZoneAwarenessEnabled"] is (zones is not None)
    assert cluster.get("ZoneAwarenessConfig") == ({"AvailabilityZoneCount": zones} if zones else None)
    for name in LAUNCH_TEMPLATES:
        assert stack_env(template, name, **ON, SearchInstanceCount=count)["ES_PRESET"] == preset


def test_only_the_servers_reach_the_domain_and_only_on_443(template):
    ev = evaluator(template, **ON)
    group = resolve(ev, template["Resources"]["SearchSecurityGroup"])["Properties"]
    assert domain(template)["Properties"]["VPCOptions"]["SecurityGroupIds"] == [
        {"Ref": "SearchSecurityGroup"}
    ]
    [rule] = group["SecurityGroupIngress"]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 443, 443)
    assert rule["SourceSecurityGroupId"] == {"Ref": "ServerSecurityGroup"}
    assert [e["CidrIp"] for e in group["SecurityGroupEgress"]] == ["127.0.0.1/32"]


@pytest.mark.parametrize("create", ["true", "false"])
def test_the_service_linked_role_is_created_only_when_asked_and_never_deleted(template, create):
    ev = evaluator(template, **ON, SearchCreateServiceLinkedRole=create)
    role = template["Resources"][SEARCH_SERVICE_ROLE]
    assert ev.creates(SEARCH_SERVICE_ROLE) is (create == "true")
    assert role["Properties"]["AWSServiceName"] == SEARCH_SERVICE_NAME
    assert role["DeletionPolicy"] == "Retain"
    # The domain refers to it (so waits for it) exactly when the stack creates it.
    tags = {
        t["Key"]: t["Value"]
        for t in domain(template, SearchCreateServiceLinkedRole=create)["Properties"]["Tags"]
    }
    assert (tags["mastodon:service-linked-role"] == {"Ref": SEARCH_SERVICE_ROLE}) is (create == "true")


def test_turning_search_on_again_is_said_to_need_the_service_role_left_out(template):
    # The role is retained when search is turned off, so creating it again would fail.
    description = " ".join(template["Parameters"]["SearchCreateServiceLinkedRole"]["Description"].split())
    assert "false when turning search on again" in description
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert "set it to `false` when turning search on again after turning it off" in readme


def test_turning_search_on_runs_the_secret_function_again_to_add_the_password(template):
    props = template["Resources"]["AppSecretValues"]["Properties"]
    assert props["SearchEnabled"] == {"Fn::If": ["HasSearch", "true", {"Ref": "AWS::NoValue"}]}


# ---------------------------------------------------------------- the servers


@pytest.mark.parametrize("launch_template", LAUNCH_TEMPLATES)
def test_every_server_is_given_the_domain_over_https_on_443(template, launch_template):
    env = stack_env(template, launch_template, **ON)
    assert env["ES_ENABLED"] == "true"
    assert env["ES_HOST"] == {
        "Fn::Join": ["", ["https://", {"Fn::GetAtt": [SEARCH_DOMAIN, "DomainEndpoint"]}]]
    }
    assert (env["ES_PORT"], env["ES_USER"]) == ("443", "mastodon")
    assert (env["SEARCH_MARKER_INDEX"], env["SEARCH_DEPLOY_FAILED"]) == (
        SEARCH_MARKER_INDEX,
        SEARCH_DEPLOY_FAILED,
    )
    assert "ES_PASS" not in env  # it comes from the secret at boot


# ---------------------------------------------------------------- alarms


def test_cluster_status_storage_and_a_failed_index_creation_alarm_the_topic(template):
    ev = evaluator(template, **ON)
    alarms = {
        name: resolve(ev, template["Resources"][name])["Properties"]
        for name in SEARCH_RESOURCES
        if name.endswith("Alarm") and ev.creates(name)
    }
    assert set(alarms) == {"SearchClusterRedAlarm", "SearchStorageAlarm", "SearchDeployAlarm"}
    for props in alarms.values():
        assert props["AlarmActions"] == [{"Ref": "AlertTopic"}]
    assert alarms["SearchClusterRedAlarm"]["MetricName"] == "ClusterStatus.red"
    [free] = [q for q in alarms["SearchStorageAlarm"]["Metrics"] if "MetricStat" in q]
    assert free["MetricStat"]["Metric"]["MetricName"] == "FreeStorageSpace"
    assert free["MetricStat"]["Stat"] == "Minimum"


def test_yellow_alarms_only_where_a_replica_can_be_placed(template):
    # One node keeps no replica (single_node_cluster): yellow would mean nothing.
    assert not evaluator(template, **ON).creates("SearchClusterYellowAlarm")
    assert evaluator(template, **ON, SearchInstanceCount="2").creates("SearchClusterYellowAlarm")


def test_the_failure_alarm_counts_the_lines_search_sh_writes(template):
    props = template["Resources"]["SearchDeployFailureFilter"]["Properties"]
    assert props["LogGroupName"] == {"Ref": "SystemLogs"}
    assert props["FilterPattern"] == f'"{SEARCH_DEPLOY_FAILED}"'
    script = (Path(__file__).resolve().parents[2] / "templates/instance/search.sh").read_text()
    assert 'report "$SEARCH_DEPLOY_FAILED: $1"' in script
    alarm = template["Resources"]["SearchDeployAlarm"]["Properties"]
    metric = props["MetricTransformations"][0]
    assert (alarm["MetricName"], alarm["Namespace"]) == (metric["MetricName"], metric["MetricNamespace"])


# ---------------------------------------------------------------- bad input


def test_an_odd_node_count_cannot_be_spread_over_two_zones(template):
    allowed = template["Parameters"]["SearchInstanceCount"]["AllowedValues"]
    assert allowed[0] == "1" and all(int(n) % 2 == 0 for n in allowed[1:])


@pytest.mark.parametrize(
    ("instance_type", "size", "refused"),
    [
        ("t3.small.search", "100", False),
        ("t3.small.search", "200", True),
        ("t3.medium.search", "200", False),
        ("t3.medium.search", "500", True),
        ("r7g.large.search", "1000", False),
    ],
)
def test_a_volume_larger_than_the_node_type_takes_is_refused_before_anything_is_created(
    template, instance_type, size, refused
):
    values = {
        "DomainName": "social.example.com",
        "HostedZoneId": "Z0123456789ABCDEFGHIJ",
        "AlertEmail": "admin@example.com",
        **ON,
        "SearchInstanceType": instance_type,
        "SearchVolumeSize": size,
    }
    problems = [p for p in parameter_files.problems(template, values, "eu-central-1") if "Search" in p]
    assert bool(problems) is refused, problems
    if refused:
        assert f"{instance_type} takes at most" in problems[0]


def test_the_search_parameters_have_their_own_console_group(template):
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    [group] = [g for g in groups if g["Label"]["default"] == parameters.GROUP_SEARCH]
    assert set(group["Parameters"]) == {
        "SearchEnabled",
        "SearchInstanceType",
        "SearchInstanceCount",
        "SearchVolumeSize",
        "SearchCreateServiceLinkedRole",
    }
