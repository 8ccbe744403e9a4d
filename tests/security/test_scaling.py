"""The web group scales on CPU within the operator's bounds, which the database can hold."""

from __future__ import annotations

from templates import capacity, scaling
from tests.support import props, resources


def test_the_web_group_tracks_a_cpu_target(template):
    (policy,) = [r for r in resources(template, "AWS::AutoScaling::ScalingPolicy").values()
                 if r["Properties"]["AutoScalingGroupName"] == {"Ref": "WebAutoScalingGroup"}]
    p = policy["Properties"]
    assert p["AutoScalingGroupName"] == {"Ref": "WebAutoScalingGroup"}
    assert p["PolicyType"] == "TargetTrackingScaling"
    tracking = p["TargetTrackingConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ASGAverageCPUUtilization"
    assert 40 <= tracking["TargetValue"] <= 75
    assert not tracking.get("DisableScaleIn"), "a fleet that never shrinks only costs"
    # A booting server must not count as idle capacity, or scaling overshoots.
    assert p["EstimatedInstanceWarmup"] >= 300


def test_scaling_stays_within_the_bounds_the_parameters_allow(template):
    group = props(template, "WebAutoScalingGroup")
    assert (group["MinSize"], group["MaxSize"]) == ({"Ref": "WebMinSize"}, {"Ref": "WebMaxSize"})
    assert "DesiredCapacity" not in group, "a fixed desired capacity would undo scaling on every update"


def test_scaling_out_to_the_maximum_fits_the_database_connection_budget(template):
    # Target tracking never exceeds MaxSize; every server sizes its pools for
    # WebMaxSize + ROLLOUT_SURGE servers (tests/instance/test_instance_pools.py proves
    # that fleet fits max_connections for every class and size). So the servers must
    # be told the same maximum the group scales to.
    user_data = props(template, "WebLaunchTemplate")["LaunchTemplateData"]["UserData"]
    parts = user_data["Fn::Base64"]["Fn::Join"][1]
    env = {}
    for i, part in enumerate(parts[:-1]):
        if isinstance(part, str) and part.endswith("='"):
            env[part.split("\n")[-1][:-2]] = parts[i + 1]
    assert env["WEB_MAX_SIZE"] == props(template, "WebAutoScalingGroup")["MaxSize"]
    assert env["ROLLOUT_SURGE"] == str(capacity.ROLLOUT_SURGE) and capacity.ROLLOUT_SURGE >= 1
    assert max(map(int, template["Parameters"]["WebMaxSize"]["AllowedValues"])) == capacity.WEB_MAX_SIZE_LIMIT


def test_a_minimum_above_the_maximum_is_rejected_before_anything_is_created(template):
    assert scaling.WEB_SIZE_RULE in template["Rules"]
