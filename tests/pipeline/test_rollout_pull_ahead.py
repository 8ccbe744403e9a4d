"""Pull-ahead: every serving server fetches the new images while it serves (docs/design.md).

Same style as test_rollout_faults.py: the real state machine and handlers against the
simulated fleet (simulation.world.World), one fault per test, the invariants checked
after every step. Besides that file's invariants (capacity, one migration per phase,
no old code on the migrated schema):
- no server leaves the load balancer, and no deploy is sent, while a pull ahead that
  was sent to a server still in the group has not finished well;
- each server is sent at most one pull of a version.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError

from simulation.world import NEW, OLD, Timing, World
from tests.pipeline.test_rollout_faults import (
    QUICK,
    on_step,
    roll_failing,
    rolled_back,
    succeeded,
    throttled,
    watch,
)


def watch_pulls(world: World) -> None:
    watch(world)

    def check(world: World, step: str) -> None:
        pulls = world.commands(f" pull {NEW}")
        sent = Counter(i for c in pulls for i in c["instances"])
        assert max(sent.values(), default=0) <= 1, f"after {step}: a second pull of {NEW}: {sent}"
        members = set(world.instances("web") + world.instances("worker"))
        unfinished = [i for i in sent if i in members and (i, NEW) not in world.pulled]
        moved = world.commands(f"deploy {NEW}") or world.deregistered()
        assert not (moved and unfinished), f"after {step}: servers left service while {unfinished} pulled"

    world.after_step.append(check)


def sent(params: dict[str, Any]) -> dict[str, Any]:
    """The API parameters of an SSM request (a fault sees the serialized request)."""
    return json.loads(params.get("body") or b"{}")


def pull_request(name: str, params: dict[str, Any]) -> list[str] | None:
    """The servers a SendCommand of a pull goes to; None for any other call."""
    if name != "SendCommand":
        return None
    request = sent(params)
    line = str(request.get("Parameters", {}).get("commands", [""])[0])
    return list(request.get("InstanceIds", [])) if " pull " in line else None


def pulled_ahead(world: World) -> set[str]:
    return {i for c in world.commands(f" pull {NEW}") for i in c["instances"]}


def deploy_seconds(world: World) -> dict[str, float]:
    return {i: c["durations"][i] for c in world.commands(f"deploy {NEW}") for i in c.get("durations", {})}


@pytest.mark.parametrize("web, batch", [(1, 1), (4, 1), (5, 2)])
def test_every_serving_server_pulls_ahead_so_that_a_batch_only_restarts(fleet, web, batch):
    world = fleet(web=web, batch=batch, timing=QUICK)
    watch_pulls(world)
    before = set(world.instances("web"))
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert pulled_ahead(world) == before, "every web server pulls; the worker pulls in its migration"
    seconds = deploy_seconds(world)
    assert all(seconds[i] == QUICK.restart for i in before & set(seconds)), seconds
    (worker,) = world.instances("worker")
    assert seconds[worker] == QUICK.worker, "the pre-deployment migration pulled the worker's image"


def test_a_failed_pull_fails_the_rollout_before_any_server_leaves_the_load_balancer(fleet):
    world = fleet(web=3, timing=QUICK)
    watch_pulls(world)
    failing = world.instances("web")[1]
    message = roll_failing(world, failing, f" pull {NEW}", "no space left on device")
    assert f"pulling the images of {NEW} ahead failed on {failing}" in message
    assert "no space left on device" in message
    assert not world.deregistered() and not world.commands(f"deploy {NEW}")
    assert not world.commands("migrate post")


def test_a_pull_failing_during_the_migration_is_reported_once_the_migration_has_ended(fleet):
    world = fleet(web=2, timing=Timing(**{**QUICK.__dict__, "pre": 600}))
    watch_pulls(world)
    world.command_faults.append(lambda iid, line: "manifest unknown" if f" pull {NEW}" in line else None)
    ended: list[str] = []

    def at_rollback(world: World, state: str, count: int) -> None:
        if state == "Rollback" and count == 1:
            ((migration,),) = [c["instances"] for c in world.commands("migrate pre")]
            (command,) = [k for k, c in world._commands.items() if "migrate pre" in c["line"]]
            ended.append(world.invocation(command, migration)["Status"])

    world.hooks.append(at_rollback)
    world.set_desired(NEW)
    rolled_back(world, world.roll())
    assert ended == ["Success"], "the migration was left running"


def test_a_pull_that_never_ends_fails_the_rollout_within_its_bound(fleet):
    world = fleet(web=2, timing=QUICK)
    watch_pulls(world)
    world.slow_pulls[world.instances("web")[0]] = 24 * 3600
    world.set_desired(NEW)
    message = rolled_back(world, world.roll())
    assert "did not finish within 1800s" in message
    assert not world.deregistered()


def test_a_pull_slower_than_the_migration_is_waited_for(fleet):
    world = fleet(web=3, timing=QUICK)
    watch_pulls(world)
    slow = world.instances("web")[2]
    world.slow_pulls[slow] = 600
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert deploy_seconds(world)[slow] == QUICK.restart


@pytest.mark.parametrize("occurrence", [1, 2, 3])
def test_a_pull_step_answered_twice_sends_each_pull_once(fleet, occurrence):
    world = fleet(web=3, timing=QUICK)
    watch_pulls(world)
    world.lose_answer = lambda state, count: state == "PreMigrate" and count == occurrence
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert world.lost_answers == 1
    assert pulled_ahead(world) == set(world.instances("web"))


def test_a_server_lost_mid_pull_is_replaced_and_its_replacement_pulls_at_its_deploy(fleet):
    world = fleet(web=3, timing=QUICK)
    watch_pulls(world)
    lost = world.instances("web")[0]
    on_step(world, "PreMigrate", 2, lambda w: w.terminate(lost))
    world.set_desired(NEW)
    succeeded(world, world.roll())
    (replacement,) = set(world.instances("web")) - {*pulled_ahead(world), lost}
    assert world.versions[replacement] == NEW
    assert deploy_seconds(world)[replacement] == QUICK.pull + QUICK.restart, "it pulls what it needs"


@pytest.mark.parametrize("pre, ahead", [(10, False), (300, True)])
def test_a_server_launched_during_the_pulls_boots_the_deployed_version_and_is_brought_to_the_new(
    fleet, pre, ahead
):
    world = fleet(web=2, timing=Timing(**{**QUICK.__dict__, "pre": pre}))
    watch_pulls(world)

    def scale_out(world: World) -> None:
        world.aws("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName="web", MaxSize=3, DesiredCapacity=3
        )

    on_step(world, "PreMigrate", 1, scale_out)
    world.set_desired(NEW)
    succeeded(world, world.roll(), max_size=3, desired=3)
    first = world.commands(f" pull {NEW}")[0]["instances"]
    (launched,) = set(world.instances("web")) - set(first)
    assert (launched in pulled_ahead(world)) is ahead, "once it serves (not while it boots), it pulls ahead"
    assert world.versions[launched] == NEW
    assert deploy_seconds(world)[launched] == QUICK.restart + (0 if ahead else QUICK.pull)


def test_throttled_pulls_and_status_checks_are_retried_and_each_pull_sent_once(fleet):
    world = fleet(web=4, timing=QUICK)
    watch_pulls(world)

    def throttle(name: str, count: int, params: dict) -> ClientError | None:
        pulling = pull_request(name, params) is not None
        # The first pull's send, then two status checks while the pulls run (each step is
        # retried at most 3 times by the state machine).
        if (pulling and count == 2) or (name == "GetCommandInvocation" and count in (4, 9)):
            return throttled(name)
        return None

    world.api_faults.append(throttle)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert pulled_ahead(world) == set(world.instances("web"))
    assert world.retries > 0


def test_a_server_refused_at_the_pull_is_left_to_its_deploy(fleet):
    world = fleet(web=3, timing=QUICK)
    watch_pulls(world)
    going = world.instances("web")[1]

    def refuse(name: str, count: int, params: dict) -> ClientError | None:
        if going in (pull_request(name, params) or []):
            return ClientError({"Error": {"Code": "InvalidInstanceId", "Message": "not connected"}}, name)
        return None

    world.api_faults.append(refuse)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert going not in pulled_ahead(world)
    assert deploy_seconds(world)[going] == QUICK.pull + QUICK.restart
    assert world.versions[going] == NEW and OLD not in set(world.versions[i] for i in world.instances("web"))
