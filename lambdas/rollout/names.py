"""Names the rollout function shares with its state machine and its IAM policy.

templates/pipeline.py builds the state machine and the function's permissions from
these; the function routes with them. Nothing here imports beyond the standard library.
"""

from __future__ import annotations

# Actions: the "action" of a task input, one per kind of step.
BEGIN = "begin"
VALIDATE = "validate"
MIGRATE = "migrate"
WEB = "web"
WORKER = "worker"
RECORD = "record"
VERIFY = "verify"
ROLLBACK = "rollback"
FINISH = "finish"
ACTIONS = (BEGIN, VALIDATE, MIGRATE, WEB, WORKER, RECORD, VERIFY, ROLLBACK, FINISH)

# Server roles, one Auto Scaling group each. The web and worker roles are also actions;
# the queue workers (an optional group: config queue_group "" when off) are rolled by
# the worker action, beside the worker.
QUEUE = "queue"

# Outcomes: the "next" of a step's answer, on which the state machine chooses.
GO = "go"  # begin, validate: on to the next step
QUEUED = "queued"  # begin: an older rollout runs; ask again after "wait" seconds
NOOP = "noop"  # begin: nothing to roll out
WAIT = "wait"  # loops: call the same step again after "wait" seconds
DONE = "done"
FAILED = "failed"
AGAIN = "again"  # finish: a newer desired version waits; begin again

# Phases of migrate (db:migrate without, then with, the post-deployment migrations)
# and of verify (before the post-deployment migrations, when a rollback is still
# possible, and after them, the last look before success is recorded).
PRE = "pre"
POST = "post"
FINAL = "final"

# Tags. The version a server runs (set once it is settled on it) and its images; on a server the
# rollout is working on, its journal (what it is doing to it, written before it does
# it); on the web group (and the queue workers' group), the scaling processes a rollout
# suspended, and on the web group the sizes it raised, written before it changes them,
# so that whatever it changes is restored.
VERSION_TAG = "mastodon:version"
# The images a server runs, as registry digests in the order of config images (the
# Mastodon image, then on a web server the streaming image), from its last deploy's report.
DIGEST_TAG = "mastodon:images"
JOURNAL_TAG = "mastodon:rollout"
HOLD_TAG = "mastodon:rollout-hold"
SURGE_TAG = "mastodon:rollout-surge"
GROUP_TAG = "aws:autoscaling:groupName"

# Put after the tag in desired-version ("v4.7.5 allow-downgrade") to roll back on purpose.
DOWNGRADE_FLAG = "allow-downgrade"

# A tag of a repository that is not upstream's (a fork's or a CI's: v4.7.6-glitch,
# 2026-12-01, a commit hash): the OCI distribution spec's tag grammar, which every
# registry enforces (letters, digits, "_", "." and "-", not starting with "." or "-",
# at most 128 characters), so no shell or path metacharacter, no space, no "+". Here,
# and not in templates/options.py, because the rollout names the rule it applied.
CUSTOM_TAG_PATTERN = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
# An Amazon ECR registry's host (templates/options.IMAGE_REPOSITORY_PATTERN): the
# rollout asks ECR's API, not the registry's, whether an image there exists.
ECR_HOST_PATTERN = "[0-9]{12}[.]dkr[.]ecr[.][a-z]{2}(-[a-z]+){1,2}-[0-9][.]amazonaws[.]com([.]cn)?"

# Bounds of the whole execution. A rollout waits at most QUEUE_TIMEOUT behind older
# ones, then gets ROLLOUT_TIMEOUT (two migrations of up to MIGRATION_TIMEOUT each and
# the servers), then ROLLBACK_TIMEOUT to undo; the state machine's own TimeoutSeconds
# (EXECUTION_TIMEOUT) is the backstop should a step never answer.
MIGRATION_TIMEOUT = 6 * 3600
ROLLOUT_TIMEOUT = 2 * MIGRATION_TIMEOUT + 2 * 3600
ROLLBACK_TIMEOUT = 2 * 3600
QUEUE_TIMEOUT = ROLLOUT_TIMEOUT + ROLLBACK_TIMEOUT + 3600
EXECUTION_TIMEOUT = QUEUE_TIMEOUT + ROLLOUT_TIMEOUT + ROLLBACK_TIMEOUT + 3600
