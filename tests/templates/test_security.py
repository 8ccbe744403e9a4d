"""Security properties of the built template: private data, encryption, no secret in sight."""

from __future__ import annotations

import re

from tests.support import props, refs, resources, walk


def test_the_database_is_never_publicly_reachable(template):
    database = props(template, "Database")
    assert database["PubliclyAccessible"] is False
    subnet_group = props(template, database["DBSubnetGroupName"]["Ref"])
    assert {s["Ref"] for s in subnet_group["SubnetIds"]} == {"DataSubnetA", "DataSubnetB"}


def test_data_subnets_have_no_route_out_of_the_vpc(template):
    data_tables = {props(template, a)["RouteTableId"]["Ref"]
                   for a in ("DataSubnetARoutes", "DataSubnetBRoutes")}
    for route in resources(template, "AWS::EC2::Route").values():
        assert route["Properties"]["RouteTableId"]["Ref"] not in data_tables


def test_the_cache_lives_in_the_data_subnets(template):
    cache = props(template, "Cache")
    subnets = props(template, cache["CacheSubnetGroupName"]["Ref"])["SubnetIds"]
    assert {s["Ref"] for s in subnets} == {"DataSubnetA", "DataSubnetB"}


def test_data_stores_admit_only_the_servers(template):
    for group in ("DatabaseSecurityGroup", "CacheSecurityGroup"):
        ingress = props(template, group)["SecurityGroupIngress"]
        assert [rule["SourceSecurityGroupId"] for rule in ingress] == [{"Ref": "ServerSecurityGroup"}]


def test_servers_accept_no_ssh_and_only_the_load_balancer(template):
    ingress = props(template, "ServerSecurityGroup")["SecurityGroupIngress"]
    assert sorted(rule["FromPort"] for rule in ingress) == [3000, 4000]
    assert all(rule["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"} for rule in ingress)


def test_the_load_balancer_admits_only_cloudfront_on_https(template):
    (rule,) = props(template, "LoadBalancerSecurityGroup")["SecurityGroupIngress"]
    assert (rule["FromPort"], rule["ToPort"]) == (443, 443)
    assert rule["SourcePrefixListId"] == {"Fn::GetAtt": ["CloudFrontPrefixList", "Id"]}
    assert props(template, "CloudFrontPrefixList")["PrefixListName"] == \
        "com.amazonaws.global.cloudfront.origin-facing"


def test_every_data_store_is_encrypted_at_rest(template):
    assert props(template, "Database")["StorageEncrypted"] is True
    cache = props(template, "Cache")
    assert cache["AtRestEncryptionEnabled"] is True and cache["TransitEncryptionEnabled"] is True
    assert "AuthToken" in cache
    rules = props(template, "MediaBucket")["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    for name in ("WebLaunchTemplate", "WorkerLaunchTemplate"):
        for device in props(template, name)["LaunchTemplateData"]["BlockDeviceMappings"]:
            assert device["Ebs"]["Encrypted"] is True


def test_the_media_bucket_is_private_and_read_only_by_cloudfront(template):
    bucket = props(template, "MediaBucket")
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    statements = props(template, "MediaBucketPolicy")["PolicyDocument"]["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allows] == [{"Service": "cloudfront.amazonaws.com"}]
    assert "AWS:SourceArn" in str(allows[0]["Condition"])
    assert any(s["Effect"] == "Deny" and "aws:SecureTransport" in str(s["Condition"]) for s in statements)


def test_tls_is_at_least_1_2_at_cloudfront_and_the_load_balancer(template):
    config = props(template, "Distribution")["DistributionConfig"]
    assert config["ViewerCertificate"]["MinimumProtocolVersion"].startswith("TLSv1.2")
    behaviors = [config["DefaultCacheBehavior"], *config["CacheBehaviors"]]
    assert all(b["ViewerProtocolPolicy"] in ("redirect-to-https", "https-only") for b in behaviors)
    listeners = resources(template, "AWS::ElasticLoadBalancingV2::Listener")
    assert [listener["Properties"]["Protocol"] for listener in listeners.values()] == ["HTTPS"]
    assert all("TLS13-1-2" in listener["Properties"]["SslPolicy"] for listener in listeners.values())
    (origin,) = [o for o in config["Origins"] if o["Id"] == "load-balancer"]
    # A VPC origin where the region has them, the public name elsewhere: TLS 1.2 either way.
    condition, vpc_origin, no_value = origin["VpcOriginConfig"]["Fn::If"]
    assert (condition, no_value) == ("UseVpcOrigin", {"Ref": "AWS::NoValue"})
    assert vpc_origin["VpcOriginId"] == {"Fn::GetAtt": ["LoadBalancerVpcOrigin", "Id"]}
    condition, no_value, custom = origin["CustomOriginConfig"]["Fn::If"]
    assert (condition, no_value) == ("UseVpcOrigin", {"Ref": "AWS::NoValue"})
    endpoint = props(template, "LoadBalancerVpcOrigin")["VpcOriginEndpointConfig"]
    for settings in (custom, endpoint):
        assert settings["OriginProtocolPolicy"] == "https-only"
        assert settings["OriginSSLProtocols"] == ["TLSv1.2"]


SECRET_PROPERTIES = {
    "MasterUserPassword": {"DB_PASS", "ES_PASS"},  # the database's, the search domain's
    # The main Redis's token, and the cache-only Redis's own (SeparateCacheNodeType).
    "AuthToken": {"REDIS_PASSWORD", "CACHE_REDIS_PASSWORD"},
    "HeaderValue": {"ORIGIN_VERIFY"},
}


def test_secrets_enter_resources_only_as_dynamic_references(template):
    found = {}
    for path, value in walk(template["Resources"]):
        key = re.sub(r"\[\d+\]", "", path).split("/")[-1]
        if key == "Fn::Sub":
            parent = [p for p in re.sub(r"\[\d+\]", "", path).split("/") if p][-2]
            found.setdefault(parent, []).append(value)
    for prop, keys in SECRET_PROPERTIES.items():
        assert found.get(prop), f"{prop} is not a dynamic reference"
        assert sorted(found[prop]) == sorted(
            f"{{{{resolve:secretsmanager:${{AppSecret}}:SecretString:{key}}}}}" for key in keys)


def test_no_literal_password_anywhere_in_the_template(template):
    for path, value in walk({"Resources": template["Resources"], "Outputs": template["Outputs"]}):
        lowered = path.lower()
        if path.endswith("/Ref"):
            continue
        if any(word in lowered for word in ("password", "authtoken", "secretstring", "secretkey")):
            if isinstance(value, str) and "ZipFile" not in path:
                assert value.startswith("{{resolve:") or value == "", f"{path} = {value!r}"


def _user_data_text(template, name):
    parts = props(template, name)["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else "<ref>" for p in parts)


def test_user_data_and_instance_scripts_hold_no_secret_only_where_to_fetch_them(template):
    scripts = "\n".join(template["Resources"]["WebLaunchTemplate"]["Metadata"]["Scripts"].values())
    for name in ("WebLaunchTemplate", "WorkerLaunchTemplate", "QueueWorkerLaunchTemplate"):
        text = _user_data_text(template, name)
        assert "APP_SECRET_ARN='<ref>'" in text
        for forbidden in ("SECRET_KEY_BASE=", "DB_PASS=", "resolve:secretsmanager"):
            assert forbidden not in text, f"{name} user data carries {forbidden}"
        # The references in user data are to non-secret resources only.
        user_data = props(template, name)["LaunchTemplateData"]["UserData"]
        assert refs(user_data) <= {
            "AWS::StackName", "AWS::Region", "DomainName", "DeployedVersionParameter", "AppSecret",
            "Database", "Cache", "RailsCache", "MediaBucket", "SmtpServer", "SmtpPort", "SmtpLogin",
            "MailFromAddress",
            "SmtpPasswordSecretArn", "MastodonSettingsSecretArn",
            "WebLogs", "StreamingLogs", "SidekiqLogs", "SystemLogs",
            "WebMaxSize", "CloudFrontPrefixList", "DatabaseInstanceClass",
            "WebTargetGroup", "StreamingTargetGroup", "DatabaseReplica", "DatabaseReplicaClass",
            "SearchDomain",
            # Queue workers: sizes and queue names, public.
            "QueueWorkerMaxSize", "MainWorkerQueues", "QueueWorkerQueues",
            # Your own images: the repositories and the stack's own ECR registry, public names.
            "WebImageRepository", "StreamingImageRepository", "AWS::AccountId", "AWS::URLSuffix",
            # and the pull grants' names (referenced only to order them before the servers)
            "WebServerImagePullPolicy", "ServerImagePullPolicy",
        }
    assert "{{resolve:" not in scripts


# Upgrade on push: parameter names, repositories, tag patterns and a switch, all public.
IMAGE_PUSH_ENVIRONMENT = {"DESIRED_PARAMETER", "DEPLOYED_PARAMETER", "HANDLED_PARAMETER", "WEB_REPOSITORY",
                          "STREAMING_REPOSITORY", "WEB_IMAGE", "STREAMING_IMAGE", "TAG_RULE",
                          "PUSH_TAG_PATTERN", "ROLL_REPUSHED_TAGS"}


def test_functions_carry_no_secret_in_their_environment(template):
    for name, function in resources(template, "AWS::Lambda::Function").items():
        variables = function["Properties"].get("Environment", {}).get("Variables", {})
        assert set(variables) <= {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE",
                                  "POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_LOG_LEVEL",
                                  "QUEUE_URL", "DISTRIBUTION_ID", *IMAGE_PUSH_ENVIRONMENT}, name
        assert refs({k: v for k, v in variables.items() if k in IMAGE_PUSH_ENVIRONMENT}) <= {
            "DesiredVersionParameter", "DeployedVersionParameter", "RolloutStateParameter",
            "WebImageRepository", "StreamingImageRepository", "ImagePushTagPattern"}, name
        # Resource identifiers, never a value read from a secret.
        assert refs({k: variables[k] for k in ("QUEUE_URL", "DISTRIBUTION_ID") if k in variables}) <= {
            "MediaDeletionQueue", "Distribution"}, name


def test_no_output_reveals_a_secret(template):
    text = str(template["Outputs"])
    assert "AppSecret" not in text and "resolve:" not in text


# Policies (every action, Resource "*", principals, key policies) are asserted in
# tests/security/test_hardening.py.


def test_the_app_secret_and_media_survive_stack_deletion(template):
    for name in ("AppSecret", "MediaBucket"):
        # Kept on deletion; removed only by the rollback of the create that made them.
        assert template["Resources"][name]["DeletionPolicy"] == "RetainExceptOnCreate"
        assert template["Resources"][name]["UpdateReplacePolicy"] == "Retain"
    for name in ("Database", "Cache"):
        assert template["Resources"][name]["DeletionPolicy"] == "Snapshot"
        assert template["Resources"][name]["UpdateReplacePolicy"] == "Snapshot"
