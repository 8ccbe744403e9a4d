"""Alarms for what breaks a Mastodon instance, sent to the alert topic, and a dashboard.

Each alarm names its symptom and what to look at. They cover the request path
(load balancer and Mastodon answering 5xx, targets unhealthy or none healthy in
either target group), the database (CPU, storage, connections near
max_connections, memory), the cache (memory and evictions, which lose Sidekiq
jobs; the optional cache-only Redis when it stays full) and the Sidekiq worker (no
instance in service); with queue workers, Sidekiq itself (a job waits too long, no
process alive). Every alarm notifies the topic when it fires and when it recovers.

A failed rollout is no alarm: once the pipeline exists, an EventBridge rule on the
state machine's status events mails the topic at once, naming the execution
(`create_rollout_failure_notice`). AWS service events cost nothing, where an alarm
over the three Step Functions failure metrics would cost $0.30 a month.

The dashboard is built from the alarms themselves (one graph per alarm, plus their
states), so it always shows the same thing the e-mails are about; an option's alarm
(one with a Condition) is left out, as the dashboard cannot name what may not exist.
"""

from __future__ import annotations

import json
from typing import Any

from troposphere import (
    AWSObject,
    FindInMap,
    GetAtt,
    If,
    Join,
    Ref,
    Sub,
    Template,
    autoscaling,
    cloudwatch,
    events,
    sns,
)

from templates import capacity, parameters, sidekiq
from templates.alerting import Threshold, topic_alarm
from templates.compute import Compute
from templates.data import Data
from templates.load_balancing import LoadBalancing

DASHBOARD = "Dashboard"
ROLLOUT_FAILURE_NOTICE = "RolloutFailureNotice"
DATABASE_THRESHOLDS_MAP = "DatabaseAlarmThresholds"

# Thresholds, with why. Counts are per minute unless the period says otherwise.
HTTP_5XX_PER_MINUTE = 10          # a few errors happen; ten a minute, three minutes in five, is an outage
DATABASE_CPU_PERCENT = 80         # sustained for 15 minutes: queries queue, pages slow down
DATABASE_FREE_STORAGE_BYTES = 1024 ** 3  # 1 GiB: storage autoscaling (10% free) has not kept up
DATABASE_CONNECTIONS_SHARE = 0.8  # of max_connections: new connections will soon be refused
DATABASE_FREE_MEMORY_SHARE = 0.1  # of the class's memory: the instance starts to swap
CACHE_MEMORY_PERCENT = 80         # of maxmemory: evictions come next
# The cache-only Redis (allkeys-lru) evicts when full by design. Its entries expire within
# ten minutes, so one that stays full for a quarter of an hour evicts them before that:
# pages are computed again and again.
RAILS_CACHE_MEMORY_PERCENT = 95
WORKER_IN_SERVICE_MINIMUM = 1     # the one Sidekiq instance
# With queue workers: a job that has waited ten minutes, five minutes running, means the
# groups at their maximum cannot keep up (the queue workers scale out at half a minute),
# or a queue no live process runs. Federation and notifications are that late.
OLDEST_JOB_ALERT_SECONDS = 600
SIDEKIQ_OLDEST_JOB_ALARM = "SidekiqOldestJobAlarm"
SIDEKIQ_NO_PROCESS_ALARM = "SidekiqNoProcessAlarm"
# Mastodon reads some pages (public, tag and list timelines...) from the replica without
# knowing its lag (mastodon/mastodon#30176): half a minute behind, users see posts vanish.
REPLICA_LAG_SECONDS = 30
REPLICA_LAG_ALARM = "DatabaseReplicaLagAlarm"

# The worker is an Auto Scaling group of one: its in-service count is its health.
WORKER_GROUP_METRICS = ["GroupInServiceInstances", "GroupDesiredCapacity"]


def _alarm(t: Template, name: str, topic: sns.Topic, summary: str, advice: str, namespace: str,
           metric: str, dimensions: dict[str, object], trigger: Threshold,
           after: list[str] | None = None) -> cloudwatch.Alarm:
    return topic_alarm(
        t, name, topic, summary, f"{summary}. {advice}",
        # Only created once `after` exists: an alarm that counts a missing metric as
        # breaching would otherwise fire while the first servers boot.
        **({"DependsOn": after} if after else {}),
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[cloudwatch.MetricDimension(Name=k, Value=v) for k, v in dimensions.items()],
        **trigger.properties(),
    )


def database_thresholds() -> dict[str, dict[str, str]]:
    """Per database class: the connection count and free memory that raise an alarm."""
    return {
        d.name: {
            "Connections": str(int(d.max_connections * DATABASE_CONNECTIONS_SHARE)),
            "FreeableMemoryBytes": str(int(d.memory_mib * 1024 * 1024 * DATABASE_FREE_MEMORY_SHARE)),
        }
        for d in capacity.DATABASE_CLASSES
    }


def create_alarms(t: Template, p: parameters.Parameters, load_balancing: LoadBalancing, data: Data,
                  compute: Compute, topic: sns.Topic) -> list[cloudwatch.Alarm]:
    """Every alarm of the running stack (a failed rollout is an event: see below)."""
    t.add_mapping(DATABASE_THRESHOLDS_MAP, database_thresholds())
    lb_name = GetAtt(load_balancing.load_balancer, "LoadBalancerFullName")
    per_minute_errors = Threshold("Sum", "GreaterThanOrEqualToThreshold", HTTP_5XX_PER_MINUTE, 60, 5, 3)
    alarms = [
        _alarm(t, "LoadBalancer5xxAlarm", topic, "load balancer answers 5xx",
               "No healthy target, or targets time out: see the target group alarms and the web logs.",
               "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", {"LoadBalancer": lb_name},
               per_minute_errors),
        _alarm(t, "Target5xxAlarm", topic, "Mastodon answers 5xx",
               "Puma or the streaming server fails requests: see the web and streaming logs.",
               "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", {"LoadBalancer": lb_name},
               per_minute_errors),
    ]
    for kind, group in (("Web", load_balancing.web_target_group),
                        ("Streaming", load_balancing.streaming_target_group)):
        dimensions = {"TargetGroup": GetAtt(group, "TargetGroupFullName"), "LoadBalancer": lb_name}
        alarms += [
            _alarm(t, f"{kind}UnhealthyTargetsAlarm", topic, f"{kind.lower()} targets unhealthy",
                   "A server fails its health check for five minutes: see its logs; the web "
                   "group replaces it.",
                   "AWS/ApplicationELB", "UnHealthyHostCount", dimensions,
                   Threshold("Maximum", "GreaterThanOrEqualToThreshold", 1, 60, 5, 5)),
            # No data means no target reports at all: as bad as none healthy. Created after
            # the web group, which CloudFormation completes only once its first servers
            # have signalled that they serve; Maximum: a minute with a healthy target
            # (a rollout's surge keeps one) is no outage.
            _alarm(t, f"{kind}NoHealthyTargetAlarm", topic, f"no healthy {kind.lower()} target",
                   "The instance is down for everyone: see the web group's activity and logs.",
                   "AWS/ApplicationELB", "HealthyHostCount", dimensions,
                   Threshold("Maximum", "LessThanThreshold", 1, 60, 2, 2, "breaching"),
                   after=[compute.web_group.title]),
        ]
    database = {"DBInstanceIdentifier": Ref(data.database)}
    alarms += [
        _alarm(t, "DatabaseCpuAlarm", topic, "database CPU high",
               "Queries queue and pages slow down: consider a larger DatabaseInstanceClass.",
               "AWS/RDS", "CPUUtilization", database,
               Threshold("Average", "GreaterThanThreshold", DATABASE_CPU_PERCENT, 300, 3, 3)),
        _alarm(t, "DatabaseStorageAlarm", topic, "database storage nearly full",
               "Storage autoscaling has not kept up or reached DatabaseMaxAllocatedStorage: raise it.",
               "AWS/RDS", "FreeStorageSpace", database,
               Threshold("Minimum", "LessThanThreshold", DATABASE_FREE_STORAGE_BYTES, 300, 2, 2)),
        _alarm(t, "DatabaseConnectionsAlarm", topic, "database connections near max_connections",
               "New connections will soon be refused: choose a larger DatabaseInstanceClass or "
               "a lower WebMaxSize.",
               "AWS/RDS", "DatabaseConnections", database,
               Threshold("Maximum", "GreaterThanOrEqualToThreshold",
                         FindInMap(DATABASE_THRESHOLDS_MAP, Ref(p.database_class), "Connections"),
                         300, 2, 2)),
        _alarm(t, "DatabaseMemoryAlarm", topic, "database memory low",
               "The database is about to swap: choose a larger DatabaseInstanceClass.",
               "AWS/RDS", "FreeableMemory", database,
               Threshold("Minimum", "LessThanThreshold",
                         FindInMap(DATABASE_THRESHOLDS_MAP, Ref(p.database_class), "FreeableMemoryBytes"),
                         300, 3, 3)),
    ]
    # The replication group's single node is its member cluster "<group>-001".
    cache = {"CacheClusterId": Join("", [Ref(data.cache), "-001"])}
    alarms += [
        _alarm(t, "CacheMemoryAlarm", topic, "cache memory high",
               "Redis is near maxmemory; full, it refuses writes (noeviction keeps Sidekiq's "
               "jobs), so new jobs and cache entries fail: choose a larger CacheNodeType.",
               "AWS/ElastiCache", "DatabaseMemoryUsagePercentage", cache,
               Threshold("Maximum", "GreaterThanThreshold", CACHE_MEMORY_PERCENT, 300, 3, 3)),
        _alarm(t, "CacheEvictionsAlarm", topic, "cache evicts keys",
               "Evicted keys can be queued Sidekiq jobs, lost: choose a larger CacheNodeType now.",
               "AWS/ElastiCache", "Evictions", cache,
               Threshold("Sum", "GreaterThanThreshold", 0, 300, 1, 1)),
    ]
    rails_cache_memory = _alarm(
        t, "RailsCacheMemoryAlarm", topic, "Rails cache memory full",
        "The cache-only Redis evicts entries before they expire, so Mastodon recomputes "
        "them (slower pages, more database load): choose a larger SeparateCacheNodeType.",
        "AWS/ElastiCache", "DatabaseMemoryUsagePercentage",
        {"CacheClusterId": Join("", [Ref(data.rails_cache), "-001"])},
        Threshold("Minimum", "GreaterThanThreshold", RAILS_CACHE_MEMORY_PERCENT, 300, 3, 3))
    rails_cache_memory.Condition = parameters.HAS_SEPARATE_CACHE
    alarms.append(rails_cache_memory)
    # The worker-down alarm reads the group's metrics (free at one-minute granularity).
    compute.worker_group.MetricsCollection = [autoscaling.MetricsCollection(
        Granularity="1Minute", Metrics=WORKER_GROUP_METRICS)]
    alarms.append(_alarm(
        t, "WorkerDownAlarm", topic, "Sidekiq worker down",
        "No worker instance in service: federation, mail and media processing stop. See the "
        "worker group's activity and the sidekiq logs.",
        "AWS/AutoScaling", "GroupInServiceInstances", {"AutoScalingGroupName": Ref(compute.worker_group)},
        Threshold("Minimum", "LessThanThreshold", WORKER_IN_SERVICE_MINIMUM, 60, 5, 5, "breaching")))
    alarms += create_queue_alarms(t, compute, topic)
    _replica_lag_alarm(t, data, topic)
    return alarms


def create_queue_alarms(t: Template, compute: Compute, topic: sns.Topic) -> list[cloudwatch.Alarm]:
    """With queue workers, on the metrics the main worker publishes (templates/sidekiq.py).

    No data for the process count means the publisher itself, the main worker's Sidekiq or
    Redis, is down: as bad as no process (breaching). The alarms appear once the worker
    has signalled, so that its boot raises nothing.
    """
    found = [
        _alarm(t, SIDEKIQ_OLDEST_JOB_ALARM, topic, "Sidekiq jobs wait too long",
               f"A job has waited over {OLDEST_JOB_ALERT_SECONDS // 60} minutes: raise "
               "QueueWorkerMaxSize or the instance types, or check that every queue runs somewhere; "
               "see the sidekiq logs.",
               sidekiq.METRICS_NAMESPACE, sidekiq.OLDEST_JOB_METRIC, {},
               Threshold("Maximum", "GreaterThanThreshold", OLDEST_JOB_ALERT_SECONDS,
                         sidekiq.METRICS_PERIOD_SECONDS, 5, 5)),
        _alarm(t, SIDEKIQ_NO_PROCESS_ALARM, topic, "no Sidekiq process alive",
               "No Sidekiq process reports to Redis, or the main worker cannot tell: jobs and the "
               "schedule stop. See the sidekiq logs and the worker's mastodon-queue-metrics unit.",
               sidekiq.METRICS_NAMESPACE, sidekiq.PROCESSES_METRIC, {},
               Threshold("Minimum", "LessThanThreshold", 1, sidekiq.METRICS_PERIOD_SECONDS, 3, 3,
                         "breaching"),
               after=[compute.worker_group.title]),
    ]
    for alarm in found:
        alarm.Condition = parameters.HAS_QUEUE_WORKERS
    return found


def _replica_lag_alarm(t: Template, data: Data, topic: sns.Topic) -> None:
    """Only with a read replica; kept out of the dashboard, which shows every stack's alarms."""
    if data.replica is None:
        return
    alarm = _alarm(
        t, REPLICA_LAG_ALARM, topic, "read replica lags",
        "Pages read from the replica miss recent posts: see the replica's CPU and IOPS, or choose "
        "a larger DatabaseReplicaClass.",
        "AWS/RDS", "ReplicaLag", {"DBInstanceIdentifier": Ref(data.replica)},
        Threshold("Maximum", "GreaterThanThreshold", REPLICA_LAG_SECONDS, 60, 3, 3))
    alarm.Condition = parameters.HAS_DATABASE_REPLICA


# The e-mail a failed rollout sends. EventBridge wants a text template quoted: each
# line is a JSON string (as CDK's fromMultilineText writes it), and mails are reported
# to show each line in its quotes, hence no blank lines. The fields are the
# execution's, as in DescribeExecution (Step Functions developer guide, "Step
# Functions event examples"); error and cause are not in AWS's examples, so the mail
# does not rely on them: the rollout's own notice, or the execution's history, says why.
ROLLOUT_FAILURE_FIELDS = {
    "name": "$.detail.name",
    "status": "$.detail.status",
    "execution": "$.detail.executionArn",
    "time": "$.time",
}
ROLLOUT_FAILURE_MAIL = [
    "The Mastodon upgrade rollout of ${Domain} (stack ${AWS::StackName}) ended <status> at <time>.",
    "Execution: <name>",
    "A failure before the post-deployment migrations is rolled back: the previous version keeps "
    "serving and stays the boot version. The rollout's own notice, sent just before this one, "
    "says what failed and which version the servers run.",
    "No such notice? Then the execution was stopped, timed out or could not report: servers may "
    "be part-way through the upgrade, and the web group's scaling processes still suspended${QueueHold}.",
    "See which step failed and why in the execution's history (Step Functions console, region "
    "${AWS::Region}), or with:",
    "aws stepfunctions get-execution-history --region ${AWS::Region} --reverse-order "
    "--execution-arn <execution>",
]
ROLLOUT_FAILED_STATUSES = ["FAILED", "TIMED_OUT", "ABORTED"]
# With queue workers, the rollout holds their group's scaling too (lambdas/rollout/fleet.py,
# held_groups): the mail names that hold and how to lift it. No quotes: the line is a JSON string.
ROLLOUT_QUEUE_HOLD = (
    ", and so may the queue workers' group's (${Group}): once no rollout runs, resume them with "
    "aws autoscaling resume-processes --region ${AWS::Region} --auto-scaling-group-name ${Group}"
)


def create_rollout_failure_notice(t: Template, p: parameters.Parameters, state_machine: AWSObject,
                                  topic: sns.Topic, queue_group: AWSObject | None = None) -> events.Rule:
    """Mail the alert topic as soon as a rollout execution fails, times out or is aborted.

    queue_group: the queue workers' group (parameters.HAS_QUEUE_WORKERS), whose held scaling
    the mail then names beside the web group's.

    An EventBridge rule on the state machine's own status events: free (AWS service
    events), immediate, and it names the execution. The rule publishes only once the
    topic's policy names it (operations.create_alert_topic_policy).
    """
    queue_hold = "" if queue_group is None else If(
        parameters.HAS_QUEUE_WORKERS, Sub(ROLLOUT_QUEUE_HOLD, Group=Ref(queue_group)), "")
    rule = t.add_resource(events.Rule(
        ROLLOUT_FAILURE_NOTICE,
        Description="A rollout that ends failed, timed out or aborted mails the alert topic",
        EventPattern={
            "source": ["aws.states"],
            "detail-type": ["Step Functions Execution Status Change"],
            "detail": {"status": ROLLOUT_FAILED_STATUSES, "stateMachineArn": [Ref(state_machine)]},
        },
        # No RoleArn: EventBridge publishes to SNS under the topic's policy.
        Targets=[events.Target(
            Id="AlertTopic", Arn=Ref(topic),
            InputTransformer=events.InputTransformer(
                InputPathsMap=ROLLOUT_FAILURE_FIELDS,
                InputTemplate=Sub("\n".join(json.dumps(line) for line in ROLLOUT_FAILURE_MAIL),
                                  Domain=Ref(p.domain), QueueHold=queue_hold),
            ),
        )],
    ))
    return rule


WIDGET_WIDTH, WIDGET_HEIGHT, COLUMNS = 8, 6, 3


def dashboard_body(alarm_names: list[str]) -> dict[str, Any]:
    """The dashboard: every alarm's state, then one graph per alarm with its threshold."""
    arns = [f"${{{name}.Arn}}" for name in alarm_names]
    status_height = 2 + len(alarm_names) // 4
    widgets: list[dict[str, Any]] = [{
        "type": "alarm", "x": 0, "y": 0, "width": WIDGET_WIDTH * COLUMNS, "height": status_height,
        "properties": {"title": "Alarms", "alarms": arns, "sortBy": "stateUpdatedTimestamp"},
    }]
    for i, (name, arn) in enumerate(zip(alarm_names, arns, strict=True)):
        widgets.append({
            "type": "metric",
            "x": (i % COLUMNS) * WIDGET_WIDTH,
            "y": status_height + (i // COLUMNS) * WIDGET_HEIGHT,
            "width": WIDGET_WIDTH, "height": WIDGET_HEIGHT,
            "properties": {"title": name.removesuffix("Alarm"), "region": "${AWS::Region}",
                           "view": "timeSeries", "stacked": False, "annotations": {"alarms": [arn]}},
        })
    return {"widgets": widgets}


def create_dashboard(t: Template) -> cloudwatch.Dashboard:
    """A dashboard of every alarm in the stack; call after the last alarm is added.

    Alarms of an option (those with a Condition) are left out: the body would name an
    alarm that may not exist.
    """
    names = sorted(name for name, r in t.resources.items()
                   if isinstance(r, cloudwatch.Alarm) and not hasattr(r, "Condition"))
    return t.add_resource(cloudwatch.Dashboard(
        DASHBOARD,
        DashboardName=Sub("${AWS::StackName}-mastodon"),
        DashboardBody=Sub(json.dumps(dashboard_body(names), separators=(",", ":"))),
    ))
