#!/bin/bash
# Boots one Mastodon instance (web or worker) on Amazon Linux 2023, as root, from user data.
#
# Reads stack.env (written by user data), adds swap below 2 GiB of RAM (a micro
# worker), caps the journal, installs Docker, renders mastodon.env (common.sh says
# where both live) from Secrets Manager, SSM and the CloudFront prefix list,
# sizes the database pools, writes one systemd unit per container, makes room for and
# pulls the images, initializes the database once (worker) or waits for it (web),
# waits for local health and signals the Auto Scaling group. Any failure signals
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

# Paths as the containers and units see them on the instance (never redirected).
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
    BOOT_HEALTH_WAIT_SECONDS RELEASE_TAG_PATTERN VERSION_TAG WEB_PORT WEB_HEALTH_PATH STREAMING_PORT \
    STREAMING_HEALTH_PATH ONE_OFF_DB_POOL IMDS_URL
  SMTP_LOGIN=${SMTP_LOGIN:-}
  SMTP_PASSWORD_SECRET_ARN=${SMTP_PASSWORD_SECRET_ARN:-}
  SETTINGS_PATH=${SETTINGS_PATH:-}
  SETTINGS_SECRET_ARN=${SETTINGS_SECRET_ARN:-}
  if settings_enabled; then
    require_stack_env SETTINGS_NAME_PATTERN SETTINGS_MAX SETTINGS_OWNED_PREFIXES SETTINGS_RESERVED_NAMES \
      SETTINGS_FAILURE
  fi
  local key
  for key in TARGET_KEEP_ALIVE_SECONDS BOOT_DATABASE_WAIT_SECONDS BOOT_HEALTH_WAIT_SECONDS; do
    [[ ${!key} =~ ^[1-9][0-9]*$ ]] || fail "$key must be a number of seconds, not '${!key}'"
  done
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
    worker) ;;
    *) fail "ROLE must be web or worker, not '$ROLE'" ;;
  esac
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
  done < <(printf '%s' "$APP_SECRET_JSON" | json_fields "${APP_SECRET_KEYS[@]}" SMTP_LOGIN SMTP_PASSWORD)
  unset APP_SECRET_JSON
  for key in "${APP_SECRET_KEYS[@]}"; do
    [ -n "${SECRET[$key]:-}" ] || fail "the application secret has no $key"
  done

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
  if ! is_release_tag "$MASTODON_VERSION"; then
    fail "version '$MASTODON_VERSION' in $DEPLOYED_VERSION_PARAMETER is not a Mastodon tag like v4.7.6"
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
  local redis_url tmp
  # rediss:// turns TLS on for Rails (redis-client) and the streaming server (ioredis);
  # REDIS_HOST/REDIS_PORT cannot (Mastodon builds a plain redis:// URL from them).
  redis_url="rediss://:$(printf '%s' "${SECRET[REDIS_PASSWORD]}" | urlencode)@$REDIS_HOST:$REDIS_PORT/0"

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
    env_line DB_HOST "$DB_HOST"
    env_line DB_PORT "$DB_PORT"
    env_line DB_NAME "$DB_NAME"
    env_line DB_USER "$DB_USER"
    env_line DB_PASS "${SECRET[DB_PASS]}"
    # libpq: encrypt, as RDS requires. The streaming unit overrides it (node-postgres
    # has no 'require'; 'no-verify' is its equivalent).
    env_line DB_SSLMODE require
    env_line REDIS_URL "$redis_url"
    # The pure-Ruby driver is the one whose TLS support is certain.
    env_line REDIS_DRIVER ruby
    env_line ES_ENABLED false
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
  unset SECRET
  log "wrote $RUNTIME_ENV_FILE"
}

size_pools() {
  step "size database pools"
  local vcpus memory swap pools
  vcpus=$(nproc)
  memory=$(memory_mib) || fail "cannot read MemTotal from $MEMINFO_FILE"
  swap=$(swap_total_mib) || fail "cannot read the swap in use from $SWAPS_FILE"
  pools=$(mastodon_pools "$ROLE" "$MAX_CONNECTIONS" "$WEB_MAX_SIZE" "$ROLLOUT_SURGE" \
    "$DB_CONNECTION_RESERVE" "$vcpus" "$memory" "$swap" 2>&1) || fail "$pools"
  log "pools for $vcpus vCPUs, $memory MiB + $swap MiB swap: $(printf '%s' "$pools" | tr '\n' ' ')"
  local line
  while IFS= read -r line; do
    case $line in
      WEB_CONCURRENCY=* | MAX_THREADS=* | DB_POOL=* | STREAMING_DB_POOL=* | SIDEKIQ_CONCURRENCY=*)
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
ExecStop=$DOCKER stop --time 30 $name
Restart=always
RestartSec=5
TimeoutStartSec=0
TimeoutStopSec=60

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

write_units() {
  step "write systemd units"
  mkdir -p "$UNIT_DIR"
  # The only place the version lives: a deploy rewrites this file and restarts the units.
  printf 'MASTODON_VERSION=%s\n' "$MASTODON_VERSION" >"$VERSION_FILE"
  chmod 0644 "$VERSION_FILE"
  if [ "$ROLE" = web ]; then
    write_keep_alive_module
    write_unit mastodon-web "Mastodon web (Puma)" "$LOG_GROUP_WEB" "$MASTODON_IMAGE" \
      "-e PORT=$WEB_PORT -e BIND=0.0.0.0 -e WEB_CONCURRENCY=$POOL_WEB_CONCURRENCY -e MAX_THREADS=$POOL_MAX_THREADS -e DB_POOL=$POOL_DB_POOL -e PERSISTENT_TIMEOUT=$TARGET_KEEP_ALIVE_SECONDS" \
      "bundle exec puma -C config/puma.rb"
    write_unit mastodon-streaming "Mastodon streaming API" "$LOG_GROUP_STREAMING" "$STREAMING_IMAGE" \
      "-e PORT=$STREAMING_PORT -e BIND=0.0.0.0 -e DB_POOL=$POOL_STREAMING_DB_POOL -e DB_SSLMODE=no-verify -v $RUNTIME_KEEP_ALIVE_FILE:$RUNTIME_KEEP_ALIVE_FILE:ro -e NODE_OPTIONS=--require=$RUNTIME_KEEP_ALIVE_FILE -e MASTODON_KEEP_ALIVE_SECONDS=$TARGET_KEEP_ALIVE_SECONDS"
    # The streaming image's CMD starts the server (node ./streaming/index.js today); using
    # it keeps working if a release moves its entry point.
    UNITS=(mastodon-web mastodon-streaming)
  else
    # No -q: config/sidekiq.yml lists every queue, scheduler included, so queues a
    # later version adds are served too. This is the stack's only Sidekiq process.
    write_unit mastodon-sidekiq "Mastodon Sidekiq (all queues, scheduler included)" "$LOG_GROUP_SIDEKIQ" \
      "$MASTODON_IMAGE" "-e DB_POOL=$POOL_DB_POOL" "bundle exec sidekiq -c $POOL_SIDEKIQ_CONCURRENCY"
    UNITS=(mastodon-sidekiq)
  fi
  log "wrote ${UNITS[*]} for $MASTODON_VERSION"
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
  pull_with_room "${images[@]}"
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
  write_units
  apply_settings
  pull_images
  if [ "$ROLE" = worker ]; then
    initialize_database
  else
    wait_for_database
  fi
  start_units
  if [ "$ROLE" = web ]; then
    wait_for_web_health
    let_launch_continue
    wait_for_targets
  else
    wait_for_worker_health
  fi
  tag_version
  step "signal success"
  signal SUCCESS || fail "could not signal SUCCESS"
  SUCCEEDED=true
  log "bootstrap complete"
}

main "$@"
