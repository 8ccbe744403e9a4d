"""The Application Load Balancer, reachable only from CloudFront.

Where CloudFront supports VPC origins (parameters.VPC_ORIGIN_REGIONS), the load
balancer is internal, in the private subnets, and CloudFront reaches it through a VPC
origin (see edge.py): it has no public address at all, and no public IPv4 addresses
to pay for ($7.30 a month for two zones). Elsewhere it is internet-facing in the public
subnets. The region decides, through the UseVpcOrigin condition, unless the
LoadBalancerScheme parameter asks for internet-facing everywhere (parameters.py).

Either way two more locks keep everyone else out: the security group admits HTTPS
only from CloudFront's origin-facing managed prefix list (looked up in the stack's
region by a custom resource, as its ID differs per region; CloudFront documents it
for VPC origins too), and the listener forwards only requests carrying the secret
header CloudFront adds; anything else gets a 403. The listener speaks HTTPS only:
viewers' plain HTTP is redirected by CloudFront, and port 80 is not open at all,
since only CloudFront may connect and it uses 443.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import ec2 as awacs_ec2
from awacs.aws import Allow, Statement
from troposphere import AWSObject, GetAtt, If, Ref, Sub, Tags, Template, ec2
from troposphere import certificatemanager as acm
from troposphere import elasticloadbalancingv2 as elb

from templates import functions, parameters
from templates.network import VPC_CIDR, Network
from templates.parameters import USE_VPC_ORIGIN, Parameters
from templates.secrets import Secrets

LOAD_BALANCER = "LoadBalancer"
WEB_TARGET_GROUP = "WebTargetGroup"
STREAMING_TARGET_GROUP = "StreamingTargetGroup"
HTTPS_LISTENER = "HttpsListener"
CLOUDFRONT_PREFIX_LIST = "CloudFrontPrefixList"
ORIGIN_VERIFY_HEADER = "X-Origin-Verify"

WEB_PORT = 3000
STREAMING_PORT = 4000
WEB_HEALTH_PATH = "/health"
STREAMING_HEALTH_PATH = "/api/v1/streaming/health"
STREAMING_PATHS = ["/api/v1/streaming", "/api/v1/streaming/*"]
# Long enough for an in-flight request to finish, short enough for quick rollouts.
DEREGISTRATION_DELAY_SECONDS = 30
HEALTH_CHECK_INTERVAL_SECONDS = 10
UNHEALTHY_THRESHOLD = 3
# A target that has turned healthy and stays so this long has passed as many checks as
# it takes the load balancer to call it unhealthy: the rollout's settling window.
SETTLE_SECONDS = HEALTH_CHECK_INTERVAL_SECONDS * UNHEALTHY_THRESHOLD
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
# How long the load balancer keeps an idle connection, to viewers and to targets.
# Streaming connections send data well within it (SSE a heartbeat every 15 s,
# WebSockets a ping every 30 s), so they stay open.
IDLE_TIMEOUT_SECONDS = 120
# How long every target keeps an idle keep-alive connection: longer than the load
# balancer, so that it is always the load balancer that closes one. A target that
# closed first could do so just as the load balancer reuses the connection for a
# request, which the viewer then gets as a 502 (ELB guide, "Connection idle timeout").
# The servers get this very number (compute.py → stack.env → bootstrap.sh).
TARGET_KEEP_ALIVE_SECONDS = IDLE_TIMEOUT_SECONDS + 10


@dataclass(frozen=True)
class LoadBalancing:
    load_balancer: elb.LoadBalancer
    security_group: ec2.SecurityGroup
    web_target_group: elb.TargetGroup
    streaming_target_group: elb.TargetGroup
    cloudfront_prefix_list: AWSObject

    def prefix_list_arn(self) -> Sub:
        """CloudFront's origin-facing list, for reading its entries (AWS-managed: account "aws")."""
        return Sub("arn:${AWS::Partition}:ec2:${AWS::Region}:aws:prefix-list/"
                   f"${{{self.cloudfront_prefix_list.title}.Id}}")


def create_load_balancing(t: Template, p: Parameters, network: Network, secrets: Secrets,
                          prefix_list_code: str) -> LoadBalancing:
    prefix_list = _cloudfront_prefix_list(t, p, prefix_list_code)
    security_group = t.add_resource(ec2.SecurityGroup(
        "LoadBalancerSecurityGroup",
        GroupDescription="HTTPS from CloudFront origin-facing servers only",
        VpcId=Ref(network.vpc),
        SecurityGroupIngress=[ec2.SecurityGroupRule(
            Description="CloudFront origin-facing",
            IpProtocol="tcp", FromPort=443, ToPort=443,
            SourcePrefixListId=GetAtt(prefix_list, "Id"),
        )],
        # Only to the servers' ports (health checks included); without this rule EC2
        # allows all egress. The servers' own group admits only this group.
        SecurityGroupEgress=[
            ec2.SecurityGroupRule(Description=f"{name} on the servers", IpProtocol="tcp",
                                  FromPort=port, ToPort=port, CidrIp=VPC_CIDR)
            for name, port in (("Puma", WEB_PORT), ("Streaming", STREAMING_PORT))
        ],
        Tags=Tags(Name="mastodon-load-balancer"),
    ))
    load_balancer = t.add_resource(elb.LoadBalancer(
        LOAD_BALANCER,
        Type="application",
        Scheme=If(USE_VPC_ORIGIN, "internal", "internet-facing"),
        IpAddressType="ipv4",
        Subnets=If(USE_VPC_ORIGIN, [Ref(s) for s in network.data_subnets],
                   [Ref(s) for s in network.public_subnets]),
        SecurityGroups=[Ref(security_group)],
        LoadBalancerAttributes=[
            elb.LoadBalancerAttributes(Key="routing.http.drop_invalid_header_fields.enabled", Value="true"),
            elb.LoadBalancerAttributes(Key="routing.http.desync_mitigation_mode", Value="strictest"),
            elb.LoadBalancerAttributes(Key="idle_timeout.timeout_seconds",
                                       Value=str(IDLE_TIMEOUT_SECONDS)),
        ],
        Metadata={"checkov": {"skip": [
            {"id": "CKV_AWS_91", "comment": "Access logs are off by default to keep the "
             "stack cheap; CloudFront and every process log to CloudWatch."},
        ]}},
    ))
    web = t.add_resource(_target_group(
        WEB_TARGET_GROUP, network, WEB_PORT, WEB_HEALTH_PATH,
        [elb.TargetGroupAttribute(Key="stickiness.enabled", Value="true"),
         elb.TargetGroupAttribute(Key="stickiness.type", Value="lb_cookie"),
         elb.TargetGroupAttribute(Key="stickiness.lb_cookie.duration_seconds", Value="3600")],
    ))
    streaming = t.add_resource(_target_group(STREAMING_TARGET_GROUP, network, STREAMING_PORT,
                                             STREAMING_HEALTH_PATH, []))
    certificate = t.add_resource(acm.Certificate(
        "LoadBalancerCertificate",
        Condition=parameters.HAS_HOSTED_ZONE,
        DomainName=Ref(p.domain),
        ValidationMethod="DNS",
        DomainValidationOptions=[acm.DomainValidationOption(
            DomainName=Ref(p.domain), HostedZoneId=Ref(p.hosted_zone))],
    ))
    listener = t.add_resource(elb.Listener(
        HTTPS_LISTENER,
        LoadBalancerArn=Ref(load_balancer),
        Port=443,
        Protocol="HTTPS",
        SslPolicy=TLS_POLICY,
        Certificates=[elb.Certificate(CertificateArn=If(
            parameters.HAS_HOSTED_ZONE, Ref(certificate), Ref(p.load_balancer_certificate)))],
        DefaultActions=[elb.Action(Type="fixed-response", FixedResponseConfig=elb.FixedResponseConfig(
            StatusCode="403", ContentType="text/plain", MessageBody="Forbidden"))],
    ))
    origin_verified = elb.Condition(
        Field="http-header",
        HttpHeaderConfig=elb.HttpHeaderConfig(
            HttpHeaderName=ORIGIN_VERIFY_HEADER, Values=[secrets.reference("ORIGIN_VERIFY")]),
    )
    t.add_resource(elb.ListenerRule(
        "StreamingListenerRule",
        ListenerArn=Ref(listener), Priority=10,
        Conditions=[origin_verified, elb.Condition(
            Field="path-pattern", PathPatternConfig=elb.PathPatternConfig(Values=STREAMING_PATHS))],
        Actions=[elb.ListenerRuleAction(Type="forward", TargetGroupArn=Ref(streaming))],
        DependsOn=[secrets.values.title],
    ))
    t.add_resource(elb.ListenerRule(
        "WebListenerRule",
        ListenerArn=Ref(listener), Priority=20,
        Conditions=[origin_verified],
        Actions=[elb.ListenerRuleAction(Type="forward", TargetGroupArn=Ref(web))],
        DependsOn=[secrets.values.title],
    ))
    return LoadBalancing(load_balancer, security_group, web, streaming, prefix_list)


def _target_group(name: str, network: Network, port: int, health_path: str,
                  attributes: list[elb.TargetGroupAttribute]) -> elb.TargetGroup:
    return elb.TargetGroup(
        name,
        VpcId=Ref(network.vpc),
        Port=port,
        Protocol="HTTP",
        TargetType="instance",
        HealthCheckEnabled=True,
        HealthCheckPath=health_path,
        HealthCheckProtocol="HTTP",
        HealthCheckIntervalSeconds=HEALTH_CHECK_INTERVAL_SECONDS,
        HealthCheckTimeoutSeconds=5,
        HealthyThresholdCount=2,
        UnhealthyThresholdCount=UNHEALTHY_THRESHOLD,
        Matcher=elb.Matcher(HttpCode="200"),
        TargetGroupAttributes=[
            elb.TargetGroupAttribute(Key="deregistration_delay.timeout_seconds",
                                     Value=str(DEREGISTRATION_DELAY_SECONDS)),
            *attributes,
        ],
    )


def _cloudfront_prefix_list(t: Template, p: Parameters, code: str) -> AWSObject:
    function = functions.inline_function(
        t, "PrefixListFunction", code,
        # DescribeManagedPrefixLists accepts no resource-level permission.
        [Statement(Effect=Allow, Action=[awacs_ec2.DescribeManagedPrefixLists], Resource=["*"])],
        Ref(p.log_retention), timeout=60,
        description="Looks up the ID of an AWS-managed prefix list in this region.",
    )
    return functions.provided_resource(
        t, "ManagedPrefixList", CLOUDFRONT_PREFIX_LIST, function, 120,
        PrefixListName="com.amazonaws.global.cloudfront.origin-facing",
    )
