#!/bin/bash
# Creates Mastodon's search indexes (`tootctl search deploy`) once per OpenSearch domain,
# on the worker, in the background: the unit mastodon-search-deploy that bootstrap.sh
# writes, enables and starts after the worker is up runs it at that boot and every boot.
#
#   search.sh INSTANCE_ID
#
# Once, the way the worker initializes the database: the stack runs one worker at a time
# (its group is replaced by terminating first), and that worker reads the state from the
# store itself before it acts and after. Here the state is a marker index that this
# script creates in the domain when the deploy has succeeded (SEARCH_MARKER_INDEX): a
# domain without it (search just turned on, or the domain replaced) is deployed, one
# with it is left alone. A deploy that fails or is cut short leaves no marker and runs
# again at the worker's next boot (or `systemctl start mastodon-search-deploy`);
# tootctl search deploy is safe to repeat (it creates what is missing and imports again).
#
# Its output goes to the system log group, stream INSTANCE_ID/search-deploy; this
# script's outcome to INSTANCE_ID/search-deploy-result. A failure's line begins with
# SEARCH_DEPLOY_FAILED, which the stack's metric filter turns into an alarm.
# Credentials never reach a command line: curl reads them on stdin.
# shellcheck disable=SC2153 source-path=SCRIPTDIR  # the settings come from the sourced files
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_NAME=search
# shellcheck source=SCRIPTDIR/common.sh
. "$SCRIPT_DIR/common.sh"
RETRY_ATTEMPTS=${SEARCH_RETRY_ATTEMPTS:-5}
RETRY_BACKOFF=${SEARCH_RETRY_BACKOFF:-30}
DEPLOY_CONTAINER=mastodon-search-deploy

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: search.sh INSTANCE_ID" >&2
  exit 2
fi
INSTANCE_ID=$1
for file in "$STACK_ENV_FILE" "$VERSION_FILE" "$ENV_FILE"; do
  if [ ! -r "$file" ]; then
    echo "search.sh: $file is missing: this server has not finished booting" >&2
    exit 3
  fi
done
# shellcheck source=/dev/null
. "$STACK_ENV_FILE"
# shellcheck source=/dev/null
. "$VERSION_FILE"
require_stack_env AWS_REGION MASTODON_IMAGE MASTODON_VERSION TOOTCTL_DB_POOL LOG_GROUP_SYSTEM
if [ "${ES_ENABLED:-false}" != true ]; then
  log "search is off: nothing to do"
  exit 0
fi
require_stack_env SEARCH_MARKER_INDEX SEARCH_DEPLOY_FAILED

# A value of the rendered Mastodon environment (the file is root's; so is this script).
env_value() {
  sed -n "s/^$1=//p" "$ENV_FILE" | head -n 1
}

# report MESSAGE: logs MESSAGE here and in the system log group.
report() {
  log "$1"
  local events stream="$INSTANCE_ID/search-deploy-result"
  events=$(mktemp)
  python3 -c 'import json, sys, time
json.dump([{"timestamp": int(time.time() * 1000), "message": sys.argv[1]}], open(sys.argv[2], "w"))' \
    "$1" "$events"
  aws logs create-log-stream --region "$AWS_REGION" --log-group-name "$LOG_GROUP_SYSTEM" \
    --log-stream-name "$stream" >/dev/null 2>&1 || true
  retry aws logs put-log-events --region "$AWS_REGION" --log-group-name "$LOG_GROUP_SYSTEM" \
    --log-stream-name "$stream" --log-events "file://$events" >/dev/null ||
    log "could not write to $LOG_GROUP_SYSTEM"
  rm -f "$events"
}

fail_deploy() {
  report "$SEARCH_DEPLOY_FAILED: $1"
  exit 1
}

# es_status METHOD PATH [JSON]: the HTTP status of a request to the domain, as its user.
es_status() {
  local method=$1 path=$2 body=${3:-}
  local -a request=(-X "$method")
  [ "$method" != HEAD ] || request=(--head)
  [ -z "$body" ] || request+=(-H "Content-Type: application/json" --data "$body")
  printf 'user = "%s:%s"\n' "$(env_value ES_USER)" "$(env_value ES_PASS)" |
    curl --config - -sS -m 30 -o /dev/null -w '%{http_code}' "${request[@]}" \
      "$(env_value ES_HOST):$(env_value ES_PORT)/$path"
}

# Succeeds when the marker exists, fails with 1 when it does not; anything else (the
# domain unreachable, refusing the user) is retried, then reported.
marker_present() {
  local code="" attempt=1 delay=$RETRY_BACKOFF
  while :; do
    code=$(es_status HEAD "$SEARCH_MARKER_INDEX") || true
    case $code in
      200) return 0 ;;
      404) return 1 ;;
    esac
    if [ "$attempt" -ge "$RETRY_ATTEMPTS" ]; then
      fail_deploy "cannot read the search domain $(env_value ES_HOST) (HTTP ${code:-none}); is it up, and does the servers' security group reach it?"
    fi
    log "the search domain answered HTTP ${code:-none}; asking again in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
  done
}

if marker_present; then
  log "the search domain has Mastodon's indexes (index $SEARCH_MARKER_INDEX): nothing to do"
  exit 0
fi
report "search deploy started: Mastodon $MASTODON_VERSION creates its indexes and imports the database"
# A deploy cut short (a reboot, a stopped unit) may have left its container running.
docker rm -f "$DEPLOY_CONTAINER" >/dev/null 2>&1 || true
rc=0
# tootctl's threads each hold a database connection: the pool fits the stack's reserve
# for one-off containers (templates/capacity.py), one connection kept for its main thread.
one_off "$TOOTCTL_DB_POOL" "$MASTODON_IMAGE:$MASTODON_VERSION" --name "$DEPLOY_CONTAINER" \
  --log-driver awslogs --log-opt "awslogs-region=$AWS_REGION" --log-opt "awslogs-group=$LOG_GROUP_SYSTEM" \
  --log-opt "awslogs-stream=$INSTANCE_ID/search-deploy" \
  -- bin/tootctl search deploy --concurrency "$((TOOTCTL_DB_POOL - 1))" || rc=$?
if [ "$rc" -ne 0 ]; then
  fail_deploy "tootctl search deploy exited $rc (see the log stream $INSTANCE_ID/search-deploy); it runs again at the worker's next boot"
fi
# One shard, and a replica only where a second node can hold it: the marker never
# turns a one-node domain yellow.
code=$(es_status PUT "$SEARCH_MARKER_INDEX" \
  '{"settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1"}}}') || true
if [ "$code" != 200 ] && ! marker_present; then
  fail_deploy "the indexes are built but the marker index $SEARCH_MARKER_INDEX could not be created (HTTP ${code:-none}); the next boot deploys again"
fi
report "search deploy done: Mastodon's indexes are complete"
