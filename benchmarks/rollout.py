"""Rollout benchmark: simulated duration against the unavoidable waits, and API calls per server.

    python -m benchmarks.rollout [--quick] [--budget SECONDS] [--queue N]

Runs whole rollouts in moto (simulation/world.py) with a simulated clock and
realistic durations, for 1 to 32 web servers and a few batch sizes, and prints one
line per case: the rollout's simulated duration, the lower bound (the waits no
rollout of this design can avoid: the pulls ahead beside the pre-deployment
migrations, then per batch draining, restart and health checks, the settling windows
that cannot overlap the next batch's drain, a surge server's boot, the worker, the
fleet's two settling checks, the invalidation), their ratio (target: at most 1.10),
the AWS API calls per server (target: flat as servers grow), and the ratio to issue
12's formula, which counts no settling window at all. Stops starting new cases once
the time budget is spent. The queue workers' group is empty unless --queue
gives it servers (rolled after the worker, in batches of the web group's size, at most
all but one of them at once).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ.setdefault(key, "testing")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

from simulation.world import NEW, Timing, World  # noqa: E402

SIZES = (1, 2, 4, 8, 16, 32)
BATCHES = (1, 2, 5)


def lower_bound(web: int, batch: int, timing: Timing, queue: int = 0) -> float:
    """The waits no rollout can avoid, with this design's order of steps.

    While the worker pulls and runs the pre-deployment migrations, every web server
    pulls the new images, still serving; then each batch is out of service only to
    drain, restart and turn healthy. A batch is done once its servers have stayed
    healthy for the settling window (as long as the load balancer takes to call a
    target unhealthy); the next batch drains meanwhile when, with it out, a settled
    server still serves beside the settling one, so that window costs only what it
    lasts beyond the drain, and in full where no such server is left and after the last
    batch. The whole fleet is watched for one window before and one after the
    post-deployment migrations. These are waits of the design, counted here, not
    overhead. A lone web server is surged first: a new server boots the deployed
    version (it was not there to pull ahead), takes the new one (a pull and a restart),
    settles, then the old one drains. The queue
    workers, having pulled ahead too, restart after the worker, in batches of at most
    all but one of them.
    """
    ahead = max(timing.pull, timing.pull + timing.pre)  # the worker's pull comes before its migration
    out = timing.drain + timing.restart + timing.health
    if web == 1:
        web_time = timing.boot + out + timing.settle + timing.pull + timing.drain
    else:
        size = min(batch, web - 1)
        batches = [size] * (web // size) + ([web % size] if web % size else [])
        web_time = len(batches) * out + timing.settle  # the last batch's window
        for settling, following in itertools.pairwise(batches):
            overlaps = web - settling - following >= 1  # a settled server keeps serving beside them
            web_time += max(timing.settle - timing.drain, 0) if overlaps else timing.settle
    checks = 2 * timing.settle
    queue_batch = max(1, min(batch, queue - 1))
    workers = (1 + math.ceil(queue / queue_batch)) * timing.worker
    return ahead + web_time + workers + checks + timing.post + timing.invalidation


def issue_bound(web: int, batch: int, timing: Timing) -> float:
    """Issue 12's formula as written: no settling window anywhere (the lone server's surge
    as in lower_bound, without its window)."""
    ahead = max(timing.pull, timing.pull + timing.pre)
    out = timing.drain + timing.restart + timing.health
    if web == 1:
        web_time = timing.boot + out + timing.pull + timing.drain
    else:
        web_time = math.ceil(web / min(batch, web - 1)) * out
    return ahead + web_time + timing.worker + timing.post + timing.invalidation


def run_case(web: int, batch: int, timing: Timing, queue: int = 0) -> tuple[float, float, float, int]:
    with World(web=web, batch=batch, timing=timing, queue=queue) as world:
        world.set_desired(NEW)
        result = world.roll(max_steps=200_000)
        assert result.status == "SUCCEEDED", result.output.get("failure")
        assert world.min_capacity_margin() >= 0
        calls = sum(world.calls.values())
    bound = lower_bound(web, batch, timing, queue)
    return result.duration, bound, calls / (web + 1 + queue), world.min_capacity_margin()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 to 8 servers only")
    parser.add_argument("--budget", type=float, default=240, help="wall-clock seconds (default: %(default)s)")
    parser.add_argument("--queue", type=int, default=0, help="queue workers (default: %(default)s)")
    args = parser.parse_args(argv)
    timing = Timing()
    started = time.perf_counter()
    print(
        f"timing: drain {timing.drain}s, pull {timing.pull}s, restart {timing.restart}s, "
        f"health {timing.health}s, boot {timing.boot}s, migrations {timing.pre}+{timing.post}s, "
        f"worker {timing.worker}s, "
        f"invalidation {timing.invalidation}s, settling {timing.settle}s"
    )
    print(
        f"{'web':>4} {'batch':>5} {'rollout s':>10} {'bound s':>8} {'ratio':>6} {'calls/server':>13} "
        f"{'issue bound s':>13} {'ratio':>6}"
    )
    worst = worst_issue = 0.0
    for web in (s for s in SIZES if not args.quick or s <= 8):
        for batch in BATCHES:
            if batch > 1 and batch >= web:  # the same as the largest batch that fits
                continue
            if time.perf_counter() - started > args.budget:
                print(f"(time budget of {args.budget:.0f}s spent; remaining cases skipped)")
                return 0 if worst <= 1.10 else 1
            duration, bound, per_server, _ = run_case(web, batch, timing, args.queue)
            worst = max(worst, duration / bound)
            issue = issue_bound(web, batch, timing)
            worst_issue = max(worst_issue, duration / issue)
            print(
                f"{web:>4} {batch:>5} {duration:>10.0f} {bound:>8.0f} {duration / bound:>6.3f} "
                f"{per_server:>13.1f} {issue:>13.0f} {duration / issue:>6.3f}",
                flush=True,
            )
    print(
        f"worst ratio {worst:.3f} (target 1.10); to issue 12's formula without settling "
        f"{worst_issue:.3f}; wall clock {time.perf_counter() - started:.0f}s"
    )
    return 0 if worst <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
