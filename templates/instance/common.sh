# shellcheck shell=bash
# What bootstrap.sh, deploy.sh and tootctl.sh share, written once: where the stack's
# files are, logging, retries, the health probes, the worker's stability watch, pulls
# that make room first, and the one-off container. Sourced before anything else;
# defines paths and functions, runs nothing.
#
# The caller sets LOG_NAME (the first word of each log line) and, for retry,
# RETRY_ATTEMPTS and RETRY_BACKOFF; bootstrap.sh also sets STEP, which each of its
# lines names. The functions that take a setting from stack.env (the images, the
# ports and health paths) run after the caller has sourced it. pull_with_room uses
# disk.sh (sourced by the caller) and DOCKER_DATA_ROOT.
#
# Tests redirect every path with MASTODON_ROOT.
# shellcheck disable=SC2034  # the paths are read by the scripts that source this file

ROOT=${MASTODON_ROOT:-}
# The stack's files on the server; RUNTIME_* are the paths as the containers and units
# see them (never redirected), ETC_DIR the same directory under the test root. The
# directory is the one fact the scripts must know before they can read stack.env, which
# holds every other (templates/compute.py ETC_DIR; tests/test_facts.py holds the two equal).
RUNTIME_ETC_DIR=/etc/mastodon
ETC_DIR="$ROOT$RUNTIME_ETC_DIR"
# Written by user data (templates/compute.py STACK_ENV_FILE).
STACK_ENV_FILE="$ETC_DIR/stack.env"
# Mastodon's environment, rendered by bootstrap.sh, and the version the units run,
# rewritten by every deploy.
RUNTIME_ENV_FILE="$RUNTIME_ETC_DIR/mastodon.env"
ENV_FILE="$ROOT$RUNTIME_ENV_FILE"
RUNTIME_VERSION_FILE="$RUNTIME_ETC_DIR/version.env"
VERSION_FILE="$ROOT$RUNTIME_VERSION_FILE"
# Mastodon's other settings (templates/settings.py), rendered by render_settings: a second
# env file beside mastodon.env, present only while stack.env names a source.
RUNTIME_SETTINGS_FILE="$RUNTIME_ETC_DIR/settings.env"
SETTINGS_FILE="$ROOT$RUNTIME_SETTINGS_FILE"
UNIT_DIR="$ROOT/etc/systemd/system"
# The Docker client's settings (the ECR credential helper's entry, registry_login), the
# same for every script and pull whatever HOME is: cloud-init and Run Command may set none.
export DOCKER_CONFIG="$ETC_DIR/docker"
DOCKER_DATA_ROOT="$ROOT/var/lib/docker"

# Logs go to stderr, so that a function's stdout stays its result.
log() {
  printf '%s %s%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$LOG_NAME" "${STEP:+ [$STEP]}" "$*" >&2
}

# require_stack_env KEY...: fails unless stack.env gave each KEY a value.
require_stack_env() {
  local key
  for key in "$@"; do
    [ -n "${!key:-}" ] || fail "$key is not set in stack.env"
  done
}

# fail REASON [EXIT_CODE]: logs the reason (the last line on stderr) and exits (1).
fail() {
  # shellcheck disable=SC2034  # bootstrap.sh's exit trap signals this reason
  FAILURE_REASON=$1
  log "FAILED: $1"
  exit "${2:-1}"
}

# retry COMMAND...: runs COMMAND up to RETRY_ATTEMPTS times, waiting RETRY_BACKOFF
# seconds after the first failure and twice as long after each next one.
retry() {
  local attempt=1 delay=$RETRY_BACKOFF
  until "$@"; do
    if [ "$attempt" -ge "$RETRY_ATTEMPTS" ]; then
      return 1
    fi
    log "attempt $attempt of $RETRY_ATTEMPTS failed: $*; retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
  done
}

# The stack's tag rule (stack.env: a release tag, or the OCI tag rule for images that are
# not upstream's; templates/versions.tag_pattern), matched in the
# C locale so that [0-9] means the ASCII digits only.
is_version_tag() {
  local LC_ALL=C
  [[ $1 =~ $TAG_PATTERN ]]
}

# --- health ------------------------------------------------------------------------

# Each succeeds when the process answers its health path (stack.env: the load
# balancer's port and path of each target group) on this server.
web_health_ok() {
  curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$WEB_PORT$WEB_HEALTH_PATH"
}

streaming_health_ok() {
  curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$STREAMING_PORT$STREAMING_HEALTH_PATH"
}

web_healthy() {
  web_health_ok && streaming_health_ok
}

# The full id of the running Sidekiq container, or nothing.
running_sidekiq() {
  docker ps --quiet --no-trunc --filter name=^mastodon-sidekiq$ --filter status=running
}

# sidekiq_stays ID SECONDS INTERVAL: succeeds when the Sidekiq container keeps the id
# ID for SECONDS, looking every INTERVAL; a Sidekiq that crashes at boot restarts in a
# loop under a new id each time.
sidekiq_stays() {
  local id=$1 stable_until=$((SECONDS + $2)) interval=$3 now_id
  while [ "$SECONDS" -lt "$stable_until" ]; do
    sleep "$interval"
    now_id=$(running_sidekiq || true)
    [ "$now_id" = "$id" ] || return 1
  done
}

# --- images --------------------------------------------------------------------------

# The version the units run (version.env, rewritten by every deploy), or nothing.
current_version() {
  sed -n 's/^MASTODON_VERSION=//p' "$VERSION_FILE" 2>/dev/null || true
}

# --- registries ------------------------------------------------------------------------
# Public registries (ghcr.io, Docker Hub, Quay) are pulled from anonymously. The stack's
# own ECR registry (ECR_REGISTRY in stack.env, empty while no image is there) is pulled
# from through Amazon's credential helper (package amazon-ecr-credential-helper, installed
# by bootstrap.sh): Docker asks it for a token with the server's role at every pull, so
# no login can expire in the middle of a rollout. An ECR registry of another account or
# region (ECR_HOST_PATTERN matches it) is refused: the servers' role may pull nothing there.

# ecr_registry_of IMAGE: the registry of IMAGE if it is an ECR registry, or nothing.
ecr_registry_of() {
  local registry=${1%%/*} LC_ALL=C
  if [[ $registry =~ ${ECR_HOST_PATTERN:-^$} ]]; then
    printf '%s' "$registry"
  fi
}

# refuse_foreign_registry IMAGE: fails, naming it, when IMAGE is in an ECR registry that is
# not the stack's own. The reason starts with its gist: bootstrap.sh's failure signal
# carries the first words in its id, which the stack's events show.
refuse_foreign_registry() {
  local registry
  registry=$(ecr_registry_of "$1")
  if [ -n "$registry" ] && [ "$registry" != "${ECR_REGISTRY:-}" ]; then
    fail "foreign ECR registry: $1 is in the Amazon ECR registry $registry, which is not this stack's: the servers pull only from ECR repositories in the stack's own account and region (${AWS_REGION:-}), where the template grants them exactly the repositories it names"
  fi
}

# ecr_answers REGISTRY: succeeds when the credential helper gets a token for REGISTRY;
# otherwise ECR_LOGIN_ERROR holds its answer. The token itself is never kept nor logged.
ecr_answers() {
  local answer
  if answer=$(printf '%s' "$1" | docker-credential-ecr-login get 2>&1); then
    return 0
  fi
  ECR_LOGIN_ERROR=$(printf '%s' "$answer" | tail -n 1)
  return 1
}

# registry_login IMAGE: makes a pull of IMAGE possible. For the stack's own ECR registry:
# Docker's configuration names the credential helper for it, and the helper must get a
# token now (with retries), so that a pull never fails for a reason it cannot name.
registry_login() {
  local image=$1 registry
  refuse_foreign_registry "$image"
  registry=$(ecr_registry_of "$image")
  [ -n "$registry" ] || return 0
  command -v docker-credential-ecr-login >/dev/null ||
    fail "cannot pull $image: the Amazon ECR credential helper (amazon-ecr-credential-helper) is not installed"
  mkdir -p "$DOCKER_CONFIG"
  printf '{"credHelpers": {"%s": "ecr-login"}}\n' "$registry" >"$DOCKER_CONFIG/config.json"
  ECR_LOGIN_ERROR=""
  log "logging in to $registry (Amazon ECR credential helper)"
  retry ecr_answers "$registry" ||
    fail "cannot log in to Amazon ECR ($registry) to pull $image: ${ECR_LOGIN_ERROR:-no answer} (the server's role needs ecr:GetAuthorizationToken and its pull permissions on the repository)"
}

# pull_with_room IMAGE...: pulls each IMAGE (repository:tag). When one is missing, first
# makes room for the pull on the root volume (disk.sh), keeping the IMAGEs and those of
# the version the units run (a rollback then needs no pull); fails, before anything
# changes, when there is still not enough.
pull_with_room() {
  local image reason current
  for image in "$@"; do
    refuse_foreign_registry "$image"
  done
  if [ -n "$(mastodon_missing_images "$@")" ]; then
    local -a protected=("$@")
    current=$(current_version)
    [ -z "$current" ] || protected+=("$MASTODON_IMAGE:$current" "$STREAMING_IMAGE:$current")
    reason=$(mastodon_make_room "$DOCKER_DATA_ROOT" "$MASTODON_PULL_MIB" "${protected[@]}") ||
      fail "not enough disk to pull ${*}: $reason"
  fi
  for image in "$@"; do
    registry_login "$image"
    log "pulling $image"
    retry docker pull "$image" >/dev/null || fail "docker pull $image failed after $RETRY_ATTEMPTS attempts"
  done
}

# one_off [--exec] [--pooled] DB_POOL IMAGE [DOCKER_RUN_OPTION...] -- COMMAND...: runs
# COMMAND in a container of IMAGE that is removed when it ends, with the runtime
# environment and a database pool of DB_POOL; with --exec, in place of the calling script.
# Behind the optional PgBouncer (DB_POOLER in stack.env), a one-off container still
# connects to the database itself (and to the replica's, if any), with TLS: migrations,
# db:setup and tootctl's maintenance need a session, which transaction pooling does not
# give (Mastodon's scaling guide). --pooled keeps the runtime environment's pooler
# instead, for the bootstrap's check that the pooler works.
one_off() {
  local -a launch=(docker) direct=()
  if [ "$1" = --exec ]; then
    launch=(exec docker)
    shift
  fi
  if [ "$1" = --pooled ]; then
    shift
  elif [ "${DB_POOLER:-false}" = true ]; then
    direct=(-e "DB_HOST=$DB_HOST" -e "DB_PORT=$DB_PORT" -e DB_SSLMODE=require)
    # shellcheck disable=SC2153  # REPLICA_DB_PORT comes from stack.env with REPLICA_DB_HOST
    [ -z "${REPLICA_DB_HOST:-}" ] ||
      direct+=(-e "REPLICA_DB_HOST=$REPLICA_DB_HOST" -e "REPLICA_DB_PORT=$REPLICA_DB_PORT" -e "REPLICA_DB_NAME=$DB_NAME")
  fi
  local pool=$1 image=$2
  shift 2
  local -a docker_options=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    docker_options+=("$1")
    shift
  done
  [ "$#" -eq 0 ] || shift
  local -a settings=()
  [ ! -f "$SETTINGS_FILE" ] || settings=(--env-file "$RUNTIME_SETTINGS_FILE")
  "${launch[@]}" run --rm --network host --env-file "$RUNTIME_ENV_FILE" "${settings[@]}" -e DB_POOL="$pool" \
    "${direct[@]}" "${docker_options[@]}" "$image" "$@"
}

# --- Mastodon's other settings -------------------------------------------------------

# Succeeds when stack.env names a source of settings (a Parameter Store path, a secret).
settings_enabled() {
  [ -n "${SETTINGS_PATH:-}" ] || [ -n "${SETTINGS_SECRET_ARN:-}" ]
}

read_settings_parameters() {
  aws ssm get-parameters-by-path --region "$AWS_REGION" --path "$SETTINGS_PATH" --no-recursive \
    --with-decryption --output json
}

read_settings_secret() {
  aws secretsmanager get-secret-value --region "$AWS_REGION" --secret-id "$SETTINGS_SECRET_ARN" --output json
}

# render_settings FILE: reads the settings (each source with retry), checks every name and
# value, and only when all pass writes them to FILE (0600, replaced at once). Otherwise it
# logs each refusal (names only, never a value), leaves FILE as it was and fails. The
# variables the stack writes itself (mastodon.env, the units' -e options) and the rule of
# stack.env (SETTINGS_*: templates/settings.py) are never overridden.
render_settings() {
  local file=$1 parameters='{"Parameters": []}' secret='{"SecretString": "{}"}' tmp output
  SETTINGS_REFUSAL=""
  if [ -n "${SETTINGS_PATH:-}" ]; then
    parameters=$(retry read_settings_parameters) || {
      SETTINGS_REFUSAL="cannot read the settings under $SETTINGS_PATH from Parameter Store"
      log "$SETTINGS_REFUSAL"
      return 1
    }
  fi
  if [ -n "${SETTINGS_SECRET_ARN:-}" ]; then
    secret=$(retry read_settings_secret) || {
      SETTINGS_REFUSAL="cannot read the settings secret $SETTINGS_SECRET_ARN"
      log "$SETTINGS_REFUSAL"
      return 1
    }
  fi
  mkdir -p "$(dirname "$file")"
  tmp=$(umask 077 && mktemp "$(dirname "$file")/.settings.env.XXXXXX")
  # Both documents travel on stdin (a secret never goes on a command line).
  if ! output=$(printf '%s\0%s' "$parameters" "$secret" | python3 -c "$SETTINGS_CHECK" "$tmp" "$ENV_FILE" \
    "$SETTINGS_NAME_PATTERN" "$SETTINGS_MAX" "$SETTINGS_OWNED_PREFIXES" "$SETTINGS_RESERVED_NAMES" \
    "$UNIT_DIR"/mastodon-*.service 2>&1); then
    rm -f "$tmp"
    local line
    while IFS= read -r line; do
      log "$line"
    done <<<"$output"
    # For a one-line reason (the rollout quotes the last line): names only, never a value.
    SETTINGS_REFUSAL=$(printf '%s' "$output" | tr -s ' \n' ' ')
    return 1
  fi
  chmod 0600 "$tmp"
  mv -f "$tmp" "$file"
  log "$output"
}

# argv: FILE ENV_FILE NAME_PATTERN MAX OWNED_PREFIXES RESERVED_NAMES UNIT_FILE...; stdin:
# GetParametersByPath's answer, NUL, GetSecretValue's. Prints one line a refusal, or
# the names accepted.
SETTINGS_CHECK='
import json, re, sys
out, env_file, pattern, limit, prefixes, reserved = sys.argv[1:7]
units = sys.argv[7:]
parameters_doc, _, secret_doc = sys.stdin.read().partition("\0")
owned = set(reserved.split())
for path in [env_file] + units:
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        continue
    if path == env_file:
        owned.update(line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#"))
    else:
        owned.update(re.findall(r"(?:^|\s)-e ([A-Za-z_][A-Za-z0-9_]*)=", text))
settings, errors = [], []
try:
    for parameter in json.loads(parameters_doc).get("Parameters", []):
        settings.append((parameter["Name"].rsplit("/", 1)[-1], parameter.get("Value", ""), "parameter " + parameter["Name"]))
except (ValueError, KeyError, AttributeError, TypeError):
    errors.append("the settings parameters are not a GetParametersByPath answer")
try:
    secret = json.loads(json.loads(secret_doc)["SecretString"])
except (ValueError, KeyError, TypeError):
    secret = None
if not isinstance(secret, dict):
    errors.append("the settings secret is not a JSON object of NAME: value")
    secret = {}
for name, value in secret.items():
    settings.append((name, value, "the settings secret"))
if len(settings) > int(limit):
    errors.append("%d settings, more than the %s allowed" % (len(settings), limit))
seen = {}
for name, value, source in settings:
    shown = name[:100] if re.fullmatch(r"[A-Za-z0-9_.-]+", name) else repr(name[:100])
    shown += "..." if len(name) > 100 else ""
    if not re.fullmatch(pattern, name):
        errors.append("refused %s (%s): a name must match %s" % (shown, source, pattern))
    elif name in owned or name.startswith(tuple(prefixes.split())):
        errors.append("refused %s (%s): the stack sets it itself" % (shown, source))
    elif name in seen:
        errors.append("refused %s (%s): also set by %s" % (shown, source, seen[name]))
    elif not isinstance(value, str):
        errors.append("refused %s (%s): the value must be a string" % (shown, source))
    elif "\n" in value or "\r" in value or "\0" in value:
        errors.append("refused %s (%s): the value has a line break, which an env file cannot carry" % (shown, source))
    seen.setdefault(name, source)
if errors:
    print("settings refused, none applied:")
    print("\n".join("  " + e for e in errors))
    sys.exit(1)
with open(out, "w", encoding="utf-8") as f:
    f.write("# Rendered by render_settings (common.sh); rewritten at boot and by every deploy.\n")
    for name, value, _ in sorted(settings):
        f.write("%s=%s\n" % (name, value))
print("settings: %s" % (", ".join(sorted(n for n, _, _ in settings)) or "none"))
'

