"""pools.sh keeps the largest fleet the stack allows within the database's connections."""

from __future__ import annotations

import itertools
import subprocess

import pytest

from templates import capacity
from tests.instance.instance_harness import INSTANCE_DIR

RESERVE = capacity.RESERVED_CONNECTIONS + capacity.ONE_OFF_CONNECTIONS
# /proc/meminfo's MemTotal is below the nominal size (kernel and firmware reservations).
MEMORY_SEEN = 0.9


def pools(cases: list[tuple]) -> list[tuple[int, dict[str, int] | str]]:
    """Runs mastodon_pools once per case in one bash process; returns (status, output)."""
    script = [f". {INSTANCE_DIR / 'pools.sh'}"]
    for case in cases:
        args = " ".join(str(arg) for arg in case)
        script.append(f"out=$(mastodon_pools {args} 2>&1); echo \"@@ $? ${{out//$'\\n'/ }}\"")
    result = subprocess.run(["bash"], input="\n".join(script), capture_output=True, text=True, check=True)
    answers = []
    for line in result.stdout.splitlines():
        _, status, *rest = line.split(" ")
        if status == "0":
            answers.append((0, dict((kv.split("=")[0], int(kv.split("=")[1])) for kv in rest)))
        else:
            answers.append((int(status), " ".join(rest)))
    return answers


def web_connections(p: dict[str, int]) -> int:
    # Puma: each worker holds DB_POOL; the preloading master counted once; streaming: DB_POOL.
    return p["WEB_CONCURRENCY"] * p["DB_POOL"] + 1 + p["STREAMING_DB_POOL"]


def fleet_cases():
    return itertools.product(capacity.DATABASE_CLASSES, range(1, capacity.WEB_MAX_SIZE_LIMIT + 1))


@pytest.fixture(scope="module")
def sized():
    """Every database class x web size x instance type, for web and worker roles."""
    cases, keys = [], []
    for db, size in fleet_cases():
        for itype in capacity.INSTANCE_TYPES:
            for role in ("web", "worker"):
                memory = int(itype.memory_mib * MEMORY_SEEN)
                cases.append(
                    (role, db.max_connections, size, capacity.ROLLOUT_SURGE, RESERVE, itype.vcpus, memory)
                )
                keys.append((role, db.name, size, itype.name))
    return dict(zip(keys, pools(cases), strict=True))


def test_every_allowed_combination_sizes_without_error(sized):
    failures = {key: out for key, (status, out) in sized.items() if status != 0}
    assert not failures


def test_the_largest_fleet_never_exceeds_max_connections(sized):
    for db, size in fleet_cases():
        for web_type, worker_type in itertools.product(capacity.INSTANCE_TYPES, repeat=2):
            web = sized[("web", db.name, size, web_type.name)][1]
            worker = sized[("worker", db.name, size, worker_type.name)][1]
            total = (size + capacity.ROLLOUT_SURGE) * web_connections(web) + worker["DB_POOL"] + RESERVE
            assert total <= db.max_connections, (db.name, size, web_type.name, worker_type.name)


def test_every_process_gets_at_least_its_minimum(sized):
    for (role, *_), (_, p) in sized.items():
        if role == "web":
            assert p["WEB_CONCURRENCY"] >= 1 and p["MAX_THREADS"] >= 2
            assert p["DB_POOL"] >= p["MAX_THREADS"], "every Puma thread has a connection"
            assert p["STREAMING_DB_POOL"] >= 2
            assert p["WEB_CONCURRENCY"] * p["MAX_THREADS"] >= 2
        else:
            assert p["SIDEKIQ_CONCURRENCY"] >= 2
            assert p["DB_POOL"] >= p["SIDEKIQ_CONCURRENCY"], "every Sidekiq thread has a connection"


def test_puma_workers_fit_the_instance(sized):
    types = {t.name: t for t in capacity.INSTANCE_TYPES}
    for (role, _, _, itype), (_, p) in sized.items():
        if role == "web":
            assert p["WEB_CONCURRENCY"] <= types[itype].vcpus


def test_a_bigger_instance_never_gets_fewer_threads_for_the_same_share(sized):
    for db, size in fleet_cases():
        for small, big in itertools.permutations(capacity.INSTANCE_TYPES, 2):
            if big.vcpus < small.vcpus or big.memory_mib < small.memory_mib:
                continue
            for role in ("web", "worker"):
                s = sized[(role, db.name, size, small.name)][1]
                b = sized[(role, db.name, size, big.name)][1]
                if role == "web":
                    assert (
                        b["WEB_CONCURRENCY"] * b["MAX_THREADS"] >= s["WEB_CONCURRENCY"] * s["MAX_THREADS"]
                    ), (db.name, size, small, big)
                else:
                    assert b["SIDEKIQ_CONCURRENCY"] >= s["SIDEKIQ_CONCURRENCY"]


@pytest.mark.parametrize(
    "role, args, message",
    [
        ("web", (20, 10, 1, 10, 2, 2048), "cannot fit 1 Puma worker"),
        ("worker", (20, 10, 1, 10, 2, 2048), "cannot fit Sidekiq concurrency 2"),
        ("web", (500, 2, 1, 10, 2, 700), "cannot fit 1 Puma worker"),
        ("worker", (500, 2, 1, 10, 2, 512), "needs at least"),
    ],
)
def test_too_small_a_budget_fails_with_a_clear_message(role, args, message):
    [(status, out)] = pools([(role, *args)])
    assert status != 0
    assert message in out


def test_a_mid_size_stack_gets_mastodons_default_threads():
    [(status, p)] = pools([("web", 380, 4, 1, RESERVE, 2, 3800)])
    assert status == 0
    assert p["MAX_THREADS"] == 5 and p["WEB_CONCURRENCY"] == 2
