"""The built template, deployed into moto's CloudFormation: a smoke test.

moto creates the network, load balancer, Auto Scaling groups (with instances
registered in their target groups), RDS, S3, SSM, IAM, Lambda, SNS and log groups
for real. It silently skips CloudFront, ElastiCache, Secrets Manager and custom
resources, never resolves dynamic references and evaluates no CreationPolicy. The
template is therefore prepared (what moto cannot hold is removed, references to it
become placeholders) and the assertions cover only what moto really creates;
nothing skipped is counted as tested here: the template tests and cfn-lint cover it.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.support import refs

pytestmark = pytest.mark.slow

REGION = "us-east-1"
# Types moto's CloudFormation ignores, or that would need Lambda to run in Docker.
SKIPPED_PREFIXES = ("AWS::CloudFront::", "AWS::ElastiCache::", "AWS::SecretsManager::", "Custom::",
                    "AWS::SES::", "AWS::CertificateManager::", "AWS::Route53::",
                    "AWS::CloudWatch::", "AWS::WAFv2::")
PLACEHOLDERS = {
    "CloudFrontPrefixList": {"Id": "pl-3b927c52"},
    "AvailabilityZones": {"Zone1": "us-east-1a", "Zone2": "us-east-1b"},
    "Cache": {"PrimaryEndPoint.Address": "cache.internal", "PrimaryEndPoint.Port": "6379"},
    "Distribution": {"DomainName": "d111111abcdef8.cloudfront.net"},
}
PARAMETERS = {
    "DomainName": "social.example.com",
    "AlertEmail": "admin@example.com",
    "HostedZoneId": "",
    "CloudFrontCertificateArn":
        "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012",
    "LoadBalancerCertificateArn":
        "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012",
    "SmtpServer": "smtp.example.net",
    "SmtpLogin": "mastodon",
    "SmtpPasswordSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:smtp-AbCdEf",
    "WebMinSize": "2",
    "WebMaxSize": "3",
}


def _replace(node: Any, dropped: set[str]) -> Any:
    """Swap references to dropped resources for placeholder values."""
    if isinstance(node, dict):
        if "Ref" in node and node["Ref"] in dropped:
            return f"placeholder-{node['Ref']}"
        if "Fn::GetAtt" in node:
            name, attribute = node["Fn::GetAtt"]
            if name in dropped:
                return PLACEHOLDERS.get(name, {}).get(attribute, f"placeholder-{name}-{attribute}")
        if "Fn::Sub" in node and isinstance(node["Fn::Sub"], str):
            text = node["Fn::Sub"]
            for name in dropped:
                for attribute, value in PLACEHOLDERS.get(name, {}).items():
                    text = text.replace(f"${{{name}.{attribute}}}", value)
                text = text.replace(f"${{{name}}}", f"placeholder-{name}")
            return {"Fn::Sub": text}
        return {k: _replace(v, dropped) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, dropped) for v in node]
    if isinstance(node, str) and node.startswith("{{resolve:ssm:/aws/service/"):
        return "placeholder-resolved-ssm"
    return node


def prepare_for_moto(template: dict[str, Any], image_id: str) -> dict[str, Any]:
    prepared = copy.deepcopy(template)
    dropped = {n for n, r in prepared["Resources"].items() if r["Type"].startswith(SKIPPED_PREFIXES)}
    for name in dropped:
        del prepared["Resources"][name]
    for resource in prepared["Resources"].values():
        if isinstance(resource.get("DependsOn"), list):
            resource["DependsOn"] = [d for d in resource["DependsOn"] if d not in dropped]
            if not resource["DependsOn"]:
                del resource["DependsOn"]
    prepared["Outputs"] = {n: o for n, o in prepared["Outputs"].items() if not refs(o) & dropped}
    prepared["Resources"] = _replace(prepared["Resources"], dropped)
    prepared.pop("Rules", None)
    for name in ("WebLaunchTemplate", "WorkerLaunchTemplate"):
        prepared["Resources"][name]["Properties"]["LaunchTemplateData"]["ImageId"] = image_id
    # moto 5.2 hands the DBParameterGroup object, not its name, to a Ref (its bug).
    del prepared["Resources"]["Database"]["Properties"]["DBParameterGroupName"]
    for function in (r for r in prepared["Resources"].values() if r["Type"] == "AWS::Lambda::Function"):
        function["Properties"].pop("Layers")
    return prepared


@pytest.fixture(scope="module")
def deployed(template):
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        # moto checks that the listener's certificate exists.
        certificate = boto3.client("acm", region_name=REGION).request_certificate(
            DomainName=PARAMETERS["DomainName"], ValidationMethod="DNS")["CertificateArn"]
        parameters = {**PARAMETERS, "LoadBalancerCertificateArn": certificate}
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        cloudformation.create_stack(
            StackName="mastodon",
            TemplateBody=json.dumps(prepare_for_moto(template, image_id)),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
        )
        stack = cloudformation.describe_stacks(StackName="mastodon")["Stacks"][0]
        created = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in
                   cloudformation.list_stack_resources(StackName="mastodon")["StackResourceSummaries"]}
        yield stack, created


def test_the_stack_creates_completely(deployed):
    stack, _ = deployed
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["InstanceUrl"] == "https://social.example.com/"


def test_the_vpc_spans_two_zones_with_isolated_data_subnets(deployed):
    _, created = deployed
    ec2 = boto3.client("ec2", region_name=REGION)
    subnets = ec2.describe_subnets(SubnetIds=[created[f"{kind}Subnet{z}"]
                                              for kind in ("Public", "Data") for z in "AB"])["Subnets"]
    assert len({s["AvailabilityZone"] for s in subnets}) == 2
    tables = ec2.describe_route_tables(RouteTableIds=[created["DataRouteTable"]])["RouteTables"]
    assert all(route.get("GatewayId", "local") == "local" for route in tables[0]["Routes"])


def test_both_server_groups_run_and_the_web_servers_sit_in_both_target_groups(deployed):
    _, created = deployed
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    groups = {g["AutoScalingGroupName"]: g for g in autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[created["WebAutoScalingGroup"], created["WorkerAutoScalingGroup"]],
    )["AutoScalingGroups"]}
    web, worker = groups[created["WebAutoScalingGroup"]], groups[created["WorkerAutoScalingGroup"]]
    assert len(web["Instances"]) == 2 and len(worker["Instances"]) == 1
    elbv2 = boto3.client("elbv2", region_name=REGION)
    web_ids = {i["InstanceId"] for i in web["Instances"]}
    for group in ("WebTargetGroup", "StreamingTargetGroup"):
        health = elbv2.describe_target_health(TargetGroupArn=created[group])["TargetHealthDescriptions"]
        assert {h["Target"]["Id"] for h in health} == web_ids


def test_servers_boot_with_their_role_and_imdsv2(deployed):
    _, created = deployed
    ec2 = boto3.client("ec2", region_name=REGION)
    for group, role in (("WebLaunchTemplate", "web"), ("WorkerLaunchTemplate", "worker")):
        version = ec2.describe_launch_template_versions(LaunchTemplateId=created[group])[
            "LaunchTemplateVersions"][0]["LaunchTemplateData"]
        assert version["MetadataOptions"]["HttpTokens"] == "required"
        user_data = base64.b64decode(version["UserData"]).decode()
        assert f"ROLE='{role}'" in user_data
        assert "LOCAL_DOMAIN='social.example.com'" in user_data
        assert "exec /opt/mastodon-aws/bootstrap.sh" in user_data


def test_the_load_balancer_listens_on_https_only_and_routes_streaming(deployed):
    _, created = deployed
    elbv2 = boto3.client("elbv2", region_name=REGION)
    listeners = elbv2.describe_listeners(LoadBalancerArn=created["LoadBalancer"])["Listeners"]
    assert [(listener["Port"], listener["Protocol"]) for listener in listeners] == [(443, "HTTPS")]
    # us-east-1 has CloudFront VPC origins: the balancer is internal, in the private subnets.
    (balancer,) = elbv2.describe_load_balancers(LoadBalancerArns=[created["LoadBalancer"]])["LoadBalancers"]
    assert balancer["Scheme"] == "internal"
    assert {z["SubnetId"] for z in balancer["AvailabilityZones"]} == {
        created["DataSubnetA"], created["DataSubnetB"]}
    rules = elbv2.describe_rules(ListenerArn=listeners[0]["ListenerArn"])["Rules"]
    streaming = next(r for r in rules if r["Priority"] == "10")
    paths = next(c for c in streaming["Conditions"] if c["Field"] == "path-pattern")
    assert set(paths.get("Values") or paths["PathPatternConfig"]["Values"]) == {
        "/api/v1/streaming", "/api/v1/streaming/*"}
    groups = elbv2.describe_target_groups(TargetGroupArns=[created["WebTargetGroup"],
                                                           created["StreamingTargetGroup"]])["TargetGroups"]
    assert {(g["Port"], g["HealthCheckPath"]) for g in groups} == {
        (3000, "/health"), (4000, "/api/v1/streaming/health")}


def test_the_database_is_private_encrypted_and_backed_up(deployed):
    _, created = deployed
    rds = boto3.client("rds", region_name=REGION)
    (database,) = rds.describe_db_instances(DBInstanceIdentifier=created["Database"])["DBInstances"]
    assert database["PubliclyAccessible"] is False
    assert database["StorageEncrypted"] is True
    assert database["BackupRetentionPeriod"] == 7
    assert database["Engine"] == "postgres"


def test_the_media_bucket_is_encrypted(deployed):
    # moto's CloudFormation applies a bucket's encryption and tags, not its versioning,
    # public access block or policy: the template tests cover those.
    _, created = deployed
    s3 = boto3.client("s3", region_name=REGION)
    bucket = created["MediaBucket"]
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_version_parameters_and_log_groups_exist(deployed, template):
    # deployed-version is a custom resource (tested in tests/lambdas): moto skips it.
    ssm = boto3.client("ssm", region_name=REGION)
    # Its value comes from the deployed-version custom resource, which moto skips.
    assert ssm.get_parameter(Name="/mastodon/mastodon/desired-version")["Parameter"]["Name"]
    logs = boto3.client("logs", region_name=REGION)
    groups = logs.describe_log_groups(logGroupNamePrefix="/mastodon/mastodon/")["logGroups"]
    names = {g["logGroupName"] for g in groups}
    assert {f"/mastodon/mastodon/{p}" for p in ("web", "streaming", "sidekiq", "system")} <= names
    assert all(int(g.get("retentionInDays", 0)) == 30 for g in groups)


def test_the_lambda_functions_are_created_from_inline_code(deployed):
    _, created = deployed
    lambda_ = boto3.client("lambda", region_name=REGION)
    for name in ("AppSecretsFunction", "PrefixListFunction"):
        function = lambda_.get_function(FunctionName=created[name])["Configuration"]
        assert function["Runtime"] == "python3.13"
        assert function["Handler"] == "index.lambda_handler"
