"""Optional full-text search: an Amazon OpenSearch Service domain in the data subnets.

Off by default (SearchEnabled). When on, the domain sits in the isolated data subnets
behind its own security group (HTTPS from the servers only), encrypts at rest and
between nodes, accepts only HTTPS with TLS 1.2 or later, and lets in only its internal
user, whose password the stack generates into its secret (ES_PASS) and hands to the
domain by a dynamic reference. The access policy names no IAM principal: with one,
OpenSearch would demand SigV4 on every request and Mastodon's basic auth would stop
working (OpenSearch Service developer guide, "Fine-grained access control", open
domain access policy); the security group and fine-grained access control guard it.

The servers see it through ES_ENABLED, ES_HOST, ES_PORT, ES_USER, ES_PRESET (stack.env)
and ES_PASS (the secret, at boot). The worker creates Mastodon's indexes once per domain
with `tootctl search deploy`, in the background after it has signalled (see
templates/instance/search.sh); a failure raises an alarm and is retried at the worker's
next boot.
"""

from __future__ import annotations

from dataclasses import dataclass

from troposphere import (
    GetAtt,
    If,
    Join,
    Ref,
    Sub,
    Tags,
    Template,
    cloudwatch,
    ec2,
    iam,
    logs,
    opensearchservice,
    sns,
)

from templates import parameters
from templates.alerting import LOGGED_FAILURE, Threshold, topic_alarm
from templates.network import Network
from templates.parameters import Parameters
from templates.secrets import Secrets
from templates.sidekiq import METRICS_NAMESPACE  # the stack's one custom-metrics namespace

SEARCH_DOMAIN = "SearchDomain"
SEARCH_SECURITY_GROUP = "SearchSecurityGroup"
SEARCH_SERVICE_ROLE = "SearchServiceLinkedRole"
SEARCH_PORT = 443
# Mastodon is tested with Elasticsearch 7 and works with OpenSearch 2 since its product
# check was patched (mastodon#30278); OpenSearch 3 makes the admin dashboard report an
# incompatible version (mastodon#35237). 2.19 is the last 2.x release.
SEARCH_ENGINE_VERSION = "OpenSearch_2.19"
# TLS 1.2 and 1.3 with forward-secret ciphers only (API DomainEndpointOptions).
SEARCH_TLS_POLICY = "Policy-Min-TLS-1-2-PFS-2023-10"
# The domain's internal (master) user, which Mastodon signs in as; its password is the
# secret's ES_PASS (lambdas/app_secrets.py generates it within OpenSearch's rules).
SEARCH_USER = "mastodon"
SEARCH_PASSWORD_KEY = "ES_PASS"
# OpenSearch's own name for its VPC service-linked role's service (IAM user guide,
# "AWS services that work with IAM"), not the legacy es.amazonaws.com.
SEARCH_SERVICE_NAME = "opensearchservice.amazonaws.com"
# Mastodon's index presets (docs, config.md: ES_PRESET): no replica on one node, one
# replica below six nodes, more shards from six.
SEARCH_PRESETS = {"single": "single_node_cluster", "small": "small_cluster", "large": "large_cluster"}
# The index whose existence records that `tootctl search deploy` finished on this
# domain, and the line the worker logs when it failed (the failure alarm's filter).
# Handed to the worker in stack.env.
SEARCH_MARKER_INDEX = "mastodon-aws-search-deployed"
SEARCH_DEPLOY_FAILED = "search deploy failed"
SEARCH_DEPLOY_METRIC = "SearchDeployFailures"
# Free storage below this share of a node's volume: Mastodon's indexes grow with the
# statuses; OpenSearch blocks writes at 5% free (AWS recommends alarming at 25%).
SEARCH_FREE_STORAGE_PERCENT = 25


@dataclass(frozen=True)
class Search:
    domain: opensearchservice.Domain
    security_group: ec2.SecurityGroup

    def stack_env(self) -> dict[str, object]:
        """What the servers' stack.env carries; empty values with search off."""
        host = Join("", ["https://", GetAtt(self.domain, "DomainEndpoint")])
        preset = If(
            parameters.SEARCH_LARGE_CLUSTER,
            SEARCH_PRESETS["large"],
            If(parameters.SEARCH_ZONE_AWARE, SEARCH_PRESETS["small"], SEARCH_PRESETS["single"]),
        )
        on = parameters.HAS_SEARCH
        return {
            "ES_ENABLED": If(on, "true", "false"),
            "ES_HOST": If(on, host, ""),
            # Chewy joins host and port; the domain answers HTTPS on 443 (not 9200).
            "ES_PORT": If(on, str(SEARCH_PORT), ""),
            "ES_USER": If(on, SEARCH_USER, ""),
            "ES_PRESET": If(on, preset, ""),
            "SEARCH_MARKER_INDEX": If(on, SEARCH_MARKER_INDEX, ""),
            "SEARCH_DEPLOY_FAILED": If(on, SEARCH_DEPLOY_FAILED, ""),
        }


def create_search(
    t: Template, p: Parameters, network: Network, servers: ec2.SecurityGroup, secrets: Secrets
) -> Search:
    security_group = t.add_resource(
        ec2.SecurityGroup(
            SEARCH_SECURITY_GROUP,
            Condition=parameters.HAS_SEARCH,
            GroupDescription=f"Search: HTTPS ({SEARCH_PORT}) from the Mastodon servers only",
            VpcId=Ref(network.vpc),
            SecurityGroupIngress=[
                ec2.SecurityGroupRule(
                    Description="Mastodon servers",
                    IpProtocol="tcp",
                    FromPort=SEARCH_PORT,
                    ToPort=SEARCH_PORT,
                    SourceSecurityGroupId=Ref(servers),
                )
            ],
            SecurityGroupEgress=[
                ec2.SecurityGroupRule(Description="No egress", IpProtocol="-1", CidrIp="127.0.0.1/32")
            ],
            Tags=Tags(Name="mastodon-search"),
        )
    )
    service_role = t.add_resource(
        iam.ServiceLinkedRole(
            SEARCH_SERVICE_ROLE,
            Condition=parameters.SEARCH_CREATES_SERVICE_ROLE,
            AWSServiceName=SEARCH_SERVICE_NAME,
            Description="Lets Amazon OpenSearch Service place its domains in VPCs of this account",
            # The account's only one, shared by every domain in it: never deleted with the stack.
            DeletionPolicy="Retain",
            UpdateReplacePolicy="Retain",
        )
    )
    data_subnets = [Ref(s) for s in network.data_subnets]
    domain = t.add_resource(
        opensearchservice.Domain(
            SEARCH_DOMAIN,
            Condition=parameters.HAS_SEARCH,
            EngineVersion=SEARCH_ENGINE_VERSION,
            ClusterConfig=opensearchservice.ClusterConfig(
                InstanceType=Ref(p.search_instance_type),
                InstanceCount=Ref(p.search_instance_count),
                DedicatedMasterEnabled=False,
                ZoneAwarenessEnabled=If(parameters.SEARCH_ZONE_AWARE, True, False),
                ZoneAwarenessConfig=If(
                    parameters.SEARCH_ZONE_AWARE,
                    opensearchservice.ZoneAwarenessConfig(AvailabilityZoneCount=len(data_subnets)),
                    Ref("AWS::NoValue"),
                ),
            ),
            EBSOptions=opensearchservice.EBSOptions(
                EBSEnabled=True, VolumeType="gp3", VolumeSize=Ref(p.search_volume_size)
            ),
            # One subnet per zone the domain uses: a single-zone domain takes exactly one.
            VPCOptions=opensearchservice.VPCOptions(
                SubnetIds=If(parameters.SEARCH_ZONE_AWARE, data_subnets, data_subnets[:1]),
                SecurityGroupIds=[Ref(security_group)],
            ),
            EncryptionAtRestOptions=opensearchservice.EncryptionAtRestOptions(Enabled=True),
            NodeToNodeEncryptionOptions=opensearchservice.NodeToNodeEncryptionOptions(Enabled=True),
            DomainEndpointOptions=opensearchservice.DomainEndpointOptions(
                EnforceHTTPS=True, TLSSecurityPolicy=SEARCH_TLS_POLICY
            ),
            AdvancedSecurityOptions=opensearchservice.AdvancedSecurityOptionsInput(
                Enabled=True,
                InternalUserDatabaseEnabled=True,
                MasterUserOptions=opensearchservice.MasterUserOptions(
                    MasterUserName=SEARCH_USER,
                    MasterUserPassword=secrets.reference(SEARCH_PASSWORD_KEY),
                ),
            ),
            AccessPolicies={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        # No IAM principal (see the module docstring): basic auth needs an open policy.
                        "Principal": {"AWS": "*"},
                        "Action": "es:ESHttp*",
                        "Resource": Sub(
                            "arn:${AWS::Partition}:es:${AWS::Region}:${AWS::AccountId}:domain/*/*"
                        ),
                    }
                ],
            },
            SoftwareUpdateOptions=opensearchservice.SoftwareUpdateOptions(AutoSoftwareUpdateEnabled=True),
            # Waits for the secret's ES_PASS and, when the stack makes it, for the service-linked
            # role (a Ref inside Fn::If orders it only when the role exists).
            DependsOn=[secrets.values.title],
            Tags=Tags(
                **{
                    "Name": Sub("${AWS::StackName}-search"),
                    "mastodon:service-linked-role": If(
                        parameters.SEARCH_CREATES_SERVICE_ROLE, Ref(service_role), "existing"
                    ),
                }
            ),
            # The indexes are rebuilt from the database (tootctl search deploy): nothing to keep.
            DeletionPolicy="Delete",
            UpdateReplacePolicy="Delete",
            Metadata={
                "checkov": {
                    "skip": [
                        {
                            "id": "CKV_AWS_317",
                            "comment": "Audit logs need a log group resource policy for the "
                            "service and cost per GB; Mastodon's only user is the stack's, behind a "
                            "security group open to the servers alone.",
                        },
                        {
                            "id": "CKV_AWS_84",
                            "comment": "Slow and error logs cost per GB; CloudWatch metrics and "
                            "the cluster status and storage alarms cover the domain.",
                        },
                    ]
                }
            },
        )
    )
    return Search(domain=domain, security_group=security_group)


def create_search_alarms(
    t: Template, p: Parameters, search: Search, system_logs: logs.LogGroup, topic: sns.Topic
) -> list[cloudwatch.Alarm]:
    """Cluster red (and yellow with replicas), free storage low, and a failed index creation."""
    dimensions = [
        cloudwatch.MetricDimension(Name="DomainName", Value=Ref(search.domain)),
        cloudwatch.MetricDimension(Name="ClientId", Value=Ref("AWS::AccountId")),
    ]

    def alarm(name: str, summary: str, advice: str, condition: str, **properties: object) -> cloudwatch.Alarm:
        return topic_alarm(t, name, topic, summary, f"{summary}. {advice}", Condition=condition, **properties)

    def status(
        name: str, color: str, summary: str, advice: str, condition: str, minutes: int
    ) -> cloudwatch.Alarm:
        return alarm(
            name,
            summary,
            advice,
            condition,
            Namespace="AWS/ES",
            MetricName=f"ClusterStatus.{color}",
            Dimensions=dimensions,
            **Threshold("Maximum", "GreaterThanOrEqualToThreshold", 1, 60, minutes, minutes).properties(),
        )

    t.add_resource(
        logs.MetricFilter(
            "SearchDeployFailureFilter",
            Condition=parameters.HAS_SEARCH,
            LogGroupName=Ref(system_logs),
            FilterPattern=f'"{SEARCH_DEPLOY_FAILED}"',
            MetricTransformations=[
                logs.MetricTransformation(
                    MetricNamespace=METRICS_NAMESPACE,
                    MetricName=SEARCH_DEPLOY_METRIC,
                    MetricValue="1",
                    Unit="Count",
                )
            ],
        )
    )
    return [
        status(
            "SearchClusterRedAlarm",
            "red",
            "search cluster red",
            "A primary shard is unassigned: searches fail and statuses are not indexed. See the "
            "domain's health in the OpenSearch console.",
            parameters.HAS_SEARCH,
            1,
        ),
        # One node holds no replica (single_node_cluster), so yellow means something only
        # with two or more nodes: a replica is unassigned and a node's loss would lose data.
        status(
            "SearchClusterYellowAlarm",
            "yellow",
            "search cluster yellow",
            "A replica shard is unassigned: the domain would not survive losing a node. See the "
            "domain's health in the OpenSearch console.",
            parameters.SEARCH_ZONE_AWARE,
            5,
        ),
        alarm(
            "SearchStorageAlarm",
            "search storage low",
            f"A search node has less than {SEARCH_FREE_STORAGE_PERCENT}% of its volume free; at 5% "
            "OpenSearch blocks writes: raise SearchVolumeSize or add nodes.",
            parameters.HAS_SEARCH,
            Metrics=[
                cloudwatch.MetricDataQuery(
                    Id="free",
                    ReturnData=False,
                    MetricStat=cloudwatch.MetricStat(
                        Metric=cloudwatch.Metric(
                            Namespace="AWS/ES", MetricName="FreeStorageSpace", Dimensions=dimensions
                        ),
                        # The node with the least free space, in megabytes.
                        Period=300,
                        Stat="Minimum",
                    ),
                ),
                cloudwatch.MetricDataQuery(
                    Id="percent",
                    Label="free storage (% of a node's volume)",
                    ReturnData=True,
                    Expression=Sub(f"100 * free / (${{{p.search_volume_size.title}}} * 1024)"),
                ),
            ],
            ComparisonOperator="LessThanThreshold",
            Threshold=SEARCH_FREE_STORAGE_PERCENT,
            EvaluationPeriods=2,
            DatapointsToAlarm=2,
            TreatMissingData="notBreaching",
        ),
        alarm(
            "SearchDeployAlarm",
            "search indexes not created",
            "tootctl search deploy failed on the worker; search stays incomplete. See the system "
            "log group's <instance>/search-deploy streams; the worker tries again at its next boot, "
            "or now with: sudo systemctl start mastodon-search-deploy.",
            parameters.HAS_SEARCH,
            Namespace=METRICS_NAMESPACE,
            MetricName=SEARCH_DEPLOY_METRIC,
            **LOGGED_FAILURE.properties(),
        ),
    ]
