"""Security properties an auditor tests, beyond tests/templates/test_security.py.

That module covers the data tier, TLS, IMDSv2, the bucket and secrets; these
extend its checks to every policy kind (key policies included), standalone
security group rules, and encryption of logs and the alert topic.
"""

from __future__ import annotations

import pytest

from tests.support import props, resources

# Actions AWS grants only on "*": they accept no resource ARN (Service Authorization Reference).
RESOURCE_STAR_ONLY = {
    "ec2:DescribeManagedPrefixLists", "ec2:DescribeAvailabilityZones", "ec2:DescribeSubnets",
    "acm:RequestCertificate",
    # The rollout reads the fleet's state; these Describe/Get calls take no resource.
    "ec2:DescribeInstances", "autoscaling:DescribeAutoScalingGroups",
    # A web server reads its own lifecycle state (bootstrap.sh, the launch hook).
    "autoscaling:DescribeAutoScalingInstances",
    "elasticloadbalancing:DescribeTargetHealth", "ssm:GetCommandInvocation", "ssm:ListCommands",
    # Step Functions logging to CloudWatch Logs (vended log delivery; Step Functions guide).
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
    # The SSM Agent's channels (Session Manager, Run Command): no resource types.
    "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
    "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
    # The queue metrics: no resource types; limited by the cloudwatch:namespace condition
    # (CloudWatch User Guide, "Using condition keys to limit access to CloudWatch namespaces").
    "cloudwatch:PutMetricData",
    # Logging in to ECR (own images, issue 15): the token opens only what the role may pull.
    "ecr:GetAuthorizationToken",
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


def test_every_log_group_and_topic_is_encrypted_with_a_rotating_key(template):
    key = {"Fn::GetAtt": ["OperationsKey", "Arn"]}
    groups = resources(template, "AWS::Logs::LogGroup")
    assert len(groups) >= 4
    for name, group in groups.items():
        assert group["Properties"].get("KmsKeyId") == key, f"{name} is not encrypted"
    topics = resources(template, "AWS::SNS::Topic")
    assert "AlertTopic" in topics
    for name, topic in topics.items():
        assert topic["Properties"].get("KmsMasterKeyId") == {"Ref": "OperationsKey"}, name
    assert props(template, "OperationsKey")["EnableKeyRotation"] is True


def test_instances_require_imdsv2_and_never_get_more_than_one_metadata_hop(template):
    for name, launch in resources(template, "AWS::EC2::LaunchTemplate").items():
        options = launch["Properties"]["LaunchTemplateData"]["MetadataOptions"]
        assert (options["HttpTokens"], options["HttpPutResponseHopLimit"]) == ("required", 1), name


# ---------------------------------------------------------------- least privilege on the servers
def _role_statements(template, role):
    return [st for p in props(template, role)["Policies"] for st in p["PolicyDocument"]["Statement"]]


SERVER_ROLES = ("WebServerRole", "ServerRole")


@pytest.mark.parametrize("server_role", SERVER_ROLES)
def test_the_servers_read_no_ssm_parameter_but_the_deployed_version(template, server_role):
    role = props(template, server_role)
    # AmazonSSMManagedInstanceCore grants ssm:GetParameter(s) on every parameter of the account.
    assert not role.get("ManagedPolicyArns"), "a managed policy grants more than the servers need"
    reads = [st for st in _role_statements(template, server_role)
             if any(a.startswith(("ssm:GetParameter", "ssm:Describe", "ssm:List", "ssm:GetDocument"))
                    for a in _as_list(st["Action"]))]
    for statement in reads:
        actions = set(_as_list(statement["Action"]))
        if actions == {"ssm:ListInstanceAssociations", "ssm:UpdateInstanceInformation"}:
            continue  # the agent's own registration, on instances only
        assert actions == {"ssm:GetParameter"}, statement
        assert statement["Resource"] == [{"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:"
                                          "${AWS::AccountId}:parameter${DeployedVersionParameter}"}]


@pytest.mark.parametrize("server_role", SERVER_ROLES)
def test_the_servers_keep_what_session_manager_and_run_command_need(template, server_role):
    granted = {a for st in _role_statements(template, server_role) if st["Effect"] == "Allow"
               for a in _as_list(st["Action"])}
    # Session Manager (Systems Manager User Guide, instance profile for Session Manager) and
    # Run Command's message delivery, as AmazonSSMManagedInstanceCore grants them.
    assert {"ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel", "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage",
            "ec2messages:FailMessage", "ec2messages:GetEndpoint", "ec2messages:GetMessages",
            "ec2messages:SendReply"} <= granted
    (registration,) = [st for st in _role_statements(template, server_role)
                       if "ssm:UpdateInstanceInformation" in _as_list(st["Action"])]
    assert registration["Resource"] == [{"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:"
                                         "${AWS::AccountId}:instance/*"}]


def test_the_load_balancer_reaches_only_the_servers_ports(template):
    egress = props(template, "LoadBalancerSecurityGroup")["SecurityGroupEgress"]
    assert sorted((r["IpProtocol"], r["FromPort"], r["ToPort"], r["CidrIp"]) for r in egress) == [
        ("tcp", 3000, 3000, "10.42.0.0/16"), ("tcp", 4000, 4000, "10.42.0.0/16")]
    # No standalone rule re-opens it.
    for name, rule in resources(template, "AWS::EC2::SecurityGroupEgress").items():
        assert rule["Properties"]["GroupId"] != {"Ref": "LoadBalancerSecurityGroup"}, name


def test_eventbridge_roles_admit_only_this_accounts_rules(template):
    roles = {n: r for n, r in resources(template, "AWS::IAM::Role").items()
             if r["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
             == {"Service": "events.amazonaws.com"}}
    assert len(roles) >= 2
    for name, role in roles.items():
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}, name
        assert trust["Condition"]["ArnLike"] == {"aws:SourceArn": {"Fn::Sub": (
            "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/*")}}, name


def test_the_rollout_state_machines_role_admits_only_this_accounts_state_machines(template):
    (trust,) = props(template, "RolloutStateMachineRole")["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "states.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert trust["Condition"]["ArnLike"] == {"aws:SourceArn": {"Fn::Sub": (
        "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:*")}}


def test_the_certificate_function_may_request_only_dns_validated_certificates_for_the_domain(template):
    (request,) = [st for st in _role_statements(template, "CertificateFunctionRole")
                  if "acm:RequestCertificate" in _as_list(st["Action"])]
    assert request["Condition"] == {
        "StringEquals": {"acm:ValidationMethod": "DNS"},
        "ForAllValues:StringEquals": {"acm:DomainNames": [{"Ref": "DomainName"}]},
    }


def test_the_postgresql_log_goes_to_an_encrypted_group_with_retention(template):
    group = props(template, "DatabaseLogs")
    # RDS writes to this very name; created first, it is the stack's (encrypted, expiring).
    assert group["LogGroupName"] == {"Fn::Sub": "/aws/rds/instance/${Database}/postgresql"}
    assert group["KmsKeyId"] == {"Fn::GetAtt": ["OperationsKey", "Arn"]}
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    settings = template["Resources"]["DatabaseSettings"]
    assert settings["Properties"]["LogExports"] == ["postgresql"]
    assert "DatabaseLogs" in settings["DependsOn"]  # the export starts once the group exists
    # Not on the instance itself: RDS would create the group first, unencrypted, kept forever.
    assert "EnableCloudwatchLogsExports" not in props(template, "Database")
