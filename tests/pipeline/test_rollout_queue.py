"""The rollout with a queue workers' group (issue 13, item 1), in moto (simulation/world.py).

The queue workers run Sidekiq only, in an Auto Scaling group of 0..N servers that
scales on queue latency. The rollout carries them with the guarantees it gives the
web group and the worker: order (web, then the worker and the queue workers, then
the post-deployment migrations), pull-ahead, rollback of every group, their scaling
held while it runs, and the faults of docs/design.md's fault model. The invariants
of test_rollout_faults.watch are checked after every step.
"""

from __future__ import annotations

import random

import pytest

from lambdas.rollout import aws as rollout_aws
from lambdas.rollout import names
from lambdas.rollout.fleet import batch_of
from lambdas.rollout.plan import Server
from lambdas.rollout.state import Config
from simulation.world import DEPLOYED, NEW, OLD, Timing, World
from tests.pipeline.test_rollout_faults import (
    HELD,
    MUTATING,
    QUICK,
    TASKS,
    chaotic,
    deploy_fails_on,
    on_step,
    roll_amid,
    roll_failing,
    rolled_back,
    servers,
    succeeded,
    throttled,
    watch,
)


def deploys(world: World, version: str, group: str) -> list[dict]:
    """The deploy commands of `version` that reached a server of `group` (as it is now)."""
    members = set(world.instances(group))
    return [c for c in world.commands(f"deploy {version}") if members & set(c["instances"])]


def queue_hold(world: World) -> list[tuple[str, set[str]]]:
    """(step, the queue group's suspended processes) after every step, recorded from now on."""
    seen: list[tuple[str, set[str]]] = []
    world.after_step.append(
        lambda world, step: seen.append(
            (step, {p["ProcessName"] for p in world.group("queue")["SuspendedProcesses"]})
        )
    )
    return seen


# ---------------------------------------------------------------- the planned path
@pytest.mark.parametrize("queue, batch", [(1, 1), (3, 2), (5, 1)])
def test_queue_workers_are_rolled_in_batches_after_the_web_group_and_before_the_post_migrations(
    fleet, queue, batch
):
    world = fleet(web=2, queue=queue, batch=batch, timing=QUICK)
    watch(world)
    before = set(world.instances("queue"))
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert {world.versions[i] for i in before} == {NEW}
    sent = deploys(world, NEW, "queue")
    assert {i for c in sent for i in c["instances"]} == before
    web_done = max(c["sent"] for c in deploys(world, NEW, "web"))
    (post,) = world.commands("migrate post")
    assert all(web_done < c["sent"] < post["sent"] for c in sent), "queue workers rolled out of order"
    # In place, in batches: never more than `batch` queue workers restarting at once.
    spans = [(c["sent"], c["sent"] + c["durations"][i]) for c in sent for i in c["instances"]]
    for start, _ in spans:
        assert sum(s <= start < e for s, e in spans) <= batch, spans


def test_a_queue_group_at_zero_passes_at_once_and_is_held_all_the_same():
    durations = {}
    for queue in (None, 0):
        with World(web=2, queue=queue, timing=QUICK) as world:
            watch(world)
            seen = queue_hold(world) if queue == 0 else []
            world.set_desired(NEW)
            result = world.roll()
            succeeded(world, result)
            durations[queue] = result.duration
    assert durations[0] == durations[None], "an empty queue group slowed the rollout down"
    # Even empty, its scaling is held: a scale-out mid-rollout would launch the old version
    # into a group the rollout believes done.
    assert all(held == HELD for step, held in seen if step in ("Web", "Worker")), seen


def test_without_the_queue_group_no_call_names_it(fleet, monkeypatch):
    world = fleet(web=2, queue=None, timing=QUICK)
    watch(world)
    asked: set[str] = set()
    describe = rollout_aws.describe_group

    def noting(name: str, *args, **kwargs):
        asked.add(name)
        return describe(name, *args, **kwargs)

    monkeypatch.setattr(rollout_aws, "describe_group", noting)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert asked == {"web", "worker"}


# ---------------------------------------------------------------- failing
def test_one_queue_worker_failing_its_deploy_rolls_every_group_back(fleet):
    world = fleet(web=2, queue=3, batch=2, timing=QUICK)
    watch(world)
    failing = world.instances("queue")[1]
    message = roll_failing(world, failing, f"deploy {NEW}", "sidekiq did not stay up")
    assert f"failed on {failing}" in message and "sidekiq did not stay up" in message
    assert set(servers(world).values()) == {OLD}
    assert deploys(world, OLD, "web") and deploys(world, OLD, "worker"), "the other groups stayed on NEW"
    assert not world.commands("migrate post")


def test_a_failed_pull_on_a_queue_worker_fails_the_rollout_before_any_server_leaves_service(fleet):
    world = fleet(web=2, queue=2, timing=QUICK)
    watch(world)
    failing = world.instances("queue")[0]
    message = roll_failing(world, failing, f" pull {NEW}", "no space left on device")
    assert f"pulling the images of {NEW} ahead failed on {failing}" in message
    assert not world.deregistered() and not world.commands(f"deploy {NEW}")


def test_queue_workers_pull_ahead_so_that_their_deploy_only_restarts(fleet):
    world = fleet(web=2, queue=2, timing=QUICK)
    watch(world)
    queue = set(world.instances("queue"))
    world.set_desired(NEW)
    succeeded(world, world.roll())
    pulled = {i for c in world.commands(f" pull {NEW}") for i in c["instances"]}
    assert queue <= pulled
    seconds = {i: c["durations"][i] for c in deploys(world, NEW, "queue") for i in c["instances"]}
    assert all(seconds[i] == QUICK.worker for i in queue), seconds


# ---------------------------------------------------------------- servers come and go
@pytest.mark.parametrize("step, booted", [("Web", OLD), ("Worker", OLD), ("PostMigrate", NEW)])
def test_a_queue_worker_launched_mid_rollout_boots_the_version_it_is_told_and_ends_on_the_new(
    fleet, step, booted
):
    world = fleet(web=2, queue=1, timing=Timing(**{**QUICK.__dict__, "post": 120}))
    watch(world)
    before = set(world.instances("queue"))
    launched: dict[str, str] = {}

    def scale_out(world: World) -> None:
        world.aws("autoscaling").set_desired_capacity(AutoScalingGroupName="queue", DesiredCapacity=2)
        world.observe()
        (new,) = set(world.instances("queue")) - before
        launched[new] = world.versions[new]

    on_step(world, step, 2, scale_out)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    ((new, version),) = launched.items()
    assert version == booted, f"launched during {step}, it booted {version}"
    assert world.versions[new] == NEW
    sent_to_it = [c for c in world.commands(f"deploy {NEW}") if new in c["instances"]]
    assert bool(sent_to_it) == (booted == OLD)
    assert world.group("queue")["DesiredCapacity"] == 2


@pytest.mark.parametrize("nth", [1, 2, 4])
def test_a_queue_worker_reclaimed_mid_rollout_is_replaced_and_the_rollout_carries_on(fleet, nth):
    world = fleet(web=2, queue=3, timing=QUICK)
    watch(world)
    on_step(world, "Worker", nth, lambda w: w.terminate(w.instances("queue")[0]))
    world.set_desired(NEW)
    message = succeeded(world, world.roll())
    assert "Warning" not in message
    assert len(world.instances("queue")) == 3


@pytest.mark.parametrize("step", ["Web", "Worker"])
def test_a_queue_group_removed_by_a_stack_update_mid_rollout_reads_as_empty(fleet, step):
    world = fleet(web=2, queue=2, timing=QUICK)
    autoscaling = world.aws("autoscaling")
    on_step(world, step, 2, lambda w: autoscaling.delete_auto_scaling_group(
        AutoScalingGroupName="queue", ForceDelete=True))
    world.set_desired(NEW)
    result = world.roll()
    assert result.status == "SUCCEEDED", result.output.get("failure")
    assert {world.versions[i] for i in world.servers()} == {NEW} and world.parameter(DEPLOYED) == NEW
    assert not world.group("web")["SuspendedProcesses"] and world.journals() == {}


# ---------------------------------------------------------------- scaling held
def test_the_queue_groups_scaling_is_held_while_servers_move_and_released_after(fleet):
    world = fleet(web=2, queue=2, timing=Timing(**{**QUICK.__dict__, "post": 300}))
    watch(world)
    seen = queue_hold(world)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert all(processes == HELD for step, processes in seen if step in ("Web", "Worker")), seen
    verify = [processes for step, processes in seen if step == "Verify"]
    # Held at every look of verify pre that has not passed; released by the one that passes.
    assert all(processes == HELD for processes in verify[:-1]) and verify[-1] == set(), verify
    # Scaling works while the post-deployment migrations run, like the web group's.
    assert all(processes == set() for step, processes in seen if step == "PostMigrate"), seen


def test_what_the_operator_changed_on_the_queue_group_meanwhile_is_kept(fleet):
    world = fleet(web=2, queue=2, timing=QUICK)
    watch(world)
    autoscaling = world.aws("autoscaling")
    autoscaling.suspend_processes(AutoScalingGroupName="queue", ScalingProcesses=["AZRebalance"])

    def operator(world: World) -> None:
        autoscaling.suspend_processes(AutoScalingGroupName="queue", ScalingProcesses=["HealthCheck"])
        autoscaling.update_auto_scaling_group(AutoScalingGroupName="queue", MaxSize=9)

    on_step(world, "Worker", 2, operator)
    world.set_desired(NEW)
    result = world.roll()
    assert result.status == "SUCCEEDED"
    queue = world.group("queue")
    # Its own suspension before the rollout, and the one made meanwhile, stay; the rollout's go.
    assert {p["ProcessName"] for p in queue["SuspendedProcesses"]} == {"AZRebalance", "HealthCheck"}
    assert queue["MaxSize"] == 9
    assert {p["ProcessName"] for p in world.group("web")["SuspendedProcesses"]} == set()


def test_a_hold_left_on_the_queue_group_by_a_rollout_that_died_is_released_by_the_next(fleet):
    world = fleet(web=2, queue=1, timing=QUICK)
    execution = world.start_execution()

    def stop(world: World, state: str, count: int) -> None:  # an operator's StopExecution
        if state == "Worker":
            raise Aborted

    world.hooks.append(stop)
    world.set_desired(NEW)
    with pytest.raises(Aborted):
        world.roll(execution)
    world.hooks.remove(stop)
    world.end_execution(execution, "ABORTED")
    assert {p["ProcessName"] for p in world.group("queue")["SuspendedProcesses"]} == HELD
    world.set_desired(NEW)  # the operator puts it again
    result = world.roll()
    assert result.status == "SUCCEEDED", result.output.get("failure")
    assert world.parameter(DEPLOYED) == NEW
    assert {p["ProcessName"] for p in world.group("queue")["SuspendedProcesses"]} == set()
    assert names.HOLD_TAG not in {t["Key"] for t in world.group("queue").get("Tags", [])}


class Aborted(Exception):
    """The execution was stopped: no further step runs."""


# ---------------------------------------------------------------- the existing faults, with queue workers
@pytest.mark.parametrize("task", TASKS)
def test_an_answer_lost_at_any_step_does_the_work_once_with_queue_workers(fleet, task):
    world = fleet(web=2, queue=2, batch=2, timing=QUICK)
    watch(world)
    world.lose_answer = lambda state, count: state == task and count in (1, 3)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    deployed = [i for c in world.commands(f"deploy {NEW}") for i in c["instances"]]
    assert sorted(deployed) == sorted(world.servers()), "a server was deployed to twice, or not at all"


def test_every_answer_lost_once_still_rolls_the_queue_workers_once(fleet):
    world = fleet(web=2, queue=3, batch=2, timing=QUICK)
    watch(world)
    world.lose_answer = lambda state, count: True
    world.set_desired(NEW)
    succeeded(world, world.roll())
    queue_deploys = [i for c in deploys(world, NEW, "queue") for i in c["instances"]]
    assert sorted(queue_deploys) == sorted(world.instances("queue"))


@pytest.mark.parametrize("operation", MUTATING)
def test_a_call_failing_half_way_is_completed_by_the_retry_with_queue_workers(fleet, operation):
    world = fleet(web=2, queue=2, timing=QUICK)
    watch(world)
    world.api_faults.append(
        lambda name, count, params: throttled(name) if name == operation and count in (1, 3, 6) else None
    )
    world.set_desired(NEW)
    succeeded(world, world.roll(), repeats=2 if operation == "PutParameter" else 1)


def test_lost_answers_and_throttling_during_a_rollback_restore_the_queue_workers_once(fleet):
    world = fleet(web=2, queue=3, batch=2, timing=QUICK)
    watch(world)
    in_rollback = deploy_fails_on(world, world.instances("queue")[2])
    world.lose_answer = lambda state, count: state in ("Rollback", "Finish", "Worker")
    world.api_faults.append(
        lambda name, count, params: (
            throttled(name) if in_rollback and name in MUTATING and count % 4 == 0 else None
        )
    )
    world.set_desired(NEW)
    rolled_back(world, world.roll())
    restored = [i for c in deploys(world, OLD, "queue") for i in c["instances"]]
    assert len(restored) == len(set(restored)), "a queue worker was rolled back twice"


@pytest.mark.parametrize("seed", range(6))
def test_random_faults_with_queue_workers_keep_every_invariant(fleet, seed):
    rng = random.Random(1000 + seed)
    world = fleet(web=rng.choice([1, 2, 3]), queue=rng.choice([0, 1, 3]), batch=rng.choice([1, 2]),
                  timing=QUICK)
    events = chaotic(world, rng)

    def chaos(world: World, state: str, count: int) -> None:
        if state not in ("Web", "Worker", "Verify", "PostMigrate") or rng.random() > 0.08 or len(events) >= 3:
            return
        queue = world.instances("queue")
        choice = rng.choice(["reclaim", "scale-out", "scale-in"])
        group = world.group("queue")
        if choice == "reclaim" and queue:
            events.append(choice)
            world.terminate(rng.choice(queue))
        elif choice == "scale-out" and group["DesiredCapacity"] < group["MaxSize"]:
            events.append(choice)
            world.aws("autoscaling").set_desired_capacity(
                AutoScalingGroupName="queue", DesiredCapacity=group["DesiredCapacity"] + 1)
        elif choice == "scale-in" and queue:
            events.append(choice)
            world.terminate(rng.choice(queue), decrement=True)

    result = roll_amid(world, chaos)
    ((_, message),) = set(world.notifications())
    version = NEW if result.status == "SUCCEEDED" else OLD
    if version == OLD:
        assert "previous version" in message, (events, message)
    assert set(servers(world).values()) == {version}, (events, servers(world))
    assert world.parameter(DEPLOYED) == version
    for group in ("web", "queue"):
        assert not world.group(group)["SuspendedProcesses"], (group, events)
    assert world.journals() == {}, events


# ---------------------------------------------------------------- the config
def test_an_execution_started_before_the_stack_had_the_option_goes_on_without_it(fleet):
    world = fleet(web=1, queue=None, timing=QUICK)
    raw = world.definition["States"]["Configure"]["Parameters"]["config"]
    old = {k: v for k, v in raw.items() if k != "queue_group"}
    assert Config.parse(old).queue_group == ""
    assert Config.parse({**old, "queue_group": "queue"}).queue_group == "queue"
    with pytest.raises(ValueError, match="queue_group"):
        Config.parse({**old, "queue_group": ["queue"]})


def test_some_sidekiq_process_keeps_running_while_the_worker_and_the_queue_workers_restart(fleet):
    # Two queue workers at batch 2: restarting both, or one beside the main worker's restart,
    # would leave queues (the main worker's scheduler and mailers, or the queue workers') with
    # no process. The main worker goes first, then the queue workers, never all of them.
    world = fleet(web=2, queue=2, batch=2, timing=QUICK)
    watch(world)
    seen: list[tuple[str, list[str], list[str]]] = []

    def sidekiq(world: World, step: str) -> None:
        restarting = {i for i, v in world.journals().items() if v.split("|")[1] == "deploying"}
        sidekiqs = world.instances("worker") + world.instances("queue")
        queue = world.instances("queue")
        if set(sidekiqs) <= restarting or (len(queue) > 1 and set(queue) <= restarting):
            seen.append((step, sorted(restarting & set(sidekiqs)), sidekiqs))

    world.after_step.append(sidekiq)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert not seen, f"every Sidekiq process (or every queue worker) restarting at once: {seen}"
    # The spans of the deploys themselves: the main worker's restart overlaps no queue worker's.
    (main,) = deploys(world, NEW, "worker")
    main_end = main["sent"] + max(main["durations"].values())
    assert all(c["sent"] >= main_end for c in deploys(world, NEW, "queue"))
    assert all(len(c["instances"]) == 1 for c in deploys(world, NEW, "queue"))


@pytest.mark.parametrize(
    "size, batch, expected", [(0, 2, 1), (1, 2, 1), (2, 2, 1), (3, 2, 2), (5, 5, 4), (5, 1, 1)]
)
def test_the_queue_workers_restart_at_most_all_but_one_at_a_time(size, batch, expected):
    servers = [Server(f"q{i}", "InService", True, 0.0, OLD) for i in range(size)]
    gone = Server("left", "Terminating", True, 0.0, OLD)  # leaving: it runs no Sidekiq any more
    assert batch_of(names.QUEUE, batch, [*servers, gone]) == expected
    assert batch_of(names.WORKER, batch, servers) == 1
    assert batch_of(names.WEB, batch, servers) == batch
