"""Where Mastodon keeps its data: RDS PostgreSQL, ElastiCache (Valkey) and S3 media.

All of it is private and encrypted. The database and the cache sit in subnets with
no route to the internet and admit only the servers' security group; the media
bucket blocks every public access and is read only by CloudFront. Deleting the
stack, or an update that would replace them, keeps the data: the database and cache
leave a final snapshot, the bucket is retained.

Deletion protection and the PostgreSQL log export are applied by a custom resource
once the rest of the stack stands (create_database_settings): a create that fails
earlier then rolls back cleanly, database included (its final snapshot kept), instead
of ending in ROLLBACK_FAILED with a protected database that bills.
"""

from __future__ import annotations

from dataclasses import dataclass

from awacs import cloudformation as awacs_cfn
from awacs import rds as awacs_rds
from awacs.aws import Allow, Statement
from troposphere import (
    AWSObject,
    FindInMap,
    If,
    Ref,
    Sub,
    Tags,
    Template,
    ec2,
    elasticache,
    logs,
    rds,
    s3,
)

from templates import functions, parameters
from templates.network import Network
from templates.parameters import Parameters
from templates.secrets import Secrets

DATABASE = "Database"
DATABASE_REPLICA = "DatabaseReplica"
CACHE = "Cache"
RAILS_CACHE = "RailsCache"
# Stores of a data type that hold nothing worth keeping (every entry is recomputed on a
# miss): no final snapshot, no stack-policy protection, no data-loss warning on removal.
DISPOSABLE = (RAILS_CACHE, DATABASE_REPLICA)
MEDIA_BUCKET = "MediaBucket"
DATABASE_NAME = "mastodon"
DATABASE_USER = "mastodon"
DATABASE_PORT = 5432
CACHE_PORT = 6379
DATABASE_SETTINGS = "DatabaseSettings"
DATABASE_LOGS = "DatabaseLogs"
# The log group RDS writes the PostgreSQL log to; created first by the stack so that it
# is encrypted and expires (RDS would create it unencrypted, kept forever).
DATABASE_LOG_GROUP = "/aws/rds/instance/${Database}/postgresql"
# A current major version Mastodon supports (it needs 14 or later), and the only
# version the template names: RDS creates the major's default minor and upgrades minors
# by itself (AutoMinorVersionUpgrade). A pinned minor would fail new stacks once RDS
# retires it, and updates once RDS has upgraded past it.
POSTGRES_MAJOR_VERSION = "17"
# ElastiCache names Valkey versions major.minor; on node-based clusters it applies only
# patch updates by itself (the EngineVersion stays "8.0") and never a minor upgrade, so
# this cannot drift from what runs.
VALKEY_VERSION = "8.0"
# Sidekiq keeps its queues, retries and schedule in this Redis: full memory must refuse
# writes (Mastodon logs the error and the memory alarm fires), never evict a job.
# ElastiCache's default group evicts keys that carry a TTL (volatile-lru).
CACHE_SETTINGS = {"maxmemory-policy": "noeviction"}
# The optional Redis that holds only Rails.cache (CACHE_REDIS_URL): every key there can be
# recomputed, so when full it drops the least recently used one, TTL or not (volatile-*
# would refuse writes once keys without a TTL fill it). Redis's "LRU cache" guide names
# allkeys-lru for a cache; Mastodon's tuning guide points to that guide.
RAILS_CACHE_SETTINGS = {"maxmemory-policy": "allkeys-lru"}


@dataclass(frozen=True)
class Data:
    database: rds.DBInstance
    cache: elasticache.ReplicationGroup
    bucket: s3.Bucket
    # Only with SeparateCacheNodeType (condition HAS_SEPARATE_CACHE).
    rails_cache: elasticache.ReplicationGroup
    # Only with DatabaseReplicaClass (the HasDatabaseReplica condition).
    replica: rds.DBInstance | None = None


def create_data(t: Template, p: Parameters, network: Network, server_security_group: ec2.SecurityGroup,
                secrets: Secrets) -> Data:
    database = _database(t, p, network, server_security_group, secrets)
    cache = _cache(t, p, network, server_security_group, secrets)
    return Data(
        database=database,
        cache=cache,
        bucket=_media_bucket(t),
        rails_cache=_rails_cache(t, p, cache, secrets),
        replica=_replica(t, p, database),
    )


def _replica(t: Template, p: Parameters, database: rds.DBInstance) -> rds.DBInstance:
    """An optional read replica of the database for Mastodon's read-only queries.

    RDS creates it from the database: encrypted with the same key, in the same subnets,
    without backups of its own (a replica takes no BackupRetentionPeriod, DBName or
    master credentials). Its own parameter group sets max_connections for its class (the
    servers' pools are sized on it too) and hot_standby_feedback, so that the primary's
    vacuum does not cancel a long read ("conflict with recovery").
    """
    settings = t.add_resource(rds.DBParameterGroup(
        "DatabaseReplicaParameterGroup",
        Condition=parameters.HAS_DATABASE_REPLICA,
        Description="Mastodon read replica: connection budget, TLS, no recovery conflicts",
        Family=f"postgres{POSTGRES_MAJOR_VERSION}",
        Parameters={
            "max_connections": FindInMap(parameters.DATABASE_CONNECTIONS_MAP,
                                         Ref(p.database_replica_class), "MaxConnections"),
            "rds.force_ssl": "1",
            "log_min_duration_statement": "2000",
            "hot_standby_feedback": "1",
        },
    ))
    return t.add_resource(rds.DBInstance(
        DATABASE_REPLICA,
        Condition=parameters.HAS_DATABASE_REPLICA,
        SourceDBInstanceIdentifier=Ref(database),
        # The replica's engine is the source's; troposphere wants it named.
        Engine="postgres",
        DBInstanceClass=Ref(p.database_replica_class),
        DBParameterGroupName=Ref(settings),
        # The database's own subnets and security group, named explicitly: RDS's API puts a
        # replica without a subnet group outside the VPC, and a later update of a replica
        # without security groups reverts it to the VPC's default group.
        DBSubnetGroupName=Ref("DatabaseSubnetGroup"),
        VPCSecurityGroups=[Ref("DatabaseSecurityGroup")],
        PubliclyAccessible=False,
        # Storage type and size come from the source; it grows up to the same limit.
        MaxAllocatedStorage=Ref(p.database_max_storage),
        AutoMinorVersionUpgrade=True,
        CACertificateIdentifier="rds-ca-rsa2048-g1",
        PreferredMaintenanceWindow="sun:04:30-sun:05:30",
        CopyTagsToSnapshot=True,
        # A replica holds nothing the database does not: deleting it loses no data, and
        # CloudFormation ignores a Snapshot policy on a replica anyway.
        DeletionPolicy="Delete",
        UpdateReplacePolicy="Delete",
        Metadata={
            "checkov": {"skip": [
                {"id": "CKV_AWS_161", "comment": "Mastodon authenticates with a password; IAM "
                 "database authentication is not supported by it."},
                {"id": "CKV_AWS_118", "comment": "Enhanced monitoring costs extra; CloudWatch "
                 "metrics and the ReplicaLag alarm cover the replica."},
                {"id": "CKV_AWS_157", "comment": "A replica is itself the spare copy; Multi-AZ "
                 "would double its cost."},
                {"id": "CKV_AWS_16", "comment": "Encrypted with the database's key: a read replica "
                 "inherits the source's encryption, and CloudFormation takes no StorageEncrypted "
                 "for one."},
            ]},
        },
    ))


def create_database_settings(t: Template, p: Parameters, data: Data, code: str,
                             after: list[str]) -> AWSObject:
    """Protect the database and export its log once the resources `after` exist.

    A failed create before that point deletes the unprotected database (keeping its
    final snapshot); the function's Delete unprotects it only during a failed create's
    rollback (see lambdas/database_settings.py), never when the stack is deleted.
    """
    log_group = t.add_resource(logs.LogGroup(
        DATABASE_LOGS, LogGroupName=Sub(DATABASE_LOG_GROUP), RetentionInDays=Ref(p.log_retention)))
    function = functions.inline_function(
        t, "DatabaseSettingsFunction", code,
        [Statement(Effect=Allow, Action=[awacs_rds.DescribeDBInstances, awacs_rds.ModifyDBInstance],
                   Resource=[Sub("arn:${AWS::Partition}:rds:${AWS::Region}:${AWS::AccountId}:db:${Database}")]),
         Statement(Effect=Allow, Action=[awacs_cfn.DescribeStacks], Resource=[Ref("AWS::StackId")])],
        Ref(p.log_retention), timeout=600,
        description="Turns the database's deletion protection and log export on once the stack stands.",
    )
    return functions.provided_resource(
        t, "DatabaseSettings", DATABASE_SETTINGS, function, 660,
        DBInstanceIdentifier=Ref(data.database),
        DeletionProtection=Ref(p.database_deletion_protection),
        LogExports=["postgresql"],
        # Every parameter that modifies the database: an update that changes the database
        # runs this resource again afterwards, so protection holds even if CloudFormation's
        # modification of the instance resets what the template leaves unset.
        DatabaseSettingsInputs=[Ref(p.database_class), Ref(p.database_storage), Ref(p.database_max_storage),
                                Ref(p.database_multi_az), Ref(p.database_backup_days)],
        # The export starts only once the stack's log group exists.
        DependsOn=[log_group.title, *after],
    )


def _data_security_group(t: Template, name: str, network: Network, server_security_group: ec2.SecurityGroup,
                         port: int) -> ec2.SecurityGroup:
    return t.add_resource(ec2.SecurityGroup(
        f"{name}SecurityGroup",
        GroupDescription=f"{name}: port {port} from the Mastodon servers only",
        VpcId=Ref(network.vpc),
        SecurityGroupIngress=[ec2.SecurityGroupRule(
            Description="Mastodon servers", IpProtocol="tcp", FromPort=port, ToPort=port,
            SourceSecurityGroupId=Ref(server_security_group),
        )],
        # Data stores start no connection of their own.
        SecurityGroupEgress=[ec2.SecurityGroupRule(
            Description="No egress", IpProtocol="-1", CidrIp="127.0.0.1/32")],
        Tags=Tags(Name=f"mastodon-{name.lower()}"),
    ))


def _database(t: Template, p: Parameters, network: Network, server_security_group: ec2.SecurityGroup,
              secrets: Secrets) -> rds.DBInstance:
    security_group = _data_security_group(t, "Database", network, server_security_group, DATABASE_PORT)
    subnets = t.add_resource(rds.DBSubnetGroup(
        "DatabaseSubnetGroup",
        DBSubnetGroupDescription="Isolated subnets of the Mastodon database",
        SubnetIds=[Ref(s) for s in network.data_subnets],
    ))
    settings = t.add_resource(rds.DBParameterGroup(
        "DatabaseParameterGroup",
        Description="Mastodon: connection budget and TLS",
        Family=f"postgres{POSTGRES_MAJOR_VERSION}",
        Parameters={
            # The servers size their pools from this very number (see capacity.py).
            "max_connections": FindInMap(parameters.DATABASE_CONNECTIONS_MAP,
                                         Ref(p.database_class), "MaxConnections"),
            "rds.force_ssl": "1",
            "log_min_duration_statement": "2000",
        },
    ))
    return t.add_resource(rds.DBInstance(
        DATABASE,
        Engine="postgres",
        EngineVersion=POSTGRES_MAJOR_VERSION,
        AutoMinorVersionUpgrade=True,
        DBInstanceClass=Ref(p.database_class),
        DBName=DATABASE_NAME,
        MasterUsername=DATABASE_USER,
        MasterUserPassword=secrets.reference("DB_PASS"),
        DBSubnetGroupName=Ref(subnets),
        DBParameterGroupName=Ref(settings),
        VPCSecurityGroups=[Ref(security_group)],
        PubliclyAccessible=False,
        StorageType="gp3",
        AllocatedStorage=Ref(p.database_storage),
        MaxAllocatedStorage=Ref(p.database_max_storage),
        StorageEncrypted=True,
        MultiAZ=If(parameters.IS_MULTI_AZ, True, False),
        BackupRetentionPeriod=Ref(p.database_backup_days),
        PreferredBackupWindow="03:00-04:00",
        PreferredMaintenanceWindow="sun:04:30-sun:05:30",
        CopyTagsToSnapshot=True,
        CACertificateIdentifier="rds-ca-rsa2048-g1",
        # No DeletionProtection here: DatabaseSettings applies it once the stack stands
        # (a protected database could not be rolled back by a failed create). Nor a
        # log export: RDS would create its log group before the stack's encrypted one.
        DeletionPolicy="Snapshot",
        UpdateReplacePolicy="Snapshot",
        DependsOn=[secrets.values.title],
        Metadata={
            "cfn-lint": {"config": {"ignore_checks": ["W3691"]}},
            "cfn-lint-reasons": {"W3691": (
                f"cfn-lint's data lists the bare major '{POSTGRES_MAJOR_VERSION}' among deprecated "
                "versions, beside its retired minors, and among valid ones too (E3691 still "
                "checks it); RDS resolves a bare major to its current default minor.")},
            "checkov": {"skip": [
                {"id": "CKV_AWS_161", "comment": "Mastodon authenticates with a password; IAM "
                 "database authentication is not supported by it."},
                {"id": "CKV_AWS_118", "comment": "Enhanced monitoring costs extra; CloudWatch "
                 "metrics and alarms cover the instance."},
                {"id": "CKV_AWS_157", "comment": "Multi-AZ is a parameter (off by default for cost)."},
            ]},
        },
    ))


def _cache(t: Template, p: Parameters, network: Network, server_security_group: ec2.SecurityGroup,
           secrets: Secrets) -> elasticache.ReplicationGroup:
    security_group = _data_security_group(t, "Cache", network, server_security_group, CACHE_PORT)
    subnets = t.add_resource(elasticache.SubnetGroup(
        "CacheSubnetGroup",
        Description="Isolated subnets of the Mastodon cache",
        SubnetIds=[Ref(s) for s in network.data_subnets],
    ))
    settings = t.add_resource(elasticache.ParameterGroup(
        "CacheParameterGroup",
        Description="Mastodon: Sidekiq's jobs are never evicted",
        CacheParameterGroupFamily=f"valkey{VALKEY_VERSION.split('.')[0]}",
        Properties=CACHE_SETTINGS,
    ))
    return t.add_resource(elasticache.ReplicationGroup(
        CACHE,
        ReplicationGroupDescription="Mastodon Redis (Valkey)",
        Engine="valkey",
        EngineVersion=VALKEY_VERSION,
        CacheNodeType=Ref(p.cache_node_type),
        CacheParameterGroupName=Ref(settings),
        # CacheReplica: a second node (ElastiCache puts it in another zone of the subnet
        # group), then failover to it. Neither replaces the group: the primary and its data
        # stay. Without the option the properties resolve to what they always were.
        NumCacheClusters=If(parameters.CACHE_HAS_REPLICA, 2, 1),
        AutomaticFailoverEnabled=If(parameters.CACHE_FAILS_OVER, True, False),
        # Back from failover to standby, ElastiCache must be told false: Multi-AZ needs
        # automatic failover, and a property left out is not necessarily reset.
        MultiAZEnabled=If(parameters.CACHE_FAILS_OVER, True,
                          If(parameters.CACHE_HAS_REPLICA, False, Ref("AWS::NoValue"))),
        Port=CACHE_PORT,
        CacheSubnetGroupName=Ref(subnets),
        SecurityGroupIds=[Ref(security_group)],
        AtRestEncryptionEnabled=True,
        TransitEncryptionEnabled=True,
        AuthToken=secrets.reference("REDIS_PASSWORD"),
        SnapshotRetentionLimit=1,
        SnapshotWindow="02:00-03:00",
        PreferredMaintenanceWindow="sun:05:30-sun:06:30",
        AutoMinorVersionUpgrade=True,
        DeletionPolicy="Snapshot",
        UpdateReplacePolicy="Snapshot",
        DependsOn=[secrets.values.title],
    ))


def _rails_cache(t: Template, p: Parameters, cache: elasticache.ReplicationGroup,
                 secrets: Secrets) -> elasticache.ReplicationGroup:
    """The optional Redis for Rails.cache alone: same engine, network and encryption as the
    main one, its own AUTH token; it evicts, keeps no snapshot and is not kept on delete."""
    settings = t.add_resource(elasticache.ParameterGroup(
        "RailsCacheParameterGroup",
        Condition=parameters.HAS_SEPARATE_CACHE,
        Description="Mastodon: Rails cache only, least recently used keys evicted",
        CacheParameterGroupFamily=f"valkey{VALKEY_VERSION.split('.')[0]}",
        Properties=RAILS_CACHE_SETTINGS,
    ))
    return t.add_resource(elasticache.ReplicationGroup(
        RAILS_CACHE,
        Condition=parameters.HAS_SEPARATE_CACHE,
        ReplicationGroupDescription="Mastodon Rails cache (Valkey)",
        Engine="valkey",
        EngineVersion=VALKEY_VERSION,
        CacheNodeType=Ref(p.separate_cache_node_type),
        CacheParameterGroupName=Ref(settings),
        NumCacheClusters=1,
        AutomaticFailoverEnabled=False,
        Port=CACHE_PORT,
        # The main cache's subnets and security group: the same servers, the same port.
        CacheSubnetGroupName=cache.CacheSubnetGroupName,
        SecurityGroupIds=cache.SecurityGroupIds,
        AtRestEncryptionEnabled=True,
        TransitEncryptionEnabled=True,
        AuthToken=secrets.reference("CACHE_REDIS_PASSWORD"),
        # Entries live ten minutes by default: a snapshot would restore stale ones.
        SnapshotRetentionLimit=0,
        PreferredMaintenanceWindow="sun:05:30-sun:06:30",
        AutoMinorVersionUpgrade=True,
        DeletionPolicy="Delete",
        UpdateReplacePolicy="Delete",
        DependsOn=[secrets.values.title],
    ))


def _media_bucket(t: Template) -> s3.Bucket:
    return t.add_resource(s3.Bucket(
        MEDIA_BUCKET,
        BucketEncryption=s3.BucketEncryption(ServerSideEncryptionConfiguration=[
            s3.ServerSideEncryptionRule(
                ServerSideEncryptionByDefault=s3.ServerSideEncryptionByDefault(SSEAlgorithm="AES256"),
                BucketKeyEnabled=True,
            )]),
        PublicAccessBlockConfiguration=s3.PublicAccessBlockConfiguration(
            BlockPublicAcls=True, BlockPublicPolicy=True, IgnorePublicAcls=True,
            RestrictPublicBuckets=True),
        OwnershipControls=s3.OwnershipControls(Rules=[
            s3.OwnershipControlsRule(ObjectOwnership="BucketOwnerEnforced")]),
        VersioningConfiguration=s3.VersioningConfiguration(Status="Enabled"),
        LifecycleConfiguration=s3.LifecycleConfiguration(Rules=[
            # Versioning guards against mistakes; old versions need not be kept forever.
            s3.LifecycleRule(
                Id="ExpireOldVersions", Status="Enabled",
                NoncurrentVersionExpiration=s3.NoncurrentVersionExpiration(NoncurrentDays=30),
                AbortIncompleteMultipartUpload=s3.AbortIncompleteMultipartUpload(DaysAfterInitiation=7),
            ),
        ]),
        Tags=Tags(Name=Sub("${AWS::StackName}-media")),
        # Kept when the stack is deleted; removed when the create that made it fails (it
        # is empty then), so a failed first create leaves nothing that bills.
        DeletionPolicy="RetainExceptOnCreate",
        UpdateReplacePolicy="Retain",
        Metadata={"checkov": {"skip": [
            {"id": "CKV_AWS_18", "comment": "Access logging would need a second bucket and costs "
             "per request; CloudFront fronts every read."},
        ]}},
    ))
