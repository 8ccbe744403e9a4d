# shellcheck shell=bash
# Database connection pool sizing for one Mastodon instance. Sourced; pure arithmetic.
#
#   mastodon_pools ROLE MAX_CONNECTIONS WEB_MAX_SIZE ROLLOUT_SURGE RESERVE VCPUS MEMORY_MIB
#
# prints KEY=value lines on stdout, or a reason on stderr and returns 1.
#
# Budget: the largest fleet the stack allows is (WEB_MAX_SIZE + ROLLOUT_SURGE) web
# instances plus exactly one worker, and RESERVE connections stay free (superuser,
# one-off containers). Every instance computes the same share from the same inputs:
#
#   share = (MAX_CONNECTIONS - RESERVE) / (WEB_MAX_SIZE + ROLLOUT_SURGE + 1)
#
# so the fleet's sum can never exceed MAX_CONNECTIONS - RESERVE, whatever it runs on.
#
# PostgreSQL connections each process may open (Mastodon 4.5 to 4.7):
#   Puma:      WEB_CONCURRENCY workers x DB_POOL (config/database.yml: pool = DB_POOL,
#              defaulting to MAX_THREADS), plus 1 counted for the preloading master.
#   Streaming: at most DB_POOL (streaming/database.js: pg.Pool max = DB_POOL, default 10).
#   Sidekiq:   DB_POOL, which must be >= its thread count (-c).

# Memory figures (MiB): what the OS, Docker and the agents keep, what the streaming
# server takes, and what one Puma worker needs (Mastodon's workers run ~300-400 MiB).
MASTODON_POOLS_OS_MIB=450
MASTODON_POOLS_STREAMING_MIB=150
MASTODON_POOLS_PUMA_WORKER_MIB=400
MASTODON_POOLS_SIDEKIQ_MIB=600
MASTODON_POOLS_MAX_THREADS=5           # Mastodon's default MAX_THREADS
MASTODON_POOLS_MIN_THREADS=2
MASTODON_POOLS_MIN_STREAMING_POOL=2
MASTODON_POOLS_MAX_STREAMING_POOL=5
MASTODON_POOLS_SIDEKIQ_THREADS_PER_VCPU=10
MASTODON_POOLS_MIN_SIDEKIQ=2

mastodon_pools() {
  if [ "$#" -ne 7 ]; then
    echo "mastodon_pools: expected ROLE MAX_CONNECTIONS WEB_MAX_SIZE ROLLOUT_SURGE RESERVE VCPUS MEMORY_MIB" >&2
    return 1
  fi
  local role=$1 max_connections=$2 web_max_size=$3 surge=$4 reserve=$5 vcpus=$6 memory_mib=$7
  local arg
  for arg in "$max_connections" "$web_max_size" "$surge" "$reserve" "$vcpus" "$memory_mib"; do
    case $arg in
      '' | *[!0-9]*)
        echo "mastodon_pools: '$arg' is not a non-negative integer" >&2
        return 1
        ;;
    esac
  done
  if [ "$web_max_size" -lt 1 ] || [ "$vcpus" -lt 1 ]; then
    echo "mastodon_pools: WEB_MAX_SIZE and VCPUS must be at least 1" >&2
    return 1
  fi

  local instances=$((web_max_size + surge + 1))
  local budget=$((max_connections - reserve))
  if [ "$budget" -lt 1 ]; then
    echo "mastodon_pools: MAX_CONNECTIONS $max_connections leaves nothing after the reserve of $reserve" >&2
    return 1
  fi
  local share=$((budget / instances))

  case $role in
    web) _mastodon_pools_web "$share" "$vcpus" "$memory_mib" "$max_connections" "$instances" ;;
    worker) _mastodon_pools_worker "$share" "$vcpus" "$memory_mib" "$max_connections" "$instances" ;;
    *)
      echo "mastodon_pools: ROLE must be web or worker, not '$role'" >&2
      return 1
      ;;
  esac
}

_mastodon_pools_web() {
  local share=$1 vcpus=$2 memory_mib=$3 max_connections=$4 instances=$5

  # Streaming holds few connections (token lookups); a fifth of the share, 2 to 5.
  local streaming=$((share / 5))
  [ "$streaming" -lt "$MASTODON_POOLS_MIN_STREAMING_POOL" ] && streaming=$MASTODON_POOLS_MIN_STREAMING_POOL
  [ "$streaming" -gt "$MASTODON_POOLS_MAX_STREAMING_POOL" ] && streaming=$MASTODON_POOLS_MAX_STREAMING_POOL

  # What Puma workers may hold: the share less streaming and the Puma master.
  local available=$((share - streaming - 1))
  local by_connections=$((available / MASTODON_POOLS_MIN_THREADS))
  local by_memory=$(((memory_mib - MASTODON_POOLS_OS_MIB - MASTODON_POOLS_STREAMING_MIB) / MASTODON_POOLS_PUMA_WORKER_MIB))
  local max_workers=$vcpus
  [ "$by_memory" -lt "$max_workers" ] && max_workers=$by_memory
  [ "$by_connections" -lt "$max_workers" ] && max_workers=$by_connections

  if [ "$max_workers" -lt 1 ]; then
    echo "mastodon_pools: a web instance cannot fit 1 Puma worker x $MASTODON_POOLS_MIN_THREADS threads + streaming pool $MASTODON_POOLS_MIN_STREAMING_POOL:" \
      "its share is $share connections (max_connections $max_connections over $instances instances)" \
      "and $memory_mib MiB of memory; choose a larger database class or a smaller web group" >&2
    return 1
  fi

  # Pick the worker count that serves the most threads; on a tie, more processes
  # (better throughput, per Mastodon's scaling guide). Searching every count up to
  # the limit keeps a bigger instance from ever getting fewer threads than a smaller one.
  local workers=1 threads=0 best_total=0 w t
  for ((w = 1; w <= max_workers; w++)); do
    t=$((available / w))
    [ "$t" -gt "$MASTODON_POOLS_MAX_THREADS" ] && t=$MASTODON_POOLS_MAX_THREADS
    if [ $((w * t)) -ge "$best_total" ]; then
      best_total=$((w * t))
      workers=$w
      threads=$t
    fi
  done

  echo "WEB_CONCURRENCY=$workers"
  echo "MAX_THREADS=$threads"
  echo "DB_POOL=$threads"
  echo "STREAMING_DB_POOL=$streaming"
  echo "INSTANCE_CONNECTIONS=$((workers * threads + 1 + streaming))"
  echo "CONNECTION_SHARE=$share"
}

_mastodon_pools_worker() {
  local share=$1 vcpus=$2 memory_mib=$3 max_connections=$4 instances=$5

  if [ "$memory_mib" -lt $((MASTODON_POOLS_OS_MIB + MASTODON_POOLS_SIDEKIQ_MIB)) ]; then
    echo "mastodon_pools: the worker needs at least $((MASTODON_POOLS_OS_MIB + MASTODON_POOLS_SIDEKIQ_MIB)) MiB for Sidekiq, it has $memory_mib MiB" >&2
    return 1
  fi
  local concurrency=$share
  local by_cpu=$((vcpus * MASTODON_POOLS_SIDEKIQ_THREADS_PER_VCPU))
  [ "$by_cpu" -lt "$concurrency" ] && concurrency=$by_cpu
  if [ "$concurrency" -lt "$MASTODON_POOLS_MIN_SIDEKIQ" ]; then
    echo "mastodon_pools: the worker cannot fit Sidekiq concurrency $MASTODON_POOLS_MIN_SIDEKIQ:" \
      "its share is $share connections (max_connections $max_connections over $instances instances);" \
      "choose a larger database class or a smaller web group" >&2
    return 1
  fi
  echo "SIDEKIQ_CONCURRENCY=$concurrency"
  echo "DB_POOL=$concurrency"
  echo "INSTANCE_CONNECTIONS=$concurrency"
  echo "CONNECTION_SHARE=$share"
}
