"""pools.sh keeps the largest fleet the stack allows within the database's connections,
and sizes Sidekiq (and the swap under it) to the worker's memory."""

from __future__ import annotations

import itertools
import subprocess

import pytest

from templates import capacity
from tests.instance.instance_harness import INSTANCE_DIR

RESERVE = capacity.RESERVED_CONNECTIONS + capacity.ONE_OFF_CONNECTIONS
# /proc/meminfo's MemTotal is below the nominal size (kernel and firmware reservations).
MEMORY_SEEN = 0.9
ROLE_TYPES = {"web": capacity.WEB_INSTANCE_TYPES, "worker": capacity.WORKER_INSTANCE_TYPES}
MICROS = [t for t in capacity.WORKER_INSTANCE_TYPES if t.memory_mib < 2048]
TWO_GIB_AND_UP = [t for t in capacity.INSTANCE_TYPES if t.memory_mib >= 2048]
SIDEKIQ_MAX_THREADS = 50


def seen(itype: capacity.InstanceType) -> int:
    return int(itype.memory_mib * MEMORY_SEEN)


def swap_sizes(memories: list[int]) -> dict[int, int]:
    """What mastodon_swap_mib gives (the swap bootstrap.sh creates) for each MemTotal in MiB."""
    script = [f". {INSTANCE_DIR / 'pools.sh'}"] + [f"echo {m} $(mastodon_swap_mib {m})" for m in memories]
    result = subprocess.run(["bash"], input="\n".join(script), capture_output=True, text=True, check=True)
    return {int(m): int(s) for m, s in (line.split() for line in result.stdout.splitlines())}


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
    """Every database class x web size x instance type each role may run on, with the
    swap bootstrap.sh gives that memory."""
    swap = swap_sizes(sorted({seen(t) for t in capacity.INSTANCE_TYPES}))
    cases, keys = [], []
    for db, size in fleet_cases():
        for role, types in ROLE_TYPES.items():
            for itype in types:
                memory = seen(itype)
                cases.append((role, db.max_connections, size, capacity.ROLLOUT_SURGE, RESERVE,
                              itype.vcpus, memory, swap[memory]))
                keys.append((role, db.name, size, itype.name))
    return dict(zip(keys, pools(cases), strict=True))


def test_every_allowed_combination_sizes_without_error(sized):
    failures = {key: out for key, (status, out) in sized.items() if status != 0}
    assert not failures


def test_the_largest_fleet_never_exceeds_max_connections(sized):
    for db, size in fleet_cases():
        for web_type, worker_type in itertools.product(capacity.WEB_INSTANCE_TYPES,
                                                       capacity.WORKER_INSTANCE_TYPES):
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
    types = capacity.INSTANCE_TYPES_BY_NAME
    for (role, _, _, itype), (_, p) in sized.items():
        if role == "web":
            assert p["WEB_CONCURRENCY"] <= types[itype].vcpus


def test_a_bigger_instance_never_gets_fewer_threads_for_the_same_share(sized):
    for db, size in fleet_cases():
        for role, types in ROLE_TYPES.items():
            for small, big in itertools.permutations(types, 2):
                if big.vcpus < small.vcpus or big.memory_mib < small.memory_mib:
                    continue
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
        ("worker", (500, 2, 1, 10, 2, 512), "needs at least 1050 MiB of RAM + swap"),
        # A micro's RAM without the swap bootstrap.sh adds is short of Sidekiq's peak.
        ("worker", (80, 2, 1, 10, 2, 921, 0), "needs at least 1050 MiB of RAM + swap"),
        # Swap cushions peaks; it cannot stand in for the RAM Sidekiq keeps resident.
        ("worker", (80, 2, 1, 10, 2, 600, 2048), "needs at least 800 MiB of RAM"),
        ("worker", (80, 2, 1, 10, 2, 921, "1k"), "is not a non-negative integer"),
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


def test_a_micro_worker_runs_mastodons_default_five_sidekiq_threads(sized):
    assert MICROS, "the worker may run on a 1 GiB instance"
    for db, size in fleet_cases():
        for itype in MICROS:
            assert sized[("worker", db.name, size, itype.name)][1]["SIDEKIQ_CONCURRENCY"] == 5, (
                db.name, size, itype.name)


def test_a_worker_of_2_gib_or_more_keeps_its_threads_bound_by_vcpus_and_share_only(sized):
    # The rule before 1 GiB workers existed: RAM never binds from 2 GiB up. One process
    # never runs more than SIDEKIQ_MAX_THREADS (the 8-vCPU types would reach 80).
    for db, size in fleet_cases():
        for itype in TWO_GIB_AND_UP:
            p = sized[("worker", db.name, size, itype.name)][1]
            assert p["SIDEKIQ_CONCURRENCY"] == min(p["CONNECTION_SHARE"], 10 * itype.vcpus,
                                                   SIDEKIQ_MAX_THREADS), (db.name, size, itype.name)


@pytest.mark.parametrize(
    "role, itype, expected",
    [
        # The default stack (db.t4g.micro, WebMaxSize 2): the web servers' and a
        # t4g.small worker's pools are what they were before micro workers.
        ("web", "t4g.small", {"WEB_CONCURRENCY": 2, "MAX_THREADS": 5, "DB_POOL": 5,
                              "STREAMING_DB_POOL": 3, "INSTANCE_CONNECTIONS": 14}),
        ("worker", "t4g.small", {"SIDEKIQ_CONCURRENCY": 17, "DB_POOL": 17}),
        ("worker", "t4g.micro", {"SIDEKIQ_CONCURRENCY": 5, "DB_POOL": 5}),
        ("worker", "t3.micro", {"SIDEKIQ_CONCURRENCY": 5, "DB_POOL": 5}),
    ],
)
def test_the_default_stack_sizes(sized, role, itype, expected):
    p = sized[(role, capacity.DEFAULT_DATABASE_CLASS, 2, itype)][1]
    assert {key: p[key] for key in expected} == expected


def test_the_web_group_is_offered_exactly_the_types_a_web_server_fits_on():
    # Below 2 GiB not even one Puma worker fits next to the streaming server.
    swap = swap_sizes([seen(t) for t in capacity.INSTANCE_TYPES])
    answers = pools([("web", 1600, 1, 1, RESERVE, t.vcpus, seen(t), swap[seen(t)])
                     for t in capacity.INSTANCE_TYPES])
    fits = {t.name for t, (status, _) in zip(capacity.INSTANCE_TYPES, answers, strict=True) if status == 0}
    assert fits == {t.name for t in capacity.WEB_INSTANCE_TYPES}


@pytest.mark.parametrize(
    "memory_mib, swap_mib",
    [
        (921, 1127),   # a 1 GiB instance as /proc/meminfo shows it: RAM + swap = 2 GiB
        (960, 1088),
        (1100, 1024),  # never less than 1 GiB of swap
        (1535, 1024),
        (1536, 0),     # 2 GiB instances (MemTotal ~1.9 GiB) need none
        (1843, 0),
        (7372, 0),
    ],
)
def test_swap_brings_a_small_instance_to_2_gib_and_spares_bigger_ones(memory_mib, swap_mib):
    assert swap_sizes([memory_mib]) == {memory_mib: swap_mib}


# --- with the queue workers at their maximum ----------------------------------------------

SMALLEST_AND_LARGEST = {
    "web": ("t4g.small", "t4g.xlarge"),
    "worker": ("t4g.micro", "t4g.xlarge"),
    "queue": ("t4g.micro", "t4g.xlarge"),
}


def fleet_allowed(template, database: str, web_max: int, queue_max: int) -> bool:
    """What the template's rule on the fleet's size says of it."""
    from scripts.template_values import Evaluator, parameter_values
    from templates.parameters import QUEUE_BUDGET_RULE

    given = {"DatabaseInstanceClass": database, "WebMaxSize": str(web_max),
             "QueueWorkerMaxSize": str(queue_max)}
    values = {**parameter_values(template, given), "AWS::Region": "us-east-1"}
    ev = Evaluator(template, values, strict=True)
    return all(ev.value(a["Assert"]) for a in template["Rules"][QUEUE_BUDGET_RULE]["Assertions"])


def test_every_fleet_the_template_allows_fits_max_connections_with_queue_workers_at_their_maximum(template):
    types = capacity.INSTANCE_TYPES_BY_NAME
    swap = swap_sizes(sorted({seen(t) for t in capacity.INSTANCE_TYPES}))
    cases, keys, refused = [], [], []
    for db in capacity.DATABASE_CLASSES:
        for web_max in range(capacity.WEB_MIN_SIZE_LIMIT, capacity.WEB_MAX_SIZE_LIMIT + 1):
            for queue_max in range(0, capacity.QUEUE_WORKER_MAX_SIZE_LIMIT + 1):
                if not fleet_allowed(template, db.name, web_max, queue_max):
                    refused.append((db, web_max, queue_max))
                    continue
                for role, names in SMALLEST_AND_LARGEST.items():
                    for name in names:
                        memory = seen(types[name])
                        cases.append((role, db.max_connections, web_max, capacity.ROLLOUT_SURGE, RESERVE,
                                      types[name].vcpus, memory, swap[memory], queue_max))
                        keys.append((db, web_max, queue_max, role, name))
    sized = dict(zip(keys, pools(cases), strict=True))
    assert not {key: out for key, (status, out) in sized.items() if status != 0}
    for db, web_max, queue_max, role, name in keys:
        if role != "web" or name != SMALLEST_AND_LARGEST["web"][1]:
            continue
        big = {r: sized[(db, web_max, queue_max, r, largest)][1]
               for r, (_, largest) in SMALLEST_AND_LARGEST.items()}
        total = ((web_max + capacity.ROLLOUT_SURGE) * web_connections(big["web"]) + big["worker"]["DB_POOL"]
                 + queue_max * big["queue"]["DB_POOL"] + RESERVE)
        assert total <= db.max_connections, (db.name, web_max, queue_max)
    # The rule refuses only fleets in which a web server could not fit.
    assert refused, "db.t4g.micro cannot hold the largest web group and queue workers together"
    answers = pools([("web", db.max_connections, web_max, capacity.ROLLOUT_SURGE, RESERVE, 4, 15000, 0,
                      queue_max) for db, web_max, queue_max in refused])
    assert all(status != 0 for status, _ in answers)
# --- the pooler and the read replica (issue 13) ---------------------------------------
# Every primary class with no replica, a replica of its own class and the largest class
# (the rule ReadReplicaAtLeastTheDatabase allows no smaller one), with and without
# PgBouncer, for the smallest and the largest web group, on every type each role may run
# on. Another group of servers (queue workers) adds its maximum size to `instances`.
GROWTH_SIZES = (capacity.WEB_MIN_SIZE_LIMIT, capacity.WEB_MAX_SIZE_LIMIT)
LARGEST_DATABASE = max(capacity.DATABASE_CLASSES, key=lambda d: d.max_connections)


GROWTH_ROLES = {**ROLE_TYPES, "queue": capacity.WORKER_INSTANCE_TYPES}


def growth_cases():
    """Every class with no replica, its own class and the largest as replica, with and
    without PgBouncer, the smallest and largest web group, and no queue workers or as many
    as the fleet rule (FleetFitsTheDatabase) lets that class hold beside the web group."""
    for primary in capacity.DATABASE_CLASSES:
        for replica in (None, primary, LARGEST_DATABASE):
            for pooler in (False, True):
                for size in GROWTH_SIZES:
                    room = min(capacity.QUEUE_WORKER_MAX_SIZE_LIMIT, capacity.largest_fleet(primary) - size)
                    for queue in sorted({0, max(room, 0)}):
                        yield primary, replica, pooler, size, queue


@pytest.fixture(scope="module")
def grown():
    swap = swap_sizes(sorted({seen(t) for t in capacity.INSTANCE_TYPES}))
    cases, keys = [], []
    for primary, replica, pooler, size, queue in growth_cases():
        options = ["--pooler"] if pooler else []
        options += ["--replica", replica.max_connections] if replica else []
        for role, types in GROWTH_ROLES.items():
            for itype in types:
                memory = seen(itype)
                cases.append((*options, role, primary.max_connections, size, capacity.ROLLOUT_SURGE, RESERVE,
                              itype.vcpus, memory, swap[memory], queue))
                keys.append((primary.name, replica and replica.name, pooler, size, queue, role, itype.name))
    return dict(zip(keys, pools(cases), strict=True))


def test_every_combination_with_pooler_and_replica_sizes_without_error(grown):
    assert not {key: out for key, (status, out) in grown.items() if status != 0}


def test_the_largest_fleet_fits_every_database_with_and_without_pooler_and_replica(grown):
    for primary, replica, pooler, size, queue in growth_cases():
        # Each database (the primary, and the replica with its own max_connections) sees
        # every server's connections: with PgBouncer its pool, else the processes' pools.
        limits = [primary.max_connections] + ([replica.max_connections] if replica else [])
        case = (primary.name, replica and replica.name, pooler, size, queue)
        held = {role: max(grown[(*case, role, t.name)][1]["DATABASE_CONNECTIONS"] for t in types)
                for role, types in GROWTH_ROLES.items()}
        if not pooler:
            for role, types in GROWTH_ROLES.items():
                for t in types:
                    p = grown[(*case, role, t.name)][1]
                    counted = web_connections(p) if role == "web" else p["DB_POOL"]
                    assert p["DATABASE_CONNECTIONS"] == counted, (case, role, t.name)
        total = ((size + capacity.ROLLOUT_SURGE) * held["web"] + held["worker"] + queue * held["queue"]
                 + RESERVE)
        for limit in limits:
            assert total <= limit, (case, total, limit)


def test_behind_pgbouncer_the_processes_are_sized_by_the_server_not_the_database(grown):
    for primary, replica, _, size, queue in growth_cases():
        for role, types in GROWTH_ROLES.items():
            for t in types:
                direct = grown[(primary.name, replica and replica.name, False, size, queue, role, t.name)][1]
                pooled = grown[(primary.name, replica and replica.name, True, size, queue, role, t.name)][1]
                assert pooled["PGBOUNCER_POOL_SIZE"] == pooled["CONNECTION_SHARE"] >= 1
                databases = 2 if replica else 1
                # Every client connection on every database, with room for a restart.
                assert pooled["PGBOUNCER_MAX_CLIENT_CONN"] >= pooled["INSTANCE_CONNECTIONS"] * databases
                if role == "web":
                    assert pooled["WEB_CONCURRENCY"] * pooled["MAX_THREADS"] >= (
                        direct["WEB_CONCURRENCY"] * direct["MAX_THREADS"])
                    assert pooled["MAX_THREADS"] == 5 and pooled["DB_POOL"] >= pooled["MAX_THREADS"]
                else:
                    assert pooled["SIDEKIQ_CONCURRENCY"] >= direct["SIDEKIQ_CONCURRENCY"]
                    assert pooled["DB_POOL"] >= pooled["SIDEKIQ_CONCURRENCY"]


def test_the_pooler_lifts_the_pools_of_a_small_database():
    # db.t4g.micro with ten web servers: 5 connections a server. Direct, a 4-vCPU web
    # server could run 1 Puma worker x 2 threads; behind PgBouncer, 4 x 5.
    args = ("web", 80, 10, 1, RESERVE, 4, 14000)
    [(_, direct), (_, pooled)] = pools([args, ("--pooler", *args)])
    assert direct["WEB_CONCURRENCY"] * direct["MAX_THREADS"] <= 4
    assert (pooled["WEB_CONCURRENCY"], pooled["MAX_THREADS"], pooled["PGBOUNCER_POOL_SIZE"]) == (4, 5, 5)


def test_a_smaller_replica_bounds_the_pools_as_well():
    [(_, alone), (_, replicated)] = pools([("worker", 800, 2, 1, RESERVE, 4, 14000),
                                           ("--replica", 180, "worker", 800, 2, 1, RESERVE, 4, 14000)])
    assert alone["CONNECTION_SHARE"] == (800 - RESERVE) // 4
    assert replicated["CONNECTION_SHARE"] == (180 - RESERVE) // 4


@pytest.mark.parametrize(
    "args, message",
    [
        (("--replica",), "--replica needs the replica's MAX_CONNECTIONS"),
        (("--replica", "many"), "is not a non-negative integer"),
        (("--pooler", "--replica", "12"), "PgBouncer cannot hold even 1 connection"),
    ],
)
def test_bad_growth_options_fail_with_a_clear_message(args, message):
    tail = ("web", 80, 10, 1, RESERVE, 2, 3800) if args != ("--replica",) else ()
    [(status, out)] = pools([(*args, *tail)])
    assert status != 0 and message in out
