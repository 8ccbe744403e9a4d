"""A rollout that goes well raises no alarm, however long its new servers take to boot.

Servers boot during a rollout: the surge server of a single-server group, a scale-out,
a replacement for a reclaimed spot server. Auto Scaling would register each with the
target groups at launch, where it reads unhealthy until Puma answers; a boot longer
than the unhealthy-target alarm's window (slow pulls, a long database wait) would mail
an outage that is none. The web group's launch hook keeps a booting server out of the
target groups until bootstrap.sh lets it in (templates/compute.LAUNCH_HOOK); the
harness models both worlds, and the alarm's window is the built template's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lambdas.rollout import aws as rollout_aws
from simulation.world import NEW, Timing, World
from tests.support import props

# A slow but legitimate boot (slow pulls, a long database wait): seven minutes, longer
# than the alarm's window and well within bootstrap's own waits; the rest is quick.
SLOW_BOOT = Timing(drain=10, pull=5, restart=5, health=5, boot=420, pre=10, post=10, worker=10,
                   invalidation=5, settle=5)


def alarm_window(template: dict) -> int:
    """How long targets must read unhealthy before the unhealthy-target alarms fire."""
    windows = {
        props(template, f"{kind}UnhealthyTargetsAlarm")["Period"]
        * props(template, f"{kind}UnhealthyTargetsAlarm")["DatapointsToAlarm"]
        for kind in ("Web", "Streaming")
    }
    (window,) = windows
    return window


def longest_unhealthy_stretch(world: World) -> float:
    longest, since = 0.0, None
    for moment, count in world.unhealthy_targets:
        if count and since is None:
            since = moment
        elif not count and since is not None:
            longest, since = max(longest, moment - since), None
    if since is not None:
        longest = max(longest, world.unhealthy_targets[-1][0] - since)
    return longest


def scale_out(world: World, state: str, count: int) -> None:
    if state == "Web" and count == 2:
        autoscaling = rollout_aws._clients["autoscaling"]
        autoscaling.update_auto_scaling_group(AutoScalingGroupName="web", MaxSize=5)
        autoscaling.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=3)


def reclaim_one(world: World, state: str, count: int) -> None:
    if state == "Web" and count == 3:
        world.terminate(world.instances("web")[-1])


SCENARIOS: dict[str, tuple[int, Callable[[World, str, int], None] | None]] = {
    "the surge of a single server": (1, None),
    "a scale-out mid-rollout": (2, scale_out),
    "a reclaimed server's replacement": (2, reclaim_one),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_servers_that_boot_during_a_rollout_never_read_as_unhealthy_targets(fleet, template, scenario):
    web, event = SCENARIOS[scenario]
    world = fleet(web=web, timing=SLOW_BOOT)
    if event:
        world.hooks.append(event)
    world.set_desired(NEW)
    assert world.roll().status == "SUCCEEDED"
    assert world.unhealthy_targets, "the harness recorded nothing"
    assert SLOW_BOOT.boot > alarm_window(template)
    assert longest_unhealthy_stretch(world) == 0


def test_without_the_launch_hook_the_same_surge_would_raise_the_alarm(fleet, template):
    # The world the hook prevents: registered at launch, unhealthy for the whole boot.
    world = fleet(web=1, timing=SLOW_BOOT, launch_hook=False)
    world.set_desired(NEW)
    assert world.roll().status == "SUCCEEDED"
    assert longest_unhealthy_stretch(world) >= alarm_window(template)
