"""Servers the release itself breaks after they settled: never surged for, timed like a flap,
and a surge's surplus retired once, never a server of the operator's desired capacity."""

from __future__ import annotations

from lambdas.rollout.plan import HEALTH_TIMEOUT, Server, Surge, plan_group
from simulation.world import NEW, OLD

ME = "exec"
HEALTHY, SICK = ("healthy", "healthy"), ("unhealthy", "unhealthy")


def server(iid: str, version: str = OLD, health: tuple[str, ...] = HEALTHY, launched: float = 0.0) -> Server:
    return Server(iid, "InService", True, launched, version, health=health)


def plan(servers: list[Server], *, desired: int | None = None, surge: Surge | None = None, **kwargs):
    return plan_group(
        servers,
        {},
        execution=ME,
        target=NEW,
        batch=1,
        balanced=True,
        desired=len(servers) if desired is None else desired,
        surge=surge,
        moment=kwargs.pop("moment", 1000.0),
        drain_seconds=30,
        settle_seconds=30,
        boot_grace=900,
        **kwargs,
    )


# A 3-server group at batch 1: a settled server on the release fails, which leaves no
# room to drain the last old one (two must serve).
BROKEN = [server("a", NEW, SICK), server("b", NEW), server("c", OLD)]


def test_capacity_the_release_broke_is_not_surged_for():
    result = plan(BROKEN)
    assert not result.surge and not result.drain and not result.failure


def test_capacity_lost_otherwise_is_still_surged_for():
    # The same group one server short (it left, its replacement cannot launch): nothing may
    # drain, and the planner surges as before.
    result = plan([server("b", NEW), server("c", OLD)], desired=3)
    assert result.surge


def test_a_settled_server_failing_on_the_release_is_timed_from_when_it_turned_unhealthy():
    first = plan(BROKEN, sick_since={})
    assert first.sick == {"a": 1000.0} and first.flight == ["a"] and not first.failure
    within = plan(BROKEN, sick_since=first.sick, moment=1000.0 + HEALTH_TIMEOUT)
    assert within.sick == {"a": 1000.0} and not within.failure
    late = plan(BROKEN, sick_since=first.sick, moment=1001.0 + HEALTH_TIMEOUT)
    assert late.failure and "a runs" in late.failure and "did not stay healthy" in late.failure


def test_a_settled_server_healthy_again_is_no_longer_timed():
    result = plan([server("a", NEW), server("b", NEW), server("c", OLD)], sick_since={"a": 0.0})
    assert result.sick == {} and not result.failure and result.drain == ["c"]


def test_unwatched_ticks_do_not_time_settled_servers():
    result = plan(BROKEN, moment=1e9)
    assert not result.failure and result.sick == {}


def test_a_surge_retires_its_surplus_once():
    record = Surge(ME, 3, 3, 4, 0.0)
    four = [server(i, NEW, launched=n) for n, i in enumerate("abcd")]
    assert plan(four, desired=4, surge=record).retire == ["a"]
    # The surplus gone (the group back at the operator's 3): nothing more is retired, however
    # many may leave above the floor; the surge ends instead.
    retired = Surge(ME, 3, 3, 4, 0.0, retiring=True)
    result = plan(four[1:], desired=3, surge=retired)
    assert result.retire == [] and result.end_surge


def test_a_server_on_the_tags_old_images_is_rolled_not_blamed_on_the_release():
    """A tag pushed again over a broken image: a server still on the old images, unhealthy,
    is one to roll (stale), not capacity the release broke."""
    servers = [server("a", NEW, SICK), server("b", NEW), server("c", NEW)]
    result = plan(servers, stale={"a"}, sick_since={"a": 0.0})
    assert result.failure is None
    assert result.drain == ["a"]


def test_an_operators_scale_out_during_the_retire_is_not_taken_for_more_surplus():
    """A lone server's surge (1 -> 2); the operator raises the group to 4 meanwhile. Once the
    surplus is being retired, nothing more is retired, whatever the desired capacity says."""
    servers = [server("a", NEW), server("b", NEW), server("c", NEW)]
    retiring = Surge(ME, 1, 1, 2, 0.0, retiring=True)
    assert plan(servers, desired=3, surge=retiring).retire == []
