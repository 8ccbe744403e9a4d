"""Security properties an auditor tests, beyond tests/templates/test_security.py.

That module covers the data tier, TLS, IMDSv2, the bucket and secrets; these
extend its checks to every policy kind (key policies included), standalone
security group rules, and encryption of logs and the alert topic.
"""

from __future__ import annotations

from tests.support import props, resources

# Actions AWS grants only on "*": they accept no resource ARN (Service Authorization Reference).
RESOURCE_STAR_ONLY = {
    "ec2:DescribeManagedPrefixLists", "ec2:DescribeAvailabilityZones", "ec2:DescribeSubnets",
    "acm:RequestCertificate",
    # The rollout reads the fleet's state; these Describe/Get calls take no resource.
    "ec2:DescribeInstances", "autoscaling:DescribeAutoScalingGroups",
    "elasticloadbalancing:DescribeTargetHealth", "ssm:GetCommandInvocation", "ssm:ListCommands",
    # Step Functions logging to CloudWatch Logs (vended log delivery; Step Functions guide).
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}
POLICY_PROPERTIES = ("PolicyDocument", "AssumeRolePolicyDocument", "KeyPolicy")


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _statements(template):
    """(resource, resource type, statement) for every policy in the template."""
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        documents = [p["PolicyDocument"] for p in properties.get("Policies", [])]
        documents += [properties[k] for k in POLICY_PROPERTIES if k in properties]
        for document in documents:
            for statement in document["Statement"]:
                yield name, resource["Type"], statement


def test_no_statement_anywhere_allows_every_action(template):
    seen = 0
    for name, _, statement in _statements(template):
        seen += 1
        if statement["Effect"] == "Allow":
            assert "*" not in _as_list(statement.get("Action", [])), name
            assert "NotAction" not in statement, f"{name} allows everything but a list"
    assert seen > 20


def test_service_wide_actions_only_for_the_account_administering_its_own_key(template):
    for name, kind, statement in _statements(template):
        wide = [a for a in _as_list(statement.get("Action", [])) if a.endswith(":*")]
        if statement["Effect"] == "Allow" and wide:
            # AWS's default key policy; without it the key could never be managed again.
            assert (kind, wide) == ("AWS::KMS::Key", ["kms:*"]), name
            assert statement["Principal"] == {"AWS": {
                "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}, name


def test_resource_star_only_for_actions_aws_allows_only_on_star(template):
    for name, kind, statement in _statements(template):
        if statement["Effect"] != "Allow" or "*" not in _as_list(statement.get("Resource", [])):
            continue
        if kind == "AWS::KMS::Key":
            continue  # in a key policy, "*" is the key itself
        assert set(_as_list(statement["Action"])) <= RESOURCE_STAR_ONLY, name


def test_no_policy_grants_anyone(template):
    for name, _, statement in _statements(template):
        if statement["Effect"] == "Allow":
            assert statement.get("Principal") not in ("*", {"AWS": "*"}), name


def test_services_use_the_key_only_as_far_as_publishing_and_logging_need(template):
    policy = props(template, "OperationsKey")["KeyPolicy"]["Statement"]
    by_sid = {s["Sid"]: s for s in policy}
    publishers = by_sid["AlarmsAndEventsPublishToTheAlertTopic"]
    assert set(publishers["Principal"]["Service"]) == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}
    assert set(publishers["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey"}
    logs = by_sid["CloudWatchLogsEncryptsThisAccountsLogGroups"]
    assert "kms:EncryptionContext:aws:logs:arn" in str(logs["Condition"])
    assert "${AWS::AccountId}:log-group:*" in str(logs["Condition"])


def test_no_security_group_rule_anywhere_admits_the_internet(template):
    rules = [(n, r) for n, g in resources(template, "AWS::EC2::SecurityGroup").items()
             for r in g["Properties"].get("SecurityGroupIngress", [])]
    rules += [(n, r["Properties"]) for n, r in resources(template, "AWS::EC2::SecurityGroupIngress").items()]
    assert rules
    for name, rule in rules:
        assert rule.get("CidrIp") != "0.0.0.0/0" and rule.get("CidrIpv6") != "::/0", name
        # Every rule names its source: a group or CloudFront's prefix list.
        assert {"SourceSecurityGroupId", "SourcePrefixListId"} & rule.keys(), name


def test_every_log_group_and_the_alert_topic_are_encrypted_with_a_rotating_key(template):
    key = {"Fn::GetAtt": ["OperationsKey", "Arn"]}
    groups = resources(template, "AWS::Logs::LogGroup")
    assert len(groups) >= 4
    for name, group in groups.items():
        assert group["Properties"].get("KmsKeyId") == key, f"{name} is not encrypted"
    assert props(template, "AlertTopic")["KmsMasterKeyId"] == {"Ref": "OperationsKey"}
    assert props(template, "OperationsKey")["EnableKeyRotation"] is True


def test_every_topic_is_encrypted(template):
    for name, topic in resources(template, "AWS::SNS::Topic").items():
        assert "KmsMasterKeyId" in topic["Properties"], name


def test_the_instances_never_get_more_than_one_metadata_hop(template):
    for name, launch in resources(template, "AWS::EC2::LaunchTemplate").items():
        options = launch["Properties"]["LaunchTemplateData"]["MetadataOptions"]
        assert (options["HttpTokens"], options["HttpPutResponseHopLimit"]) == ("required", 1), name
