"""The servers: a web Auto Scaling group (Puma + streaming), a single Sidekiq worker, and
optionally a group of Sidekiq queue workers (parameters.HAS_QUEUE_WORKERS).

Amazon Linux 2023 from AWS's public SSM AMI parameter (Graviton unless an x86 type
is chosen), IMDSv2 only, no SSH (Session Manager and Run Command instead), and a
role that reads only this stack's secret, version parameter and media bucket.

User data writes the stack's facts to stack.env (STACK_ENV_FILE), fetches the scripts
of templates/instance/ from the stack's metadata (user data is limited to 16 KB),
checks their digest and runs bootstrap.sh, which signals CloudFormation: stack
creation and instance replacement wait for each server to serve, and fail with the
reason when Mastodon does not come up.

The worker group is exactly one instance and is replaced by terminating first, so
two Sidekiq processes never run the scheduler queue at once. The web group is
replaced by a new group that must signal healthy before the old one goes. Queue
workers run every queue but the scheduler's (templates/sidekiq.py), from
QueueWorkerMinSize to QueueWorkerMaxSize, scaled on the queue latency the worker
publishes (templates/scaling.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from awacs import autoscaling as awacs_autoscaling
from awacs import cloudformation as awacs_cfn
from awacs import cloudwatch as awacs_cloudwatch
from awacs import ec2 as awacs_ec2
from awacs import ecr as awacs_ecr
from awacs import elasticloadbalancing as awacs_elb
from awacs import logs as awacs_logs
from awacs import s3 as awacs_s3
from awacs import secretsmanager as awacs_sm
from awacs import ssm as awacs_ssm
from awacs.aws import (
    Action,
    Allow,
    Condition,
    ForAllValuesStringEquals,
    PolicyDocument,
    Statement,
    StringEquals,
)
from troposphere import (
    Base64,
    FindInMap,
    GetAtt,
    If,
    Join,
    Ref,
    Sub,
    Tags,
    Template,
    autoscaling,
    ec2,
    iam,
    logs,
)
from troposphere.policies import (
    AutoScalingCreationPolicy,
    AutoScalingReplacingUpdate,
    AutoScalingRollingUpdate,
    CreationPolicy,
    ResourceSignal,
    UpdatePolicy,
)

from lambdas.rollout.names import VERSION_TAG
from templates import capacity, parameters, policies, settings, sidekiq
from templates.data import DATABASE_NAME, DATABASE_USER, Data
from templates.load_balancing import (
    STREAMING_HEALTH_PATH,
    STREAMING_PORT,
    TARGET_KEEP_ALIVE_SECONDS,
    WEB_HEALTH_PATH,
    WEB_PORT,
    LoadBalancing,
)
from templates.mail import Mail
from templates.network import VPC_CIDR, Network
from templates.options import ECR_HOST_PATTERN, PGBOUNCER_IMAGE, PGBOUNCER_PORT, STACK_PREFIX
from templates.parameters import Parameters
from templates.secrets import Secrets
from templates.versions import Versions, tag_pattern

# Where user data writes stack.env, and the instance scripts; the rollout runs deploy.sh
# and the daily cleanup tootctl.sh from there. The scripts find stack.env in ETC_DIR
# (templates/instance/common.sh, held equal by tests/test_facts.py) and the rest in it.
ETC_DIR = "/etc/mastodon"
STACK_ENV_FILE = f"{ETC_DIR}/stack.env"
SCRIPTS_DIR = "/opt/mastodon-aws"
BOOTSTRAP_SCRIPT = f"{SCRIPTS_DIR}/bootstrap.sh"
DEPLOY_SCRIPT = f"{SCRIPTS_DIR}/deploy.sh"
# The instance metadata service (IMDSv2): user data and bootstrap.sh read the instance id.
IMDS_URL = "http://169.254.169.254"
# The tag that tells a server's role (web or worker) on the groups and their instances.
ROLE_TAG = "mastodon:role"
WEB_GROUP = "WebAutoScalingGroup"
WEB_SERVER_ROLE = "WebServerRole"
WORKER_SERVER_ROLE = "ServerRole"
WORKER_GROUP = "WorkerAutoScalingGroup"
# The optional queue workers (parameters.HAS_QUEUE_WORKERS): Sidekiq without the scheduler.
QUEUE_GROUP = "QueueWorkerAutoScalingGroup"
QUEUE_LAUNCH_TEMPLATE = "QueueWorkerLaunchTemplate"
QUEUE_SERVER_ROLE = "QueueWorkerServerRole"
QUEUE_METRICS_POLICY = "QueueMetricsPolicy"
# A resource's metadata key that tells scripts/costs.py how many custom metrics the
# servers publish while it exists.
CUSTOM_METRICS_METADATA = "CustomMetrics"
INSTANCE_SECURITY_GROUP = "ServerSecurityGroup"
WEB_LAUNCH_TEMPLATE = "WebLaunchTemplate"
WORKER_LAUNCH_TEMPLATE = "WorkerLaunchTemplate"
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
# The AL2023 AMI's own snapshot size, the least a launch template may ask for. It holds
# the OS and Docker (~2 GiB), the running release's images (~1-1.3 GB since v4.3), the
# previous release's (kept for a rollback while space allows), the worker's swap file
# on a 1 GiB instance and a capped journal; deploy.sh and bootstrap.sh make room (or
# refuse, with the reason) before a pull that would not fit.
ROOT_VOLUME_GIB = 8
# Tags CloudFormation puts on every Auto Scaling group it creates (AWS::AutoScaling::
# AutoScalingGroup TagProperty, CloudFormation template reference).
CLOUDFORMATION_STACK_TAG = "aws:cloudformation:stack-id"
CLOUDFORMATION_LOGICAL_ID_TAG = "aws:cloudformation:logical-id"
# bootstrap.sh's own limits, handed to it in stack.env (the one place they are set): how
# long a web server waits for the worker to initialize the database, and how long any
# server waits for its containers to turn healthy. Its other steps (Docker's install,
# the image pulls with their retries, the worker's db:setup) get an allowance on top.
BOOT_DATABASE_WAIT_SECONDS = 1200
BOOT_HEALTH_WAIT_SECONDS = 600
BOOT_OTHER_STEPS_SECONDS = 600
# A new web server waits in Pending:Wait, outside the target groups, until bootstrap.sh
# completes the group's launch hook once Puma and streaming answer locally: Auto Scaling
# registers it only then (EC2 Auto Scaling user guide, "How lifecycle hooks work"), so
# no target reads unhealthy while it boots and the unhealthy-target alarms stay quiet
# during creation, scale-out and a rollout's surge. Without the action completed in
# time (bootstrap died or hung), the server is abandoned: terminated and replaced.
LAUNCH_HOOK = "mastodon-boot"
# The hook's clock starts at launch, before the OS and cloud-init start bootstrap.sh.
BOOT_START_SECONDS = 300
BOOT_READY_SECONDS = (BOOT_START_SECONDS + BOOT_DATABASE_WAIT_SECONDS + BOOT_HEALTH_WAIT_SECONDS
                      + BOOT_OTHER_STEPS_SECONDS)
# Then it waits for both target groups to find it healthy before it signals, so that a
# first create ends, and the no-healthy-target alarms appear, only once the load balancer
# serves from it (registering and HealthyThresholdCount checks take ~30 s; a security
# group or port mistake shows here, with the reason).
BOOT_TARGET_WAIT_SECONDS = 300
# A server's worst legitimate boot, from launch to serving: CloudFormation waits that long
# for a signal (bootstrap.sh signals FAILURE itself, with the reason, when one of its
# waits runs out), and the rollout leaves a booting server alone that long.
BOOT_WORST_CASE_SECONDS = BOOT_READY_SECONDS + BOOT_TARGET_WAIT_SECONDS
# Auto Scaling's health check grace period starts when a server enters service, which
# for a web server is after the launch hook (EC2 Auto Scaling user guide, "Set the
# health check grace period"): it needs only the time the target groups take to find
# it healthy, so a server that fails once it serves is replaced within minutes. The
# worker has no hook and no target group: its grace covers the whole boot.
WEB_HEALTH_CHECK_GRACE_SECONDS = BOOT_TARGET_WAIT_SECONDS
WORKER_HEALTH_CHECK_GRACE_SECONDS = BOOT_WORST_CASE_SECONDS
SIGNAL_TIMEOUT = f"PT{-(-BOOT_WORST_CASE_SECONDS // 60)}M"
# EC2 refuses user data above 16 KB (before base64).
USER_DATA_LIMIT = 16384
# Room kept for each value CloudFormation fills in (ARNs, host names).
RESOLVED_VALUE_ALLOWANCE = 200


class UserDataTooLarge(ValueError):
    """The instance scripts no longer fit in user data."""


# What the instance scripts know from the template and not from the stack: stack.env
# carries each (with the per-stack values of create_compute), so the scripts never
# spell them.
SERVER_FACTS: dict[str, str] = {
    "WEB_PORT": str(WEB_PORT),
    "WEB_HEALTH_PATH": WEB_HEALTH_PATH,
    "STREAMING_PORT": str(STREAMING_PORT),
    "STREAMING_HEALTH_PATH": STREAMING_HEALTH_PATH,
    "ONE_OFF_DB_POOL": str(capacity.ONE_OFF_DB_POOL),
    "TOOTCTL_DB_POOL": str(capacity.TOOTCTL_DB_POOL),
    "IMDS_URL": IMDS_URL,
    **settings.SERVER_FACTS,
}
PROCESS_LOGS = ("web", "streaming", "sidekiq", "system")


@dataclass(frozen=True)
class Compute:
    web_group: autoscaling.AutoScalingGroup
    worker_group: autoscaling.AutoScalingGroup
    log_groups: dict[str, logs.LogGroup]
    # Exists only under parameters.HAS_QUEUE_WORKERS: refer to it through the helpers below.
    queue_group: autoscaling.AutoScalingGroup

    def web_group_arn(self) -> Sub:
        """For grants on the web group itself (its tags, sizes and processes)."""
        return _group_arn(self.web_group)

    def queue_group_name(self) -> If:
        """The queue workers' group name, or "" when the option is off (the rollout's queue_group)."""
        return If(parameters.HAS_QUEUE_WORKERS, Ref(self.queue_group), "")

    def queue_group_arn(self) -> Sub:
        """For grants on the queue workers' group, in resources that carry
        parameters.HAS_QUEUE_WORKERS themselves (outside them, the ARN names nothing)."""
        return _group_arn(self.queue_group)


def _group_arn(group: autoscaling.AutoScalingGroup) -> Sub:
    return Sub("arn:${AWS::Partition}:autoscaling:${AWS::Region}:${AWS::AccountId}:autoScalingGroup:*:"
               f"autoScalingGroupName/${{{group.title}}}")


def create_server_security_group(t: Template, network: Network,
                                 load_balancing: LoadBalancing) -> ec2.SecurityGroup:
    """The servers admit Puma and streaming traffic from the load balancer only."""
    return t.add_resource(ec2.SecurityGroup(
        INSTANCE_SECURITY_GROUP,
        GroupDescription="Mastodon servers: Puma and streaming from the load balancer; no SSH",
        VpcId=Ref(network.vpc),
        SecurityGroupIngress=[
            ec2.SecurityGroupRule(Description=f"{name} from the load balancer", IpProtocol="tcp",
                                  FromPort=port, ToPort=port,
                                  SourceSecurityGroupId=Ref(load_balancing.security_group))
            for name, port in (("Puma", WEB_PORT), ("Streaming", STREAMING_PORT))
        ],
        # Servers pull images from ghcr.io and federate with the whole fediverse.
        SecurityGroupEgress=[ec2.SecurityGroupRule(
            Description="Federation, registry and AWS APIs", IpProtocol="-1", CidrIp="0.0.0.0/0")],
        Tags=Tags(Name="mastodon-servers"),
    ))


def create_compute(t: Template, p: Parameters, network: Network, load_balancing: LoadBalancing, data: Data,
                   secrets: Secrets, mail: Mail, versions: Versions,
                   server_security_group: ec2.SecurityGroup, scripts: dict[str, str],
                   options_env: dict[str, object] | None = None) -> Compute:
    """options_env: what optional tiers (search) add to every server's stack.env."""
    log_groups = {
        name: t.add_resource(logs.LogGroup(
            f"{name.capitalize()}Logs",
            LogGroupName=Sub(f"{STACK_PREFIX}/{name}"),
            RetentionInDays=Ref(p.log_retention),
        ))
        for name in PROCESS_LOGS
    }
    web_role, worker_role, queue_role = _server_roles(
        t, p, load_balancing, data, secrets, versions, log_groups)
    settings.create_settings_access(t, p, [web_role, worker_role, queue_role])
    web_profile = t.add_resource(iam.InstanceProfile("WebServerInstanceProfile", Roles=[Ref(web_role)]))
    worker_profile = t.add_resource(iam.InstanceProfile("ServerInstanceProfile", Roles=[Ref(worker_role)]))
    queue_profile = t.add_resource(iam.InstanceProfile(
        "QueueWorkerInstanceProfile", Condition=parameters.HAS_QUEUE_WORKERS, Roles=[Ref(queue_role)]))
    _grant_queue_metrics(t, worker_role)
    grant_image_pulls(t, p, web_role, worker_role, queue_role)

    def stack_env(server_role: str, group: str) -> dict[str, object]:
        return {
            "STACK_NAME": Ref("AWS::StackName"),
            "AWS_REGION": Ref("AWS::Region"),
            "ROLE": server_role,
            "SIGNAL_RESOURCE": group,
            "LOCAL_DOMAIN": Ref(p.domain),
            "MASTODON_IMAGE": Ref(p.web_image_repository),
            "STREAMING_IMAGE": Ref(p.streaming_image_repository),
            "TAG_PATTERN": tag_pattern(),
            "VERSION_TAG": VERSION_TAG,
            "DEPLOYED_VERSION_PARAMETER": Ref(versions.deployed),
            "APP_SECRET_ARN": Ref(secrets.secret),
            "DB_HOST": GetAtt(data.database, "Endpoint.Address"),
            "DB_PORT": GetAtt(data.database, "Endpoint.Port"),
            "DB_NAME": DATABASE_NAME,
            "DB_USER": DATABASE_USER,
            "REDIS_HOST": GetAtt(data.cache, "PrimaryEndPoint.Address"),
            "REDIS_PORT": GetAtt(data.cache, "PrimaryEndPoint.Port"),
            # Empty without SeparateCacheNodeType: Rails.cache then shares the main Redis.
            "CACHE_REDIS_HOST": If(parameters.HAS_SEPARATE_CACHE,
                                   GetAtt(data.rails_cache, "PrimaryEndPoint.Address"), ""),
            "CACHE_REDIS_PORT": If(parameters.HAS_SEPARATE_CACHE,
                                   GetAtt(data.rails_cache, "PrimaryEndPoint.Port"), ""),
            "S3_BUCKET": Ref(data.bucket),
            "S3_ALIAS_HOST": Join("", [Ref(p.domain), "/system"]),
            "SMTP_SERVER": mail.server,
            "SMTP_PORT": mail.port,
            "SMTP_FROM_ADDRESS": mail.from_address,
            "SMTP_LOGIN": mail.login,
            "SMTP_PASSWORD_SECRET_ARN": Ref(p.smtp_password_secret),
            **settings.stack_env(p),
            **{f"LOG_GROUP_{name.upper()}": Ref(group_) for name, group_ in log_groups.items()},
            "MAX_CONNECTIONS": FindInMap(parameters.DATABASE_CONNECTIONS_MAP,
                                         Ref(p.database_class), "MaxConnections"),
            "WEB_MAX_SIZE": Ref(p.web_max_size),
            "QUEUE_WORKER_MAX_SIZE": Ref(p.queue_worker_max_size),
            "MAIN_WORKER_QUEUES": Join(",", Ref(p.main_worker_queues)),
            "QUEUE_WORKER_QUEUES": Join(",", Ref(p.queue_worker_queues)),
            "ROLLOUT_SURGE": str(capacity.ROLLOUT_SURGE),
            "DB_CONNECTION_RESERVE": str(capacity.RESERVED_CONNECTIONS + capacity.ONE_OFF_CONNECTIONS),
            "CLOUDFRONT_PREFIX_LIST_ID": GetAtt(load_balancing.cloudfront_prefix_list, "Id"),
            "VPC_CIDR": VPC_CIDR,
            "TARGET_KEEP_ALIVE_SECONDS": str(TARGET_KEEP_ALIVE_SECONDS),
            "BOOT_DATABASE_WAIT_SECONDS": str(BOOT_DATABASE_WAIT_SECONDS),
            "BOOT_HEALTH_WAIT_SECONDS": str(BOOT_HEALTH_WAIT_SECONDS),
            **SERVER_FACTS,
            **sidekiq.SERVER_FACTS,
            **_database_growth_env(p, data),
            **_image_registry_env(),
            **(options_env or {}),
        }

    # Only web servers wait in the launch hook and in the target groups.
    web_env = {
        **stack_env("web", WEB_GROUP),
        "LAUNCH_HOOK": LAUNCH_HOOK,
        "WEB_TARGET_GROUP_ARN": Ref(load_balancing.web_target_group),
        "STREAMING_TARGET_GROUP_ARN": Ref(load_balancing.streaming_target_group),
        "BOOT_TARGET_WAIT_SECONDS": str(BOOT_TARGET_WAIT_SECONDS),
    }

    # The main worker publishes the queue metrics (bootstrap.sh's timer); empty: no queue
    # workers, nothing to publish.
    worker_env = {
        **stack_env("worker", WORKER_GROUP),
        "METRICS_NAMESPACE": If(parameters.HAS_QUEUE_WORKERS, sidekiq.METRICS_NAMESPACE, ""),
    }

    web_template = _launch_template(
        t, WEB_LAUNCH_TEMPLATE, Ref(p.web_instance_type), parameters.WEB_IS_ARM, web_profile,
        server_security_group, user_data(web_env, scripts, WEB_LAUNCH_TEMPLATE),
        scripts)
    worker_template = _launch_template(
        t, WORKER_LAUNCH_TEMPLATE, Ref(p.worker_instance_type), parameters.WORKER_IS_ARM, worker_profile,
        server_security_group,
        user_data(worker_env, scripts, WORKER_LAUNCH_TEMPLATE), scripts)
    queue_template = _launch_template(
        t, QUEUE_LAUNCH_TEMPLATE, Ref(p.queue_worker_instance_type), parameters.QUEUE_WORKER_IS_ARM,
        queue_profile, server_security_group,
        user_data(stack_env("queue", QUEUE_GROUP), scripts, QUEUE_LAUNCH_TEMPLATE), scripts,
        condition=parameters.HAS_QUEUE_WORKERS)

    web = t.add_resource(autoscaling.AutoScalingGroup(
        WEB_GROUP,
        MinSize=Ref(p.web_min_size),
        MaxSize=Ref(p.web_max_size),
        VPCZoneIdentifier=[Ref(s) for s in network.public_subnets],
        MixedInstancesPolicy=_market(web_template, Ref(p.web_instance_type)),
        CapacityRebalance=If(parameters.USE_SPOT, True, False),
        TargetGroupARNs=[Ref(load_balancing.web_target_group), Ref(load_balancing.streaming_target_group)],
        HealthCheckType="ELB",
        HealthCheckGracePeriod=WEB_HEALTH_CHECK_GRACE_SECONDS,
        LifecycleHookSpecificationList=[autoscaling.LifecycleHookSpecification(
            LifecycleHookName=LAUNCH_HOOK,
            LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
            HeartbeatTimeout=BOOT_READY_SECONDS,
            DefaultResult="ABANDON",
        )],
        Tags=[autoscaling.Tag("Name", "mastodon-web", True),
              autoscaling.Tag(ROLE_TAG, "web", True)],
        CreationPolicy=CreationPolicy(
            ResourceSignal=ResourceSignal(Count=Ref(p.web_min_size), Timeout=SIGNAL_TIMEOUT),
            AutoScalingCreationPolicy=AutoScalingCreationPolicy(MinSuccessfulInstancesPercent=100),
        ),
        # A new group serves before the old one goes: no request finds no target.
        UpdatePolicy=UpdatePolicy(
            AutoScalingReplacingUpdate=AutoScalingReplacingUpdate(WillReplace=True)),
    ))
    worker = t.add_resource(autoscaling.AutoScalingGroup(
        WORKER_GROUP,
        MinSize="1",
        MaxSize="1",
        VPCZoneIdentifier=[Ref(s) for s in network.public_subnets],
        MixedInstancesPolicy=_market(worker_template, Ref(p.worker_instance_type)),
        HealthCheckType="EC2",
        HealthCheckGracePeriod=WORKER_HEALTH_CHECK_GRACE_SECONDS,
        Tags=[autoscaling.Tag("Name", "mastodon-worker", True),
              autoscaling.Tag(ROLE_TAG, "worker", True)],
        CreationPolicy=CreationPolicy(
            ResourceSignal=ResourceSignal(Count=1, Timeout=SIGNAL_TIMEOUT)),
        # Terminate, then launch: never two schedulers.
        UpdatePolicy=UpdatePolicy(AutoScalingRollingUpdate=AutoScalingRollingUpdate(
            MinInstancesInService=0, MaxBatchSize=1, WaitOnResourceSignals=True,
            PauseTime=SIGNAL_TIMEOUT)),
    ))
    # Queue workers boot like the worker but wait for the database like a web server, and
    # run Sidekiq on QueueWorkerQueues only. No load balancer: EC2 health, the boot signal,
    # and Sidekiq's graceful shutdown on scale-in (templates/sidekiq.py).
    queue = t.add_resource(autoscaling.AutoScalingGroup(
        QUEUE_GROUP,
        Condition=parameters.HAS_QUEUE_WORKERS,
        MinSize=Ref(p.queue_worker_min_size),
        MaxSize=Ref(p.queue_worker_max_size),
        VPCZoneIdentifier=[Ref(s) for s in network.public_subnets],
        MixedInstancesPolicy=_market(queue_template, Ref(p.queue_worker_instance_type)),
        CapacityRebalance=If(parameters.USE_SPOT, True, False),
        HealthCheckType="EC2",
        HealthCheckGracePeriod=WORKER_HEALTH_CHECK_GRACE_SECONDS,
        Tags=[autoscaling.Tag("Name", "mastodon-queue", True),
              autoscaling.Tag(ROLE_TAG, "queue", True)],
        CreationPolicy=CreationPolicy(
            ResourceSignal=ResourceSignal(Count=Ref(p.queue_worker_min_size), Timeout=SIGNAL_TIMEOUT)),
        # One server at a time, each signalling before the next; the scaling alarms may not
        # move the group meanwhile (AWS's advice for rolling updates of a scaled group).
        UpdatePolicy=UpdatePolicy(AutoScalingRollingUpdate=AutoScalingRollingUpdate(
            MinInstancesInService=0, MaxBatchSize=1, WaitOnResourceSignals=True,
            PauseTime=SIGNAL_TIMEOUT,
            SuspendProcesses=["HealthCheck", "ReplaceUnhealthy", "AZRebalance", "AlarmNotification",
                              "ScheduledActions"])),
    ))
    return Compute(web_group=web, worker_group=worker, log_groups=log_groups, queue_group=queue)


def _grant_queue_metrics(t: Template, worker_role: iam.Role) -> iam.PolicyType:
    """The main worker publishes the queue metrics, into the stack's namespace only.

    PutMetricData accepts no resource ARN; the cloudwatch:namespace condition key limits
    it (CloudWatch User Guide, "CloudWatch condition keys"). The metadata prices them.
    """
    return t.add_resource(iam.PolicyType(
        QUEUE_METRICS_POLICY,
        Condition=parameters.HAS_QUEUE_WORKERS,
        PolicyName="QueueMetrics",
        Roles=[Ref(worker_role)],
        PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=[Statement(
            Effect=Allow, Action=[awacs_cloudwatch.PutMetricData], Resource=["*"],
            Condition=Condition(StringEquals("cloudwatch:namespace", sidekiq.METRICS_NAMESPACE)),
        )]),
        Metadata={CUSTOM_METRICS_METADATA: sidekiq.CUSTOM_METRICS},
    ))


# The ECR images' pull permissions (issue 15), one policy per set of roles, each only
# under the condition that a repository is in the stack's own ECR registry:
# - ecr:GetAuthorizationToken takes no resource ARN (Service Authorization Reference,
#   Amazon ECR: no resource type), so "*"; the token opens only what the role may pull.
# - ecr:BatchGetImage and ecr:GetDownloadUrlForLayer pull an image (the actions of the
#   AWS managed policy AmazonEC2ContainerRegistryPullOnly, without its pull-through-cache
#   import), on exactly the named repositories.
ECR_PULL_ACTIONS = (awacs_ecr.BatchGetImage, awacs_ecr.GetDownloadUrlForLayer)
WEB_IMAGE_PULL_POLICY = "WebServerImagePullPolicy"
WORKER_IMAGE_PULL_POLICY = "ServerImagePullPolicy"


def _image_pull_statements(repositories: list[object]) -> list[Statement]:
    return [
        Statement(Effect=Allow, Action=[awacs_ecr.GetAuthorizationToken], Resource=["*"]),
        Statement(Effect=Allow, Action=list(ECR_PULL_ACTIONS), Resource=repositories),
    ]


def grant_image_pulls(t: Template, p: Parameters, web_role: iam.Role, worker_role: iam.Role,
                      queue_role: iam.Role) -> None:
    """The web servers pull both images; the worker and the queue workers the Mastodon one."""
    web_image, streaming_image = p.web_image_repository, p.streaming_image_repository
    t.add_resource(iam.PolicyType(
        WEB_IMAGE_PULL_POLICY,
        Condition=parameters.ANY_IMAGE_IN_ECR,
        PolicyName="PullImagesFromEcr",
        Roles=[Ref(web_role)],
        PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=_image_pull_statements([
            If(parameters.WEB_IMAGE_IN_ECR, parameters.ecr_repository_arn(web_image), Ref("AWS::NoValue")),
            If(parameters.STREAMING_IMAGE_IN_ECR, parameters.ecr_repository_arn(streaming_image),
               Ref("AWS::NoValue")),
        ])),
    ))
    t.add_resource(iam.PolicyType(
        WORKER_IMAGE_PULL_POLICY,
        Condition=parameters.WEB_IMAGE_IN_ECR,
        PolicyName="PullImagesFromEcr",
        Roles=[Ref(worker_role), If(parameters.HAS_QUEUE_WORKERS, Ref(queue_role), Ref("AWS::NoValue"))],
        PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=_image_pull_statements([
            parameters.ecr_repository_arn(web_image)])),
    ))


def _image_registry_env() -> dict[str, object]:
    """For the instance scripts' logins (common.sh registry_login): the stack's own ECR
    registry while an image is there (empty otherwise: every pull is anonymous), and the
    shape of any ECR registry, to refuse one of another account or region by name."""
    return {
        "ECR_REGISTRY": If(parameters.ANY_IMAGE_IN_ECR, Sub(parameters.ECR_REGISTRY), ""),
        "ECR_HOST_PATTERN": f"^{ECR_HOST_PATTERN}$",
        # Not read by the scripts: the references make CloudFormation create the pull grants
        # before any launch template that needs them (on an update from a public registry to
        # ECR, the new servers would otherwise race IAM for their first pull).
        "ECR_PULL_GRANTS": Join(" ", [
            If(parameters.ANY_IMAGE_IN_ECR, Ref(WEB_IMAGE_PULL_POLICY), ""),
            If(parameters.WEB_IMAGE_IN_ECR, Ref(WORKER_IMAGE_PULL_POLICY), ""),
        ]),
    }


def _market(template: ec2.LaunchTemplate, instance_type: Ref) -> autoscaling.MixedInstancesPolicy:
    """On-demand, or spot when UseSpotInstances is true (the cheapest pools with capacity)."""
    return autoscaling.MixedInstancesPolicy(
        LaunchTemplate=autoscaling.LaunchTemplate(
            LaunchTemplateSpecification=autoscaling.LaunchTemplateSpecification(
                LaunchTemplateId=Ref(template), Version=GetAtt(template, "LatestVersionNumber")),
            Overrides=[autoscaling.LaunchTemplateOverrides(InstanceType=instance_type)],
        ),
        InstancesDistribution=autoscaling.InstancesDistribution(
            OnDemandBaseCapacity=0,
            OnDemandPercentageAboveBaseCapacity=If(parameters.USE_SPOT, 0, 100),
            SpotAllocationStrategy="price-capacity-optimized",
        ),
    )


def _launch_template(t: Template, name: str, instance_type: Ref, arm_condition: str,
                     profile: iam.InstanceProfile, security_group: ec2.SecurityGroup,
                     data: Base64, scripts: dict[str, str],
                     condition: str | None = None) -> ec2.LaunchTemplate:
    """A launch template whose metadata carries the instance scripts its user data fetches.

    User data may not exceed 16 KB and the scripts are larger, so a new server reads them
    from its own launch template's metadata (DescribeStackResource). Scripts and user data
    (which holds their digest) change in the same resource update, so a server never
    meets scripts of another template version.
    """
    image = If(arm_condition,
               "{{resolve:ssm:" + AMI_PARAMETER.format(arch="arm64") + "}}",
               "{{resolve:ssm:" + AMI_PARAMETER.format(arch="x86_64") + "}}")
    template = ec2.LaunchTemplate(
        name,
        LaunchTemplateData=ec2.LaunchTemplateData(
            ImageId=image,
            InstanceType=instance_type,
            IamInstanceProfile=ec2.IamInstanceProfile(Arn=GetAtt(profile, "Arn")),
            MetadataOptions=ec2.MetadataOptions(
                HttpEndpoint="enabled", HttpTokens="required",
                # Containers run with the host's network, so one hop suffices.
                HttpPutResponseHopLimit=1, InstanceMetadataTags="disabled"),
            NetworkInterfaces=[ec2.NetworkInterfaces(
                DeviceIndex=0, AssociatePublicIpAddress=True, Groups=[Ref(security_group)],
                DeleteOnTermination=True)],
            BlockDeviceMappings=[ec2.LaunchTemplateBlockDeviceMapping(
                DeviceName="/dev/xvda",
                Ebs=ec2.EBSBlockDevice(VolumeType="gp3", VolumeSize=ROOT_VOLUME_GIB,
                                       Encrypted=True, DeleteOnTermination=True))],
            Monitoring=ec2.Monitoring(Enabled=False),
            UserData=data,
            TagSpecifications=[ec2.TagSpecifications(
                ResourceType="volume", Tags=Tags(Name=Sub("${AWS::StackName}-server")))],
        ),
        Metadata={
            "Scripts": dict(sorted(scripts.items())),
            "Digest": scripts_digest(scripts),
            "checkov": {"skip": [
                {"id": "CKV_AWS_88", "comment": "Servers need a public IPv4 address to pull images "
                 "and federate without a NAT gateway; the security group admits only the load "
                 "balancer, and there is no SSH."},
            ]},
        },
    )
    if condition is not None:
        template.Condition = condition
    return t.add_resource(template)


def _server_roles(t: Template, p: Parameters, load_balancing: LoadBalancing, data: Data, secrets: Secrets,
                  versions: Versions, log_groups: dict[str, logs.LogGroup]
                  ) -> tuple[iam.Role, iam.Role, iam.Role]:
    """The web servers' role, the worker's and the queue workers': the same reads, and the
    web's launch hook (the worker's queue metrics are granted apart)."""
    statements = [
        Statement(Effect=Allow, Action=[awacs_sm.GetSecretValue], Resource=[
            Ref(secrets.secret),
            If(parameters.HAS_SMTP_PASSWORD_SECRET, Ref(p.smtp_password_secret), Ref("AWS::NoValue")),
        ]),
        Statement(Effect=Allow, Action=[awacs_ssm.GetParameter], Resource=[
            # Servers boot the deployed version; the desired one is the pipeline's.
            versions.deployed_arn(),
        ]),
        Statement(Effect=Allow, Action=[awacs_ec2.GetManagedPrefixListEntries],
                  Resource=[load_balancing.prefix_list_arn()]),
        Statement(Effect=Allow, Action=[awacs_logs.CreateLogStream, awacs_logs.PutLogEvents],
                  Resource=[GetAtt(g, "Arn") for g in log_groups.values()]),
        # Signal the groups; read the instance scripts from the stack (see _launch_template).
        Statement(Effect=Allow, Action=[awacs_cfn.SignalResource, awacs_cfn.DescribeStackResource],
                  Resource=[Ref("AWS::StackId")]),
        # A server tags itself with the version it booted (only that key, only itself), so
        # that the rollout knows what every server runs (lambdas/rollout/plan.py).
        Statement(Effect=Allow, Action=[awacs_ec2.CreateTags],
                  Resource=[Sub("arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*")],
                  Condition=Condition([
                      StringEquals("aws:ARN", "${ec2:SourceInstanceARN}"),
                      ForAllValuesStringEquals("aws:TagKeys", [VERSION_TAG]),
                  ])),
        Statement(Effect=Allow, Action=[awacs_s3.ListBucket], Resource=[GetAtt(data.bucket, "Arn")]),
        Statement(Effect=Allow, Action=[awacs_s3.GetObject, awacs_s3.PutObject, awacs_s3.DeleteObject],
                  Resource=[Join("", [GetAtt(data.bucket, "Arn"), "/*"])]),
        *ssm_agent_statements(),
    ]
    # Web servers only: a web server completes its own launch hook (only the web group
    # of this stack, which CloudFormation tags with its stack and logical ID: the role
    # cannot name the group, which is created after it) and reads its health in the
    # target groups. The worker, which handles remote media, cannot touch web boots.
    # The tag key is Auto Scaling's own (EC2 Auto Scaling user guide, "Tags for security").
    launch = [
        Statement(Effect=Allow, Action=[awacs_autoscaling.CompleteLifecycleAction],
                  Resource=[Sub("arn:${AWS::Partition}:autoscaling:${AWS::Region}:${AWS::AccountId}:"
                                "autoScalingGroup:*:autoScalingGroupName/*")],
                  Condition=Condition(StringEquals({
                      f"autoscaling:ResourceTag/{CLOUDFORMATION_STACK_TAG}": Ref("AWS::StackId"),
                      f"autoscaling:ResourceTag/{CLOUDFORMATION_LOGICAL_ID_TAG}": WEB_GROUP,
                  }))),
        # These accept no resource ARN: AWS grants them only on "*".
        Statement(Effect=Allow, Resource=["*"], Action=[
            awacs_autoscaling.DescribeAutoScalingInstances, awacs_elb.DescribeTargetHealth]),
    ]
    # Queue workers only: a failed boot marks its server Unhealthy (bootstrap.sh
    # mark_unhealthy), in the queue group of this stack only, found as the web hook's is.
    queue_health = Statement(
        Effect=Allow, Action=[awacs_autoscaling.SetInstanceHealth],
        Resource=[Sub("arn:${AWS::Partition}:autoscaling:${AWS::Region}:${AWS::AccountId}:"
                      "autoScalingGroup:*:autoScalingGroupName/*")],
        Condition=Condition(StringEquals({
            f"autoscaling:ResourceTag/{CLOUDFORMATION_STACK_TAG}": Ref("AWS::StackId"),
            f"autoscaling:ResourceTag/{CLOUDFORMATION_LOGICAL_ID_TAG}": QUEUE_GROUP,
        })))
    return (
        policies.service_role(t, WEB_SERVER_ROLE, "ec2.amazonaws.com", "Mastodon", [*statements, *launch]),
        policies.service_role(t, WORKER_SERVER_ROLE, "ec2.amazonaws.com", "Mastodon", statements),
        policies.service_role(t, QUEUE_SERVER_ROLE, "ec2.amazonaws.com", "Mastodon",
                              [*statements, queue_health], condition=parameters.HAS_QUEUE_WORKERS),
    )


# What the SSM Agent needs for Session Manager and Run Command (tootctl, the rollout, the
# daily cleanup), instead of AmazonSSMManagedInstanceCore, which also reads every SSM
# parameter of the account and region (SecureStrings included) and serves State Manager,
# Inventory and Patch Manager, none of which the stack uses. Sources: the managed
# policy's document (AWS Managed Policy Reference, v2) and the Session Manager instance
# profile of the Systems Manager User Guide.
SSM_AGENT_INSTANCE_ACTIONS = ("ssm:UpdateInstanceInformation", "ssm:ListInstanceAssociations")
SSM_AGENT_CHANNEL_ACTIONS = (
    # Session Manager, and Run Command on recent agents.
    "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
    # Run Command's message delivery.
    "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
    "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
)


def ssm_agent_statements() -> list[Statement]:
    return [
        # Registration and heartbeat: only as an instance of this account and region.
        Statement(Effect=Allow, Action=[Action(*a.split(":")) for a in SSM_AGENT_INSTANCE_ACTIONS],
                  Resource=[Sub("arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*")]),
        # These actions take no resource: the service scopes them to the calling instance.
        Statement(Effect=Allow, Action=[Action(*a.split(":")) for a in SSM_AGENT_CHANNEL_ACTIONS],
                  Resource=["*"]),
    ]


def scripts_digest(scripts: dict[str, str]) -> str:
    """A digest of every instance script, to tie a launch template to the scripts it runs."""
    digest = hashlib.sha256()
    for name in sorted(scripts):
        digest.update(name.encode() + b"\0" + scripts[name].encode() + b"\0")
    return digest.hexdigest()


# Runs before bootstrap.sh exists: fetch the scripts, check they are the ones this
# launch template was built with, and signal FAILURE if anything goes wrong.
FETCH_SCRIPTS = r"""fail() {
  echo "user data: $1" >&2
  imds=@IMDS_URL@/latest
  token=$(curl -fsS -X PUT $imds/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60') || true
  id=$(curl -fsS -H "X-aws-ec2-metadata-token: $token" $imds/meta-data/instance-id) || id=unknown
  aws cloudformation signal-resource --region "$AWS_REGION" --stack-name "$STACK_NAME" \
    --logical-resource-id "$SIGNAL_RESOURCE" --unique-id "$id-user-data-$2" --status FAILURE || true
  exit 1
}
trap 'fail "line $LINENO failed" setup' ERR
# shellcheck source=/dev/null
. @STACK_ENV_FILE@
for attempt in 1 2 3 4 5; do
  aws cloudformation describe-stack-resource --region "$AWS_REGION" --stack-name "$STACK_NAME" \
    --logical-resource-id "$INSTANCE_SCRIPTS" --query StackResourceDetail.Metadata --output text \
    > @SCRIPTS_DIR@/scripts.json && break
  [ "$attempt" -lt 5 ] || fail "cannot read the instance scripts from the stack" fetch-scripts
  sleep $((attempt * 5))
done
mismatch="the stack's scripts are not the ones this launch template was built with"
python3 - "$SCRIPTS_DIGEST" <<'PY' || fail "$mismatch" digest
import hashlib, json, os, sys
scripts = json.load(open("@SCRIPTS_DIR@/scripts.json"))["Scripts"]
digest = hashlib.sha256()
for name in sorted(scripts):
    digest.update(name.encode() + b"\0" + scripts[name].encode() + b"\0")
if digest.hexdigest() != sys.argv[1]:
    sys.exit(1)
for name, text in scripts.items():
    path = os.path.join("@SCRIPTS_DIR@", os.path.basename(name))
    with open(path, "w") as script:
        script.write(text)
    os.chmod(path, 0o755)
PY
trap - ERR
exec @BOOTSTRAP_SCRIPT@
"""
for _name, _value in (("@IMDS_URL@", IMDS_URL), ("@STACK_ENV_FILE@", STACK_ENV_FILE),
                      ("@SCRIPTS_DIR@", SCRIPTS_DIR), ("@BOOTSTRAP_SCRIPT@", BOOTSTRAP_SCRIPT)):
    FETCH_SCRIPTS = FETCH_SCRIPTS.replace(_name, _value)


def _database_growth_env(p: Parameters, data: Data) -> dict[str, object]:
    """The pooler and the read replica (issue 13 items 2 and 3), for bootstrap.sh: empty
    values when an option is off, which the scripts read as off."""
    pooled = parameters.USE_DATABASE_POOLER
    env: dict[str, object] = {
        "DB_POOLER": If(pooled, "true", "false"),
        "PGBOUNCER_IMAGE": If(pooled, PGBOUNCER_IMAGE, ""),
        "PGBOUNCER_PORT": If(pooled, str(PGBOUNCER_PORT), ""),
    }
    if data.replica is not None:
        replica = parameters.HAS_DATABASE_REPLICA
        env |= {
            "REPLICA_DB_HOST": If(replica, GetAtt(data.replica, "Endpoint.Address"), ""),
            "REPLICA_DB_PORT": If(replica, GetAtt(data.replica, "Endpoint.Port"), ""),
            "REPLICA_MAX_CONNECTIONS": If(replica, FindInMap(
                parameters.DATABASE_CONNECTIONS_MAP, Ref(p.database_replica_class), "MaxConnections"), ""),
        }
    return env


def user_data(env: dict[str, object], scripts: dict[str, str], scripts_resource: str) -> Base64:
    """User data: write stack.env, fetch the instance scripts, run the bootstrap."""
    parts: list[object] = [
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        f"install -d -m 0755 {ETC_DIR} {SCRIPTS_DIR}\n"
        f"cat > {STACK_ENV_FILE} <<'STACK_ENV'\n"
    ]
    for key, value in {**env, "INSTANCE_SCRIPTS": scripts_resource}.items():
        parts += [f"{key}='", value, "'\n"]
    parts.append("STACK_ENV\n")
    parts.append(f"SCRIPTS_DIGEST={scripts_digest(scripts)}\n")
    parts.append(FETCH_SCRIPTS)
    size = sum(len(p) if isinstance(p, str) else RESOLVED_VALUE_ALLOWANCE for p in parts)
    if size > USER_DATA_LIMIT:
        raise UserDataTooLarge(
            f"user data would be about {size} bytes, above EC2's {USER_DATA_LIMIT}")
    return Base64(Join("", parts))
