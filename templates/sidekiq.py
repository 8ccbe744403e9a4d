"""What the stack knows about Sidekiq: its queues, and the metrics the servers publish of them.

The queues and weights are those of Mastodon's config/sidekiq.yml (4.5 to 4.7): default 8,
push 6, ingress 4, mailers 2, then pull, scheduler and fasp. `scheduler` carries every
cron entry and sidekiq.yml sets `listened_queues_only`, so only a process started with
`-q scheduler` (or without -q) runs the schedule; it must run in exactly one process.

With queue workers on (parameters.HAS_QUEUE_WORKERS), the main worker publishes, once a
minute from inside the VPC, what the queue group scales on and the alarms watch. Every
name here reaches the servers through stack.env (templates/compute.py) and is spelled
nowhere else (tests/test_facts.py).
"""

from __future__ import annotations

from troposphere import Sub

SCHEDULER_QUEUE = "scheduler"
# (queue, weight) in sidekiq.yml's order; a queue without a weight there weighs 1.
QUEUE_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("default", 8),
    ("push", 6),
    ("ingress", 4),
    ("mailers", 2),
    ("pull", 1),
    (SCHEDULER_QUEUE, 1),
    ("fasp", 1),
)
QUEUES: tuple[str, ...] = tuple(name for name, _ in QUEUE_WEIGHTS)
# What the queue workers may run: every queue but the scheduler.
QUEUE_WORKER_ALLOWED: tuple[str, ...] = tuple(q for q in QUEUES if q != SCHEDULER_QUEUE)
# The main worker's default: no -q, so every queue sidekiq.yml lists (a later release's
# new queues included) runs there, as it does without queue workers.
ALL_QUEUES = "all"
DEFAULT_QUEUE_WORKER_QUEUES = ("default", "push", "ingress", "pull", "mailers", "fasp")

# Sidekiq's shutdown timeout (-t): on TERM it stops fetching, lets running jobs finish for
# this long, then pushes the unfinished ones back to Redis. Docker must wait longer before
# it kills the container, and systemd longer than Docker (Sidekiq wiki, "Deployment").
SIDEKIQ_SHUTDOWN_SECONDS = 25
CONTAINER_STOP_SECONDS = SIDEKIQ_SHUTDOWN_SECONDS + 5

# The metrics, in one namespace per stack (the servers may publish only there).
METRICS_NAMESPACE = Sub("Mastodon/${AWS::StackName}")
QUEUE_DIMENSION = "Queue"
LATENCY_METRIC = "QueueLatency"  # seconds the oldest job of a queue has waited
SIZE_METRIC = "QueueSize"  # jobs waiting in a queue
OLDEST_JOB_METRIC = "OldestJobLatency"  # the largest queue latency: what the alarm watches
QUEUE_WORKER_LATENCY_METRIC = "QueueWorkerLatency"  # the largest over the queue workers' queues
DEAD_METRIC = "DeadJobs"
RETRY_METRIC = "RetryJobs"
PROCESSES_METRIC = "SidekiqProcesses"  # live Sidekiq processes (heartbeats), all groups
METRICS_PERIOD_SECONDS = 60
# What CloudWatch bills a month: each (name, dimensions) published is one custom metric.
CUSTOM_METRICS = 2 * len(QUEUES) + 5

# stack.env keys the servers read these from.
SERVER_FACTS: dict[str, str] = {
    "SIDEKIQ_QUEUE_WEIGHTS": " ".join(f"{name}:{weight}" for name, weight in QUEUE_WEIGHTS),
    "SIDEKIQ_SCHEDULER_QUEUE": SCHEDULER_QUEUE,
    "SIDEKIQ_ALL_QUEUES": ALL_QUEUES,
    "SIDEKIQ_SHUTDOWN_SECONDS": str(SIDEKIQ_SHUTDOWN_SECONDS),
    "CONTAINER_STOP_SECONDS": str(CONTAINER_STOP_SECONDS),
    "METRIC_QUEUE_DIMENSION": QUEUE_DIMENSION,
    "METRIC_LATENCY": LATENCY_METRIC,
    "METRIC_SIZE": SIZE_METRIC,
    "METRIC_OLDEST_JOB": OLDEST_JOB_METRIC,
    "METRIC_QUEUE_WORKER_LATENCY": QUEUE_WORKER_LATENCY_METRIC,
    "METRIC_DEAD": DEAD_METRIC,
    "METRIC_RETRY": RETRY_METRIC,
    "METRIC_PROCESSES": PROCESSES_METRIC,
}
