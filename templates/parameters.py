"""The stack's parameters, their console groups and the conditions derived from them.

Only the domain, the hosted zone and the alert e-mail need a value; everything else
has a default an operator can keep. Each parameter carries a description, a
constraint and a labelled place in the console (AWS::CloudFormation::Interface), so
CloudFormation rejects a bad value before it creates anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from troposphere import (
    And,
    Condition,
    Equals,
    FindInMap,
    Join,
    Not,
    Or,
    Parameter,
    Ref,
    Select,
    Split,
    Sub,
    Template,
)

from templates import capacity, sidekiq
from templates.options import (
    CUSTOM_TAG_PATTERN,
    IMAGE_PUSH_TAG_PATTERN_DEFAULT,
    IMAGE_PUSH_TAG_PATTERN_RULE,
    IMAGE_REPOSITORY_PATTERN,
    MASTODON_IMAGE,
    STREAMING_IMAGE,
)

# Console groups, in the order the console shows them.
GROUP_REQUIRED = "Mastodon instance (required)"
GROUP_TLS = "TLS without a Route 53 hosted zone"
GROUP_MAIL = "Outgoing mail"
GROUP_COMPUTE = "Web and worker servers"
GROUP_DATA = "Database and cache"
GROUP_OPERATIONS = "Operations"
GROUP_WAF = "Web application firewall (optional)"
GROUP_QUEUE_WORKERS = "Sidekiq queue workers (optional)"
GROUP_DATABASE_GROWTH = "Database growth (optional): pooler and read replica"
GROUP_CACHE_SPLIT = "Redis for growth (optional)"
GROUP_SEARCH = "Full-text search (optional)"
GROUP_SETTINGS = "Mastodon's other settings (optional)"
GROUP_IMAGES = "Your own Mastodon images (optional)"

# Condition names used across tiers.
HAS_HOSTED_ZONE = "HasHostedZone"
NO_HOSTED_ZONE = "NoHostedZone"
USE_SES = "UseSes"
USE_SES_WITH_ZONE = "UseSesWithHostedZone"
USE_SES_WITHOUT_ZONE = "UseSesWithoutHostedZone"
HAS_SMTP_PASSWORD_SECRET = "HasSmtpPasswordSecret"
HAS_MAIL_FROM = "HasMailFromAddress"
IS_MULTI_AZ = "IsDatabaseMultiAZ"
USE_SPOT = "UseSpot"
WEB_IS_ARM = "WebIsArm64"
WORKER_IS_ARM = "WorkerIsArm64"
USE_VPC_ORIGIN = "UseVpcOrigin"
HAS_QUEUE_WORKERS = "HasQueueWorkers"
QUEUE_WORKER_IS_ARM = "QueueWorkerIsArm64"
USE_DATABASE_POOLER = "UseDatabasePooler"
HAS_DATABASE_REPLICA = "HasDatabaseReplica"
HAS_SEPARATE_CACHE = "HasSeparateCache"
CACHE_HAS_REPLICA = "CacheHasReplica"
CACHE_FAILS_OVER = "CacheFailsOver"
# Full-text search (templates/search.py).
HAS_SEARCH = "HasSearch"
SEARCH_ZONE_AWARE = "SearchZoneAware"
SEARCH_LARGE_CLUSTER = "SearchLargeCluster"
SEARCH_CREATES_SERVICE_ROLE = "SearchCreatesServiceLinkedRole"
HAS_MASTODON_SETTINGS = "HasMastodonSettings"
HAS_MASTODON_SETTINGS_SECRET = "HasMastodonSettingsSecret"
HAS_ANY_MASTODON_SETTINGS = "HasAnyMastodonSettings"
# Your own images (issue 15): upstream's two repositories, or not.
IMAGES_ARE_UPSTREAM = "ImagesAreUpstream"
HAS_INITIAL_VERSION = "HasInitialMastodonVersion"
# ...and which of them is a private Amazon ECR repository of the stack's own account and
# region (the servers then log in to ECR and their roles may pull exactly that repository).
WEB_IMAGE_IN_ECR = "WebImageInEcr"
STREAMING_IMAGE_IN_ECR = "StreamingImageInEcr"
ANY_IMAGE_IN_ECR = "AnyImageInEcr"
# Upgrade on push (15c): a push to the web image's ECR repository starts the rollout.
UPGRADES_ON_IMAGE_PUSH = "UpgradesOnImagePush"
ROLLS_REPUSHED_TAGS = "RollsRepushedTags"
IMAGE_PUSH_NEEDS_ECR_RULE = "UpgradeOnImagePushNeedsEcr"
OWN_IMAGES_NEED_INITIAL_VERSION_RULE = "OwnImagesNameTheirFirstVersion"
UPSTREAM_IMAGES_START_AT_THE_PIN_RULE = "UpstreamImagesStartAtThePinnedRelease"

INSTANCE_ARCHITECTURE_MAP = "InstanceArchitecture"
DATABASE_CONNECTIONS_MAP = "DatabaseConnections"

# Server counts are listed, not ranged: a Number parameter would also take "02", which the
# rules comparing sizes (scaling.WEB_SIZE_RULE) match as text and would let through.
WEB_SIZES = [str(n) for n in range(capacity.WEB_MIN_SIZE_LIMIT, capacity.WEB_MAX_SIZE_LIMIT + 1)]
QUEUE_WORKER_SIZES = [str(n) for n in range(capacity.QUEUE_WORKER_MAX_SIZE_LIMIT + 1)]

HOSTNAME_PATTERN = r"^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
EMAIL_PATTERN = r"^[^@\s]+@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
# The sender reaches the servers' stack.env, which single-quotes values: no quotes.
OPTIONAL_SENDER_PATTERN = r"^$|^[^@\s'\"]+@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
HOSTED_ZONE_PATTERN = r"^$|^Z[A-Z0-9]{1,31}$"
CERTIFICATE_ARN_PATTERN = r"^$|^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$"
SECRET_ARN_PATTERN = r"^$|^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"
OPTIONAL_HOSTNAME_PATTERN = r"^$|" + HOSTNAME_PATTERN[1:]
WEB_ACL_ARN_PATTERN = (r"^$|^arn:aws[a-z-]*:wafv2:us-east-1:\d{12}:global/webacl/"
                       r"[A-Za-z0-9_-]{1,128}/[0-9a-f-]{36}$")

# The commercial regions where CloudFront supports VPC origins, from the CloudFront
# Developer Guide ("Restrict access with VPC origins", supported Regions, 2025-2026).
# WebSocket connections (the streaming API) pass through VPC origins since 2026-05-01
# (AWS What's New, "Amazon CloudFront now supports WebSockets for VPC origins").
# A region missing here only costs the fallback: an internet-facing load balancer.
VPC_ORIGIN_REGIONS = (
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "ca-west-1",
    "mx-central-1", "sa-east-1", "af-south-1", "il-central-1", "me-south-1", "me-central-1",
    "ap-east-1", "ap-east-2", "ap-south-1", "ap-south-2", "ap-southeast-1", "ap-southeast-2",
    "ap-southeast-3", "ap-southeast-4", "ap-southeast-5", "ap-southeast-7", "ap-northeast-1",
    "ap-northeast-2", "ap-northeast-3", "eu-central-1", "eu-central-2", "eu-west-1", "eu-west-2",
    "eu-west-3", "eu-south-1", "eu-south-2", "eu-north-1",
)
# The commercial regions where CloudFormation has no AWS::SES::EmailIdentity (cfn-lint's
# regional resource schemas, 1.58). SES itself may answer there (botocore lists an SMTP
# endpoint in most of them), but the stack cannot create its identity: a stack there
# mails through an external SMTP server, which a rule requires (_add_rules) — SES's SMTP
# endpoint of another region is one. Revisit when cfn-lint's schemas change (a test
# compares this list with them).
NO_SES_REGIONS = (
    "ap-east-1", "ap-east-2", "ap-southeast-4", "ap-southeast-6", "ap-southeast-7", "eu-south-2",
    "mx-central-1",
)
# Fn::Or takes 2 to 10 conditions.
_OR_LIMIT = 10


def region_in(regions: tuple[str, ...]) -> object:
    """A condition expression true when the stack's region is one of `regions`."""
    tests: list[object] = [Equals(Ref("AWS::Region"), r) for r in regions]
    while len(tests) > _OR_LIMIT:
        tests = [Or(*chunk) if len(chunk) > 1 else chunk[0]
                 for chunk in (tests[i:i + _OR_LIMIT] for i in range(0, len(tests), _OR_LIMIT))]
    return Or(*tests) if len(tests) > 1 else tests[0]


LOG_RETENTION_DAYS = ("7", "14", "30", "60", "90", "180", "365")
CACHE_NODE_TYPES = ("cache.t4g.micro", "cache.t4g.small", "cache.t4g.medium", "cache.m7g.large")
# The Sidekiq Redis's replica, in the order an existing stack must take them (one update
# each): CloudFormation cannot add the replica and turn automatic failover on in one
# update ("Replication group must have at least one read replica to enable autofailover",
# aws-cloudformation/cloudformation-coverage-roadmap#383), nor remove both at once.
CACHE_REPLICA_MODES = ("none", "standby", "failover")
# OpenSearch data nodes: the T3 pair for small instances (AWS calls them dev/test grade,
# t3.small.search is the smallest with 2 GiB), memory-optimised Graviton for large ones.
# Each is offered in every commercial region (cfn-lint's OpenSearch instance-type data).
SEARCH_INSTANCE_TYPES = ("t3.small.search", "t3.medium.search", "r7g.large.search", "r7g.xlarge.search")
# One node in one zone, or an even count spread over the two data subnets' zones (zone
# awareness over two zones needs an even number of data nodes).
SEARCH_INSTANCE_COUNTS = ("1", "2", "4", "6")
SEARCH_VOLUME_SIZES = ("10", "20", "50", "100", "200", "500", "1000")
# The largest EBS volume each T3 type takes (OpenSearch Service quotas, "EBS volume size
# quotas"); the Graviton types take more than this list's largest.
SEARCH_VOLUME_LIMITS = {"t3.small.search": 100, "t3.medium.search": 200}


@dataclass(frozen=True)
class Parameters:
    """The parameters other tiers refer to."""

    domain: Parameter
    hosted_zone: Parameter
    alert_email: Parameter
    cloudfront_certificate: Parameter
    load_balancer_certificate: Parameter
    mail_from: Parameter
    smtp_server: Parameter
    smtp_port: Parameter
    smtp_login: Parameter
    smtp_password_secret: Parameter
    web_instance_type: Parameter
    web_min_size: Parameter
    web_max_size: Parameter
    worker_instance_type: Parameter
    use_spot: Parameter
    database_class: Parameter
    database_storage: Parameter
    database_max_storage: Parameter
    database_multi_az: Parameter
    database_backup_days: Parameter
    cache_node_type: Parameter
    log_retention: Parameter
    load_balancer_scheme: Parameter
    database_deletion_protection: Parameter
    waf_enabled: Parameter
    waf_web_acl_arn: Parameter
    waf_rate_limit: Parameter
    rolling_batch_size: Parameter
    # Sidekiq queue workers (GROUP_QUEUE_WORKERS): off while queue_worker_max_size is 0.
    queue_worker_min_size: Parameter
    queue_worker_max_size: Parameter
    queue_worker_instance_type: Parameter
    main_worker_queues: Parameter
    queue_worker_queues: Parameter
    # Issue 13, database growth (item 2 and 3).
    database_pooler: Parameter
    database_replica_class: Parameter
    separate_cache_node_type: Parameter
    cache_replica: Parameter
    search_enabled: Parameter
    search_instance_type: Parameter
    search_instance_count: Parameter
    search_volume_size: Parameter
    search_service_role: Parameter
    mastodon_settings: Parameter
    mastodon_settings_secret: Parameter
    # Your own images (GROUP_IMAGES): upstream's ghcr.io repositories by default.
    web_image_repository: Parameter
    streaming_image_repository: Parameter
    initial_version: Parameter
    upgrade_on_image_push: Parameter
    image_push_tag_pattern: Parameter
    roll_repushed_tags: Parameter


def add_parameter(t: Template, group: str, label: str, parameter: Parameter) -> Parameter:
    t.add_parameter(parameter)
    t.set_parameter_label(parameter, label)
    t.add_parameter_to_group(parameter, group)
    return parameter


def create_parameters(t: Template) -> Parameters:
    """Add every parameter with its constraint, label and group."""
    p = Parameters(
        domain=add_parameter(t, GROUP_REQUIRED, "Mastodon domain", Parameter(
            "DomainName", Type="String",
            Description="The domain of the instance (LOCAL_DOMAIN), e.g. social.example.com. "
            "It cannot be changed once people have accounts on it.",
            AllowedPattern=HOSTNAME_PATTERN,
            ConstraintDescription="a lower-case DNS name such as social.example.com",
        )),
        hosted_zone=add_parameter(t, GROUP_REQUIRED, "Route 53 hosted zone ID", Parameter(
            "HostedZoneId", Type="String", Default="",
            Description="ID of the existing public Route 53 hosted zone that holds the domain "
            "(e.g. Z0123456789ABCDEFGHIJ). With it the stack validates its certificates, "
            "creates the DNS and DKIM records and needs no manual step. Leave empty to "
            "bring certificates and add DNS records yourself (see the outputs).",
            AllowedPattern=HOSTED_ZONE_PATTERN,
            ConstraintDescription="empty, or a hosted zone ID starting with Z",
        )),
        alert_email=add_parameter(t, GROUP_REQUIRED, "Alert e-mail", Parameter(
            "AlertEmail", Type="String",
            Description="Address that receives alarms and upgrade notifications.",
            AllowedPattern=EMAIL_PATTERN,
            ConstraintDescription="an e-mail address such as admin@example.com",
        )),
        cloudfront_certificate=add_parameter(t, GROUP_TLS, "CloudFront certificate (us-east-1)", Parameter(
            "CloudFrontCertificateArn", Type="String", Default="",
            Description="Only without a hosted zone: ARN of an issued ACM certificate for the "
            "domain in us-east-1 (CloudFront requires that region).",
            AllowedPattern=CERTIFICATE_ARN_PATTERN,
            ConstraintDescription="empty, or an ACM certificate ARN",
        )),
        load_balancer_certificate=add_parameter(t, GROUP_TLS, "Load balancer certificate ARN", Parameter(
            "LoadBalancerCertificateArn", Type="String", Default="",
            Description="Only without a hosted zone: ARN of an issued ACM certificate for the "
            "domain in this stack's region, for the load balancer.",
            AllowedPattern=CERTIFICATE_ARN_PATTERN,
            ConstraintDescription="empty, or an ACM certificate ARN",
        )),
        mail_from=add_parameter(t, GROUP_MAIL, "Sender address", Parameter(
            "MailFromAddress", Type="String", Default="",
            Description="From address of Mastodon's e-mails. Empty: notifications@<domain>. "
            "With SES it must be on the domain or a subdomain (SES refuses other senders).",
            AllowedPattern=OPTIONAL_SENDER_PATTERN,
            ConstraintDescription="empty, or an e-mail address without quotes",
        )),
        smtp_server=add_parameter(t, GROUP_MAIL, "External SMTP server", Parameter(
            "SmtpServer", Type="String", Default="",
            Description="Empty: send with Amazon SES from the domain (identity, DKIM and SMTP "
            "credentials made by the stack). Otherwise the host name of your SMTP server.",
            AllowedPattern=OPTIONAL_HOSTNAME_PATTERN,
            ConstraintDescription="empty, or a lower-case host name",
        )),
        smtp_port=add_parameter(t, GROUP_MAIL, "External SMTP port", Parameter(
            "SmtpPort", Type="Number", Default="587",
            Description="Port of the external SMTP server (STARTTLS on 587, TLS on 465).",
            AllowedValues=["25", "465", "587", "2525"],
        )),
        smtp_login=add_parameter(t, GROUP_MAIL, "External SMTP login", Parameter(
            "SmtpLogin", Type="String", Default="",
            Description="User name on the external SMTP server (not used with SES).",
            AllowedPattern=r"^[\x21\x23-\x26\x28-\x7e]{0,128}$",
            ConstraintDescription="up to 128 printable characters, no spaces or quotes",
        )),
        smtp_password_secret=add_parameter(t, GROUP_MAIL, "External SMTP password secret", Parameter(
            "SmtpPasswordSecretArn", Type="String", Default="",
            Description="ARN of a Secrets Manager secret whose value is the external SMTP "
            "password (never a password itself: parameters are not secret storage). Encrypt it "
            "with the default aws/secretsmanager key: the servers may not use other keys.",
            AllowedPattern=SECRET_ARN_PATTERN,
            ConstraintDescription="empty, or a Secrets Manager secret ARN",
        )),
        web_instance_type=add_parameter(t, GROUP_COMPUTE, "Web instance type", Parameter(
            "WebInstanceType", Type="String", Default=capacity.DEFAULT_WEB_INSTANCE_TYPE,
            Description="Instance type of the web servers (Puma and the streaming server), "
            "2 GiB or more. Graviton (t4g, m7g, c7g) costs less than x86 (t3, m7i, c7i).",
            AllowedValues=[i.name for i in capacity.WEB_INSTANCE_TYPES],
        )),
        web_min_size=add_parameter(t, GROUP_COMPUTE, "Web servers, minimum", Parameter(
            "WebMinSize", Type="String", Default="1",
            Description="Web servers always running. An upgrade takes RollingBatchSize of them "
            "out at a time (a single server is replaced by a new one first).",
            AllowedValues=WEB_SIZES,
        )),
        web_max_size=add_parameter(t, GROUP_COMPUTE, "Web servers, maximum", Parameter(
            "WebMaxSize", Type="String", Default="2",
            Description="Most web servers the group may run (at least the minimum). Each "
            "server's database pools are sized so this many fit the database.",
            AllowedValues=WEB_SIZES,
        )),
        worker_instance_type=add_parameter(t, GROUP_COMPUTE, "Worker instance type", Parameter(
            "WorkerInstanceType", Type="String", Default=capacity.DEFAULT_WORKER_INSTANCE_TYPE,
            Description="Instance type of the single Sidekiq worker. A micro (1 GiB, 5 Sidekiq "
            "threads, swap as a cushion) suits a small instance; choose t4g.small or larger for "
            "more than a few dozen active users or heavy federation.",
            AllowedValues=[i.name for i in capacity.WORKER_INSTANCE_TYPES],
        )),
        use_spot=add_parameter(t, GROUP_COMPUTE, "Run servers on spot", Parameter(
            "UseSpotInstances", Type="String", Default="false",
            Description="true: run the web servers, the worker and any queue workers on spot "
            "capacity (about 70% cheaper; AWS may reclaim a server with two minutes' notice, and "
            "the group replaces it). Keep WebMinSize at 2 or more with spot so the site stays up meanwhile.",
            AllowedValues=["true", "false"],
        )),
        database_class=add_parameter(t, GROUP_DATA, "Database instance class", Parameter(
            "DatabaseInstanceClass", Type="String", Default=capacity.DEFAULT_DATABASE_CLASS,
            Description="RDS PostgreSQL instance class. Its max_connections bounds the "
            "connection pools of every server.",
            AllowedValues=[d.name for d in capacity.DATABASE_CLASSES],
        )),
        database_storage=add_parameter(t, GROUP_DATA, "Database storage (GiB)", Parameter(
            "DatabaseAllocatedStorage", Type="Number", Default="20",
            Description="Initial gp3 storage of the database in GiB; it grows by itself.",
            MinValue=20, MaxValue=16384,
        )),
        database_max_storage=add_parameter(t, GROUP_DATA, "Database storage limit (GiB)", Parameter(
            "DatabaseMaxAllocatedStorage", Type="Number", Default="200",
            Description="Storage autoscaling limit in GiB (must exceed the initial storage).",
            MinValue=22, MaxValue=65536,
        )),
        database_multi_az=add_parameter(t, GROUP_DATA, "Database Multi-AZ", Parameter(
            "DatabaseMultiAZ", Type="String", Default="false",
            Description="Keep a standby database in a second zone (doubles the database cost).",
            AllowedValues=["true", "false"],
        )),
        database_backup_days=add_parameter(t, GROUP_DATA, "Database backup retention (days)", Parameter(
            "DatabaseBackupRetentionDays", Type="Number", Default="7",
            Description="Days of automated backups and point-in-time recovery.",
            MinValue=1, MaxValue=35,
        )),
        cache_node_type=add_parameter(t, GROUP_DATA, "Cache node type", Parameter(
            "CacheNodeType", Type="String", Default=CACHE_NODE_TYPES[0],
            Description="ElastiCache (Valkey) node type for Mastodon's Redis: Sidekiq's jobs, the "
            "feeds, streaming, and Rails' cache unless SeparateCacheNodeType is set.",
            AllowedValues=list(CACHE_NODE_TYPES),
        )),
        log_retention=add_parameter(t, GROUP_OPERATIONS, "Log retention (days)", Parameter(
            "LogRetentionDays", Type="Number", Default="30",
            Description="Days CloudWatch keeps the logs of every process.",
            AllowedValues=list(LOG_RETENTION_DAYS),
        )),
        load_balancer_scheme=add_parameter(t, GROUP_OPERATIONS, "Load balancer scheme", Parameter(
            "LoadBalancerScheme", Type="String", Default="auto",
            Description="auto: an internal load balancer that CloudFront reaches through a VPC "
            "origin, where the region has them (no public IPv4 addresses to pay for); "
            "internet-facing elsewhere. internet-facing: always, e.g. for a stack created "
            "before VPC origins (changing a stack's scheme replaces its load balancer, which "
            "CloudFormation cannot do in place).",
            AllowedValues=["auto", "internet-facing"],
        )),
        # Listed last in their groups (the order of the console and of the template).
        database_deletion_protection=add_parameter(t, GROUP_DATA, "Database deletion protection", Parameter(
            "DatabaseDeletionProtection", Type="String", Default="true",
            Description="true: nothing, not even deleting the stack, deletes the database; set "
            "false first to delete the stack (it still leaves a final snapshot). Applied once the "
            "stack stands, so that a failed first create still rolls back completely.",
            AllowedValues=["true", "false"],
        )),
        waf_enabled=add_parameter(t, GROUP_WAF, "Create a web ACL (us-east-1 only)", Parameter(
            "WafEnabled", Type="String", Default="false",
            Description="true: create an AWS WAF web ACL for CloudFront in this stack (managed "
            "common, IP reputation and bad-input rules, plus a per-IP rate limit; about $9/month "
            "plus $0.60 per million requests). Possible only when the stack is in us-east-1; "
            "elsewhere give WafWebAclArn.",
            AllowedValues=["true", "false"],
        )),
        waf_web_acl_arn=add_parameter(t, GROUP_WAF, "Existing web ACL ARN", Parameter(
            "WafWebAclArn", Type="String", Default="",
            Description="ARN of an existing AWS WAF web ACL of scope CLOUDFRONT (it lives in "
            "us-east-1) to attach to the distribution. Leave empty for none.",
            AllowedPattern=WEB_ACL_ARN_PATTERN,
            ConstraintDescription="empty, or a WAFv2 global web ACL ARN in us-east-1",
        )),
        waf_rate_limit=add_parameter(t, GROUP_WAF, "Rate limit (requests per IP per 5 minutes)", Parameter(
            "WafRateLimit", Type="Number", Default="3000",
            Description="With WafEnabled: requests one IP may make in five minutes before WAF "
            "answers 429 (ActivityPub inbox deliveries are not counted).",
            MinValue=100, MaxValue=2000000000,
        )),
        rolling_batch_size=add_parameter(t, GROUP_OPERATIONS, "Upgrade batch size", Parameter(
            "RollingBatchSize", Type="Number", Default="1", MinValue=1, MaxValue=5,
            Description="Web servers an upgrade takes out of service at once (and queue workers it "
            "restarts at once). Serving capacity never "
            "drops below the group's size minus this (and never to zero: a lone server is "
            "replaced by a new one that serves first).",
            ConstraintDescription="a whole number from 1 to 5",
        )),
        **_queue_worker_parameters(t),
        database_pooler=add_parameter(t, GROUP_DATABASE_GROWTH, "PgBouncer on every server", Parameter(
            "DatabasePooler", Type="String", Default="false",
            Description="true: every server runs PgBouncer in transaction mode on 127.0.0.1 (Mastodon's "
            "documented pooler; no extra cost). Puma, streaming and Sidekiq then size their pools by "
            "the server, not by the database's max_connections; migrations, db:setup and tootctl keep "
            "connecting to the database directly.",
            AllowedValues=["true", "false"],
        )),
        database_replica_class=add_parameter(t, GROUP_DATABASE_GROWTH, "Read replica class", Parameter(
            "DatabaseReplicaClass", Type="String", Default="",
            Description="Empty: no read replica. Otherwise the instance class of an RDS read replica "
            "that serves Mastodon's read-only queries (REPLICA_DB_*), at least the size of the "
            "database's class. It bills like a second database.",
            AllowedValues=["", *(d.name for d in capacity.DATABASE_CLASSES)],
        )),
        separate_cache_node_type=add_parameter(t, GROUP_CACHE_SPLIT, "Separate cache node type", Parameter(
            "SeparateCacheNodeType", Type="String", Default="",
            Description="Empty: one Redis holds Sidekiq's jobs, home feeds and Rails' cache. A node "
            "type: a second ElastiCache (Valkey) of that type holds only the cache (CACHE_REDIS_URL; "
            "it evicts the least recently used entries when full and keeps no snapshot), so the "
            "first one never fills with cache. Billed like CacheNodeType.",
            AllowedValues=["", *CACHE_NODE_TYPES],
        )),
        cache_replica=add_parameter(t, GROUP_CACHE_SPLIT, "Sidekiq Redis replica", Parameter(
            "CacheReplica", Type="String", Default=CACHE_REPLICA_MODES[0],
            Description="A replica of the Redis that holds Sidekiq's jobs and the feeds (doubles "
            "its cost). failover: the replica sits in another zone and takes over by itself when "
            "the primary fails. standby: the replica, without automatic failover. An existing "
            "stack goes none -> standby -> failover (and back) in separate updates: "
            "CloudFormation cannot add the replica and turn failover on in one. No data is lost.",
            AllowedValues=list(CACHE_REPLICA_MODES),
        )),
        **_search_parameters(t),
        mastodon_settings=add_parameter(t, GROUP_SETTINGS, "Read settings from Parameter Store", Parameter(
            "MastodonSettings", Type="String", Default="false", AllowedValues=["false", "true"],
            Description="true: every server gives Mastodon each SSM parameter directly under "
            "/mastodon/<stack name>/settings/ (String, or SecureString with the aws/ssm key) as an "
            "environment variable named after it, e.g. .../settings/HCAPTCHA_SITE_KEY. Read at boot "
            "and by every rollout; README, \"Mastodon's other settings\".",
        )),
        mastodon_settings_secret=add_parameter(t, GROUP_SETTINGS, "Secret settings (secret ARN)", Parameter(
            "MastodonSettingsSecretArn", Type="String", Default="",
            Description="ARN of a Secrets Manager secret whose value is a JSON object of secret "
            "settings, e.g. {\"HCAPTCHA_SECRET_KEY\": \"...\"}, encrypted with the default "
            "aws/secretsmanager key. Empty: none.",
            AllowedPattern=SECRET_ARN_PATTERN,
            ConstraintDescription="empty, or a Secrets Manager secret ARN",
        )),
        **_image_parameters(t),
        **_image_push_parameters(t),
    )
    _add_mappings(t)
    _add_conditions(t, p)
    _add_image_conditions(t, p)
    _add_rules(t, p)
    _add_queue_worker_rules(t, p)
    _add_database_growth_rules(t, p)
    _add_image_push_conditions_and_rules(t, p)
    _add_initial_version_rules(t, p)
    return p


# --- Your own images (optional) ------------------------------------------------------

def _image_parameters(t: Template) -> dict[str, Parameter]:
    shape = ("a repository without tag: ghcr.io/OWNER/NAME, docker.io/OWNER/NAME, quay.io/OWNER/NAME "
             "or ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME (lowercase)")
    return {
        "web_image_repository": add_parameter(t, GROUP_IMAGES, "Mastodon image repository", Parameter(
            "WebImageRepository", Type="String", Default=MASTODON_IMAGE,
            Description="Where the web, Sidekiq and migration image comes from, without a tag: "
            f"{MASTODON_IMAGE} (upstream), a fork's public repository, or a private Amazon ECR "
            "repository in this stack's account and region. Not upstream: versions may be any "
            "tag of the OCI rule (README, \"Your own images\").",
            AllowedPattern=IMAGE_REPOSITORY_PATTERN,
            ConstraintDescription=shape,
        )),
        "streaming_image_repository": add_parameter(t, GROUP_IMAGES, "Streaming image repository", Parameter(
            "StreamingImageRepository", Type="String", Default=STREAMING_IMAGE,
            Description="Where the streaming server's image comes from, without a tag: "
            f"{STREAMING_IMAGE} (upstream) or your own, tagged like the Mastodon image.",
            AllowedPattern=IMAGE_REPOSITORY_PATTERN,
            ConstraintDescription=shape,
        )),
        "initial_version": add_parameter(t, GROUP_IMAGES, "First version (new stacks only)", Parameter(
            "InitialMastodonVersion", Type="String", Default="",
            Description="Read only when the stack is created: the version its first servers boot. "
            "Empty: the release this template pins. With your own images, a tag both of your "
            "repositories hold (e.g. v4.7.6-glitch); later versions go into the desired-version "
            "parameter. Changing it on an existing stack does nothing.",
            AllowedPattern="^$|" + CUSTOM_TAG_PATTERN[1:],
            ConstraintDescription="empty, or a tag: 1 to 128 letters, digits, _ . - (not starting "
            "with . or -)",
        )),
    }


# The stack's own private ECR registry (Amazon ECR User Guide, "Private registry concepts":
# https://aws_account_id.dkr.ecr.region.amazonaws.com), as a Sub template.
ECR_REGISTRY = "${AWS::AccountId}.dkr.ecr.${AWS::Region}.${AWS::URLSuffix}"
# What ends the registry host before the repository's name. Fn::Split takes no function as
# its delimiter (Fn::Split, "Supported functions"), so the suffix is written out: the
# commercial and GovCloud partitions' (the template already names services there, e.g.
# ec2.amazonaws.com); in China's partition no repository counts as in ECR.
_ECR_NAME_AFTER = ".amazonaws.com/"


def _ecr_parts(repository: Parameter) -> Split:
    """REPOSITORY split at _ECR_NAME_AFTER, padded so that the list always has a second
    member (Fn::Select out of range fails the template, even for a ghcr.io repository)."""
    return Split(_ECR_NAME_AFTER, Join("", [Ref(repository), _ECR_NAME_AFTER]))


def ecr_repository_arn(repository: Parameter) -> Join:
    """The ARN of the ECR repository REPOSITORY names; meaningful only under its *_IN_ECR
    condition, which also guarantees that the name is everything after the host."""
    return Join("", [Sub("arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/"),
                     Select(1, _ecr_parts(repository))])


def _in_own_ecr(repository: Parameter) -> And:
    """REPOSITORY's host is this stack's ECR registry, and the repository's name is
    exactly what follows it (no later path component ends in _ECR_NAME_AFTER, which
    would make ecr_repository_arn name another repository)."""
    parts = _ecr_parts(repository)
    return And(
        Equals(Select(0, Split("/", Ref(repository))), Sub(ECR_REGISTRY)),
        Equals(Join(_ECR_NAME_AFTER, [Select(0, parts), Select(1, parts)]), Ref(repository)),
    )


def _add_image_conditions(t: Template, p: Parameters) -> None:
    t.add_condition(WEB_IMAGE_IN_ECR, _in_own_ecr(p.web_image_repository))
    t.add_condition(STREAMING_IMAGE_IN_ECR, _in_own_ecr(p.streaming_image_repository))
    t.add_condition(ANY_IMAGE_IN_ECR, Or(Condition(WEB_IMAGE_IN_ECR), Condition(STREAMING_IMAGE_IN_ECR)))
def _image_push_parameters(t: Template) -> dict[str, Parameter]:
    return {
        "upgrade_on_image_push": add_parameter(t, GROUP_IMAGES, "Upgrade when an image is pushed", Parameter(
            "UpgradeOnImagePush", Type="String", Default="false", AllowedValues=["false", "true"],
            Description="true: a push to the Mastodon image's ECR repository (in this account and "
            "region) of a tag matching ImagePushTagPattern, once the streaming image has the same tag, "
            "writes that tag into the desired-version parameter, which starts the usual rollout "
            "(README, \"Upgrade when CI pushes\").",
        )),
        "image_push_tag_pattern": add_parameter(t, GROUP_IMAGES, "Tags a push upgrades to", Parameter(
            "ImagePushTagPattern", Type="String", Default=IMAGE_PUSH_TAG_PATTERN_DEFAULT,
            Description="A regular expression a pushed tag must match whole to start a rollout "
            "(others are ignored): letters, digits, _ and -, . (any character), [classes], one level "
            "of (alternatives|groups) that may be optional (?), and ? * + {n,m} after a character or "
            "class, at most 100 characters. The default matches v4.7.6, v4.7.6-glitch, v4.8.0-rc.1.",
            AllowedPattern=IMAGE_PUSH_TAG_PATTERN_RULE,
            ConstraintDescription="a regular expression of the documented subset (no nested "
            "repetition such as (a+)+, no ^ or $: the tag must match whole anyway)",
        )),
        "roll_repushed_tags": add_parameter(t, GROUP_IMAGES, "Roll a tag pushed again", Parameter(
            "RollRepushedTags", Type="String", Default="false", AllowedValues=["false", "true"],
            Description="With UpgradeOnImagePush: true rolls the servers again when a tag they run is "
            "pushed with new content (a new digest); false only logs it.",
        )),
    }


def _add_initial_version_rules(t: Template, p: Parameters) -> None:
    """A stack with images of its own names the first version its repositories hold (the
    pinned upstream release need not be there); one with upstream's boots the pinned release,
    the one tag a rule can tell is a release (rules compare whole strings, no patterns)."""
    upstream = {"Fn::And": [
        {"Fn::Equals": [Ref(p.web_image_repository), MASTODON_IMAGE]},
        {"Fn::Equals": [Ref(p.streaming_image_repository), STREAMING_IMAGE]},
    ]}
    t.add_rule(OWN_IMAGES_NEED_INITIAL_VERSION_RULE, {
        "RuleCondition": {"Fn::Not": [upstream]},
        "Assertions": [{
            "Assert": {"Fn::Not": [{"Fn::Equals": [Ref(p.initial_version), ""]}]},
            "AssertDescription": "With images of your own, InitialMastodonVersion must name the tag the "
            "first servers boot (one both repositories hold, e.g. v4.7.6-glitch): the release this "
            "template pins need not exist there. It is read only when the stack is created.",
        }],
    })
    t.add_rule(UPSTREAM_IMAGES_START_AT_THE_PIN_RULE, {
        "RuleCondition": upstream,
        "Assertions": [{
            "Assert": {"Fn::Equals": [Ref(p.initial_version), ""]},
            "AssertDescription": "With upstream's images a new stack boots the release this template "
            "pins: leave InitialMastodonVersion empty, and upgrade afterwards through the "
            "desired-version parameter.",
        }],
    })


def _add_image_push_conditions_and_rules(t: Template, p: Parameters) -> None:
    t.add_condition(UPGRADES_ON_IMAGE_PUSH, And(
        Equals(Ref(p.upgrade_on_image_push), "true"), Condition(WEB_IMAGE_IN_ECR)))
    t.add_condition(ROLLS_REPUSHED_TAGS, And(
        Condition(UPGRADES_ON_IMAGE_PUSH), Equals(Ref(p.roll_repushed_tags), "true")))
    # A rule cannot test where a repository is (rule functions compare whole strings only:
    # no Split, no Sub); it refuses the case it can name, upstream's images, and the
    # template creates the push rule only where the web image is in this account's ECR.
    t.add_rule(IMAGE_PUSH_NEEDS_ECR_RULE, {
        "RuleCondition": {"Fn::Equals": [Ref(p.upgrade_on_image_push), "true"]},
        "Assertions": [{
            "Assert": {"Fn::Not": [{"Fn::Contains": [[MASTODON_IMAGE, STREAMING_IMAGE],
                                                     Ref(p.web_image_repository)]}]},
            "AssertDescription": "UpgradeOnImagePush needs WebImageRepository in Amazon ECR in this "
            "stack's account and region (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME): pushes elsewhere "
            "send no event to this account.",
        }],
    })


# --- Sidekiq queue workers (optional) ------------------------------------------------

QUEUE_WORKER_SIZE_RULE = "QueueWorkerMinSizeAtMostMaxSize"
MAIN_WORKER_QUEUES_RULE = "MainWorkerRunsTheScheduler"
EVERY_QUEUE_RULE = "EveryQueueRunsSomewhere"
QUEUE_BUDGET_RULE = "FleetFitsTheDatabase"


def _queue_worker_parameters(t: Template) -> dict[str, Parameter]:
    """A group of Sidekiq servers besides the main worker, off by default (maximum 0)."""
    group = GROUP_QUEUE_WORKERS
    return {
        "queue_worker_min_size": add_parameter(t, group, "Queue workers, minimum", Parameter(
            "QueueWorkerMinSize", Type="String", Default="0",
            Description="Queue workers always running (0: the group starts empty and scales out "
            "when jobs wait). At most QueueWorkerMaxSize.",
            AllowedValues=QUEUE_WORKER_SIZES,
        )),
        "queue_worker_max_size": add_parameter(t, group, "Queue workers, maximum", Parameter(
            "QueueWorkerMaxSize", Type="String", Default="0",
            Description="0: no queue workers (the single worker runs every queue). Otherwise the "
            "most Sidekiq servers the group scales out to on queue latency, besides the main "
            "worker; they publish queue metrics (about $6/month) and count in the database's "
            "connection budget.",
            AllowedValues=QUEUE_WORKER_SIZES,
        )),
        "queue_worker_instance_type": add_parameter(t, group, "Queue worker instance type", Parameter(
            "QueueWorkerInstanceType", Type="String", Default=capacity.DEFAULT_QUEUE_WORKER_INSTANCE_TYPE,
            Description="Instance type of the queue workers; Sidekiq's threads are sized from it "
            "and from the connection budget.",
            AllowedValues=[i.name for i in capacity.WORKER_INSTANCE_TYPES],
        )),
        "main_worker_queues": add_parameter(t, group, "Queues of the main worker", Parameter(
            "MainWorkerQueues", Type="CommaDelimitedList", Default=sidekiq.ALL_QUEUES,
            Description=f"{sidekiq.ALL_QUEUES}: the main worker runs every queue (the default). "
            "Otherwise the queues it runs, most important first, from "
            f"{', '.join(sidekiq.QUEUES)}; it must keep {sidekiq.SCHEDULER_QUEUE}, which runs in "
            "no other process.",
            AllowedValues=[sidekiq.ALL_QUEUES, *sidekiq.QUEUES],
            ConstraintDescription=f"{sidekiq.ALL_QUEUES}, or comma-separated queue names from "
            f"{', '.join(sidekiq.QUEUES)}",
        )),
        "queue_worker_queues": add_parameter(t, group, "Queues of the queue workers", Parameter(
            "QueueWorkerQueues", Type="CommaDelimitedList",
            Default=",".join(sidekiq.DEFAULT_QUEUE_WORKER_QUEUES),
            Description="The queues the queue workers run, most important first, from "
            f"{', '.join(sidekiq.QUEUE_WORKER_ALLOWED)} (never {sidekiq.SCHEDULER_QUEUE}).",
            AllowedValues=list(sidekiq.QUEUE_WORKER_ALLOWED),
            ConstraintDescription="comma-separated queue names from "
            f"{', '.join(sidekiq.QUEUE_WORKER_ALLOWED)}; {sidekiq.SCHEDULER_QUEUE} runs only on "
            "the main worker",
        )),
    }


def _search_parameters(t: Template) -> dict[str, Parameter]:
    return {
        "search_enabled": add_parameter(t, GROUP_SEARCH, "Full-text search", Parameter(
            "SearchEnabled", Type="String", Default="false",
            Description="true: an Amazon OpenSearch Service domain in the data subnets gives "
            "Mastodon full-text search; the worker creates its indexes once, in the background. "
            "From about $27/month (one t3.small.search node and 10 GiB).",
            AllowedValues=["true", "false"],
        )),
        "search_instance_type": add_parameter(t, GROUP_SEARCH, "Search node type", Parameter(
            "SearchInstanceType", Type="String", Default=SEARCH_INSTANCE_TYPES[0],
            Description="OpenSearch data node type. The t3 types suit small instances; choose "
            "r7g.large.search or larger for tens of thousands of active users.",
            AllowedValues=list(SEARCH_INSTANCE_TYPES),
        )),
        "search_instance_count": add_parameter(t, GROUP_SEARCH, "Search nodes", Parameter(
            "SearchInstanceCount", Type="Number", Default="1",
            Description="Data nodes. 1: one zone, no replica (the index can be rebuilt from the "
            "database). 2 or more: spread over two zones, one replica of each shard.",
            AllowedValues=list(SEARCH_INSTANCE_COUNTS),
        )),
        "search_volume_size": add_parameter(t, GROUP_SEARCH, "Search storage per node (GiB)", Parameter(
            "SearchVolumeSize", Type="Number", Default="10",
            Description="gp3 storage of each search node in GiB (t3.small.search takes up to 100, "
            "t3.medium.search up to 200).",
            AllowedValues=list(SEARCH_VOLUME_SIZES),
        )),
        "search_service_role": add_parameter(t, GROUP_SEARCH, "Create OpenSearch's service role", Parameter(
            "SearchCreateServiceLinkedRole", Type="String", Default="true",
            Description="true: create AWSServiceRoleForAmazonOpenSearchService, which a domain in a "
            "VPC needs. false if the account has it already (any earlier OpenSearch domain made it; "
            "check with aws iam get-role --role-name AWSServiceRoleForAmazonOpenSearchService): "
            "creating it twice fails the stack. The stack never deletes it: set false when turning "
            "search on again after turning it off.",
            AllowedValues=["true", "false"],
        )),
    }


def _add_queue_worker_conditions(t: Template, p: Parameters) -> None:
    t.add_condition(HAS_QUEUE_WORKERS, Not(Equals(Ref(p.queue_worker_max_size), "0")))
    t.add_condition(QUEUE_WORKER_IS_ARM, Equals(
        FindInMap(INSTANCE_ARCHITECTURE_MAP, Ref(p.queue_worker_instance_type), "Architecture"), "arm64"))


def _not_one_of(parameter: Parameter, values: list[int]) -> dict[str, object]:
    return {"Fn::Not": [{"Fn::Contains": [[str(v) for v in values], Ref(parameter)]}]}


def _add_queue_worker_rules(t: Template, p: Parameters) -> None:
    """Refuse queue layouts that would starve a queue or run the scheduler twice, and a
    fleet whose connection pools cannot fit the database."""
    main, workers = Ref(p.main_worker_queues), Ref(p.queue_worker_queues)
    low, high = p.queue_worker_min_size, p.queue_worker_max_size
    size_clauses = [
        {"Fn::Or": [{"Fn::Not": [{"Fn::Equals": [Ref(low), str(m)]}]}, _not_one_of(high, list(range(m)))]}
        for m in range(1, capacity.QUEUE_WORKER_MAX_SIZE_LIMIT + 1)
    ]
    t.add_rule(QUEUE_WORKER_SIZE_RULE, {"Assertions": [{
        "Assert": {"Fn::And": size_clauses},
        "AssertDescription": "QueueWorkerMinSize must not exceed QueueWorkerMaxSize.",
    }]})
    everything = {"Fn::Contains": [main, sidekiq.ALL_QUEUES]}
    t.add_rule(MAIN_WORKER_QUEUES_RULE, {"Assertions": [{
        "Assert": {"Fn::Or": [
            {"Fn::EachMemberEquals": [main, sidekiq.ALL_QUEUES]},
            {"Fn::And": [{"Fn::Not": [everything]},
                         {"Fn::Contains": [main, sidekiq.SCHEDULER_QUEUE]}]},
        ]},
        "AssertDescription": f"MainWorkerQueues is either {sidekiq.ALL_QUEUES} alone or a list "
        f"of queues that includes {sidekiq.SCHEDULER_QUEUE}: the schedule runs only there.",
    }]})
    on = {"Fn::Not": [{"Fn::Equals": [Ref(high), "0"]}]}
    t.add_rule(EVERY_QUEUE_RULE, {"Assertions": [{
        "Assert": {"Fn::And": [
            {"Fn::Or": [everything, {"Fn::Contains": [main, q]},
                        {"Fn::And": [on, {"Fn::Contains": [workers, q]}]}]}
            for q in sidekiq.QUEUE_WORKER_ALLOWED
        ]},
        "AssertDescription": "Every queue must run somewhere: list each of "
        f"{', '.join(sidekiq.QUEUE_WORKER_ALLOWED)} in MainWorkerQueues, or in QueueWorkerQueues "
        "with a QueueWorkerMaxSize above 0 (without queue workers the main worker runs every "
        "queue).",
    }]})
    # The servers share max_connections equally (pools.sh); on the classes where the
    # largest fleet would leave a server less than it needs, refuse it here instead of
    # failing the servers' boot.
    assertions = []
    for d in capacity.DATABASE_CLASSES:
        limit = capacity.largest_fleet(d)
        if limit >= capacity.WEB_MAX_SIZE_LIMIT + capacity.QUEUE_WORKER_MAX_SIZE_LIMIT:
            continue
        top = capacity.QUEUE_WORKER_MAX_SIZE_LIMIT
        clauses: list[dict[str, object]] = [
            {"Fn::Or": [{"Fn::Not": [{"Fn::Equals": [Ref(p.web_max_size), str(w)]}]},
                        _not_one_of(high, list(range(limit - w + 1, top + 1)))]}
            for w in range(capacity.WEB_MIN_SIZE_LIMIT, capacity.WEB_MAX_SIZE_LIMIT + 1)
            if limit - w < capacity.QUEUE_WORKER_MAX_SIZE_LIMIT
        ]
        if not clauses:
            continue
        assertions.append({
            "Assert": {"Fn::Or": [{"Fn::Not": [{"Fn::Equals": [Ref(p.database_class), d.name]}]},
                                  *_and_of(clauses)]},
            "AssertDescription": f"On {d.name} (max_connections {d.max_connections}) WebMaxSize + "
            f"QueueWorkerMaxSize may be at most {limit}: every server needs its share of the "
            "connections. Choose a larger DatabaseInstanceClass or fewer servers.",
        })
    if assertions:
        t.add_rule(QUEUE_BUDGET_RULE, {"Assertions": assertions})


def _and_of(clauses: list[dict[str, object]]) -> list[dict[str, object]]:
    """One condition that holds when all `clauses` do (Fn::And takes 2 to 10)."""
    while len(clauses) > 10:
        clauses = [{"Fn::And": chunk} if len(chunk) > 1 else chunk[0]
                   for chunk in (clauses[i:i + 10] for i in range(0, len(clauses), 10))]
    return [{"Fn::And": list(clauses)}] if len(clauses) > 1 else clauses


def _add_mappings(t: Template) -> None:
    t.add_mapping(INSTANCE_ARCHITECTURE_MAP, {
        i.name: {"Architecture": i.architecture} for i in capacity.INSTANCE_TYPES
    })
    t.add_mapping(DATABASE_CONNECTIONS_MAP, {
        d.name: {"MaxConnections": str(d.max_connections)} for d in capacity.DATABASE_CLASSES
    })


def _add_conditions(t: Template, p: Parameters) -> None:
    t.add_condition(HAS_HOSTED_ZONE, Not(Equals(Ref(p.hosted_zone), "")))
    t.add_condition(NO_HOSTED_ZONE, Equals(Ref(p.hosted_zone), ""))
    # The region test is redundant with the rule that refuses SES where it does not
    # exist, but it keeps the SES resources out of those regions for every reader.
    ses_available = Not(region_in(NO_SES_REGIONS))
    t.add_condition(USE_SES, And(Equals(Ref(p.smtp_server), ""), ses_available))
    t.add_condition(USE_SES_WITH_ZONE, And(
        Equals(Ref(p.smtp_server), ""), ses_available, Not(Equals(Ref(p.hosted_zone), ""))))
    t.add_condition(USE_SES_WITHOUT_ZONE, And(
        Equals(Ref(p.smtp_server), ""), ses_available, Equals(Ref(p.hosted_zone), "")))
    t.add_condition(HAS_SMTP_PASSWORD_SECRET, Not(Equals(Ref(p.smtp_password_secret), "")))
    t.add_condition(HAS_MAIL_FROM, Not(Equals(Ref(p.mail_from), "")))
    t.add_condition(IS_MULTI_AZ, Equals(Ref(p.database_multi_az), "true"))
    t.add_condition(USE_SPOT, Equals(Ref(p.use_spot), "true"))
    t.add_condition(WEB_IS_ARM, Equals(
        FindInMap(INSTANCE_ARCHITECTURE_MAP, Ref(p.web_instance_type), "Architecture"), "arm64"))
    t.add_condition(WORKER_IS_ARM, Equals(
        FindInMap(INSTANCE_ARCHITECTURE_MAP, Ref(p.worker_instance_type), "Architecture"), "arm64"))
    t.add_condition(USE_VPC_ORIGIN, And(
        Equals(Ref(p.load_balancer_scheme), "auto"), region_in(VPC_ORIGIN_REGIONS)))
    _add_queue_worker_conditions(t, p)
    t.add_condition(USE_DATABASE_POOLER, Equals(Ref(p.database_pooler), "true"))
    t.add_condition(HAS_DATABASE_REPLICA, Not(Equals(Ref(p.database_replica_class), "")))
    t.add_condition(HAS_SEPARATE_CACHE, Not(Equals(Ref(p.separate_cache_node_type), "")))
    t.add_condition(CACHE_HAS_REPLICA, Not(Equals(Ref(p.cache_replica), CACHE_REPLICA_MODES[0])))
    t.add_condition(CACHE_FAILS_OVER, Equals(Ref(p.cache_replica), CACHE_REPLICA_MODES[2]))
    t.add_condition(HAS_SEARCH, Equals(Ref(p.search_enabled), "true"))
    t.add_condition(SEARCH_ZONE_AWARE, And(
        Equals(Ref(p.search_enabled), "true"), Not(Equals(Ref(p.search_instance_count), "1"))))
    t.add_condition(SEARCH_LARGE_CLUSTER, And(
        Equals(Ref(p.search_enabled), "true"), Equals(Ref(p.search_instance_count), "6")))
    t.add_condition(SEARCH_CREATES_SERVICE_ROLE, And(
        Equals(Ref(p.search_enabled), "true"), Equals(Ref(p.search_service_role), "true")))
    t.add_condition(HAS_MASTODON_SETTINGS, Equals(Ref(p.mastodon_settings), "true"))
    t.add_condition(HAS_MASTODON_SETTINGS_SECRET, Not(Equals(Ref(p.mastodon_settings_secret), "")))
    t.add_condition(HAS_ANY_MASTODON_SETTINGS, Or(
        Condition(HAS_MASTODON_SETTINGS), Condition(HAS_MASTODON_SETTINGS_SECRET)))
    t.add_condition(HAS_INITIAL_VERSION, Not(Equals(Ref(p.initial_version), "")))
    t.add_condition(IMAGES_ARE_UPSTREAM, And(
        Equals(Ref(p.web_image_repository), MASTODON_IMAGE),
        Equals(Ref(p.streaming_image_repository), STREAMING_IMAGE)))


def _add_rules(t: Template, p: Parameters) -> None:
    """Reject, before anything is created, combinations a constraint alone cannot."""
    t.add_rule("CertificatesWithoutHostedZone", {
        "RuleCondition": {"Fn::Equals": [Ref(p.hosted_zone), ""]},
        "Assertions": [{
            "Assert": {"Fn::And": [
                {"Fn::Not": [{"Fn::Equals": [Ref(p.cloudfront_certificate), ""]}]},
                {"Fn::Not": [{"Fn::Equals": [Ref(p.load_balancer_certificate), ""]}]},
            ]},
            "AssertDescription": "Without a hosted zone, give both certificate ARNs "
            "(CloudFront's in us-east-1 and the load balancer's in this region).",
        }],
    })
    t.add_rule("ExternalSmtpNeedsLogin", {
        "RuleCondition": {"Fn::Not": [{"Fn::Equals": [Ref(p.smtp_server), ""]}]},
        "Assertions": [{
            "Assert": {"Fn::And": [
                {"Fn::Not": [{"Fn::Equals": [Ref(p.smtp_login), ""]}]},
                {"Fn::Not": [{"Fn::Equals": [Ref(p.smtp_password_secret), ""]}]},
            ]},
            "AssertDescription": "An external SMTP server needs SmtpLogin and "
            "SmtpPasswordSecretArn.",
        }],
    })
    t.add_rule("ExternalSmtpWhereSesIsMissing", {
        "RuleCondition": region_in(NO_SES_REGIONS),
        "Assertions": [{
            "Assert": {"Fn::Not": [{"Fn::Equals": [Ref(p.smtp_server), ""]}]},
            "AssertDescription": "CloudFormation cannot create an Amazon SES identity in this "
            "region, so the stack cannot set up mail itself: give an SMTP server (SmtpServer, "
            "SmtpLogin, SmtpPasswordSecretArn; SES's SMTP endpoint of another region works), or "
            "deploy in a region where it can.",
        }],
    })
    for instance_type, limit in SEARCH_VOLUME_LIMITS.items():
        allowed = [size for size in SEARCH_VOLUME_SIZES if int(size) <= limit]
        t.add_rule(f"SearchVolumeFits{''.join(part.capitalize() for part in instance_type.split('.')[:2])}", {
            "RuleCondition": {"Fn::And": [
                {"Fn::Equals": [Ref(p.search_enabled), "true"]},
                {"Fn::Equals": [Ref(p.search_instance_type), instance_type]},
            ]},
            "Assertions": [{
                "Assert": {"Fn::Contains": [allowed, Ref(p.search_volume_size)]},
                "AssertDescription": f"{instance_type} takes at most {limit} GiB of storage per node: "
                "choose a smaller SearchVolumeSize or a larger SearchInstanceType.",
            }],
        })


def _or(tests: list[object]) -> dict[str, object]:
    """Fn::Or over any number of rule tests (it takes 2 to 10 at a time)."""
    while len(tests) > _OR_LIMIT:
        tests = [{"Fn::Or": chunk} if len(chunk) > 1 else chunk[0]
                 for chunk in (tests[i:i + _OR_LIMIT] for i in range(0, len(tests), _OR_LIMIT))]
    return {"Fn::Or": tests}


def replica_classes_for(primary: capacity.DatabaseClass) -> list[str]:
    """The replica classes allowed beside a primary: at least its memory, and so at least
    its max_connections, and at least its vCPUs (RDS derives max_worker_processes from
    them), which PostgreSQL both requires of a hot standby (it refuses queries otherwise:
    "Hot Standby", administrator's overview). A smaller replica would also
    lag behind, and shrink every server's pools (pools.sh takes the smaller)."""
    return [d.name for d in capacity.DATABASE_CLASSES
            if d.memory_mib >= primary.memory_mib and d.vcpus >= primary.vcpus]


def _add_database_growth_rules(t: Template, p: Parameters) -> None:
    t.add_rule("ReadReplicaAtLeastTheDatabase", {
        "RuleCondition": {"Fn::Not": [{"Fn::Equals": [Ref(p.database_replica_class), ""]}]},
        "Assertions": [{
            "Assert": _or([
                {"Fn::And": [{"Fn::Equals": [Ref(p.database_class), d.name]},
                             {"Fn::Contains": [replica_classes_for(d), Ref(p.database_replica_class)]}]}
                for d in capacity.DATABASE_CLASSES
            ]),
            "AssertDescription": "DatabaseReplicaClass must have at least the memory and the vCPUs "
            "of DatabaseInstanceClass: PostgreSQL serves no query on a replica with fewer "
            "max_connections or worker processes than its database, and a smaller replica lags "
            "behind. To grow both, grow the replica first, in its own update.",
        }],
    })
