#!/bin/bash
# Publishes Sidekiq's queue metrics to CloudWatch; run every minute on the main worker by
# the mastodon-queue-metrics timer (bootstrap.sh) when the stack has queue workers.
#
# Reads the statistics with Sidekiq's own API, in a short Ruby process inside the running
# mastodon-sidekiq container (the image has the gems and the Redis settings, but no
# redis-cli; Sidekiq::Queue#latency reads Sidekiq 8's millisecond timestamps itself), and
# publishes them from the host with the instance role, in one put-metric-data call:
# latency and size per queue, the oldest job over all queues and over the queue workers'
# queues (what they scale on), the retry and dead sets, and the live Sidekiq processes
# of every group (heartbeats in Redis, not instances). The names come from stack.env
# (templates/sidekiq.py).
#
# All or nothing: without the container, without Redis, or with an answer it cannot
# read, it publishes nothing and exits non-zero with the reason, so that the missing
# data raises the no-process alarm. A refused or throttled call is retried.
#
# Tests redirect paths with MASTODON_ROOT and shorten waits with the QUEUE_METRICS_* variables.
# shellcheck disable=SC2153 source-path=SCRIPTDIR
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_NAME=queue-metrics
# shellcheck source=SCRIPTDIR/common.sh
. "$SCRIPT_DIR/common.sh"

RETRY_ATTEMPTS=${QUEUE_METRICS_RETRY_ATTEMPTS:-3}
RETRY_BACKOFF=${QUEUE_METRICS_RETRY_BACKOFF:-5}
# The Ruby process must end well within the minute (the unit allows 55 s in all).
READ_TIMEOUT=${QUEUE_METRICS_READ_TIMEOUT:-30}

# Prints "queue NAME SIZE LATENCY" for each queue given, then "retry N", "dead N" and
# "processes N". ProcessSet counts the processes whose heartbeat is recent. One line of
# Ruby, its statements joined by semicolons.
# shellcheck disable=SC2016  # Ruby's #{...}, not the shell's
READ_STATISTICS=(
  'require "sidekiq/api"'
  'Sidekiq.configure_client { |config| config.redis = { url: ENV["SIDEKIQ_REDIS_URL"] || ENV.fetch("REDIS_URL") } }'
  'ARGV.each { |name| queue = Sidekiq::Queue.new(name); puts "queue #{name} #{queue.size} #{queue.latency.to_f.round(3)}" }'
  'puts "retry #{Sidekiq::RetrySet.new.size}"'
  'puts "dead #{Sidekiq::DeadSet.new.size}"'
  'puts "processes #{Sidekiq::ProcessSet.new.size}"'
)

[ -r "$STACK_ENV_FILE" ] || fail "$STACK_ENV_FILE is missing: is this a Mastodon server?"
# Exported: the Python below reads the metric names from its environment.
set -a
# shellcheck source=/dev/null
. "$STACK_ENV_FILE"
set +a
require_stack_env AWS_REGION SIDEKIQ_QUEUE_WEIGHTS QUEUE_WORKER_QUEUES METRIC_QUEUE_DIMENSION METRIC_LATENCY \
  METRIC_SIZE METRIC_OLDEST_JOB METRIC_QUEUE_WORKER_LATENCY METRIC_DEAD METRIC_RETRY METRIC_PROCESSES
if [ -z "${METRICS_NAMESPACE:-}" ]; then
  log "the stack has no queue workers: nothing to publish"
  exit 0
fi

queues=()
for pair in $SIDEKIQ_QUEUE_WEIGHTS; do
  queues+=("${pair%%:*}")
done

[ -n "$(running_sidekiq)" ] || fail "mastodon-sidekiq is not running: no statistics to publish"
statistics=$(timeout "$READ_TIMEOUT" docker exec mastodon-sidekiq bundle exec ruby -e "$(IFS=';' && echo "${READ_STATISTICS[*]}")" \
  "${queues[@]}" 2>&1) || fail "cannot read Sidekiq's statistics: $(tail -n 3 <<<"$statistics" | tr '\n' ' ')"

data=$(mktemp)
trap 'rm -f "$data"' EXIT
STATISTICS=$statistics python3 - "$data" "$QUEUE_WORKER_QUEUES" "${queues[@]}" <<'PY' || fail "Sidekiq's statistics were not readable: $(tr '\n' ' ' <<<"$statistics")"
import json, os, sys
out, queue_workers, queues = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
env = os.environ
sizes, latencies, totals = {}, {}, {}
for line in env["STATISTICS"].splitlines():
    words = line.split()
    if len(words) == 4 and words[0] == "queue" and words[1] in queues:
        sizes[words[1]], latencies[words[1]] = int(words[2]), float(words[3])
    elif len(words) == 2 and words[0] in ("retry", "dead", "processes"):
        totals[words[0]] = int(words[1])
missing = [q for q in queues if q not in sizes] + [k for k in ("retry", "dead", "processes") if k not in totals]
if missing or min(latencies.values()) < 0:
    sys.exit(f"no usable figure for {', '.join(missing) or 'a latency'}")
def metric(name, value, unit, queue=None):
    datum = {"MetricName": name, "Value": value, "Unit": unit, "StorageResolution": 60}
    if queue is not None:
        datum["Dimensions"] = [{"Name": env["METRIC_QUEUE_DIMENSION"], "Value": queue}]
    return datum
data = [metric(env["METRIC_LATENCY"], latencies[q], "Seconds", q) for q in queues]
data += [metric(env["METRIC_SIZE"], sizes[q], "Count", q) for q in queues]
data += [
    metric(env["METRIC_OLDEST_JOB"], max(latencies.values()), "Seconds"),
    metric(env["METRIC_QUEUE_WORKER_LATENCY"], max(latencies.get(q, 0.0) for q in queue_workers), "Seconds"),
    metric(env["METRIC_RETRY"], totals["retry"], "Count"),
    metric(env["METRIC_DEAD"], totals["dead"], "Count"),
    metric(env["METRIC_PROCESSES"], totals["processes"], "Count"),
]
with open(out, "w") as f:
    json.dump(data, f)
PY

retry aws cloudwatch put-metric-data --region "$AWS_REGION" --namespace "$METRICS_NAMESPACE" \
  --metric-data "file://$data" || fail "put-metric-data failed after $RETRY_ATTEMPTS attempts"
log "published $(tr '\n' ' ' <<<"$statistics")"
