"""Autoscaling of the web group on CPU, within WebMinSize..WebMaxSize, and of the optional
queue workers on Sidekiq's queue latency (create_queue_worker_scaling, below).

Target tracking keeps the web servers' average CPU near its target by adding and
removing servers; it never goes below the group's MinSize or above its MaxSize,
which are the WebMinSize and WebMaxSize parameters. Every server sizes its
database pools for WebMaxSize + the rollout surge (see capacity.py), so scaling
all the way out still fits the database's max_connections.

CPU rather than requests per target: the cost of a Mastodon request varies by two
orders of magnitude (a cached status against a home timeline), while Puma's CPU
is what saturates. 60% leaves room for a burst while a new server boots (about
ten minutes including the image pull) and keeps burstable types above their
baseline only under real load.
"""

from __future__ import annotations

from troposphere import Ref, Template, autoscaling, cloudwatch

from templates import parameters, sidekiq
from templates.capacity import WEB_MAX_SIZE_LIMIT, WEB_MIN_SIZE_LIMIT
from templates.compute import Compute
from templates.parameters import Parameters

WEB_SCALING_POLICY = "WebCpuScaling"
TARGET_CPU_PERCENT = 60.0
# A new server counts toward the average only once it serves: boot, pull, health.
INSTANCE_WARMUP_SECONDS = 600
WEB_SIZE_RULE = "WebMinSizeAtMostMaxSize"


def create_web_scaling(t: Template, p: Parameters, compute: Compute) -> autoscaling.ScalingPolicy:
    _reject_minimum_above_maximum(t, p)
    return t.add_resource(autoscaling.ScalingPolicy(
        WEB_SCALING_POLICY,
        AutoScalingGroupName=Ref(compute.web_group),
        PolicyType="TargetTrackingScaling",
        EstimatedInstanceWarmup=INSTANCE_WARMUP_SECONDS,
        TargetTrackingConfiguration=autoscaling.TargetTrackingConfiguration(
            PredefinedMetricSpecification=autoscaling.PredefinedMetricSpecification(
                PredefinedMetricType="ASGAverageCPUUtilization"),
            TargetValue=TARGET_CPU_PERCENT,
        ),
    ))


def _reject_minimum_above_maximum(t: Template, p: Parameters) -> None:
    """WebMinSize above WebMaxSize would fail the group's creation twenty minutes in.

    Rules cannot compare numbers, so for each minimum m the assertion lists the
    maxima below it. Fn::And and Fn::Or take at most ten conditions each.
    """
    minimum, maximum = Ref(p.web_min_size), Ref(p.web_max_size)
    clauses = [
        {"Fn::Or": [
            {"Fn::Not": [{"Fn::Equals": [minimum, str(m)]}]},
            {"Fn::Not": [{"Fn::Contains": [[str(n) for n in range(WEB_MIN_SIZE_LIMIT, m)], maximum]}]},
        ]}
        for m in range(WEB_MIN_SIZE_LIMIT + 1, WEB_MAX_SIZE_LIMIT + 1)
    ]
    if len(clauses) > 10:
        raise ValueError("WebMinSize's range is too wide for one Fn::And of ten conditions")
    t.add_rule(WEB_SIZE_RULE, {
        "Assertions": [{
            "Assert": {"Fn::And": clauses},
            "AssertDescription": "WebMinSize must not exceed WebMaxSize.",
        }],
    })


# --- queue workers (optional) -----------------------------------------------------------
# Step scaling on the queue workers' latency (the oldest job of the queues they run, which
# the main worker publishes every minute, templates/sidekiq.py). Latency falls as workers
# are added but is no utilisation, so target tracking does not fit it. Out: a job has
# waited more than SCALE_OUT_SECONDS for two minutes: one server more, two beyond
# SCALE_OUT_FAST_SECONDS. In: every job starts within SCALE_IN_SECONDS for a quarter of an
# hour: one server less, down to QueueWorkerMinSize. Missing data (the publisher is down)
# moves nothing: the no-process alarm reports it.
QUEUE_SCALE_OUT_POLICY = "QueueWorkerScaleOut"
QUEUE_SCALE_IN_POLICY = "QueueWorkerScaleIn"
QUEUE_SCALE_OUT_ALARM = "QueueWorkerLatencyHighAlarm"
QUEUE_SCALE_IN_ALARM = "QueueWorkerLatencyLowAlarm"
SCALE_OUT_SECONDS = 30
SCALE_OUT_FAST_SECONDS = 120
SCALE_OUT_MINUTES = 2
SCALE_IN_SECONDS = 5
SCALE_IN_MINUTES = 15


def create_queue_worker_scaling(t: Template, p: Parameters, compute: Compute) -> list[cloudwatch.Alarm]:
    group = Ref(compute.queue_group)

    def step_policy(title: str, steps: list[autoscaling.StepAdjustments],
                    **properties: object) -> autoscaling.ScalingPolicy:
        return t.add_resource(autoscaling.ScalingPolicy(
            title, Condition=parameters.HAS_QUEUE_WORKERS, AutoScalingGroupName=group,
            PolicyType="StepScaling", AdjustmentType="ChangeInCapacity", MetricAggregationType="Maximum",
            StepAdjustments=steps, **properties,
        ))

    out = step_policy(
        QUEUE_SCALE_OUT_POLICY,
        [
            autoscaling.StepAdjustments(MetricIntervalLowerBound=0,
                                        MetricIntervalUpperBound=SCALE_OUT_FAST_SECONDS - SCALE_OUT_SECONDS,
                                        ScalingAdjustment=1),
            autoscaling.StepAdjustments(MetricIntervalLowerBound=SCALE_OUT_FAST_SECONDS - SCALE_OUT_SECONDS,
                                        ScalingAdjustment=2),
        ],
        # A new queue worker takes jobs once it has booted: count it from then on.
        EstimatedInstanceWarmup=INSTANCE_WARMUP_SECONDS,
    )
    scale_in = step_policy(QUEUE_SCALE_IN_POLICY, [
        autoscaling.StepAdjustments(MetricIntervalUpperBound=0, ScalingAdjustment=-1)])
    return [
        _latency_alarm(t, QUEUE_SCALE_OUT_ALARM, out, "GreaterThanThreshold", SCALE_OUT_SECONDS,
                       SCALE_OUT_MINUTES, "Sidekiq jobs wait: add a queue worker"),
        _latency_alarm(t, QUEUE_SCALE_IN_ALARM, scale_in, "LessThanThreshold", SCALE_IN_SECONDS,
                       SCALE_IN_MINUTES, "Sidekiq jobs start at once: remove a queue worker"),
    ]


def _latency_alarm(t: Template, name: str, policy: autoscaling.ScalingPolicy, comparison: str,
                   threshold: int, minutes: int, description: str) -> cloudwatch.Alarm:
    return t.add_resource(cloudwatch.Alarm(
        name,
        Condition=parameters.HAS_QUEUE_WORKERS,
        AlarmDescription=f"{description} (scaling, not an alert).",
        Namespace=sidekiq.METRICS_NAMESPACE,
        MetricName=sidekiq.QUEUE_WORKER_LATENCY_METRIC,
        Statistic="Maximum",
        Period=sidekiq.METRICS_PERIOD_SECONDS,
        EvaluationPeriods=minutes,
        DatapointsToAlarm=minutes,
        ComparisonOperator=comparison,
        Threshold=threshold,
        TreatMissingData="notBreaching",
        AlarmActions=[Ref(policy)],
    ))
