# shellcheck shell=bash
# Database connection pool sizing for one Mastodon instance, and the swap a small
# worker gets. Sourced; pure arithmetic.
#
#   mastodon_pools [--pooler] [--replica MAX_CONNECTIONS] ROLE MAX_CONNECTIONS WEB_MAX_SIZE ROLLOUT_SURGE
#                  RESERVE VCPUS MEMORY_MIB [SWAP_MIB [QUEUE_MAX_SIZE]]
#   mastodon_swap_mib MEMORY_MIB
#
# mastodon_pools prints KEY=value lines on stdout, or a reason on stderr and returns 1;
# mastodon_swap_mib prints the size of the swap file bootstrap.sh creates (0: none).
#
# --replica: the processes also open a pool of the same size on the read replica
# (REPLICA_DB_*), whose own max_connections bounds the share too.
# --pooler: the processes talk to a PgBouncer on the instance (transaction mode), which
# alone holds connections to the database(s): PGBOUNCER_POOL_SIZE of them on each, the
# instance's share. The processes are then sized by vCPUs and memory only; PgBouncer
# queues their transactions for a free server connection.
# Either way DATABASE_CONNECTIONS is what the instance may hold on each database, and
# INSTANCE_CONNECTIONS what its processes open (to PgBouncer, or to the database).
#
# Budget: the largest fleet the stack allows is (WEB_MAX_SIZE + ROLLOUT_SURGE) web
# instances plus exactly one worker plus QUEUE_MAX_SIZE queue workers (0 without them),
# and RESERVE connections stay free (superuser, one-off containers). Every instance
# computes the same share from the same inputs (capacity.fleet_instances):
#
#   share = (MAX_CONNECTIONS - RESERVE) / (WEB_MAX_SIZE + ROLLOUT_SURGE + 1 + QUEUE_MAX_SIZE)
#
# so the fleet's sum can never exceed MAX_CONNECTIONS - RESERVE, whatever it runs on.
# Another group of servers adds its maximum size to the instance count (instances=...).
#
# PostgreSQL connections each process may open (Mastodon 4.5 to 4.7):
#   Puma:      WEB_CONCURRENCY workers x DB_POOL (config/database.yml: pool = DB_POOL,
#              defaulting to MAX_THREADS), plus 1 counted for the preloading master.
#   Streaming: at most DB_POOL (streaming/database.js: pg.Pool max = DB_POOL, default 10).
#   Sidekiq:   DB_POOL, which must be >= its thread count (-c); the main worker (ROLE
#              worker) and each queue worker (ROLE queue) are sized alike.

# Memory figures (MiB): what the OS, Docker and the agents keep, what the streaming
# server takes, and what one Puma worker needs (Mastodon's workers run ~300-400 MiB).
MASTODON_POOLS_OS_MIB=450
MASTODON_POOLS_STREAMING_MIB=150
MASTODON_POOLS_PUMA_WORKER_MIB=400
MASTODON_POOLS_MAX_THREADS=5           # Mastodon's default MAX_THREADS
MASTODON_POOLS_MIN_THREADS=2
MASTODON_POOLS_MIN_STREAMING_POOL=2
MASTODON_POOLS_MAX_STREAMING_POOL=5
MASTODON_POOLS_SIDEKIQ_THREADS_PER_VCPU=10
MASTODON_POOLS_MIN_SIDEKIQ=2
# One Sidekiq process runs Ruby on one core at a time (the GVL): beyond ~50 threads more
# only wait. Sidekiq's developers name 50 the very most (GitLab caps its processes there,
# gitlab-org/omnibus-gitlab#5797); mastodon.social ran 50 a process (GROWTH.md section 7).
MASTODON_POOLS_MAX_SIDEKIQ=50
# Behind PgBouncer the database no longer bounds the processes' pools: this stands for
# "no limit" where the share would have been (vCPUs and memory bound them first).
MASTODON_POOLS_POOLED_SHARE=1000

# Sidekiq's memory: typically 300-600 MiB at Mastodon's default of 5 threads (the
# image links jemalloc). The worker needs RAM + swap for the OS and the top of that
# range, and RAM for the OS and its lower middle: swap is a cushion for peaks and for
# a one-off container (tootctl, db:migrate), not memory to run on. Threads beyond the
# default must fit in RAM at ~40 MiB each (a job's working set: fetched documents,
# link previews, images). So a 1 GiB instance runs the default 5 threads, and a 2 GiB
# one has room for more than 20, which its 2 vCPUs (10 threads each) cap first.
MASTODON_POOLS_SIDEKIQ_MIB=600
MASTODON_POOLS_SIDEKIQ_RESIDENT_MIB=350
MASTODON_POOLS_SIDEKIQ_DEFAULT_THREADS=5   # Mastodon's default concurrency
MASTODON_POOLS_SIDEKIQ_THREAD_MIB=40

# Swap for instances below 2 GiB. MemTotal sits 5-10% under the nominal size (kernel
# and firmware reservations), so 1536 MiB tells a 1 GiB instance (~900-950 MiB seen)
# from a 2 GiB one (~1900). The swap brings RAM + swap to 2 GiB, what a t4g.small
# worker has (the OS, Sidekiq's peak and a one-off Rails container fit with room to
# spare), and is at least 1 GiB.
MASTODON_SWAP_BELOW_MIB=1536
MASTODON_SWAP_TOTAL_MIB=2048
MASTODON_SWAP_MIN_MIB=1024

mastodon_swap_mib() {
  local memory_mib=${1:-}
  case $memory_mib in
    '' | *[!0-9]*)
      echo "mastodon_swap_mib: '$memory_mib' is not a non-negative integer" >&2
      return 1
      ;;
  esac
  if [ "$memory_mib" -ge "$MASTODON_SWAP_BELOW_MIB" ]; then
    echo 0
    return 0
  fi
  local swap=$((MASTODON_SWAP_TOTAL_MIB - memory_mib))
  [ "$swap" -lt "$MASTODON_SWAP_MIN_MIB" ] && swap=$MASTODON_SWAP_MIN_MIB
  echo "$swap"
}

mastodon_pools() {
  local pooler=false replica_max=""
  while [ "$#" -gt 0 ]; do
    case $1 in
      --pooler) pooler=true ;;
      --replica)
        replica_max=${2:-}
        [ -n "$replica_max" ] || {
          echo "mastodon_pools: --replica needs the replica's MAX_CONNECTIONS" >&2
          return 1
        }
        shift
        ;;
      *) break ;;
    esac
    shift
  done
  if [ "$#" -lt 7 ] || [ "$#" -gt 9 ]; then
    echo "mastodon_pools: expected [--pooler] [--replica MAX_CONNECTIONS] ROLE MAX_CONNECTIONS WEB_MAX_SIZE ROLLOUT_SURGE RESERVE VCPUS MEMORY_MIB [SWAP_MIB [QUEUE_MAX_SIZE]]" >&2
    return 1
  fi
  local role=$1 max_connections=$2 web_max_size=$3 surge=$4 reserve=$5 vcpus=$6 memory_mib=$7 swap_mib=${8:-0}
  local queue_max_size=${9:-0}
  local arg
  for arg in "$max_connections" "$web_max_size" "$surge" "$reserve" "$vcpus" "$memory_mib" "$swap_mib" "$queue_max_size" ${replica_max:+"$replica_max"}; do
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

  # The replica holds a pool of the same size as the primary's: the smaller database
  # bounds both.
  if [ -n "$replica_max" ] && [ "$replica_max" -lt "$max_connections" ]; then
    max_connections=$replica_max
  fi
  local instances=$((web_max_size + surge + 1 + queue_max_size))
  local budget=$((max_connections - reserve))
  if [ "$budget" -lt 1 ]; then
    echo "mastodon_pools: MAX_CONNECTIONS $max_connections leaves nothing after the reserve of $reserve" >&2
    return 1
  fi
  local share=$((budget / instances))
  local databases=1
  [ -z "$replica_max" ] || databases=2

  if [ "$pooler" = true ]; then
    if [ "$share" -lt 1 ]; then
      echo "mastodon_pools: PgBouncer cannot hold even 1 connection per instance: max_connections" \
        "$max_connections over $instances instances; choose a larger database class or a smaller web group" >&2
      return 1
    fi
    local sizes
    case $role in
      web) sizes=$(_mastodon_pools_web "$MASTODON_POOLS_POOLED_SHARE" "$vcpus" "$memory_mib" "$max_connections" "$instances") ;;
      worker | queue) sizes=$(_mastodon_pools_worker "$MASTODON_POOLS_POOLED_SHARE" "$vcpus" "$memory_mib" "$max_connections" "$instances" "$swap_mib") ;;
      *) _mastodon_pools_role "$role" || return 1 ;;
    esac || return 1
    local line clients=0
    while IFS= read -r line; do
      case $line in
        CONNECTION_SHARE=* | DATABASE_CONNECTIONS=*) ;;
        INSTANCE_CONNECTIONS=*)
          clients=${line#*=}
          echo "$line"
          ;;
        *) echo "$line" ;;
      esac
    done <<<"$sizes"
    echo "CONNECTION_SHARE=$share"
    echo "PGBOUNCER_POOL_SIZE=$share"
    # Every client connection on every database, twice: a restart's new containers
    # connect before the old ones have let go.
    echo "PGBOUNCER_MAX_CLIENT_CONN=$((clients * databases * 2))"
    echo "DATABASE_CONNECTIONS=$share"
    return 0
  fi

  case $role in
    web) _mastodon_pools_web "$share" "$vcpus" "$memory_mib" "$max_connections" "$instances" ;;
    worker | queue) _mastodon_pools_worker "$share" "$vcpus" "$memory_mib" "$max_connections" "$instances" "$swap_mib" ;;
    *) _mastodon_pools_role "$role" ;;
  esac || return 1
}

_mastodon_pools_role() {
  echo "mastodon_pools: ROLE must be web, worker or queue, not '$1'" >&2
  return 1
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
      "and $memory_mib MiB of memory; choose a larger database class or fewer web or queue-worker servers" >&2
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
  echo "DATABASE_CONNECTIONS=$((workers * threads + 1 + streaming))"
}

_mastodon_pools_worker() {
  local share=$1 vcpus=$2 memory_mib=$3 max_connections=$4 instances=$5 swap_mib=$6
  local need=$((MASTODON_POOLS_OS_MIB + MASTODON_POOLS_SIDEKIQ_MIB))
  local need_ram=$((MASTODON_POOLS_OS_MIB + MASTODON_POOLS_SIDEKIQ_RESIDENT_MIB))

  if [ $((memory_mib + swap_mib)) -lt "$need" ]; then
    echo "mastodon_pools: the worker needs at least $need MiB of RAM + swap for Sidekiq," \
      "it has $memory_mib MiB of RAM and $swap_mib MiB of swap" >&2
    return 1
  fi
  if [ "$memory_mib" -lt "$need_ram" ]; then
    echo "mastodon_pools: the worker needs at least $need_ram MiB of RAM for Sidekiq" \
      "(swap only cushions its peaks), it has $memory_mib MiB" >&2
    return 1
  fi
  # Threads: Mastodon's default, plus one per THREAD_MIB of RAM beyond the OS and
  # Sidekiq's peak at that default; then no more than the vCPUs and the share allow.
  local by_memory=$MASTODON_POOLS_SIDEKIQ_DEFAULT_THREADS
  if [ "$memory_mib" -gt "$need" ]; then
    by_memory=$((by_memory + (memory_mib - need) / MASTODON_POOLS_SIDEKIQ_THREAD_MIB))
  fi
  local concurrency=$share
  local by_cpu=$((vcpus * MASTODON_POOLS_SIDEKIQ_THREADS_PER_VCPU))
  [ "$by_cpu" -lt "$concurrency" ] && concurrency=$by_cpu
  [ "$by_memory" -lt "$concurrency" ] && concurrency=$by_memory
  [ "$MASTODON_POOLS_MAX_SIDEKIQ" -lt "$concurrency" ] && concurrency=$MASTODON_POOLS_MAX_SIDEKIQ
  if [ "$concurrency" -lt "$MASTODON_POOLS_MIN_SIDEKIQ" ]; then
    echo "mastodon_pools: the worker cannot fit Sidekiq concurrency $MASTODON_POOLS_MIN_SIDEKIQ:" \
      "its share is $share connections (max_connections $max_connections over $instances instances);" \
      "choose a larger database class or fewer web or queue-worker servers" >&2
    return 1
  fi
  echo "SIDEKIQ_CONCURRENCY=$concurrency"
  echo "DB_POOL=$concurrency"
  echo "INSTANCE_CONNECTIONS=$concurrency"
  echo "CONNECTION_SHARE=$share"
  echo "DATABASE_CONNECTIONS=$concurrency"
}
