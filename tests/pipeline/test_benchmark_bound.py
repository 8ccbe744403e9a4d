"""The benchmark's lower bound counts the settling windows the planner cannot overlap."""

from __future__ import annotations

from benchmarks.rollout import issue_bound, lower_bound
from simulation.world import Timing

TIMING = Timing()  # drain and settling both 30 s: an overlapped window costs nothing
CHECKS = 2 * TIMING.settle  # the whole fleet watched before and after the post-deployment migrations


def settling_counted(web: int, batch: int) -> float:
    return lower_bound(web, batch, TIMING) - issue_bound(web, batch, TIMING) - CHECKS


def test_only_the_last_batchs_window_counts_where_every_batch_overlaps_the_next():
    assert settling_counted(8, 1) == TIMING.settle
    assert settling_counted(32, 5) == TIMING.settle  # 7 batches of 5 and one of 2: 32 - 5 - 5 >= 1


def test_every_window_counts_where_no_settled_server_would_serve_beside_the_next_batch():
    assert settling_counted(2, 1) == 2 * TIMING.settle
    assert settling_counted(4, 2) == 2 * TIMING.settle
    assert settling_counted(8, 5) == 2 * TIMING.settle  # 8 - 5 - 3 leaves none


def test_a_window_longer_than_the_drain_counts_by_what_it_lasts_beyond_it():
    long = Timing(settle=50)
    extra = lower_bound(3, 1, long) - issue_bound(3, 1, long) - 2 * long.settle
    assert extra == 2 * (long.settle - long.drain) + long.settle
