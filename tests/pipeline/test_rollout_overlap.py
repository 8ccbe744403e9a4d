"""Batches overlap: the next batch drains while the last one settles, and is restarted only
once it has settled (docs/design.md, "The rollout's rules", Capacity).

First plan_group's pure decisions, then whole rollouts in the simulated fleet with the
faults that matter at the overlap: the settling batch flaps, a tick's answer is lost
just as the overlap starts, the draining server or the settling one leaves.
"""

from __future__ import annotations

import pytest

from lambdas.rollout.plan import DEPLOYING, DRAINING_STEP, JOINING, Journal, Server, plan_group
from simulation.world import NEW, OLD, Timing, World
from tests.pipeline.test_rollout_faults import rolled_back, succeeded, watch

ME = "exec"
HEALTHY = ("healthy", "healthy")
SETTLE, DRAIN = 30, 30


def server(
    iid: str, version: str = OLD, health=HEALTHY, journal: Journal | None = None, launched=0.0
) -> Server:
    return Server(
        iid,
        "InService",
        True,
        launched,
        version,
        journal=journal,
        health=health,
        protected=journal is not None,
    )


def settling(iid: str, healthy_at: float = 100.0) -> Server:
    return server(iid, NEW, journal=Journal(ME, JOINING, NEW, 90.0, "c1", healthy_at))


def draining(iid: str, health=("draining", "draining"), since: float = 100.0) -> Server:
    return server(iid, OLD, health=health, journal=Journal(ME, DRAINING_STEP, NEW, since))


def plan(servers: list[Server], moment: float = 110.0, batch: int = 1):
    return plan_group(
        servers,
        {},
        execution=ME,
        target=NEW,
        batch=batch,
        balanced=True,
        desired=len(servers),
        surge=None,
        moment=moment,
        drain_seconds=DRAIN,
        settle_seconds=SETTLE,
        boot_grace=900,
    )


# ---------------------------------------------------------------- the rule, decision by decision
def test_the_next_batch_drains_while_the_last_one_settles_beside_a_settled_server():
    result = plan([settling("k"), server("old-1"), server("old-2")])
    assert len(result.drain) == 1 and result.drain[0] in ("old-1", "old-2")
    assert not result.finish and not result.deploy


def test_with_no_settled_server_left_beside_the_settling_batch_the_next_one_waits():
    # Two servers at batch 1: with the old one out, only the unsettled one would serve.
    assert plan([settling("k"), server("old")]).drain == []
    # Four at batch 2: the floor (max(1, 4 - 2) = 2) would let both old ones out beside the
    # settling pair, but one settled server must keep serving; half a batch does not go
    # early (it would be restarted out of step with its other half): the next batch waits.
    four = plan([settling("k1"), settling("k2"), server("a"), server("b")], batch=2)
    assert four.drain == []
    # Five at batch 2: two out leave the settling pair and one settled server, the floor (3).
    five = plan([settling("k1"), settling("k2"), server("a"), server("b"), server("c")], batch=2)
    assert len(five.drain) == 2


def test_a_drained_server_is_not_restarted_until_the_settling_batch_has_settled():
    servers = [settling("k", healthy_at=100.0), draining("next", health=("unused", "unused")), server("old")]
    early = plan(servers, moment=100.0 + SETTLE - 1)
    assert early.deploy == [] and early.finish == []
    assert early.wait <= SETTLE, "the look that ends the settling must come in time"
    late = plan(servers, moment=100.0 + SETTLE)
    assert late.finish == ["k"] and late.deploy == ["next"]


def test_a_batch_that_flaps_while_the_next_one_drains_puts_that_one_back_into_service():
    flapping = server(
        "k", NEW, health=("unhealthy", "healthy"), journal=Journal(ME, JOINING, NEW, 90.0, "c1", 100.0)
    )
    for health in (("draining", "draining"), ("unused", "unused")):
        result = plan([flapping, draining("next", health=health), server("old")], moment=105.0)
        assert result.restore == ["next"], health
        assert result.healthy == {"k": None}, "the flapped window must start again"
        assert not result.deploy and not result.drain and not result.redo_out and result.failure is None


def test_a_settling_server_that_leaves_lets_the_drained_batch_restart_only_above_the_floor():
    # The settling server is terminated: not a flap, it just drops out. Restarting the drained
    # one would leave two servers serving against a floor of max(1, 4 - 1) = 3.
    leaving = Server("k", "Terminating", True, 0.0, NEW, Journal(ME, JOINING, NEW, 90.0, "c1", 100.0),
                     HEALTHY, True)
    drained = draining("n", health=("unused", "unused"))
    result = plan([leaving, drained, server("o"), server("o2")], moment=200.0)
    assert result.deploy == [] and result.restore == ["n"]
    assert not result.drain and result.failure is None
    # With three serving beside it (the replacement booted), the drained batch restarts.
    enough = plan([drained, server("o"), server("o2"), server("r")], moment=200.0)
    assert enough.deploy == ["n"] and enough.restore == []


def test_a_drained_server_the_operator_put_in_standby_is_never_put_back():
    flapping = server(
        "k", NEW, health=("unhealthy", "healthy"), journal=Journal(ME, JOINING, NEW, 90.0, "c1", 100.0)
    )
    aside = Server("s", "Standby", True, 0.0, OLD, Journal(ME, DRAINING_STEP, NEW, 100.0),
                   ("unused", "unused"), True)
    result = plan([flapping, aside, draining("next", health=("unused", "unused")), server("old")],
                  moment=105.0, batch=2)
    assert result.restore == ["next"], "a server in Standby must stay out of the load balancer"
    # Below the floor, too: the drained batch goes back, the server in Standby stays out.
    leaving = Server("k", "Terminating", True, 0.0, NEW, Journal(ME, JOINING, NEW, 90.0, "c1", 100.0),
                     HEALTHY, True)
    below = plan([leaving, aside, draining("n", health=("unused", "unused")), server("o"), server("o2")],
                 moment=200.0, batch=1)
    assert below.restore == ["n"] and below.deploy == []


def test_the_group_is_back_once_every_server_runs_the_target_in_service_and_healthy():
    done = server("d", NEW)
    last = plan([settling("k"), done], moment=110.0)
    assert last.back and last.settling == ["k"] and not last.done, "the last batch settles, the step may end"
    assert not plan([settling("k"), server("old"), done]).back, "a server still runs the old version"
    rejoined = server("k", NEW, health=("initial", "initial"), journal=Journal(ME, JOINING, NEW, 100.0, "c1"))
    assert not plan([rejoined, done]).back, "a server not healthy yet"
    flapped = server(
        "k", NEW, health=("unhealthy", "healthy"), journal=Journal(ME, JOINING, NEW, 90.0, "c1", 100.0)
    )
    assert not plan([flapped, done]).back, "a server that flapped"
    settled = plan([settling("k", healthy_at=100.0), done], moment=100.0 + SETTLE)
    assert settled.back and settled.finish == ["k"] and settled.settling == []


def test_a_server_put_back_is_waited_for_while_its_checks_run_never_taken_for_idle():
    # Not serving yet, it would be taken out again at once were it idle (nothing to lose).
    back = server("next", health=("initial", "initial"))
    assert plan([settling("k"), back, server("a"), server("b")]).drain == []


def test_a_rejoining_batch_that_is_not_healthy_yet_lets_nothing_new_start():
    rejoined = server("k", NEW, health=("initial", "initial"), journal=Journal(ME, JOINING, NEW, 100.0, "c1"))
    assert plan([rejoined, server("a"), server("b")]).drain == []


def test_a_restart_already_under_way_is_not_held_back():
    deploying = server("k", OLD, health=("unused", "unused"), journal=Journal(ME, DEPLOYING, NEW, 90.0, "c1"))
    result = plan_group(
        [deploying, server("a"), server("b")],
        {"k": ("Success", "")},
        execution=ME,
        target=NEW,
        batch=1,
        balanced=True,
        desired=3,
        surge=None,
        moment=110.0,
        drain_seconds=DRAIN,
        settle_seconds=SETTLE,
        boot_grace=900,
    )
    assert result.join == ["k"]


# ---------------------------------------------------------------- whole rollouts
OVERLAP = Timing(
    drain=20, pull=5, restart=5, health=5, boot=30, pre=10, post=10, worker=10, invalidation=5, settle=15
)


def steps(world: World) -> dict[str, str]:
    """Each journalled server's step."""
    return {iid: value.split("|")[1] for iid, value in world.journals().items()}


def web_deploys(world: World) -> list[str]:
    """The web servers sent a deploy of the new version, once per sending."""
    workers = set(world.instances("worker"))
    return [i for c in world.commands(f"deploy {NEW}") for i in c["instances"] if i not in workers]


def overlapping(world: World) -> tuple[list[str], list[str]]:
    """(drained or draining servers, settling or rejoining servers), both of this rollout."""
    found = steps(world)
    return (
        [i for i, s in found.items() if s == DRAINING_STEP],
        [i for i, s in found.items() if s == JOINING],
    )


def guard(world: World, seen: list[tuple[list[str], list[str]]]) -> None:
    """After every step: no restart while another server has not settled; no more than a batch
    out of the load balancer; the overlaps seen are recorded."""

    def check(world: World, step: str) -> None:
        web_servers = set(world.instances("web"))  # the worker restarts beside the last batch's window
        found = {i: s for i, s in steps(world).items() if i in web_servers}
        restarting = [i for i, s in found.items() if s == DEPLOYING]
        joining = [i for i, s in found.items() if s == JOINING]
        assert not (restarting and joining), f"after {step}: {restarting} restarted while {joining} settle"
        web = world.instances("web")
        out = [i for i in web if not world.in_target_groups(i) and not world.booting(i)]
        assert len(out) <= world.batch, f"after {step}: {out} out of the load balancer at once"
        drains, joins = overlapping(world)
        if drains and joins:
            seen.append((drains, joins))

    world.after_step.append(check)


def test_a_rollout_overlaps_drains_with_settling_and_keeps_capacity(fleet):
    world, seen = guarded_overlap(fleet, web=3)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert seen, "no batch drained while another settled"
    assert world.min_capacity_margin() >= 0
    assert len(web_deploys(world)) == 3


def test_two_servers_at_batch_one_never_overlap(fleet):
    world, seen = guarded_overlap(fleet, web=2)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert not seen, f"the only settled server was taken out: {seen}"
    assert world.min_capacity_margin() >= 0



def test_the_worker_restarts_while_the_last_batch_settles_and_verify_waits_for_that_window(fleet):
    world, _ = guarded_overlap(fleet, web=3)
    beside: list[tuple[str, float]] = []  # (web server settling, when) as the worker's restart is sent

    def worker_step(world: World, step: str) -> None:
        if step == "Worker" and not beside:
            worker = set(world.instances("worker"))
            found = steps(world)
            if any(found.get(i) == DEPLOYING for i in worker):
                beside.extend((i, world.clock) for i, s in found.items() if s == JOINING and i not in worker)

    world.after_step.append(worker_step)
    ended: list[float] = []  # when the last web server's window ended (its journal removed)

    def window_end(world: World, step: str) -> None:
        if beside and not ended and beside[0][0] not in world.journals():
            ended.append(world.clock)

    world.after_step.append(window_end)
    verified: list[float] = []  # when verify pre passed: the invalidation is started next

    def verify_passed(world: World, step: str) -> None:
        if step == "InvalidateEarly" and not verified:
            verified.append(world.clock)

    world.after_step.append(verify_passed)
    world.set_desired(NEW)
    result = world.roll()
    succeeded(world, result)
    assert beside, "the worker was not restarted beside the last batch's settling window"
    assert ended and verified and ended[0] <= verified[0], "verify passed before the last batch settled"
    assert verified[0] >= beside[0][1], "verify passed before the worker's restart"


def test_the_last_batch_failing_while_the_worker_restarts_rolls_everything_back(fleet):
    world, _ = guarded_overlap(fleet, web=3)
    sick: list[str] = []

    def fail_last_batch(world: World, step: str) -> None:
        if step == "Worker" and not sick:
            worker = set(world.instances("worker"))
            joining = [i for i, s in steps(world).items() if s == JOINING and i not in worker]
            if joining:
                sick.extend(joining)
                world.unhealthy.update((i, NEW) for i in joining)

    world.after_step.append(fail_last_batch)
    world.set_desired(NEW)
    result = world.roll()
    assert sick, "the worker never restarted beside the last batch: the test proves nothing"
    message = rolled_back(world, result)  # every server, the worker included, on the old version
    assert "healthy" in message
    assert not any("migrate post" in line for line in world.commands_sent())
    assert world.invalidations == 0, "the old version's pages were invalidated for a release rolled back"


def guarded_overlap(fleet, web: int = 4) -> tuple[World, list[tuple[list[str], list[str]]]]:
    """`web` servers with the overlap's timing, watched and guarded; the overlaps seen."""
    world = fleet(web=web, timing=OVERLAP)
    watch(world)
    seen: list[tuple[list[str], list[str]]] = []
    guard(world, seen)
    return world, seen

def test_a_flap_while_the_next_batch_drains_puts_it_back_on_its_version_and_rolls_back(fleet):
    world, seen = guarded_overlap(fleet)
    world.sick_after[NEW] = 5  # healthy for 5 s, then failing: within the 15 s settling window
    put_back: list[str] = []

    def watch_put_back(world: World, step: str) -> None:
        for drains, _ in seen:
            for iid in drains:
                if iid not in put_back and world.in_target_groups(iid) and world.versions[iid] == OLD:
                    put_back.append(iid)

    world.after_step.append(watch_put_back)
    world.set_desired(NEW)
    result = world.roll()
    message = rolled_back(world, result)
    assert "did not stay healthy" in message
    assert seen, "the next batch never drained beside the settling one: the test proves nothing"
    assert put_back, "the drained server never went back into the load balancer on its version"
    assert len(web_deploys(world)) == 1, "a later batch was restarted"
    assert not any("migrate post" in line for line in world.commands_sent())
    # Only the release's own failure costs capacity: the flapping batch, until the one
    # put back passes its checks (the load balancer's healthy threshold).
    assert world.min_capacity_margin() >= -1


def test_an_answer_lost_just_as_the_overlap_starts_is_retried_without_doing_anything_twice(fleet):
    world, _ = guarded_overlap(fleet)
    lost: list[int] = []

    def lose(state: str, count: int) -> bool:
        drains, joins = overlapping(world)
        if state == "Web" and drains and joins and len(lost) < 2:
            lost.append(count)
            return True
        return False

    world.lose_answer = lose
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert lost and world.lost_answers == len(lost)
    per_server = web_deploys(world)
    assert sorted(per_server) == sorted(set(per_server)) and len(per_server) == 4, per_server
    assert world.min_capacity_margin() >= 0


@pytest.mark.parametrize("side", [0, 1], ids=["draining", "settling"])
def test_a_server_of_the_overlap_terminated_is_replaced_and_the_rollout_goes_on_consistently(fleet, side):
    """The draining server (0) or the settling one (1) is reclaimed in the middle of the overlap."""
    world, _ = guarded_overlap(fleet)
    gone: list[str] = []

    def reclaim(world: World, step: str) -> None:
        drains, joins = overlapping(world)
        if step == "Web" and drains and joins and not gone:
            gone.append((drains, joins)[side][0])
            world.terminate(gone[0])

    world.after_step.append(reclaim)
    restarted_below: list[tuple[str, list[str], int]] = []

    def floor_kept(world: World, step: str) -> None:
        # No server of the web group restarts while fewer than the floor serve beside it.
        web = world.instances("web")
        found = steps(world)
        restarting = [i for i in web if found.get(i) == DEPLOYING]
        serving = [
            i for i in web if world.in_target_groups(i) and i not in restarting
            and all(world.health(tg, i) == "healthy" for tg in world.target_groups)
        ]
        if restarting and len(serving) < max(1, 4 - world.batch):
            restarted_below.append((step, restarting, len(serving)))

    world.after_step.append(floor_kept)
    world.set_desired(NEW)
    succeeded(world, world.roll())
    assert gone and gone[0] not in world.instances("web")
    assert not restarted_below, f"restarted with fewer than the floor serving: {restarted_below}"
    # Measured against the group's desired capacity: only the terminated server itself costs
    # capacity (until the drained batch is back and its replacement has booted).
    assert world.min_capacity_margin() >= -1


# ---------------------------------------------------------------- the last batch beside the worker
LONG_WORKER = Timing(
    drain=10, pull=5, restart=5, health=5, boot=30, pre=10, post=10, worker=60, invalidation=5, settle=30
)


def test_verify_pre_wants_a_whole_window_after_a_web_server_turns_healthy_again(fleet):
    """A server unhealthy during the worker's restart, healthy again just before verify: verify
    passes only a settling window after it recovered, not at its first look."""
    world = fleet(web=3, timing=LONG_WORKER)
    sick: list[str] = []
    healthy_again: list[float] = []
    passed: list[float] = []

    def hook(world: World, step: str) -> None:
        if step == "Worker" and not sick:  # the web step is over: every web server runs NEW
            finished = [i for i in world.instances("web") if i not in world.journals()]
            sick.append(finished[0])
            world.unhealthy.add((finished[0], NEW))
        if step == "Record" and sick and not healthy_again:
            world.unhealthy.discard((sick[0], NEW))
            healthy_again.append(world.clock)
        if step in ("InvalidateEarly", "PostMigrate") and not passed:
            passed.append(world.clock)

    world.after_step.append(hook)
    world.set_desired(NEW)
    result = world.roll()
    succeeded(world, result)
    assert sick and healthy_again and passed
    assert passed[0] - healthy_again[0] >= LONG_WORKER.settle, "verify passed on one look"


def test_a_blip_after_a_long_worker_step_is_waited_out_not_rolled_back(fleet):
    """The queue workers restart one at a time for longer than HEALTH_TIMEOUT; a last-batch
    server that verify finds unhealthy once, then healthy, is watched again, not failed."""
    world = fleet(web=3, queue=8, timing=Timing(
        drain=10, pull=5, restart=5, health=5, boot=30, pre=10, post=10, worker=90, invalidation=5, settle=30
    ))
    last: list[str] = []
    over: list[bool] = []

    def hook(world: World, step: str) -> None:
        web = set(world.instances("web"))
        if step == "Web" and not last:
            joining = [i for i, s in steps(world).items() if s == JOINING and i in web]
            if joining and all(i in web for i in world.journals() if i in web):
                last.extend(joining)
        if step == "Record" and last and not over:
            world.unhealthy.add((last[0], NEW))
        elif step == "Verify" and last and not over:  # one look of verify sees the blip
            world.unhealthy.discard((last[0], NEW))
            over.append(True)

    world.after_step.append(hook)
    world.set_desired(NEW)
    result = world.roll(max_steps=50_000)
    assert over, "verify never saw the blip: the test proves nothing"
    succeeded(world, result, max_size=3)


def test_a_last_batch_server_replaced_as_unhealthy_while_the_worker_restarts_is_counted_lost(fleet):
    world = fleet(web=3, timing=LONG_WORKER)
    world.replace_unhealthy_after = 10
    sick: list[str] = []

    def hook(world: World, step: str) -> None:
        if sick or step != "Worker":
            return
        web = set(world.instances("web"))
        journals = {i: v.split("|") for i, v in world.journals().items() if i in web}
        if len(journals) == 1:
            ((iid, parts),) = journals.items()
            if parts[1] == JOINING and parts[5]:  # the last batch, healthy once
                sick.append(iid)
                world.unhealthy.add((iid, NEW))

    world.after_step.append(hook)
    world.set_desired(NEW)
    result = world.roll()
    assert sick and world.replaced == sick, "the fault was not injected beside the worker's restart"
    assert result.output.get("lost") == sick
