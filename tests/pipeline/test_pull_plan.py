"""plan_pulls, the pull-ahead's pure decision: who is sent a pull, when a pull has failed."""

from __future__ import annotations

from lambdas.rollout.plan import DEPLOY_TIMEOUT, Server, plan_pulls

NEW, OLD = "v4.7.6", "v4.6.2"
HEALTHY = ("healthy", "healthy")


def server(
    iid: str, version: str | None = OLD, health=HEALTHY, lifecycle="InService", running=True
) -> Server:
    return Server(iid, lifecycle, running, 0.0, version, health=health)


def plan(servers, pulls=None, pulled=(), statuses=None, moment=100.0, web=None):
    balanced = {s.id for s in servers} if web is None else web
    return plan_pulls(servers, balanced, pulls or {}, pulled, statuses or {}, target=NEW, moment=moment)


def test_only_servers_that_serve_another_version_are_sent_a_pull():
    servers = [
        server("serving"),
        server("booting", version=None, health=("initial", "initial")),
        server("on-target", version=NEW),
        server("standby", lifecycle="Standby", health=()),
    ]
    assert plan(servers).send == ["serving"]


def test_a_worker_serves_once_it_has_settled_on_a_version():
    servers = [server("worker", health=()), server("new-worker", version=None, health=())]
    assert plan(servers, web=set()).send == ["worker"]


def test_a_failed_pull_on_a_serving_server_fails_and_says_why():
    result = plan([server("a")], {"a": ("c1", 90.0)}, statuses={"a": ("Failed", "no space left on device")})
    assert result.failure and "failed on a (Failed): no space left on device" in result.failure


def test_a_pull_on_a_server_that_left_drops_out_whatever_it_says():
    servers = [server("gone", lifecycle="Terminating"), server("standby", lifecycle="Standby", health=())]
    pulls = {"gone": ("c1", 90.0), "standby": ("c1", 90.0)}
    statuses = {"gone": ("Failed", "terminated"), "standby": ("Cancelled", "")}
    result = plan(servers, pulls, statuses=statuses)
    assert result.failure is None and sorted(result.dropped) == ["gone", "standby"]
    assert not result.pending


def test_a_running_pull_is_waited_for_until_the_deploy_timeout():
    pulls = {"a": ("c1", 0.0)}
    running = {"a": ("InProgress", "")}
    assert plan([server("a")], pulls, statuses=running, moment=DEPLOY_TIMEOUT).pending
    late = plan([server("a")], pulls, statuses=running, moment=DEPLOY_TIMEOUT + 1)
    assert late.failure and f"did not finish within {DEPLOY_TIMEOUT}s" in late.failure


def test_finished_pulls_are_done_once_and_not_sent_again():
    result = plan(
        [server("a"), server("b")],
        {"a": ("c1", 0.0), "b": ("c1", 0.0)},
        pulled=["b"],
        statuses={"a": ("Success", "")},
    )
    assert result.done == ["a"] and result.send == [] and not result.pending
