"""Which Sidekiq runs which queues, what each container sees, and the queue-metrics publisher,
with the instance scripts run for real under stubs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from templates import sidekiq
from tests.instance.instance_harness import (
    INSTANCE_DIR,
    STUB,
    STUBBED_COMMANDS,
    read_calls,
    stack_env,
)

NAMESPACE = "Mastodon/mastodon-test"
QUEUE_ON = {"QUEUE_WORKER_MAX_SIZE": "3"}


def sidekiq_command(run) -> str:
    unit = run.unit("mastodon-sidekiq")
    start = unit.index("ExecStart=")
    return unit[start : unit.index("\n", unit.index("bundle exec sidekiq"))]


def queue_options(command: str) -> list[str]:
    words = command.split()
    return [words[i + 1] for i, word in enumerate(words) if word == "-q"]


def test_a_queue_worker_runs_its_queues_with_sidekiqs_weights_and_never_the_scheduler(bootstrap):
    run = bootstrap("queue", stack=QUEUE_ON)
    assert run.returncode == 0, run.output
    weights = dict(sidekiq.QUEUE_WEIGHTS)
    assert queue_options(sidekiq_command(run)) == [
        f"{q},{weights[q]}" for q in sidekiq.DEFAULT_QUEUE_WORKER_QUEUES
    ]
    assert "scheduler" not in sidekiq_command(run)
    # It waits for the database the worker initializes, and signals its own group.
    assert run.db_setup_runs() == 0
    assert [s["resource"] for s in run.signals()] == ["QueueWorkerGroup"]
    assert [s["status"] for s in run.signals()] == ["SUCCESS"]
    assert not (run.root / "etc/systemd/system/mastodon-queue-metrics.timer").exists()


def test_a_queue_worker_whose_sidekiq_keeps_restarting_signals_failure(bootstrap):
    run = bootstrap(
        "queue", stack=QUEUE_ON, sidekiq="restarting", env={"BOOTSTRAP_WORKER_STABLE_SECONDS": "1"}
    )
    assert run.returncode != 0
    assert [(s["resource"], s["status"]) for s in run.signals()] == [("QueueWorkerGroup", "FAILURE")]


def test_a_queue_worker_whose_boot_fails_marks_itself_unhealthy_at_once(bootstrap):
    # No launch hook and EC2 health checks: without the mark it would stay InService idle.
    run = bootstrap("queue", stack=QUEUE_ON, db_state="empty")
    assert run.returncode != 0
    [call] = run.commands("aws", "autoscaling", "set-instance-health")
    assert call[call.index("--health-status") + 1] == "Unhealthy"
    assert "--no-should-respect-grace-period" in call, "the boot failed: the grace period must not hold it"


@pytest.mark.parametrize(("role", "stub"), [
    ("queue", {}),
    ("worker", {"sidekiq": "restarting", "env": {"BOOTSTRAP_WORKER_STABLE_SECONDS": "1"}}),
])
def test_only_a_queue_worker_whose_boot_failed_marks_itself(bootstrap, role, stub):
    run = bootstrap(role, stack=QUEUE_ON, **stub)
    assert (run.returncode == 0) is (role == "queue"), run.log
    assert not run.commands("aws", "autoscaling", "set-instance-health")


def test_the_default_worker_runs_every_queue_as_before(worker_run):
    command = sidekiq_command(worker_run)
    assert queue_options(command) == [], "no -q: sidekiq.yml's list, scheduler included"
    assert command.rstrip(" \\").endswith(f"-t {sidekiq.SIDEKIQ_SHUTDOWN_SECONDS}")
    assert not (worker_run.root / "etc/systemd/system/mastodon-queue-metrics.timer").exists()


def test_a_main_worker_with_a_list_runs_those_queues_and_the_scheduler(bootstrap):
    run = bootstrap("worker", stack={**QUEUE_ON, "MAIN_WORKER_QUEUES": "scheduler,mailers"})
    assert run.returncode == 0, run.output
    assert queue_options(sidekiq_command(run)) == ["scheduler,1", "mailers,2"]


@pytest.mark.parametrize(
    ("role", "stack", "reason"),
    [
        ("worker", {"MAIN_WORKER_QUEUES": "mailers,pull"}, "must include scheduler"),
        ("queue", {"QUEUE_WORKER_QUEUES": "default,scheduler"}, "scheduler runs only on the main worker"),
        ("queue", {"QUEUE_WORKER_QUEUES": "default,low"}, "unknown Sidekiq queue 'low'"),
    ],
)
def test_a_layout_that_would_run_the_scheduler_twice_or_an_unknown_queue_never_starts(
    bootstrap, role, stack, reason
):
    run = bootstrap(role, stack={**QUEUE_ON, **stack})
    assert run.returncode != 0
    assert reason in run.output
    assert [s["status"] for s in run.signals()] == ["FAILURE"]
    assert not [c for c in run.commands("systemctl", "enable") if "mastodon-sidekiq" in c]


def test_every_server_shares_the_connections_with_the_queue_workers_at_their_maximum(bootstrap):
    alone = bootstrap("worker", memory_kib=7_500_000)
    assert alone.returncode == 0, alone.output
    # 80 connections less the reserve of 10, over 2 web + 1 surge + 1 worker (+ 3 queue).
    assert "-c 17 " in sidekiq_command(alone)
    shared = bootstrap("worker", memory_kib=7_500_000, stack={"QUEUE_WORKER_MAX_SIZE": "3"})
    assert shared.returncode == 0, shared.output
    assert "-c 10 " in sidekiq_command(shared)
    assert "-e DB_POOL=10 " in shared.unit("mastodon-sidekiq")


def test_a_queue_worker_sees_the_same_environment_as_the_worker(bootstrap, worker_run):
    run = bootstrap("queue", stack=QUEUE_ON)
    assert run.returncode == 0, run.output
    assert run.env_file() == worker_run.env_file()


def test_sidekiq_may_finish_its_jobs_before_docker_and_systemd_give_up(bootstrap):
    run = bootstrap("queue", stack=QUEUE_ON)
    unit = run.unit("mastodon-sidekiq")
    stop = int(unit.split("stop --time ")[1].split()[0])
    systemd = int(unit.split("TimeoutStopSec=")[1].split()[0])
    assert sidekiq.SIDEKIQ_SHUTDOWN_SECONDS < stop < systemd
    assert f"-t {sidekiq.SIDEKIQ_SHUTDOWN_SECONDS}" in sidekiq_command(run)


def test_with_queue_workers_the_main_worker_publishes_every_minute(bootstrap):
    run = bootstrap("worker", stack={**QUEUE_ON, "METRICS_NAMESPACE": NAMESPACE})
    assert run.returncode == 0, run.output
    timer = run.file("/etc/systemd/system/mastodon-queue-metrics.timer").read_text()
    service = run.file("/etc/systemd/system/mastodon-queue-metrics.service").read_text()
    assert "OnCalendar=*-*-* *:*:00" in timer
    assert "Type=oneshot" in service and "/queue-metrics.sh" in service
    assert ["enable", "--now", "mastodon-queue-metrics.timer"] in run.commands("systemctl")
    # Only once Sidekiq runs, before the boot is reported.
    order = [c["args"][:1] + c["args"][-1:] for c in run.calls if c["cmd"] == "systemctl"]
    assert order.index(["enable", "mastodon-queue-metrics.timer"]) > order.index(
        ["enable", "mastodon-sidekiq"]
    )


# --- queue-metrics.sh ---------------------------------------------------------------------

STATISTICS = "\n".join(
    [
        "Resolving dependencies...",  # what bundler may print first
        "queue default 120 42.5",
        "queue push 3 1.25",
        "queue ingress 0 0.0",
        "queue mailers 1 0.5",
        "queue pull 7 3.0",
        "queue scheduler 2 600.0",
        "queue fasp 0 0.0",
        "retry 4",
        "dead 9",
        "processes 2",
    ]
)


class Metrics:
    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "root"
        self.stub_dir = tmp_path / "stub"
        self.bin_dir = tmp_path / "bin"
        for directory in (
            self.root / "etc/mastodon",
            self.root / "opt/mastodon-aws",
            self.stub_dir,
            self.bin_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        for script in ("queue-metrics.sh", "common.sh"):
            shutil.copy(INSTANCE_DIR / script, self.root / "opt/mastodon-aws" / script)
        for name in STUBBED_COMMANDS:
            (self.bin_dir / name).symlink_to(STUB)

    def run(self, namespace: str = NAMESPACE, **settings: str) -> subprocess.CompletedProcess[str]:
        env = stack_env("worker", **QUEUE_ON, METRICS_NAMESPACE=namespace)
        lines = [f"{key}='{value}'" for key, value in env.items()]
        (self.root / "etc/mastodon/stack.env").write_text("\n".join(lines) + "\n")
        settings = {"sidekiq_statistics": STATISTICS, **settings}
        for name, value in settings.items():
            (self.stub_dir / name).write_text(value)
        (self.stub_dir / "calls.log").unlink(missing_ok=True)
        return subprocess.run(
            [str(self.root / "opt/mastodon-aws/queue-metrics.sh")],
            env={
                "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
                "MASTODON_ROOT": str(self.root),
                "STUB_DIR": str(self.stub_dir),
                "QUEUE_METRICS_RETRY_BACKOFF": "0",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self, name: str, *prefix: str) -> list[list[str]]:
        return [
            c["args"]
            for c in read_calls(self.stub_dir)
            if c["cmd"] == name and c["args"][: len(prefix)] == list(prefix)
        ]

    def published(self) -> list[list[dict]]:
        return [json.loads(p.read_text()) for p in sorted(self.stub_dir.glob("metric-data-*.json"))]


@pytest.fixture
def metrics(tmp_path):
    return Metrics(tmp_path)


def by_name(data: list[dict]) -> dict[tuple[str, str | None], float]:
    return {
        (d["MetricName"], d["Dimensions"][0]["Value"] if "Dimensions" in d else None): d["Value"]
        for d in data
    }


def test_the_statistics_become_one_put_metric_data_call(metrics):
    result = metrics.run()
    assert result.returncode == 0, result.stderr
    (call,) = metrics.calls("aws", "cloudwatch", "put-metric-data")
    assert call[call.index("--namespace") + 1] == NAMESPACE
    assert call[call.index("--region") + 1] == "us-east-1"
    (data,) = metrics.published()
    values = by_name(data)
    assert len(data) == sidekiq.CUSTOM_METRICS
    assert values[(sidekiq.LATENCY_METRIC, "default")] == 42.5
    assert values[(sidekiq.SIZE_METRIC, "default")] == 120
    assert values[(sidekiq.LATENCY_METRIC, "scheduler")] == 600.0
    # The oldest job anywhere; the queue workers scale on their own queues only.
    assert values[(sidekiq.OLDEST_JOB_METRIC, None)] == 600.0
    assert values[(sidekiq.QUEUE_WORKER_LATENCY_METRIC, None)] == 42.5
    assert values[(sidekiq.RETRY_METRIC, None)] == 4
    assert values[(sidekiq.DEAD_METRIC, None)] == 9
    assert values[(sidekiq.PROCESSES_METRIC, None)] == 2
    assert {d["Dimensions"][0]["Name"] for d in data if "Dimensions" in d} == {sidekiq.QUEUE_DIMENSION}
    assert {d["Unit"] for d in data if d["MetricName"] == sidekiq.LATENCY_METRIC} == {"Seconds"}


def test_it_asks_sidekiq_in_the_running_container_for_every_queue(metrics):
    metrics.run()
    (call,) = metrics.calls("docker", "exec")
    assert call[:5] == ["exec", "mastodon-sidekiq", "bundle", "exec", "ruby"]
    assert call[-len(sidekiq.QUEUES) :] == list(sidekiq.QUEUES)
    code = call[call.index("-e") + 1]
    assert "\n" not in code and "Sidekiq::ProcessSet" in code and "Sidekiq::Queue.new(name)" in code


def test_without_queue_workers_it_publishes_nothing(metrics):
    result = metrics.run(namespace="")
    assert result.returncode == 0
    assert metrics.calls("docker", "exec") == [] and metrics.calls("aws") == []


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"sidekiq": "absent"}, "mastodon-sidekiq is not running"),
        ({"redis_down": ""}, "CannotConnectError"),
        # Sidekiq answered part of it, then failed: nothing is better than half.
        (
            {"sidekiq_statistics": "\n".join(STATISTICS.splitlines()[:-2])},
            "no usable figure for dead, processes",
        ),
        ({"sidekiq_statistics": ""}, "no usable figure for default"),
    ],
)
def test_when_sidekiq_cannot_answer_nothing_is_published_and_the_reason_is_logged(metrics, settings, reason):
    result = metrics.run(**settings)
    assert result.returncode != 0
    assert reason in result.stderr
    assert metrics.calls("aws", "cloudwatch") == []


def test_a_throttled_publish_is_retried(metrics):
    result = metrics.run(put_metric_fail="2")
    assert result.returncode == 0, result.stderr
    assert len(metrics.calls("aws", "cloudwatch", "put-metric-data")) == 3
    assert len(metrics.published()) == 1


def test_a_publish_that_keeps_failing_ends_with_the_reason(metrics):
    result = metrics.run(put_metric_fail="9")
    assert result.returncode != 0
    assert "put-metric-data failed after 3 attempts" in result.stderr
    assert metrics.published() == []
