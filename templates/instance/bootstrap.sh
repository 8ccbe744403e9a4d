#!/bin/bash
# Boots one Mastodon instance (web, worker or queue) on Amazon Linux 2023, as root, from user data.
#
# Reads stack.env (written by user data), adds swap below 2 GiB of RAM (a micro
# worker), caps the journal, installs Docker, renders mastodon.env (common.sh says
# where both live) from Secrets Manager, SSM and the CloudFront prefix list,
# sizes the database pools, writes one systemd unit per container, makes room for and
# pulls the images, initializes the database once (worker) or waits for it (web and
# queue workers), waits for local health, starts the queue-metrics timer (the worker,
# with queue workers on) and the search index creation in the background (the worker,
# with search on), and signals the Auto Scaling group. Any failure signals
# FAILURE with the step that failed. Running it again on the same server is safe.
#
# Tests redirect every path with MASTODON_ROOT and shorten every wait with the
# BOOTSTRAP_* variables below.
# The upper-case settings (ROLE, DB_HOST, ...) come from stack.env, sourced at run time.
# shellcheck disable=SC2153 source-path=SCRIPTDIR
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_NAME=bootstrap
# shellcheck source=SCRIPTDIR/common.sh
. "$SCRIPT_DIR/common.sh" || {
  echo "bootstrap: cannot read $SCRIPT_DIR/common.sh" >&2
  exit 1
}

LOG_FILE="$ROOT/var/log/mastodon-bootstrap.log"
MEMINFO_FILE=${MEMINFO_FILE:-/proc/meminfo}
SWAPS_FILE=${SWAPS_FILE:-/proc/swaps}
SWAP_FILE="$ROOT/swapfile"
FSTAB_FILE="$ROOT/etc/fstab"
SYSCTL_FILE="$ROOT/etc/sysctl.d/90-mastodon-swap.conf"
JOURNALD_FILE="$ROOT/etc/systemd/journald.conf.d/50-mastodon.conf"
KEEP_ALIVE_FILE="$ETC_DIR/streaming-keep-alive.cjs"
# The optional PgBouncer's configuration (DB_POOLER=true), mounted read-only into its
# container as /etc/pgbouncer; the unprivileged user the container runs as owns it.
PGBOUNCER_DIR="$ETC_DIR/pgbouncer"
RUNTIME_PGBOUNCER_DIR="$RUNTIME_ETC_DIR/pgbouncer"
PGBOUNCER_UID=6432
# The replica's database as PgBouncer names it; it leads to DB_NAME on the replica.
PGBOUNCER_REPLICA_DB=mastodon_replica

# Paths as the containers and units see them on the instance (never redirected).
RUNTIME_SCRIPT_DIR=${SCRIPT_DIR#"$ROOT"}
RUNTIME_SWAP_FILE=/swapfile
RUNTIME_KEEP_ALIVE_FILE="$RUNTIME_ETC_DIR/streaming-keep-alive.cjs"
DOCKER=/usr/bin/docker

# Swap holds what Sidekiq's peaks and one-off containers push out; with a low
# swappiness the kernel keeps the hot memory in RAM and swaps only under pressure.
SWAPPINESS=10
# Creating the swap file leaves at least this much of the root volume free.
SWAP_DISK_MARGIN_MIB=256
# The units run `docker run` attached, so the journal receives every container's
# output as well as CloudWatch Logs (the copy that is kept). journald would take 10%
# of the root volume by default (~800 MiB of 8 GiB); a quarter of that keeps days of
# output for a look on the server and leaves the rest to images and swap.
JOURNAL_MAX_USE=200M
# Containers log through the awslogs driver without blocking: when CloudWatch Logs
# throttles or is out of reach, lines beyond this buffer are dropped instead of
# stalling Puma, streaming or Sidekiq on a full pipe.
LOG_BUFFER_SIZE=4m

# The database and health waits come from stack.env (BOOT_*_WAIT_SECONDS: the template
# sizes the groups' grace period and signal timeout on them); tests may override.
DB_WAIT_TIMEOUT=${BOOTSTRAP_DB_WAIT_TIMEOUT:-}
DB_POLL_INTERVAL=${BOOTSTRAP_DB_POLL_INTERVAL:-15}
DB_CHECK_ATTEMPTS=${BOOTSTRAP_DB_CHECK_ATTEMPTS:-5}
HEALTH_TIMEOUT=${BOOTSTRAP_HEALTH_TIMEOUT:-}
TARGET_TIMEOUT=${BOOTSTRAP_TARGET_TIMEOUT:-}
HEALTH_INTERVAL=${BOOTSTRAP_HEALTH_INTERVAL:-5}
WORKER_STABLE_SECONDS=${BOOTSTRAP_WORKER_STABLE_SECONDS:-30}
RETRY_ATTEMPTS=${BOOTSTRAP_RETRY_ATTEMPTS:-3}
RETRY_BACKOFF=${BOOTSTRAP_RETRY_BACKOFF:-10}

# `rails runner` exit codes: "connected, but the schema is not loaded", and "schema
# loaded, but the seeds never ran" (db:setup died between schema load and seeds).
DB_EMPTY_EXIT=10
DB_UNSEEDED_EXIT=11

STEP="starting"
SUCCEEDED=false
INSTANCE_ID=unknown

mkdir -p "$(dirname "$LOG_FILE")"
exec > >(tee -a "$LOG_FILE") 2>&1
TEE_PID=$!

step() {
  STEP=$1
  log "---- $1"
}

# --- signalling and log shipping -------------------------------------------------

sanitize_id() {
  # CloudFormation unique ids: keep them to plain characters.
  printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '-' | cut -c "1-$2"
}

region_args() {
  [ -z "${AWS_REGION:-}" ] || printf '%s\n' --region "$AWS_REGION"
}

signal() {
  local status=$1 reason=${2:-} unique_id
  unique_id=$INSTANCE_ID
  if [ -n "$reason" ]; then
    unique_id="$INSTANCE_ID-$(sanitize_id "$reason" $((63 - ${#INSTANCE_ID})))"
  fi
  log "signalling $status to $SIGNAL_RESOURCE as $unique_id"
  RETRY_ATTEMPTS=${RETRY_ATTEMPTS:-3} retry signal_once "$status" "$unique_id"
}

signal_once() {
  local output
  local -a region
  mapfile -t region < <(region_args)
  if output=$(aws cloudformation signal-resource "${region[@]}" --stack-name "$STACK_NAME" \
    --logical-resource-id "$SIGNAL_RESOURCE" --unique-id "$2" --status "$1" 2>&1); then
    return 0
  fi
  # Scale-outs, replacements and the rollout's extra server boot outside any stack
  # operation: CloudFormation refuses the signal, and no one is waiting for it.
  case $output in
    *ValidationError*)
      log "no stack operation waits for this server's signal ($output)"
      return 0
      ;;
  esac
  log "signal failed: $output"
  return 1
}

# PutLogEvents takes at most 1,048,576 bytes a call, counted as each message's UTF-8
# bytes plus 26, and 10,000 events: the log goes in as many batches as it needs.
PUT_LOG_EVENTS_MAX_BYTES=1048576
PUT_LOG_EVENTS_MAX_EVENTS=10000

ship_log() {
  [ -n "${LOG_GROUP_SYSTEM:-}" ] || return 0
  local batches batch
  batches=$(mktemp -d)
  python3 - "$LOG_FILE" "$batches" "$PUT_LOG_EVENTS_MAX_BYTES" "$PUT_LOG_EVENTS_MAX_EVENTS" <<'PY' || {
import json, os, sys, time
log, out, max_bytes, max_events = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
OVERHEAD, LINE_BYTES = 26, 8000
lines = open(log, encoding="utf-8", errors="replace").read().splitlines()[-5000:]
now = int(time.time() * 1000)
batches, batch, size = [], [], 0
for line in lines:
    # Cut by bytes, not characters, and never inside a character.
    message = line.encode()[:LINE_BYTES].decode(errors="ignore") or " "
    cost = len(message.encode()) + OVERHEAD
    if batch and (size + cost > max_bytes or len(batch) == max_events):
        batches.append(batch)
        batch, size = [], 0
    batch.append({"timestamp": now, "message": message})
    size += cost
if batch:
    batches.append(batch)
for number, events in enumerate(batches):
    with open(os.path.join(out, f"{number:04d}.json"), "w") as f:
        json.dump(events, f)
PY
    rm -rf "$batches"
    return 0
  }
  local -a region
  mapfile -t region < <(region_args)
  aws logs create-log-stream "${region[@]}" --log-group-name "$LOG_GROUP_SYSTEM" \
    --log-stream-name "$INSTANCE_ID/bootstrap" >/dev/null 2>&1 || true
  for batch in "$batches"/*.json; do
    [ -e "$batch" ] || continue
    aws logs put-log-events "${region[@]}" --log-group-name "$LOG_GROUP_SYSTEM" \
      --log-stream-name "$INSTANCE_ID/bootstrap" --log-events "file://$batch" >/dev/null || {
      log "could not ship the bootstrap log to $LOG_GROUP_SYSTEM"
      break
    }
  done
  rm -rf "$batches"
}

on_exit() {
  local rc=$?
  trap - EXIT
  set +e
  if [ "$SUCCEEDED" != true ]; then
    local reason=${FAILURE_REASON:-"$STEP failed (exit $rc)"}
    log "bootstrap failed at step '$STEP': $reason"
    if [ -n "${STACK_NAME:-}" ] && [ -n "${SIGNAL_RESOURCE:-}" ]; then
      signal FAILURE "$STEP: $reason" || log "could not signal FAILURE"
    fi
    if [ "${ROLE:-}" = web ] && [ -n "${LAUNCH_HOOK:-}" ] && [ "$INSTANCE_ID" != unknown ]; then
      complete_launch ABANDON || log "could not abandon the launch; Auto Scaling does when the hook times out"
    fi
    if [ "${ROLE:-}" = queue ] && [ -n "${AWS_REGION:-}" ] && [ "$INSTANCE_ID" != unknown ]; then
      mark_unhealthy || log "could not mark this server Unhealthy; it stays in service with nothing running"
    fi
  fi
  ship_log
  exec >&- 2>&-
  wait "$TEE_PID" 2>/dev/null
  exit "$rc"
}
trap on_exit EXIT

# --- helpers ---------------------------------------------------------------------

# Reads a JSON document on stdin and prints one value. Secrets only ever travel on
# stdin and stdout, never on a command line.
json_get() {
  python3 -c '
import json, sys
doc = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    doc = doc.get(key) if isinstance(doc, dict) else None
if doc is None:
    sys.exit(3)
if isinstance(doc, list):
    print("\n".join(str(item) for item in doc))
else:
    sys.stdout.write(str(doc))
' "$1"
}

# Keys of the application secret that Mastodon needs (other keys are ignored).
APP_SECRET_KEYS=(SECRET_KEY_BASE OTP_SECRET ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY
  ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY
  VAPID_PRIVATE_KEY VAPID_PUBLIC_KEY DB_PASS REDIS_PASSWORD)

# Reads a JSON object on stdin and prints KEY NUL VALUE NUL for each key asked for
# that it holds, in one pass.
json_fields() {
  python3 -c '
import json, sys
doc = json.load(sys.stdin)
for key in sys.argv[1:]:
    if isinstance(doc.get(key), str):
        sys.stdout.write(key + "\0" + doc[key] + "\0")
' "$@"
}

urlencode() {
  python3 -c 'import sys, urllib.parse; sys.stdout.write(urllib.parse.quote(sys.stdin.read(), safe=""))'
}

imds_instance_id() {
  local token
  token=$(curl -fsS -X PUT "$IMDS_URL/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300") &&
    curl -fsS -H "X-aws-ec2-metadata-token: $token" "$IMDS_URL/latest/meta-data/instance-id"
}

container_logs() {
  local name=$1
  log "last lines of $name:"
  docker logs --tail "${BOOTSTRAP_LOG_TAIL:-50}" "$name" 2>&1 || log "(no container logs for $name)"
}

# --- steps -----------------------------------------------------------------------

load_stack_env() {
  step "read stack settings"
  [ -r "$STACK_ENV_FILE" ] || fail "$STACK_ENV_FILE is missing"
  # shellcheck source=/dev/null
  . "$STACK_ENV_FILE"
  require_stack_env STACK_NAME AWS_REGION ROLE SIGNAL_RESOURCE LOCAL_DOMAIN MASTODON_IMAGE STREAMING_IMAGE \
    DEPLOYED_VERSION_PARAMETER APP_SECRET_ARN DB_HOST DB_PORT DB_NAME DB_USER REDIS_HOST REDIS_PORT \
    S3_BUCKET S3_ALIAS_HOST SMTP_SERVER SMTP_PORT SMTP_FROM_ADDRESS LOG_GROUP_WEB LOG_GROUP_STREAMING \
    LOG_GROUP_SIDEKIQ LOG_GROUP_SYSTEM MAX_CONNECTIONS WEB_MAX_SIZE ROLLOUT_SURGE DB_CONNECTION_RESERVE \
    CLOUDFRONT_PREFIX_LIST_ID VPC_CIDR TARGET_KEEP_ALIVE_SECONDS BOOT_DATABASE_WAIT_SECONDS \
    BOOT_HEALTH_WAIT_SECONDS TAG_PATTERN VERSION_TAG WEB_PORT WEB_HEALTH_PATH STREAMING_PORT \
    STREAMING_HEALTH_PATH ONE_OFF_DB_POOL IMDS_URL QUEUE_WORKER_MAX_SIZE MAIN_WORKER_QUEUES \
    QUEUE_WORKER_QUEUES SIDEKIQ_QUEUE_WEIGHTS SIDEKIQ_SCHEDULER_QUEUE SIDEKIQ_ALL_QUEUES \
    SIDEKIQ_SHUTDOWN_SECONDS CONTAINER_STOP_SECONDS
  SMTP_LOGIN=${SMTP_LOGIN:-}
  SMTP_PASSWORD_SECRET_ARN=${SMTP_PASSWORD_SECRET_ARN:-}
  # Set only with a cache-only Redis (SeparateCacheNodeType); empty, Rails.cache shares REDIS_URL.
  CACHE_REDIS_HOST=${CACHE_REDIS_HOST:-}
  CACHE_REDIS_PORT=${CACHE_REDIS_PORT:-}
  if [ -n "$CACHE_REDIS_HOST" ] && ! [[ $CACHE_REDIS_PORT =~ ^[1-9][0-9]*$ ]]; then
    fail "CACHE_REDIS_PORT must be a port number with CACHE_REDIS_HOST, not '$CACHE_REDIS_PORT'"
  fi
  SETTINGS_PATH=${SETTINGS_PATH:-}
  SETTINGS_SECRET_ARN=${SETTINGS_SECRET_ARN:-}
  if settings_enabled; then
    require_stack_env SETTINGS_NAME_PATTERN SETTINGS_MAX SETTINGS_OWNED_PREFIXES SETTINGS_RESERVED_NAMES \
      SETTINGS_FAILURE
  fi
  local key
  # Options of issue 13 (absent from stack.env when off).
  DB_POOLER=${DB_POOLER:-false}
  REPLICA_DB_HOST=${REPLICA_DB_HOST:-}
  case $DB_POOLER in
    true) require_stack_env PGBOUNCER_IMAGE PGBOUNCER_PORT ;;
    false) ;;
    *) fail "DB_POOLER must be true or false, not '$DB_POOLER'" ;;
  esac
  if [ -n "$REPLICA_DB_HOST" ]; then
    require_stack_env REPLICA_DB_PORT REPLICA_MAX_CONNECTIONS
  fi
  for key in TARGET_KEEP_ALIVE_SECONDS BOOT_DATABASE_WAIT_SECONDS BOOT_HEALTH_WAIT_SECONDS \
    SIDEKIQ_SHUTDOWN_SECONDS CONTAINER_STOP_SECONDS; do
    [[ ${!key} =~ ^[1-9][0-9]*$ ]] || fail "$key must be a number of seconds, not '${!key}'"
  done
  METRICS_NAMESPACE=${METRICS_NAMESPACE:-}
  DB_WAIT_TIMEOUT=${DB_WAIT_TIMEOUT:-$BOOT_DATABASE_WAIT_SECONDS}
  HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-$BOOT_HEALTH_WAIT_SECONDS}
  case $ROLE in
    web)
      for key in LAUNCH_HOOK WEB_TARGET_GROUP_ARN STREAMING_TARGET_GROUP_ARN BOOT_TARGET_WAIT_SECONDS; do
        [ -n "${!key:-}" ] || fail "$key is not set in stack.env"
      done
      [[ $BOOT_TARGET_WAIT_SECONDS =~ ^[1-9][0-9]*$ ]] ||
        fail "BOOT_TARGET_WAIT_SECONDS must be a number of seconds, not '$BOOT_TARGET_WAIT_SECONDS'"
      TARGET_TIMEOUT=${TARGET_TIMEOUT:-$BOOT_TARGET_WAIT_SECONDS}
      ;;
    worker | queue) ;;
    *) fail "ROLE must be web, worker or queue, not '$ROLE'" ;;
  esac
  # Full-text search (templates/search.py): off unless the stack has a domain.
  ES_ENABLED=${ES_ENABLED:-false}
  case $ES_ENABLED in
    true) require_stack_env ES_HOST ES_PORT ES_USER ES_PRESET SEARCH_MARKER_INDEX SEARCH_DEPLOY_FAILED ;;
    false) ;;
    *) fail "ES_ENABLED must be true or false, not '$ES_ENABLED'" ;;
  esac
  # Your own images (templates/compute.py _image_registry_env): the stack's own ECR
  # registry while an image is there. An image in another account's or region's registry
  # is refused here, before anything changes on this server, and the signal names it.
  ECR_REGISTRY=${ECR_REGISTRY:-}
  ECR_HOST_PATTERN=${ECR_HOST_PATTERN:-}
  refuse_foreign_registry "$MASTODON_IMAGE"
  refuse_foreign_registry "$STREAMING_IMAGE"
}

load_libraries() {
  step "load sizing and disk helpers"
  # shellcheck source=SCRIPTDIR/pools.sh
  . "$SCRIPT_DIR/pools.sh" || fail "cannot read $SCRIPT_DIR/pools.sh"
  # shellcheck source=SCRIPTDIR/disk.sh
  . "$SCRIPT_DIR/disk.sh" || fail "cannot read $SCRIPT_DIR/disk.sh"
}

find_instance_id() {
  step "instance identity"
  INSTANCE_ID=$(retry imds_instance_id) || fail "cannot read the instance id from IMDSv2"
  log "instance $INSTANCE_ID, role $ROLE, stack $STACK_NAME"
}

memory_mib() {
  local kib
  kib=$(awk '/^MemTotal:/ { print $2 }' "$MEMINFO_FILE") && [ -n "$kib" ] || return 1
  echo $((kib / 1024))
}

# Swap in use, in MiB (/proc/swaps: a header line, then sizes in KiB in column 3).
swap_total_mib() {
  [ -r "$SWAPS_FILE" ] || {
    echo 0
    return 0
  }
  awk 'NR > 1 { kib += $3 } END { print int(kib / 1024) }' "$SWAPS_FILE"
}

swap_file_active() {
  [ -r "$SWAPS_FILE" ] && awk -v file="$SWAP_FILE" 'NR > 1 && $1 == file { found = 1 } END { exit !found }' "$SWAPS_FILE"
}

# Below 2 GiB of RAM (a micro worker), a swap file brings RAM + swap to 2 GiB
# (pools.sh: mastodon_swap_mib). Idempotent: a second run finds the file in use and
# the fstab line present, and a reboot enables the file from fstab.
ensure_swap() {
  step "swap"
  local memory swap bytes free
  memory=$(memory_mib) || fail "cannot read MemTotal from $MEMINFO_FILE"
  swap=$(mastodon_swap_mib "$memory") || fail "cannot size the swap for $memory MiB"
  if [ "$swap" -eq 0 ]; then
    log "$memory MiB of RAM: no swap needed"
    return 0
  fi
  bytes=$((swap * 1024 * 1024))
  if swap_file_active; then
    log "$RUNTIME_SWAP_FILE is already in use"
  else
    if [ ! -f "$SWAP_FILE" ] || [ "$(stat -c %s "$SWAP_FILE")" -ne "$bytes" ]; then
      rm -f "$SWAP_FILE"
      free=$(mastodon_free_mib "$(dirname "$SWAP_FILE")") || fail "cannot measure the free space for the swap file"
      if [ "$free" -lt $((swap + SWAP_DISK_MARGIN_MIB)) ]; then
        fail "cannot create a $swap MiB swap file: only $free MiB free on the root volume"
      fi
      # Written out, not fallocated: swapon refuses files with holes on some file systems.
      local output
      if ! output=$(umask 077 && dd if=/dev/zero of="$SWAP_FILE" bs=1M count="$swap" status=none 2>&1); then
        rm -f "$SWAP_FILE"
        fail "cannot write the $swap MiB swap file $RUNTIME_SWAP_FILE: $output"
      fi
    fi
    chmod 0600 "$SWAP_FILE"
    mkswap "$SWAP_FILE" >/dev/null || fail "mkswap $RUNTIME_SWAP_FILE failed"
    swapon "$SWAP_FILE" || fail "swapon $RUNTIME_SWAP_FILE failed"
  fi
  mkdir -p "$(dirname "$FSTAB_FILE")" "$(dirname "$SYSCTL_FILE")"
  if ! awk -v file="$RUNTIME_SWAP_FILE" '$1 == file { found = 1 } END { exit !found }' "$FSTAB_FILE" 2>/dev/null; then
    printf '%s none swap defaults 0 0\n' "$RUNTIME_SWAP_FILE" >>"$FSTAB_FILE"
  fi
  printf '# Written by bootstrap.sh: keep hot memory in RAM, swap only under pressure.\nvm.swappiness = %s\n' \
    "$SWAPPINESS" >"$SYSCTL_FILE"
  sysctl -q -w "vm.swappiness=$SWAPPINESS" || fail "cannot set vm.swappiness"
  log "$memory MiB of RAM + $swap MiB of swap in $RUNTIME_SWAP_FILE (swappiness $SWAPPINESS)"
}

limit_journal() {
  step "limit the journal"
  mkdir -p "$(dirname "$JOURNALD_FILE")"
  printf '# Written by bootstrap.sh: CloudWatch Logs keeps the logs; the root volume is small.\n[Journal]\nSystemMaxUse=%s\n' \
    "$JOURNAL_MAX_USE" >"$JOURNALD_FILE"
  # Not worth failing a boot over: the limit applies at the next start anyway.
  systemctl restart systemd-journald || log "could not restart systemd-journald; the limit applies after a reboot"
}

install_docker() {
  step "install docker"
  retry dnf install -y docker || fail "dnf install docker failed"
  # The ECR credential helper (common.sh registry_login), from Amazon Linux 2023's own
  # repository, only when an image is in the stack's ECR registry.
  if [ -n "$ECR_REGISTRY" ]; then
    retry dnf install -y amazon-ecr-credential-helper ||
      fail "dnf install amazon-ecr-credential-helper failed: cannot pull from $ECR_REGISTRY"
  fi
  systemctl enable --now docker || fail "docker did not start"
}

read_configuration() {
  step "read secrets and version"
  local doc
  doc=$(aws secretsmanager get-secret-value --region "$AWS_REGION" --secret-id "$APP_SECRET_ARN") ||
    fail "cannot read the application secret"
  APP_SECRET_JSON=$(printf '%s' "$doc" | json_get SecretString) || fail "the application secret has no SecretString"
  unset doc

  declare -gA SECRET=()
  local key value
  while IFS= read -r -d '' key && IFS= read -r -d '' value; do
    SECRET[$key]=$value
  done < <(printf '%s' "$APP_SECRET_JSON" | json_fields "${APP_SECRET_KEYS[@]}" SMTP_LOGIN SMTP_PASSWORD \
    CACHE_REDIS_PASSWORD ES_PASS)
  unset APP_SECRET_JSON
  for key in "${APP_SECRET_KEYS[@]}"; do
    [ -n "${SECRET[$key]:-}" ] || fail "the application secret has no $key"
  done
  if [ -n "$CACHE_REDIS_HOST" ] && [ -z "${SECRET[CACHE_REDIS_PASSWORD]:-}" ]; then
    fail "the application secret has no CACHE_REDIS_PASSWORD for the cache Redis $CACHE_REDIS_HOST"
  fi
  if [ "$ES_ENABLED" = true ] && [ -z "${SECRET[ES_PASS]:-}" ]; then
    fail "search is on but the application secret has no ES_PASS"
  fi

  if [ -n "$SMTP_PASSWORD_SECRET_ARN" ]; then
    # An external SMTP server: login from the stack, password from its own secret.
    doc=$(aws secretsmanager get-secret-value --region "$AWS_REGION" --secret-id "$SMTP_PASSWORD_SECRET_ARN") ||
      fail "cannot read the SMTP password secret"
    SECRET[SMTP_PASSWORD]=$(printf '%s' "$doc" | json_get SecretString) || fail "the SMTP password secret is empty"
    unset doc
  else
    # SES: the stack's SMTP credentials live in the application secret.
    SMTP_LOGIN=${SECRET[SMTP_LOGIN]:-}
  fi

  doc=$(aws ssm get-parameter --region "$AWS_REGION" --name "$DEPLOYED_VERSION_PARAMETER") ||
    fail "cannot read the version parameter $DEPLOYED_VERSION_PARAMETER"
  MASTODON_VERSION=$(printf '%s' "$doc" | json_get Parameter.Value) || fail "the version parameter has no value"
  if ! is_version_tag "$MASTODON_VERSION"; then
    fail "version '$MASTODON_VERSION' in $DEPLOYED_VERSION_PARAMETER does not follow the stack's tag rule (TAG_PATTERN)"
  fi
  log "booting Mastodon $MASTODON_VERSION"

  doc=$(aws ec2 get-managed-prefix-list-entries --region "$AWS_REGION" --prefix-list-id "$CLOUDFRONT_PREFIX_LIST_ID") ||
    fail "cannot read the CloudFront prefix list $CLOUDFRONT_PREFIX_LIST_ID"
  CLOUDFRONT_CIDRS=$(printf '%s' "$doc" | python3 -c '
import json, sys
print(",".join(entry["Cidr"] for entry in json.load(sys.stdin).get("Entries", [])))')
  [ -n "$CLOUDFRONT_CIDRS" ] || fail "the CloudFront prefix list $CLOUDFRONT_PREFIX_LIST_ID is empty"
  log "trusting $(awk -F, '{ print NF }' <<<"$CLOUDFRONT_CIDRS") CloudFront ranges and $VPC_CIDR"
}

env_line() {
  # docker --env-file takes every byte after '=' literally; a newline would split it.
  case $2 in
    *$'\n'* | *$'\r'*) fail "the value of $1 contains a line break" ;;
  esac
  printf '%s=%s\n' "$1" "$2"
}

render_environment() {
  step "render mastodon.env"
  local redis_url cache_redis_url="" tmp
  # rediss:// turns TLS on for Rails (redis-client) and the streaming server (ioredis);
  # REDIS_HOST/REDIS_PORT cannot (Mastodon builds a plain redis:// URL from them).
  redis_url="rediss://:$(printf '%s' "${SECRET[REDIS_PASSWORD]}" | urlencode)@$REDIS_HOST:$REDIS_PORT/0"
  if [ -n "$CACHE_REDIS_HOST" ]; then
    # Rails.cache alone (lib/mastodon/redis_configuration.rb, prefix CACHE_); Sidekiq, the
    # feeds and the streaming server stay on REDIS_URL.
    cache_redis_url="rediss://:$(printf '%s' "${SECRET[CACHE_REDIS_PASSWORD]}" | urlencode)@$CACHE_REDIS_HOST:$CACHE_REDIS_PORT/0"
  fi

  mkdir -p "$ETC_DIR"
  chmod 0755 "$ETC_DIR"
  tmp=$(umask 077 && mktemp "$ETC_DIR/.mastodon.env.XXXXXX")
  {
    echo "# Rendered by bootstrap.sh for $STACK_NAME; do not edit, it is rewritten at boot."
    env_line LOCAL_DOMAIN "$LOCAL_DOMAIN"
    env_line RAILS_ENV production
    env_line NODE_ENV production
    env_line RAILS_SERVE_STATIC_FILES true
    env_line RAILS_LOG_TO_STDOUT enabled
    env_line TRUSTED_PROXY_IP "127.0.0.1/32,$VPC_CIDR,$CLOUDFRONT_CIDRS"
    env_line SECRET_KEY_BASE "${SECRET[SECRET_KEY_BASE]}"
    env_line OTP_SECRET "${SECRET[OTP_SECRET]}"
    env_line ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY "${SECRET[ACTIVE_RECORD_ENCRYPTION_DETERMINISTIC_KEY]}"
    env_line ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT "${SECRET[ACTIVE_RECORD_ENCRYPTION_KEY_DERIVATION_SALT]}"
    env_line ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY "${SECRET[ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY]}"
    env_line VAPID_PRIVATE_KEY "${SECRET[VAPID_PRIVATE_KEY]}"
    env_line VAPID_PUBLIC_KEY "${SECRET[VAPID_PUBLIC_KEY]}"
    if [ "$DB_POOLER" = true ]; then
      # Through PgBouncer on this server (Mastodon's scaling guide: transaction pooling
      # needs PREPARED_STATEMENTS=false). It speaks TLS to the database; the loopback
      # hop has none to offer. One-off containers connect directly (one_off).
      env_line DB_HOST 127.0.0.1
      env_line DB_PORT "$PGBOUNCER_PORT"
    else
      env_line DB_HOST "$DB_HOST"
      env_line DB_PORT "$DB_PORT"
    fi
    env_line DB_NAME "$DB_NAME"
    env_line DB_USER "$DB_USER"
    env_line DB_PASS "${SECRET[DB_PASS]}"
    if [ "$DB_POOLER" = true ]; then
      env_line DB_SSLMODE disable
      env_line PREPARED_STATEMENTS false
    else
      # libpq: encrypt, as RDS requires. The streaming unit overrides it (node-postgres
      # has no 'require'; 'no-verify' is its equivalent).
      env_line DB_SSLMODE require
    fi
    if [ -n "$REPLICA_DB_HOST" ]; then
      # Mastodon uses the replica only when REPLICA_DB_NAME is set (DatabaseHelper); it
      # shares DB_SSLMODE with the primary. Database tasks (migrations, db:setup) never
      # touch a replica.
      if [ "$DB_POOLER" = true ]; then
        env_line REPLICA_DB_HOST 127.0.0.1
        env_line REPLICA_DB_PORT "$PGBOUNCER_PORT"
        env_line REPLICA_DB_NAME "$PGBOUNCER_REPLICA_DB"
        env_line REPLICA_PREPARED_STATEMENTS false
      else
        env_line REPLICA_DB_HOST "$REPLICA_DB_HOST"
        env_line REPLICA_DB_PORT "$REPLICA_DB_PORT"
        env_line REPLICA_DB_NAME "$DB_NAME"
      fi
      env_line REPLICA_DB_USER "$DB_USER"
      env_line REPLICA_DB_PASS "${SECRET[DB_PASS]}"
      env_line REPLICA_DB_TASKS false
    fi
    env_line REDIS_URL "$redis_url"
    if [ -n "$cache_redis_url" ]; then
      env_line CACHE_REDIS_URL "$cache_redis_url"
    fi
    # The pure-Ruby driver is the one whose TLS support is certain.
    env_line REDIS_DRIVER ruby
    env_line ES_ENABLED "$ES_ENABLED"
    if [ "$ES_ENABLED" = true ]; then
      # The domain's HTTPS endpoint on 443 (Chewy joins ES_HOST and ES_PORT), as its
      # internal user; the preset sets shards and replicas for the node count.
      env_line ES_HOST "$ES_HOST"
      env_line ES_PORT "$ES_PORT"
      env_line ES_USER "$ES_USER"
      env_line ES_PASS "${SECRET[ES_PASS]}"
      env_line ES_PRESET "$ES_PRESET"
    fi
    env_line S3_ENABLED true
    env_line S3_BUCKET "$S3_BUCKET"
    env_line S3_REGION "$AWS_REGION"
    env_line S3_PROTOCOL https
    env_line S3_ALIAS_HOST "$S3_ALIAS_HOST"
    # Empty: send no ACL; the bucket has ACLs disabled (BucketOwnerEnforced).
    env_line S3_PERMISSION ""
    env_line SMTP_SERVER "$SMTP_SERVER"
    env_line SMTP_PORT "$SMTP_PORT"
    env_line SMTP_LOGIN "$SMTP_LOGIN"
    env_line SMTP_PASSWORD "${SECRET[SMTP_PASSWORD]:-}"
    env_line SMTP_FROM_ADDRESS "$SMTP_FROM_ADDRESS"
    env_line SMTP_AUTH_METHOD plain
    if [ "$SMTP_PORT" = 465 ]; then
      # Port 465 speaks TLS from the first byte (implicit TLS), not STARTTLS.
      env_line SMTP_TLS true
      env_line SMTP_ENABLE_STARTTLS never
    else
      env_line SMTP_ENABLE_STARTTLS auto
    fi
  } >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$ENV_FILE"
  log "wrote $RUNTIME_ENV_FILE"
}

size_pools() {
  step "size database pools"
  local vcpus memory swap pools
  local -a growth=()
  [ "$DB_POOLER" != true ] || growth+=(--pooler)
  [ -z "$REPLICA_DB_HOST" ] || growth+=(--replica "$REPLICA_MAX_CONNECTIONS")
  vcpus=$(nproc)
  memory=$(memory_mib) || fail "cannot read MemTotal from $MEMINFO_FILE"
  swap=$(swap_total_mib) || fail "cannot read the swap in use from $SWAPS_FILE"
  pools=$(mastodon_pools "${growth[@]}" "$ROLE" "$MAX_CONNECTIONS" "$WEB_MAX_SIZE" "$ROLLOUT_SURGE" \
    "$DB_CONNECTION_RESERVE" "$vcpus" "$memory" "$swap" "$QUEUE_WORKER_MAX_SIZE" 2>&1) || fail "$pools"
  log "pools for $vcpus vCPUs, $memory MiB + $swap MiB swap: $(printf '%s' "$pools" | tr '\n' ' ')"
  local line
  while IFS= read -r line; do
    case $line in
      WEB_CONCURRENCY=* | MAX_THREADS=* | DB_POOL=* | STREAMING_DB_POOL=* | SIDEKIQ_CONCURRENCY=* | \
        PGBOUNCER_POOL_SIZE=* | PGBOUNCER_MAX_CLIENT_CONN=*)
        printf -v "POOL_${line%%=*}" '%s' "${line#*=}"
        ;;
    esac
  done <<<"$pools"
}

write_unit() {
  # write_unit NAME DESCRIPTION LOG_GROUP IMAGE DOCKER_OPTIONS [COMMAND]
  # Without a COMMAND the image's own CMD runs.
  local name=$1 description=$2 log_group=$3 image=$4 options=$5 command=${6:-} settings_file=""
  # Mastodon's other settings, when the stack has a source of them (apply_settings).
  if settings_enabled; then
    settings_file=" --env-file $RUNTIME_SETTINGS_FILE"
  fi
  cat >"$UNIT_DIR/$name.service" <<EOF
[Unit]
Description=$description
After=docker.service network-online.target
Requires=docker.service
Wants=network-online.target

[Service]
EnvironmentFile=$RUNTIME_VERSION_FILE
ExecStartPre=-$DOCKER rm -f $name
ExecStart=$DOCKER run --rm --name $name --network host \\
  --env-file $RUNTIME_ENV_FILE$settings_file \\
  --log-driver awslogs \\
  --log-opt awslogs-region=$AWS_REGION \\
  --log-opt awslogs-group=$log_group \\
  --log-opt awslogs-stream=$INSTANCE_ID \\
  --log-opt mode=non-blocking \\
  --log-opt max-buffer-size=$LOG_BUFFER_SIZE \\
  $options \\
  $image:\${MASTODON_VERSION}${command:+ \\
  $command}
ExecStop=$DOCKER stop --time $CONTAINER_STOP_SECONDS $name
Restart=always
RestartSec=5
TimeoutStartSec=0
TimeoutStopSec=$((CONTAINER_STOP_SECONDS + 30))

[Install]
WantedBy=multi-user.target
EOF
}

# Keep-alive of both targets: longer than the load balancer's idle timeout, so that
# the load balancer never reuses a connection the target is closing (a 502).
# Puma: config/puma.rb reads PERSISTENT_TIMEOUT (Mastodon's default, 20 s). The
# streaming server creates its http.Server with Node's default keepAliveTimeout (5 s,
# 65 s in the newest Node releases) and reads no setting for it; Node has no flag
# for it either. What Node does take from NODE_OPTIONS is --require: this module,
# loaded before the server's own code, sets the timeout on every server it creates.
# headersTimeout stays above it, so Node never answers a reused connection with 408.
write_keep_alive_module() {
  cat >"$KEEP_ALIVE_FILE" <<'JS'
// Written by bootstrap.sh; loaded through NODE_OPTIONS=--require into the streaming server.
'use strict';
const http = require('node:http');
const seconds = Number(process.env.MASTODON_KEEP_ALIVE_SECONDS);
if (Number.isInteger(seconds) && seconds > 0) {
  const createServer = http.createServer;
  http.createServer = function createServerWithKeepAlive(...args) {
    const server = createServer.apply(this, args);
    server.keepAliveTimeout = seconds * 1000;
    server.headersTimeout = Math.max(server.headersTimeout, server.keepAliveTimeout + 1000);
    if (server.requestTimeout > 0) {
      server.requestTimeout = Math.max(server.requestTimeout, server.headersTimeout);
    }
    return server;
  };
}
JS
  # The container runs as the image's mastodon user: readable by all, written by root.
  chmod 0644 "$KEEP_ALIVE_FILE"
}

# PgBouncer's value quoting: a double quote inside a quoted field is doubled.
pgbouncer_quote() {
  printf '"%s"' "${1//\"/\"\"}"
}

# The pooler's configuration (DB_POOLER=true): transaction pooling on 127.0.0.1 only,
# SCRAM from the clients (the database's own password, from the application secret, in
# a file only PgBouncer's user reads), TLS to RDS (rds.force_ssl), and at most the
# server's share of the database's connections (pools.sh) on each database.
write_pgbouncer_config() {
  step "configure pgbouncer"
  local tmp
  mkdir -p "$PGBOUNCER_DIR"
  chmod 0700 "$PGBOUNCER_DIR"
  tmp=$(umask 077 && mktemp "$PGBOUNCER_DIR/.userlist.XXXXXX")
  printf '%s %s\n' "$(pgbouncer_quote "$DB_USER")" "$(pgbouncer_quote "${SECRET[DB_PASS]}")" >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$PGBOUNCER_DIR/userlist.txt"
  tmp=$(umask 077 && mktemp "$PGBOUNCER_DIR/.pgbouncer.ini.XXXXXX")
  {
    echo "; Written by bootstrap.sh for $STACK_NAME; rewritten at boot."
    echo "[databases]"
    echo "$DB_NAME = host=$DB_HOST port=$DB_PORT dbname=$DB_NAME"
    [ -z "$REPLICA_DB_HOST" ] ||
      echo "$PGBOUNCER_REPLICA_DB = host=$REPLICA_DB_HOST port=$REPLICA_DB_PORT dbname=$DB_NAME"
    echo "[pgbouncer]"
    echo "listen_addr = 127.0.0.1"
    echo "listen_port = $PGBOUNCER_PORT"
    echo "unix_socket_dir ="
    echo "pool_mode = transaction"
    echo "auth_type = scram-sha-256"
    echo "auth_file = /etc/pgbouncer/userlist.txt"
    echo "default_pool_size = $POOL_PGBOUNCER_POOL_SIZE"
    echo "max_db_connections = $POOL_PGBOUNCER_POOL_SIZE"
    echo "max_client_conn = $POOL_PGBOUNCER_MAX_CLIENT_CONN"
    echo "server_tls_sslmode = require"
    echo "log_connections = 0"
    echo "log_disconnections = 0"
  } >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$PGBOUNCER_DIR/pgbouncer.ini"
  chown -R "$PGBOUNCER_UID:$PGBOUNCER_UID" "$PGBOUNCER_DIR" || fail "cannot hand $PGBOUNCER_DIR to PgBouncer's user"
  log "PgBouncer: $POOL_PGBOUNCER_POOL_SIZE connections a database, up to $POOL_PGBOUNCER_MAX_CLIENT_CONN clients"
}

# PgBouncer's own image and tag (not Mastodon's version), without Mastodon's
# environment: it reads only its two files.
write_pgbouncer_unit() {
  cat >"$UNIT_DIR/mastodon-pgbouncer.service" <<UNIT
[Unit]
Description=PgBouncer (Mastodon's database pooler)
After=docker.service network-online.target
Requires=docker.service
Wants=network-online.target

[Service]
ExecStartPre=-$DOCKER rm -f mastodon-pgbouncer
ExecStart=$DOCKER run --rm --name mastodon-pgbouncer --network host \\
  --user $PGBOUNCER_UID:$PGBOUNCER_UID \\
  -v $RUNTIME_PGBOUNCER_DIR:/etc/pgbouncer:ro \\
  --log-driver awslogs \\
  --log-opt awslogs-region=$AWS_REGION \\
  --log-opt awslogs-group=$LOG_GROUP_SYSTEM \\
  --log-opt awslogs-stream=$INSTANCE_ID/pgbouncer \\
  --log-opt mode=non-blocking \\
  --log-opt max-buffer-size=$LOG_BUFFER_SIZE \\
  $PGBOUNCER_IMAGE
ExecStop=$DOCKER stop --time 30 mastodon-pgbouncer
Restart=always
RestartSec=5
TimeoutStartSec=0
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
UNIT
}

write_units() {
  step "write systemd units"
  mkdir -p "$UNIT_DIR"
  # The only place the version lives: a deploy rewrites this file and restarts the units.
  printf 'MASTODON_VERSION=%s\n' "$MASTODON_VERSION" >"$VERSION_FILE"
  chmod 0644 "$VERSION_FILE"
  local streaming_sslmode=no-verify
  [ "$DB_POOLER" != true ] || streaming_sslmode=disable
  if [ "$ROLE" = web ]; then
    write_keep_alive_module
    write_unit mastodon-web "Mastodon web (Puma)" "$LOG_GROUP_WEB" "$MASTODON_IMAGE" \
      "-e PORT=$WEB_PORT -e BIND=0.0.0.0 -e WEB_CONCURRENCY=$POOL_WEB_CONCURRENCY -e MAX_THREADS=$POOL_MAX_THREADS -e DB_POOL=$POOL_DB_POOL -e PERSISTENT_TIMEOUT=$TARGET_KEEP_ALIVE_SECONDS" \
      "bundle exec puma -C config/puma.rb"
    write_unit mastodon-streaming "Mastodon streaming API" "$LOG_GROUP_STREAMING" "$STREAMING_IMAGE" \
      "-e PORT=$STREAMING_PORT -e BIND=0.0.0.0 -e DB_POOL=$POOL_STREAMING_DB_POOL -e DB_SSLMODE=$streaming_sslmode -v $RUNTIME_KEEP_ALIVE_FILE:$RUNTIME_KEEP_ALIVE_FILE:ro -e NODE_OPTIONS=--require=$RUNTIME_KEEP_ALIVE_FILE -e MASTODON_KEEP_ALIVE_SECONDS=$TARGET_KEEP_ALIVE_SECONDS"
    # The streaming image's CMD starts the server (node ./streaming/index.js today); using
    # it keeps working if a release moves its entry point.
    UNITS=(mastodon-web mastodon-streaming)
  else
    local queues description
    queues=$(sidekiq_queue_options) || fail "$queues"
    if [ "$ROLE" = queue ]; then
      description="Mastodon Sidekiq queue worker ($QUEUE_WORKER_QUEUES)"
    elif [ -z "$queues" ]; then
      description="Mastodon Sidekiq (all queues, scheduler included)"
    else
      description="Mastodon Sidekiq main worker ($MAIN_WORKER_QUEUES)"
    fi
    # -t: how long running jobs may finish on TERM before Sidekiq pushes them back to
    # Redis; docker stop waits CONTAINER_STOP_SECONDS, longer (templates/sidekiq.py).
    write_unit mastodon-sidekiq "$description" "$LOG_GROUP_SIDEKIQ" "$MASTODON_IMAGE" "-e DB_POOL=$POOL_DB_POOL" \
      "bundle exec sidekiq -c $POOL_SIDEKIQ_CONCURRENCY -t $SIDEKIQ_SHUTDOWN_SECONDS${queues:+ $queues}"
    UNITS=(mastodon-sidekiq)
  fi
  if [ "$DB_POOLER" = true ]; then
    write_pgbouncer_unit
    UNITS=(mastodon-pgbouncer "${UNITS[@]}")
  fi
  log "wrote ${UNITS[*]} for $MASTODON_VERSION"
}

# The -q options of this server's Sidekiq, each queue with its weight from sidekiq.yml
# (SIDEKIQ_QUEUE_WEIGHTS), or nothing for the main worker's default: without -q,
# config/sidekiq.yml lists every queue, scheduler included, so queues a later version
# adds are served too. The scheduler runs on the main worker only, the stack's one
# process with it; the template's rules refuse any other layout, and this refuses it again.
sidekiq_queue_options() {
  local list queue pair weight options=""
  if [ "$ROLE" = queue ]; then
    list=$QUEUE_WORKER_QUEUES
  elif [ "$MAIN_WORKER_QUEUES" = "$SIDEKIQ_ALL_QUEUES" ]; then
    return 0
  else
    list=$MAIN_WORKER_QUEUES
    [[ ,$list, == *,$SIDEKIQ_SCHEDULER_QUEUE,* ]] ||
      { echo "MAIN_WORKER_QUEUES ($list) must include $SIDEKIQ_SCHEDULER_QUEUE"; return 1; }
  fi
  for queue in ${list//,/ }; do
    [ "$ROLE" != queue ] || [ "$queue" != "$SIDEKIQ_SCHEDULER_QUEUE" ] ||
      { echo "$SIDEKIQ_SCHEDULER_QUEUE runs only on the main worker, not on queue workers"; return 1; }
    weight=""
    for pair in $SIDEKIQ_QUEUE_WEIGHTS; do
      [ "${pair%%:*}" = "$queue" ] && weight=${pair#*:}
    done
    [ -n "$weight" ] || { echo "unknown Sidekiq queue '$queue'"; return 1; }
    options+="${options:+ }-q $queue,$weight"
  done
  [ -n "$options" ] || { echo "no queues to run"; return 1; }
  printf '%s' "$options"
}

# With queue workers, the main worker publishes the queue metrics every minute
# (queue-metrics.sh); a run still going when the next is due is not started twice.
QUEUE_METRICS_UNIT=mastodon-queue-metrics
write_queue_metrics_timer() {
  cat >"$UNIT_DIR/$QUEUE_METRICS_UNIT.service" <<EOF
[Unit]
Description=Publish Sidekiq's queue metrics to CloudWatch
After=mastodon-sidekiq.service

[Service]
Type=oneshot
ExecStart=$RUNTIME_SCRIPT_DIR/queue-metrics.sh
TimeoutStartSec=55
EOF
  cat >"$UNIT_DIR/$QUEUE_METRICS_UNIT.timer" <<EOF
[Unit]
Description=Publish Sidekiq's queue metrics every minute

[Timer]
OnCalendar=*-*-* *:*:00
AccuracySec=1s

[Install]
WantedBy=timers.target
EOF
}

start_queue_metrics() {
  [ "$ROLE" = worker ] && [ -n "$METRICS_NAMESPACE" ] || return 0
  step "start queue metrics"
  write_queue_metrics_timer
  systemctl daemon-reload
  systemctl enable --now "$QUEUE_METRICS_UNIT.timer" || fail "systemctl could not start $QUEUE_METRICS_UNIT.timer"
  log "publishing Sidekiq's queue metrics to $METRICS_NAMESPACE every minute"
}

# Mastodon's other settings (templates/settings.py): read and checked after the units, whose
# -e options are among the names the stack owns. A refused or unreadable setting fails the
# boot with the reason; nothing starts with part of them.
apply_settings() {
  step "read Mastodon's other settings"
  if ! settings_enabled; then
    rm -f "$SETTINGS_FILE"
    log "no settings source in stack.env"
    return 0
  fi
  # SETTINGS_FAILURE (templates/settings.py): the refusal alarm counts this line in the system log.
  render_settings "$SETTINGS_FILE" || fail "$SETTINGS_FAILURE: $SETTINGS_REFUSAL"
}

pull_images() {
  step "pull images"
  local images=("$MASTODON_IMAGE:$MASTODON_VERSION")
  [ "$ROLE" = web ] && images+=("$STREAMING_IMAGE:$MASTODON_VERSION")
  [ "$DB_POOLER" != true ] || images+=("$PGBOUNCER_IMAGE")
  pull_with_room "${images[@]}"
}

# With the pooler, the processes reach the database only through it: PgBouncer starts
# first, and a query through it proves its password, its TLS to RDS and the replica's
# entry before Mastodon's processes start (its health check does not touch the
# database), so that the check's one-off Rails never competes with them for memory.
check_pooler() {
  [ "$DB_POOLER" = true ] || return 0
  step "check the pooler"
  systemctl daemon-reload
  systemctl enable --now mastodon-pgbouncer || fail "systemctl could not start mastodon-pgbouncer"
  local query="ActiveRecord::Base.connection.select_value('SELECT version()')"
  [ -z "$REPLICA_DB_HOST" ] ||
    query="$query; ActiveRecord::Base.connected_to(role: :reading) { ActiveRecord::Base.connection.select_value('SELECT version()') }"
  retry one_off --pooled "$ONE_OFF_DB_POOL" "$MASTODON_IMAGE:$MASTODON_VERSION" -- bundle exec rails runner "$query" ||
    fail "no query passes through PgBouncer on 127.0.0.1:$PGBOUNCER_PORT: see the $INSTANCE_ID/pgbouncer stream of $LOG_GROUP_SYSTEM"
  log "queries pass through PgBouncer"
}

# Rails in a one-off container of the version being booted.
one_off_rails() {
  one_off "$ONE_OFF_DB_POOL" "$MASTODON_IMAGE:$MASTODON_VERSION" -- bundle exec rails "$@"
}

# What db:seed leaves (db/seeds/*.rb, each a find_or_create_by, so running it again is
# harmless): the web app's OAuth application (01_web_app), the instance actor, account
# -99 (02_instance_actor), the default roles beside "everyone", role -99 (03_roles), and
# the reserved usernames (05_blocked_usernames: admin, owner, root...; checked only in
# releases that have the table, see database_state). Plain SQL, so that it holds
# whatever the models are called in a release.
SEEDS_PRESENT_SQL="SELECT EXISTS (SELECT 1 FROM oauth_applications WHERE superapp) \
AND EXISTS (SELECT 1 FROM accounts WHERE id = -99) \
AND EXISTS (SELECT 1 FROM user_roles WHERE id <> -99)"

# 0: schema loaded and seeded; DB_UNSEEDED_EXIT: schema loaded, seeds missing;
# DB_EMPTY_EXIT: reachable but empty; anything else: an error.
database_state() {
  one_off_rails runner \
    "c = ActiveRecord::Base.connection; \
exit($DB_EMPTY_EXIT) unless c.table_exists?('schema_migrations') && c.select_value('SELECT COUNT(*) FROM schema_migrations').to_i.positive?; \
reserved = !c.table_exists?('username_blocks') || c.select_value('SELECT COUNT(*) FROM username_blocks').to_i.positive?; \
exit(reserved && ActiveRecord::Type::Boolean.new.cast(c.select_value(\"$SEEDS_PRESENT_SQL\")) ? 0 : $DB_UNSEEDED_EXIT)"
}

initialize_database() {
  step "initialize database"
  local attempt=1 rc
  while :; do
    rc=0
    database_state || rc=$?
    case $rc in
      0)
        log "the database is already initialized; not touching it"
        return 0
        ;;
      "$DB_EMPTY_EXIT" | "$DB_UNSEEDED_EXIT") break ;;
    esac
    if [ "$attempt" -ge "$DB_CHECK_ATTEMPTS" ]; then
      fail "cannot tell whether the database is initialized (rails runner exit $rc)"
    fi
    log "database check failed (exit $rc), attempt $attempt of $DB_CHECK_ATTEMPTS"
    attempt=$((attempt + 1))
    sleep "$DB_POLL_INTERVAL"
  done
  if [ "$rc" = "$DB_EMPTY_EXIT" ]; then
    log "empty database: running rails db:setup (schema load and seeds)"
    one_off_rails db:setup || fail "rails db:setup failed"
  else
    # Never db:setup here: it would load the schema over existing tables.
    log "the schema is loaded but the seeds never ran (an interrupted first setup): running rails db:seed"
    one_off_rails db:seed || fail "rails db:seed failed"
  fi
  rc=0
  database_state || rc=$?
  [ "$rc" -eq 0 ] || fail "the database is still not initialized and seeded (exit $rc)"
  log "database initialized"
}

wait_for_database() {
  step "wait for database initialization"
  local deadline=$((SECONDS + DB_WAIT_TIMEOUT)) rc
  while :; do
    rc=0
    database_state || rc=$?
    # Seeds missing: the worker repairs them, Puma may serve meanwhile.
    if [ "$rc" -eq 0 ] || [ "$rc" -eq "$DB_UNSEEDED_EXIT" ]; then
      log "the database is initialized"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "the database was not initialized within ${DB_WAIT_TIMEOUT}s (last check exit $rc); is the worker up?"
    fi
    log "database not ready (exit $rc); checking again in ${DB_POLL_INTERVAL}s"
    sleep "$DB_POLL_INTERVAL"
  done
}

start_units() {
  step "start units"
  systemctl daemon-reload
  systemctl enable --now "${UNITS[@]}" || fail "systemctl could not start ${UNITS[*]}"
}

wait_for_web_health() {
  step "wait for local health"
  local deadline=$((SECONDS + HEALTH_TIMEOUT)) web=false streaming=false
  while :; do
    [ "$web" = true ] || { web_health_ok && web=true; } || true
    [ "$streaming" = true ] || { streaming_health_ok && streaming=true; } || true
    if [ "$web" = true ] && [ "$streaming" = true ]; then
      log "web and streaming are healthy"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      local unhealthy=()
      [ "$web" = true ] || { unhealthy+=(mastodon-web) && container_logs mastodon-web; }
      [ "$streaming" = true ] || { unhealthy+=(mastodon-streaming) && container_logs mastodon-streaming; }
      fail "${unhealthy[*]} not healthy within ${HEALTH_TIMEOUT}s"
    fi
    sleep "$HEALTH_INTERVAL"
  done
}

# A new web server waits in Pending:Wait, outside the target groups, until it lets the
# group's launch hook go on (LAUNCH_HOOK, templates/compute.py); Auto Scaling registers
# it only then. A failed boot lets it go with ABANDON, so that Auto Scaling replaces
# the server now rather than when the hook times out.
launch_state() {
  aws autoscaling describe-auto-scaling-instances --region "$AWS_REGION" --instance-ids "$INSTANCE_ID" \
    --query 'AutoScalingInstances[0].[AutoScalingGroupName,LifecycleState]' --output text
}

complete_launch() {
  local result=$1 answer group="" state=""
  answer=$(retry launch_state) || { log "cannot read this server's lifecycle state"; return 1; }
  read -r group state <<<"$answer"
  if [ "$state" != Pending:Wait ]; then
    log "no launch hook waits for this server (${state:-not in a group}): nothing to complete"
    return 0
  fi
  log "completing the launch hook of $group with $result"
  retry aws autoscaling complete-lifecycle-action --region "$AWS_REGION" --auto-scaling-group-name "$group" \
    --lifecycle-hook-name "$LAUNCH_HOOK" --instance-id "$INSTANCE_ID" --lifecycle-action-result "$result" \
    >/dev/null && return 0
  # A completion whose answer was lost is refused when retried: the state tells.
  answer=$(retry launch_state) && read -r group state <<<"$answer" && [ "$state" != Pending:Wait ]
}

# A queue worker has no launch hook and its group checks EC2 health only: a failed boot
# would stay InService with nothing running. Marked Unhealthy, it is replaced now; the
# grace period is not respected, since it would hold the mark back for the whole boot.
mark_unhealthy() {
  log "marking this server Unhealthy so that Auto Scaling replaces it"
  retry aws autoscaling set-instance-health --region "$AWS_REGION" --instance-id "$INSTANCE_ID" \
    --health-status Unhealthy --no-should-respect-grace-period >/dev/null
}

let_launch_continue() {
  step "join the load balancer"
  complete_launch CONTINUE || fail "could not complete the launch hook $LAUNCH_HOOK"
}

target_state() {
  aws elbv2 describe-target-health --region "$AWS_REGION" --target-group-arn "$1" --targets "Id=$INSTANCE_ID" \
    --query 'TargetHealthDescriptions[0].TargetHealth.State' --output text
}

# Signal only once the load balancer serves from this server: a first create ends,
# and its no-healthy-target alarms appear, with a healthy target in both groups.
wait_for_targets() {
  step "wait for the load balancer"
  local deadline=$((SECONDS + TARGET_TIMEOUT)) group state
  for group in "$WEB_TARGET_GROUP_ARN" "$STREAMING_TARGET_GROUP_ARN"; do
    until state=$(target_state "$group") && [ "$state" = healthy ]; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        fail "healthy on the server but ${state:-unknown} in target group ${group##*:targetgroup/} after ${TARGET_TIMEOUT}s: check that the load balancer reaches the servers (security groups, health check path)"
      fi
      sleep "$HEALTH_INTERVAL"
    done
  done
  log "healthy in both target groups"
}

wait_for_worker_health() {
  step "wait for sidekiq"
  local deadline=$((SECONDS + HEALTH_TIMEOUT)) id=""
  until id=$(running_sidekiq) && [ -n "$id" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      container_logs mastodon-sidekiq
      fail "mastodon-sidekiq did not start within ${HEALTH_TIMEOUT}s"
    fi
    sleep "$HEALTH_INTERVAL"
  done
  log "sidekiq container ${id:0:12} running; watching it for ${WORKER_STABLE_SECONDS}s"
  if ! sidekiq_stays "$id" "$WORKER_STABLE_SECONDS" "$HEALTH_INTERVAL"; then
    container_logs mastodon-sidekiq
    fail "mastodon-sidekiq stopped or restarted within ${WORKER_STABLE_SECONDS}s"
  fi
}

# Mastodon's search indexes are created once per domain by search.sh, which runs as a
# systemd unit in the background: `tootctl search deploy` imports every status and can
# run for hours, far beyond the boot's signal timeout. Enabled, so that a reboot tries
# again if it has not finished; search.sh itself skips a domain that has its indexes.
# Its failures are logged and alarmed there, never the boot's.
start_search_deploy() {
  step "start the search index creation"
  cat >"$UNIT_DIR/mastodon-search-deploy.service" <<EOF
[Unit]
Description=Mastodon search indexes (tootctl search deploy), once per search domain
After=docker.service network-online.target mastodon-sidekiq.service
Requires=docker.service
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=${SCRIPT_DIR#"$ROOT"}/search.sh $INSTANCE_ID
TimeoutStartSec=0

[Install]
WantedBy=multi-user.target
EOF
  if systemctl daemon-reload && systemctl enable mastodon-search-deploy &&
    systemctl start --no-block mastodon-search-deploy; then
    log "search index creation started in the background (unit mastodon-search-deploy)"
  else
    log "could not start mastodon-search-deploy; it runs at the next boot, or: systemctl start mastodon-search-deploy"
  fi
}

# The version this server runs, for the rollout (lambdas/rollout): without the tag it
# would deploy to the server again to be sure, which is slower but safe, so a failure
# to tag is logged, not fatal.
tag_version() {
  step "tag the version"
  retry aws ec2 create-tags --region "$AWS_REGION" --resources "$INSTANCE_ID" \
    --tags "Key=$VERSION_TAG,Value=$MASTODON_VERSION" >/dev/null ||
    log "could not tag $INSTANCE_ID with $VERSION_TAG=$MASTODON_VERSION; the next rollout deploys to it anyway"
}

main() {
  load_stack_env
  load_libraries
  find_instance_id
  ensure_swap
  limit_journal
  install_docker
  read_configuration
  render_environment
  size_pools
  [ "$DB_POOLER" != true ] || write_pgbouncer_config
  # The secrets are in their files now; nothing later needs them in memory.
  unset SECRET
  write_units
  apply_settings
  pull_images
  if [ "$ROLE" = worker ]; then
    initialize_database
  else
    wait_for_database
  fi
  check_pooler
  start_units
  if [ "$ROLE" = web ]; then
    wait_for_web_health
    let_launch_continue
    wait_for_targets
  else
    wait_for_worker_health
    start_queue_metrics
    [ "$ES_ENABLED" != true ] || start_search_deploy
  fi
  tag_version
  step "signal success"
  signal SUCCESS || fail "could not signal SUCCESS"
  SUCCEEDED=true
  log "bootstrap complete"
}

main "$@"
