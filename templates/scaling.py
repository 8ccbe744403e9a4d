"""Autoscaling of the web group on CPU, within WebMinSize..WebMaxSize.

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

from troposphere import Ref, Template, autoscaling

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
