"""The benchmark's bound is issue 12's formula, and the simulated rollout meets its targets."""

from __future__ import annotations

import pytest

from benchmarks.rollout import FASTER_TARGET, TODAY_8_AT_1, lower_bound, run_case
from simulation.world import Timing

TIMING = Timing()  # pull 70, restart 20, drain 30, health 20, boot 240, migrations 120 + 60, worker 60


def test_the_bound_is_the_issues_formula():
    # max(70, 70 + 120) + ceil(8 / 1) x (30 + 20 + 20) + 60 + 60 + 60
    assert lower_bound(8, 1, TIMING) == 190 + 8 * 70 + 180
    assert lower_bound(8, 5, TIMING) == 190 + 2 * 70 + 180  # batches of 5 and 3
    assert lower_bound(2, 5, TIMING) == 190 + 2 * 70 + 180  # a batch never takes every server


def test_a_lone_server_is_surged_first():
    # boot 240, then the new version out of service (pull, restart, health after a drain), then
    # the old server drains
    assert lower_bound(1, 1, TIMING) == 190 + 240 + 70 + 70 + 30 + 180


def test_queue_workers_restart_after_the_worker_in_batches_of_all_but_one():
    assert lower_bound(4, 1, TIMING, queue=2) - lower_bound(4, 1, TIMING) == 2 * TIMING.worker
    assert lower_bound(4, 5, TIMING, queue=3) - lower_bound(4, 5, TIMING) == 2 * TIMING.worker  # 2 then 1


@pytest.mark.slow
@pytest.mark.parametrize("web, batch", [(8, 1), (2, 1), (1, 1)])
def test_the_simulated_rollout_is_within_ten_percent_of_the_bound(web, batch):
    duration, bound, _, margin = run_case(web, batch, TIMING)
    assert duration <= 1.10 * bound
    assert margin >= 0
    if (web, batch) == (8, 1):
        assert duration <= TODAY_8_AT_1 * (1 - FASTER_TARGET)
