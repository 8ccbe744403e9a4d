"""Sizes the stack may take, and the database connection budget they share.

Every instance type and database class an operator may choose is listed here with
the figures the connection budget needs. The template's AllowedValues, the
`max_connections` the database is configured with, and the numbers handed to the
instances all come from these tables, so the test that proves the largest fleet
fits the database reads the same facts the stack is built from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    """An EC2 instance type the web or worker group may run on."""

    name: str
    architecture: str  # "arm64" or "x86_64", selects the AMI
    vcpus: int
    memory_mib: int


# Burstable and general-purpose types, Graviton then x86, smallest first (the order
# the console lists them in). Both groups run on those with at least 2 GiB; the 1 GiB
# micros are for the worker only (WEB_MIN_MEMORY_MIB).
#
# The largest (8 vCPUs) are what a ~50,000-active-user instance runs on: mastodon.social
# served 10,000 weekly users from 8-core web servers with Puma at 4 x 10 threads
# (Mastodon's old "Resources needed" docs), and Hachyderm ran Puma and Sidekiq on 32-core
# boxes at 30,000 users (../shared/GROWTH.md section 7). Here a web server runs one Puma
# worker per vCPU (pools.sh), so 8 vCPUs give 8 x 5 threads a server, and a group of up to
# WEB_MAX_SIZE_LIMIT of them serves 400 requests at once; Mastodon's scaling guide
# (docs.joinmastodon.org/admin/scaling) prefers more processes to more threads, which is
# what more vCPUs buy. Larger sizes would only add threads that the database cannot serve.
INSTANCE_TYPES: tuple[InstanceType, ...] = (
    InstanceType("t4g.micro", "arm64", 2, 1024),
    InstanceType("t4g.small", "arm64", 2, 2048),
    InstanceType("t4g.medium", "arm64", 2, 4096),
    InstanceType("t4g.large", "arm64", 2, 8192),
    InstanceType("t4g.xlarge", "arm64", 4, 16384),
    InstanceType("m7g.medium", "arm64", 1, 4096),
    InstanceType("m7g.large", "arm64", 2, 8192),
    InstanceType("m7g.xlarge", "arm64", 4, 16384),
    InstanceType("m7g.2xlarge", "arm64", 8, 32768),
    InstanceType("c7g.large", "arm64", 2, 4096),
    InstanceType("c7g.xlarge", "arm64", 4, 8192),
    InstanceType("c7g.2xlarge", "arm64", 8, 16384),
    InstanceType("t3.micro", "x86_64", 2, 1024),
    InstanceType("t3.small", "x86_64", 2, 2048),
    InstanceType("t3.medium", "x86_64", 2, 4096),
    InstanceType("t3.large", "x86_64", 2, 8192),
    InstanceType("m7i.large", "x86_64", 2, 8192),
    InstanceType("m7i.xlarge", "x86_64", 4, 16384),
    InstanceType("m7i.2xlarge", "x86_64", 8, 32768),
    InstanceType("c7i.large", "x86_64", 2, 4096),
    InstanceType("c7i.xlarge", "x86_64", 4, 8192),
    InstanceType("c7i.2xlarge", "x86_64", 8, 16384),
)

# A web server runs Puma workers (~400 MiB each) and the streaming server next to
# Docker and the OS: below 2 GiB not even one worker fits (pools.sh). Sidekiq alone
# fits in 1 GiB at Mastodon's default of 5 threads, with the swap file bootstrap.sh
# adds below 2 GiB as a cushion for peaks and one-off containers.
WEB_MIN_MEMORY_MIB = 2048
WEB_INSTANCE_TYPES: tuple[InstanceType, ...] = tuple(
    t for t in INSTANCE_TYPES if t.memory_mib >= WEB_MIN_MEMORY_MIB)
WORKER_INSTANCE_TYPES: tuple[InstanceType, ...] = INSTANCE_TYPES

INSTANCE_TYPES_BY_NAME = {t.name: t for t in INSTANCE_TYPES}

DEFAULT_WEB_INSTANCE_TYPE = "t4g.small"
# The cheapest worker (about $6 a month on demand in us-east-1), enough for a small
# instance; a t4g.small runs more Sidekiq threads, without leaning on swap.
DEFAULT_WORKER_INSTANCE_TYPE = "t4g.micro"
# Queue workers exist for load a micro cannot carry: 2 GiB runs ~17 threads (pools.sh).
DEFAULT_QUEUE_WORKER_INSTANCE_TYPE = "t4g.small"


@dataclass(frozen=True)
class DatabaseClass:
    """An RDS PostgreSQL instance class and the max_connections we configure.

    RDS derives the default from memory (LEAST(DBInstanceClassMemory/9531392, 5000));
    we set a value at or below that default explicitly in the parameter group, so the
    budget is a fact of the stack rather than an estimate.
    """

    name: str
    memory_mib: int
    max_connections: int
    # vCPUs (RDS DB instance classes table). RDS sizes max_worker_processes from them, and
    # a hot standby needs at least its primary's (so a read replica needs at least as many).
    vcpus: int


# Up to what a ~50,000-active-user instance needs: a memory-optimised class of 32 to
# 64 GiB keeps the hot part of the database (statuses, home feeds' joins, indexes) in
# memory; Hachyderm's database needed memory first at 30,000 users, and large instances
# run PostgreSQL on r-class machines (../shared/GROWTH.md section 7). 5000 is RDS's own
# ceiling on its memory-derived default (LEAST(DBInstanceClassMemory/9531392, 5000)).
DATABASE_CLASSES: tuple[DatabaseClass, ...] = (
    DatabaseClass("db.t4g.micro", 1024, 80, 2),
    DatabaseClass("db.t4g.small", 2048, 180, 2),
    DatabaseClass("db.t4g.medium", 4096, 380, 2),
    DatabaseClass("db.t4g.large", 8192, 800, 2),
    DatabaseClass("db.t4g.xlarge", 16384, 1600, 4),
    DatabaseClass("db.m7g.large", 8192, 800, 2),
    DatabaseClass("db.m7g.xlarge", 16384, 1600, 4),
    DatabaseClass("db.m7g.2xlarge", 32768, 3200, 8),
    DatabaseClass("db.r7g.large", 16384, 1600, 2),
    DatabaseClass("db.r7g.xlarge", 32768, 3200, 4),
    DatabaseClass("db.r7g.2xlarge", 65536, 5000, 8),
)


DEFAULT_DATABASE_CLASS = "db.t4g.micro"

# The web group's size bounds an operator may choose. A rollout may add one
# instance above the maximum while it replaces a single instance (surge).
WEB_MIN_SIZE_LIMIT = 1
WEB_MAX_SIZE_LIMIT = 10
ROLLOUT_SURGE = 1
# The optional queue-worker group (templates/sidekiq.py): 0 to this many servers. The
# rollout deploys to them in place, without a surge.
QUEUE_WORKER_MAX_SIZE_LIMIT = 10

# Connections kept free of the fleet's pools: RDS reserves 3 for the superuser
# (superuser_reserved_connections), and one-off containers (migrations, tootctl,
# a Rails console) each open a small pool on the worker.
RESERVED_CONNECTIONS = 3
ONE_OFF_CONNECTIONS = 7
# The pools of those one-off containers (the servers receive them in stack.env): the
# bootstrap's database checks and db:setup, and the migrations, use few connections;
# tootctl's threads (--concurrency, 5 by default) each hold one. Both fit the reserve.
ONE_OFF_DB_POOL = 2
TOOTCTL_DB_POOL = 6

# The smallest connection share every server fits in (pools.sh): a web server's one Puma
# worker of 2 threads, its preloading master and a streaming pool of 2; Sidekiq needs 2.
SMALLEST_SHARE = 2 + 1 + 2


def fleet_instances(web_max_size: int, queue_worker_max_size: int) -> int:
    """Servers the database's connections are shared among: the web group at its maximum
    plus the rollout's surge, the main worker, and the queue workers at their maximum."""
    return web_max_size + ROLLOUT_SURGE + 1 + queue_worker_max_size


def largest_fleet(database: DatabaseClass) -> int:
    """The most web plus queue-worker servers (at their maxima) this class's connections fit."""
    budget = database.max_connections - RESERVED_CONNECTIONS - ONE_OFF_CONNECTIONS
    return budget // SMALLEST_SHARE - fleet_instances(0, 0)
