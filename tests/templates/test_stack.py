"""The architecture of DESIGN.md, read off the built template."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from scripts.template_values import Evaluator, parameter_values
from templates import capacity, compute, parameters
from templates.options import MASTODON_VERSION, RELEASE_TAG
from tests.support import one, props, resources


def _behaviors(template):
    config = props(template, "Distribution")["DistributionConfig"]
    return config, {b["PathPattern"]: b for b in config["CacheBehaviors"]}


def test_cloudfront_serves_the_mastodon_domain_with_its_certificate(template):
    config, _ = _behaviors(template)
    assert config["Aliases"] == [{"Ref": "DomainName"}]
    assert config["ViewerCertificate"]["AcmCertificateArn"] == {"Fn::If": [
        "HasHostedZone", {"Fn::GetAtt": ["CloudFrontCertificate", "Arn"]},
        {"Ref": "CloudFrontCertificateArn"}]}
    assert config["ViewerCertificate"]["SslSupportMethod"] == "sni-only"


def test_media_comes_from_the_private_bucket_through_origin_access_control(template):
    config, behaviors = _behaviors(template)
    media = behaviors["/system/*"]
    origin = next(o for o in config["Origins"] if o["Id"] == media["TargetOriginId"])
    assert origin["DomainName"] == {"Fn::GetAtt": ["MediaBucket", "RegionalDomainName"]}
    assert "OriginAccessControlId" in origin
    assert media["AllowedMethods"] == ["GET", "HEAD", "OPTIONS"]
    (association,) = media["FunctionAssociations"]
    assert association["EventType"] == "viewer-request"
    assert association["FunctionARN"] == {"Fn::GetAtt": ["MediaPathFunction", "FunctionARN"]}


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_media_function_turns_a_viewers_path_into_the_key_mastodon_wrote(template):
    # Mastodon's S3 keys have no "/system" (S3_ALIAS_HOST serves them under it).
    code = props(template, "MediaPathFunction")["FunctionCode"]
    event = {"request": {"uri": "/system/media_attachments/files/1/original/a.png", "method": "GET"}}
    run = subprocess.run(["node", "-e", f"{code}\nconsole.log(JSON.stringify(handler({json.dumps(event)})))"],
                         capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(run.stdout)["uri"] == "/media_attachments/files/1/original/a.png"


def test_static_files_reach_puma_with_the_host_alone_and_the_rest_with_everything(template):
    # What is cached, under which key, is tested in test_edge_caching.py.
    config, behaviors = _behaviors(template)
    for path in ("/packs/*", "/assets/*", "/emoji/*", "/sounds/*", "/sw.js"):
        # Host reaches the origin, or TLS to the load balancer's certificate fails.
        policy = props(template, behaviors[path]["OriginRequestPolicyId"]["Ref"])
        assert policy["OriginRequestPolicyConfig"]["HeadersConfig"]["Headers"] == ["Host"]
        assert behaviors[path]["AllowedMethods"] == ["GET", "HEAD"]
    default = config["DefaultCacheBehavior"]
    all_viewer = "216adef6-5c7f-47e4-b989-5492eafa07d3"
    for behavior in (default, behaviors["/api/v1/streaming*"]):
        assert behavior["OriginRequestPolicyId"] == all_viewer  # Host, cookies, query, WebSocket headers
        assert set(behavior["AllowedMethods"]) >= {"GET", "POST", "PUT", "DELETE", "PATCH"}


def test_cloudfront_proves_itself_to_the_load_balancer_with_a_secret_header(template):
    config, _ = _behaviors(template)
    origin = next(o for o in config["Origins"] if "CustomOriginConfig" in o)
    (header,) = origin["OriginCustomHeaders"]
    rules = resources(template, "AWS::ElasticLoadBalancingV2::ListenerRule")
    for rule in rules.values():
        header_conditions = [c for c in rule["Properties"]["Conditions"] if c["Field"] == "http-header"]
        assert header_conditions == [{"Field": "http-header", "HttpHeaderConfig": {
            "HttpHeaderName": header["HeaderName"], "Values": [header["HeaderValue"]]}}]
    _, listener = one(template, "AWS::ElasticLoadBalancingV2::Listener")
    (default,) = listener["Properties"]["DefaultActions"]
    assert default["Type"] == "fixed-response" and default["FixedResponseConfig"]["StatusCode"] == "403"


def test_streaming_paths_go_to_the_streaming_servers_and_the_rest_to_puma(template):
    streaming = props(template, "StreamingListenerRule")
    paths = next(c for c in streaming["Conditions"] if c["Field"] == "path-pattern")
    assert paths["PathPatternConfig"]["Values"] == ["/api/v1/streaming", "/api/v1/streaming/*"]
    assert streaming["Actions"][0]["TargetGroupArn"] == {"Ref": "StreamingTargetGroup"}
    web = props(template, "WebListenerRule")
    assert web["Actions"][0]["TargetGroupArn"] == {"Ref": "WebTargetGroup"}
    assert streaming["Priority"] < web["Priority"]


def test_target_groups_check_mastodon_health_and_drain_quickly(template):
    web, streaming = props(template, "WebTargetGroup"), props(template, "StreamingTargetGroup")
    assert (web["Port"], web["HealthCheckPath"]) == (3000, "/health")
    assert (streaming["Port"], streaming["HealthCheckPath"]) == (4000, "/api/v1/streaming/health")
    for group in (web, streaming):
        attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
        assert int(attributes["deregistration_delay.timeout_seconds"]) <= 60
    web_attributes = {a["Key"]: a["Value"] for a in web["TargetGroupAttributes"]}
    assert web_attributes["stickiness.enabled"] == "true"


def test_exactly_one_worker_runs_sidekiq_and_is_replaced_terminate_first(template):
    worker = template["Resources"]["WorkerAutoScalingGroup"]
    assert (worker["Properties"]["MinSize"], worker["Properties"]["MaxSize"]) == ("1", "1")
    rolling = worker["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["MinInstancesInService"] == 0 and rolling["MaxBatchSize"] == 1
    assert "TargetGroupARNs" not in worker["Properties"]


def test_the_web_group_serves_both_target_groups_and_is_replaced_serve_first(template):
    web = template["Resources"]["WebAutoScalingGroup"]
    assert web["Properties"]["TargetGroupARNs"] == [
        {"Ref": "WebTargetGroup"}, {"Ref": "StreamingTargetGroup"}]
    assert web["Properties"]["HealthCheckType"] == "ELB"
    assert web["UpdatePolicy"]["AutoScalingReplacingUpdate"]["WillReplace"] is True


def test_creation_waits_for_every_server_to_signal(template):
    web = template["Resources"]["WebAutoScalingGroup"]["CreationPolicy"]["ResourceSignal"]
    worker = template["Resources"]["WorkerAutoScalingGroup"]["CreationPolicy"]["ResourceSignal"]
    assert web["Count"] == {"Ref": "WebMinSize"} and worker["Count"] == 1
    # As long as a boot's worst case (tests/instance/test_instance_boot_limits.py).
    assert web["Timeout"] == worker["Timeout"] == compute.SIGNAL_TIMEOUT


def test_servers_run_amazon_linux_2023_graviton_unless_x86_is_chosen(template):
    image = props(template, "WebLaunchTemplate")["LaunchTemplateData"]["ImageId"]
    condition, arm, x86 = image["Fn::If"]
    assert condition == "WebIsArm64"
    assert arm == "{{resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64}}"
    assert x86.endswith("al2023-ami-kernel-default-x86_64}}")
    mapping = template["Mappings"]["InstanceArchitecture"]
    assert mapping[capacity.DEFAULT_WEB_INSTANCE_TYPE]["Architecture"] == "arm64"


def test_root_volumes_are_the_ami_snapshot_size_of_8_gib(template):
    # A launch template may not ask for less than the AMI's snapshot (8 GiB for AL2023);
    # the instance scripts make room before every image pull instead.
    for name in ("WebLaunchTemplate", "WorkerLaunchTemplate"):
        [device] = props(template, name)["LaunchTemplateData"]["BlockDeviceMappings"]
        assert device["DeviceName"] == "/dev/xvda"
        assert (device["Ebs"]["VolumeSize"], device["Ebs"]["VolumeType"]) == (8, "gp3")


def test_each_server_reads_only_what_it_needs(template):
    statements = props(template, compute.WEB_SERVER_ROLE)["Policies"][0]["PolicyDocument"]["Statement"]
    worker = props(template, compute.WORKER_SERVER_ROLE)["Policies"][0]["PolicyDocument"]["Statement"]
    actions = {a for s in statements for a in s["Action"]}
    launch = {"autoscaling:DescribeAutoScalingInstances", "autoscaling:CompleteLifecycleAction",
              "elasticloadbalancing:DescribeTargetHealth"}
    # The worker (which handles remote media) reads the same, but cannot touch web boots.
    assert {a for s in worker for a in s["Action"]} == actions - launch
    assert actions == {
        "secretsmanager:GetSecretValue", "ssm:GetParameter", "ec2:GetManagedPrefixListEntries",
        "logs:CreateLogStream", "logs:PutLogEvents", "cloudformation:SignalResource",
        "cloudformation:DescribeStackResource",
        "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "ec2:CreateTags",
        # A web server lets its own launch hook go on, then waits for the target groups.
        *launch,
        # The SSM Agent (Session Manager, Run Command) instead of AmazonSSMManagedInstanceCore.
        *compute.SSM_AGENT_INSTANCE_ACTIONS, *compute.SSM_AGENT_CHANNEL_ACTIONS,
    }
    (tagging,) = [s for s in statements if s["Action"] == ["ec2:CreateTags"]]
    # Only its own instance (bootstrap.sh tags the version it booted), only the version key.
    assert tagging["Condition"]["StringEquals"] == {"aws:ARN": "${ec2:SourceInstanceARN}"}
    assert tagging["Condition"]["ForAllValues:StringEquals"] == {"aws:TagKeys": ["mastodon:version"]}
    assert "ManagedPolicyArns" not in props(template, compute.WEB_SERVER_ROLE)
    assert "ManagedPolicyArns" not in props(template, compute.WORKER_SERVER_ROLE)
    # The launch hook: only this stack's web group, found by the tags CloudFormation puts
    # on it (the role is created before the group and cannot name it).
    (hook,) = [s for s in statements if s["Action"] == ["autoscaling:CompleteLifecycleAction"]]
    assert hook["Condition"]["StringEquals"] == {
        "autoscaling:ResourceTag/aws:cloudformation:stack-id": {"Ref": "AWS::StackId"},
        "autoscaling:ResourceTag/aws:cloudformation:logical-id": compute.WEB_GROUP,
    }


def test_the_database_is_postgresql_with_backups_and_growing_storage(template):
    database = props(template, "Database")
    assert database["Engine"] == "postgres" and int(database["EngineVersion"].split(".")[0]) >= 14
    assert database["BackupRetentionPeriod"] == {"Ref": "DatabaseBackupRetentionDays"}
    assert database["MaxAllocatedStorage"] == {"Ref": "DatabaseMaxAllocatedStorage"}
    assert database["MultiAZ"] == {"Fn::If": ["IsDatabaseMultiAZ", True, False]}


def test_the_database_max_connections_is_the_one_capacity_plans_for(template):
    group = props(template, "DatabaseParameterGroup")
    assert group["Parameters"]["max_connections"] == {
        "Fn::FindInMap": ["DatabaseConnections", {"Ref": "DatabaseInstanceClass"}, "MaxConnections"]}
    mapping = template["Mappings"]["DatabaseConnections"]
    for database in capacity.DATABASE_CLASSES:
        assert int(mapping[database.name]["MaxConnections"]) == database.max_connections
        # At or below RDS's own default for the memory, so the server can afford it.
        assert database.max_connections <= database.memory_mib * 1024 * 1024 // 9531392


def test_the_cache_is_redis_compatible_7_or_later(template):
    cache = props(template, "Cache")
    assert cache["Engine"] in ("valkey", "redis")
    assert int(cache["EngineVersion"].split(".")[0]) >= 7


def test_with_a_hosted_zone_certificates_and_records_are_created(template):
    resources_ = template["Resources"]
    assert resources_["LoadBalancerCertificate"]["Condition"] == "HasHostedZone"
    assert resources_["LoadBalancerCertificate"]["Properties"]["ValidationMethod"] == "DNS"
    assert resources_["CloudFrontCertificate"]["Condition"] == "HasHostedZone"
    for record_type in ("A", "AAAA"):
        record = resources_[f"DomainRecord{record_type}"]
        assert record["Condition"] == "HasHostedZone"
        assert record["Properties"]["AliasTarget"]["HostedZoneId"] == "Z2FDTNDATAQYW2"
    for n in (1, 2, 3):
        assert resources_[f"DkimRecord{n}"]["Condition"] == "UseSesWithHostedZone"
    assert not resources(template, "AWS::Route53::HostedZone"), "never creates a hosted zone"


def test_without_a_hosted_zone_the_outputs_list_the_records_to_create(template):
    outputs = template["Outputs"]
    assert outputs["DnsRecordsToCreate"]["Condition"] == "NoHostedZone"
    for n in (1, 2, 3):
        assert outputs[f"DkimRecord{n}ToCreate"]["Condition"] == "UseSesWithoutHostedZone"


def test_ses_sends_as_the_domain_with_dkim_or_an_external_server_takes_over(template):
    identity = template["Resources"]["EmailIdentity"]
    assert identity["Condition"] == "UseSes"
    assert identity["Properties"]["EmailIdentity"] == {"Ref": "DomainName"}
    user = template["Resources"]["SmtpUser"]
    (statement,) = user["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["ses:SendRawEmail"]
    assert "identity/${DomainName}" in statement["Resource"][0]["Fn::Sub"]
    secrets = props(template, "AppSecretValues")
    assert secrets["SmtpUserName"] == {"Fn::If": ["UseSes", {"Ref": "SmtpUser"}, ""]}


def test_version_parameters_start_at_the_pinned_release(template):
    assert RELEASE_TAG.fullmatch(MASTODON_VERSION)
    desired, deployed = (template["Resources"][n] for n in ("DesiredVersionParameter",
                                                           "DeployedVersionParameter"))
    # desired-version starts at what deployed-version reports: the pinned release on creation.
    assert desired["Type"] == "AWS::SSM::Parameter"
    assert desired["Properties"]["Value"] == {"Fn::GetAtt": ["DeployedVersionParameter", "ReportedValue"]}
    # The pinned release, unless InitialMastodonVersion names another first version.
    _, _, pinned = deployed["Properties"]["Value"]["Fn::If"]
    assert pinned == MASTODON_VERSION


def test_only_the_pipeline_moves_the_deployed_version(template):
    # A new build pinning another release must not rewrite the boot version behind the
    # pipeline's back: the stack writes it once (Custom::InitialParameter), never again.
    deployed = template["Resources"]["DeployedVersionParameter"]
    assert deployed["Type"] == "Custom::InitialParameter"
    assert deployed["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["InitialParameterFunction", "Arn"]}
    assert deployed["Properties"]["Name"] == {"Fn::Sub": "/mastodon/${AWS::StackName}/deployed-version"}


def test_every_process_and_function_logs_with_retention(template):
    groups = resources(template, "AWS::Logs::LogGroup")
    names = {g["Properties"]["LogGroupName"]["Fn::Sub"].rsplit("/", 1)[-1] for g in groups.values()}
    assert {"web", "streaming", "sidekiq", "system"} <= names
    assert all(g["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"} for g in groups.values())
    for name, function in resources(template, "AWS::Lambda::Function").items():
        assert function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] in groups, name


def test_functions_use_the_powertools_layer_of_the_stacks_region(template):
    for name, function in resources(template, "AWS::Lambda::Function").items():
        (layer,) = function["Properties"]["Layers"]
        assert layer.startswith("{{resolve:ssm:/aws/service/powertools/python/arm64/python3.13/"), name
        assert "ZipFile" in function["Properties"]["Code"], f"{name} is not self-contained"
        assert function["Properties"]["Timeout"] <= 900


def test_cloudfront_names_are_unique_per_stack_and_fit_64_characters(template):
    # CloudFront is global: two stacks named alike in two regions must not collide.
    named = {
        "MediaOriginAccessControl": ("OriginAccessControlConfig", "Name"),
        "MediaPathFunction": ("Name",),
        "AssetOriginRequestPolicy": ("OriginRequestPolicyConfig", "Name"),
        "MediaResponseHeadersPolicy": ("ResponseHeadersPolicyConfig", "Name"),
        "LoadBalancerVpcOrigin": ("VpcOriginEndpointConfig", "Name"),
    }
    for logical_id, path in named.items():
        name = props(template, logical_id)
        for key in path:
            name = name[key]
        separator, (prefix, purpose, unique) = name["Fn::Join"]
        assert unique == {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}
        uuid_length = 36
        assert len(separator.join([prefix, purpose])) + len(separator) + uuid_length <= 64, logical_id


def _in_region(template, region):
    return Evaluator(template, {**parameter_values(template), "AWS::Region": region})


@pytest.mark.parametrize("region", parameters.VPC_ORIGIN_REGIONS)
def test_where_cloudfront_has_vpc_origins_the_load_balancer_is_internal_and_private(template, region):
    ev = _in_region(template, region)
    balancer = props(template, "LoadBalancer")
    assert ev.value(balancer["Scheme"]) == "internal"
    assert [s["Ref"] for s in ev.value(balancer["Subnets"])] == ["DataSubnetA", "DataSubnetB"]
    assert ev.creates("LoadBalancerVpcOrigin")
    endpoint = props(template, "LoadBalancerVpcOrigin")["VpcOriginEndpointConfig"]
    assert endpoint["Arn"] == {"Ref": "LoadBalancer"}
    (origin,) = [o for o in props(template, "Distribution")["DistributionConfig"]["Origins"]
                 if o["Id"] == "load-balancer"]
    assert ev.value(origin["VpcOriginConfig"])["VpcOriginId"] == {
        "Fn::GetAtt": ["LoadBalancerVpcOrigin", "Id"]}
    assert ev.value(origin["CustomOriginConfig"]) is None
    # CloudFront still names the load balancer by its DNS name; the viewer's Host is what
    # its certificate matches.
    assert origin["DomainName"] == {"Fn::GetAtt": ["LoadBalancer", "DNSName"]}


@pytest.mark.parametrize("region", ["ap-southeast-6", "us-gov-west-1", "cn-north-1", "eu-west-9"])
def test_elsewhere_the_load_balancer_faces_the_internet_from_the_public_subnets(template, region):
    ev = _in_region(template, region)
    balancer = props(template, "LoadBalancer")
    assert ev.value(balancer["Scheme"]) == "internet-facing"
    assert [s["Ref"] for s in ev.value(balancer["Subnets"])] == ["PublicSubnetA", "PublicSubnetB"]
    assert not ev.creates("LoadBalancerVpcOrigin")
    (origin,) = [o for o in props(template, "Distribution")["DistributionConfig"]["Origins"]
                 if o["Id"] == "load-balancer"]
    assert ev.value(origin["VpcOriginConfig"]) is None
    assert ev.value(origin["CustomOriginConfig"])["OriginProtocolPolicy"] == "https-only"


def test_the_region_condition_nests_within_cloudformations_limits(template):
    def check(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Fn::Or":
                    assert 2 <= len(value) <= 10
                check(value)
        elif isinstance(node, list):
            for value in node:
                check(value)
    check(template["Conditions"]["UseVpcOrigin"])
    assert len(set(parameters.VPC_ORIGIN_REGIONS)) == len(parameters.VPC_ORIGIN_REGIONS)


def test_internet_facing_can_be_asked_for_where_vpc_origins_exist(template):
    # For a stack created before VPC origins: its load balancer can stay as it is.
    ev = Evaluator(template, {**parameter_values(template), "AWS::Region": "us-east-1",
                              "LoadBalancerScheme": "internet-facing"})
    assert ev.value(props(template, "LoadBalancer")["Scheme"]) == "internet-facing"
    assert not ev.creates("LoadBalancerVpcOrigin")
    assert ev.value(props(template, "AvailabilityZones")["ExcludedZoneIds"]) == []


def test_subnets_use_the_zones_chosen_once_by_zone_id(template):
    zones = props(template, "AvailabilityZones")
    assert zones["Count"] == "2"
    excluded = _in_region(template, "us-east-1").value(zones["ExcludedZoneIds"])
    assert set(excluded) == {"use1-az3", "usw1-az2", "cac1-az3", "apne1-az3"}
    # A stack that had subnets before keeps their zones (the function adopts them).
    assert zones["SubnetLogicalIds"] == ["PublicSubnetA", "PublicSubnetB"]
    for letter, number in (("A", 1), ("B", 2)):
        for kind in ("Public", "Data"):
            assert props(template, f"{kind}Subnet{letter}")["AvailabilityZone"] == {
                "Fn::GetAtt": ["AvailabilityZones", f"Zone{number}"]}


def test_the_secrets_resource_checks_the_sender_against_the_domain_before_the_database(template):
    values = template["Resources"]["AppSecretValues"]["Properties"]
    assert values["MailFromAddress"] == {"Ref": "MailFromAddress"}
    assert values["DomainName"] == {"Ref": "DomainName"}
    assert "AppSecretValues" in template["Resources"]["Database"]["DependsOn"]
