#!/bin/bash
# Deploys a Mastodon version on this server, or runs migrations; called by the rollout
# through SSM Run Command (AWS-RunShellScript), as root:
#
#   deploy.sh deploy vX.Y.Z        pull the role's images, point version.env at the tag,
#                                  restart the role's units, wait for local health
#   deploy.sh pull vX.Y.Z          only pull the role's images (the rollout's pull-ahead,
#                                  while the server still serves): nothing else changes
#   deploy.sh migrate pre vX.Y.Z   db:migrate with SKIP_POST_DEPLOYMENT_MIGRATIONS=true
#   deploy.sh migrate post vX.Y.Z  the full db:migrate (worker only, like pre)
#   deploy.sh settings             read Mastodon's other settings again (templates/settings.py);
#                                  if they changed, restart the role's units with them, wait
#                                  for local health, and put the previous ones back if not
#
# A deploy reads the settings again too: changed ones restart the units even when the
# version is the one that runs. Refused settings stop a deploy to another version before
# it changes anything; a deploy of the version that runs (a rollback) keeps the settings
# in use and says so.
#
# Prints what it did; on failure exits non-zero with the reason as the last line of
# stderr (the rollout quotes it). One deploy at a time per server (flock), so a
# retried command waits for the first instead of racing it. Deploying the version
# that already runs healthy does nothing but pull, unless the tag was pushed again with
# new images meanwhile: then the units restart with them. The last lines say which images
# (registry digests) the units run. After a deploy that switched
# versions and turned healthy, images of the role's repositories other than the new
# version and the one it replaced (kept for a quick rollback) are removed, so the
# root volume does not fill release after release; a removal that fails is logged.
# Before pulling an image it does not hold, it makes sure the 8 GiB root volume has
# room for the pull (disk.sh): if not, it removes the images no running container
# uses (never the running version's) and, if still short, fails with the reason
# before it changes anything.
#
# Tests redirect paths with MASTODON_ROOT and shorten waits with the DEPLOY_* variables.
# shellcheck disable=SC2153 source-path=SCRIPTDIR
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_NAME=deploy
# shellcheck source=SCRIPTDIR/common.sh
. "$SCRIPT_DIR/common.sh"
# shellcheck source=SCRIPTDIR/disk.sh
. "$SCRIPT_DIR/disk.sh"

LOCK_FILE="$ROOT/run/mastodon-deploy.lock"
HEALTH_TIMEOUT=${DEPLOY_HEALTH_TIMEOUT:-300}
HEALTH_INTERVAL=${DEPLOY_HEALTH_INTERVAL:-3}
WORKER_STABLE_SECONDS=${DEPLOY_WORKER_STABLE_SECONDS:-20}
RETRY_ATTEMPTS=${DEPLOY_RETRY_ATTEMPTS:-4}
RETRY_BACKOFF=${DEPLOY_RETRY_BACKOFF:-5}
LOCK_TIMEOUT=${DEPLOY_LOCK_TIMEOUT:-1800}

usage() { fail "usage: deploy.sh deploy|pull vX.Y.Z | deploy.sh migrate pre|post vX.Y.Z | deploy.sh settings" 2; }

load_stack_env() {
  [ -r "$STACK_ENV_FILE" ] || fail "$STACK_ENV_FILE is missing: is this a Mastodon server?"
  # shellcheck source=/dev/null
  . "$STACK_ENV_FILE"
  case ${ROLE:-} in
    web) UNITS=(mastodon-web mastodon-streaming) ;;
    worker | queue) UNITS=(mastodon-sidekiq) ;;
    *) fail "ROLE must be web, worker or queue in stack.env, not '${ROLE:-}'" ;;
  esac
  if [ -z "${MASTODON_IMAGE:-}" ] || [ -z "${STREAMING_IMAGE:-}" ]; then
    fail "the images are not set in stack.env"
  fi
  require_stack_env TAG_PATTERN WEB_PORT WEB_HEALTH_PATH STREAMING_PORT STREAMING_HEALTH_PATH \
    ONE_OFF_DB_POOL
  if settings_enabled; then
    require_stack_env AWS_REGION SETTINGS_NAME_PATTERN SETTINGS_MAX SETTINGS_OWNED_PREFIXES \
      SETTINGS_RESERVED_NAMES
  fi
}

# The settings as they are now, rendered beside the ones in use.
NEXT_SETTINGS_FILE="$ETC_DIR/.settings.env.next"
# Settings a deploy of a new version applied and that left the server unhealthy, beside the
# version that failed with them: the rollout's put-back of the version before keeps the
# settings that ran with it instead of rendering the failed ones again.
FAILED_SETTINGS_FILE="$ETC_DIR/.settings.env.failed"
FAILED_VERSION_FILE="$ETC_DIR/.settings.env.failed-version"

healthy_now() {
  if [ "$ROLE" = web ]; then
    web_healthy
  else
    [ -n "$(running_sidekiq)" ]
  fi
}

wait_for_health() {
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  until healthy_now; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      local unit
      for unit in "${UNITS[@]}"; do
        docker logs --tail 20 "$unit" >&2 2>&1 || true
      done
      fail "${UNITS[*]} not healthy within ${HEALTH_TIMEOUT}s after starting $1"
    fi
    sleep "$HEALTH_INTERVAL"
  done
  if [ "$ROLE" != web ]; then
    # Sidekiq that crashes at boot restarts in a loop: it must keep one container id.
    local id
    id=$(running_sidekiq)
    sidekiq_stays "$id" "$WORKER_STABLE_SECONDS" "$HEALTH_INTERVAL" ||
      fail "mastodon-sidekiq restarted after starting $1"
  fi
}

# Removes the images of MASTODON_IMAGE and STREAMING_IMAGE tagged neither $1 nor $2.
remove_old_images() {
  local keep=$1 previous=$2 refs ref image
  refs=$(docker images --format '{{.Repository}}:{{.Tag}}') || {
    log "could not list the images; none removed"
    return 0
  }
  while IFS= read -r ref; do
    for image in "$MASTODON_IMAGE" "$STREAMING_IMAGE"; do
      case $ref in
        "$image:$keep" | "$image:$previous" | "$image:<none>") ;;
        "$image":*)
          if docker rmi "$ref" >/dev/null; then
            log "removed the old image $ref"
          else
            log "could not remove the old image $ref; leaving it"
          fi
          ;;
      esac
    done
  done <<<"$refs"
}

# swap_in_settings BACKUP: keeps the settings in use in BACKUP (empty when there were none)
# and puts the checked new ones (NEXT_SETTINGS_FILE) in their place.
swap_in_settings() {
  if [ -f "$SETTINGS_FILE" ]; then
    cp -p "$SETTINGS_FILE" "$1"
  else
    : >"$1"
  fi
  mv -f "$NEXT_SETTINGS_FILE" "$SETTINGS_FILE"
}

deploy() {
  local version=$1 previous
  previous=$(current_version)
  local images=("$MASTODON_IMAGE:$version")
  [ "$ROLE" = web ] && images+=("$STREAMING_IMAGE:$version")
  pull_with_room "${images[@]}"
  local settings_changed=false
  if settings_enabled; then
    if render_settings "$NEXT_SETTINGS_FILE"; then
      cmp -s "$NEXT_SETTINGS_FILE" "$SETTINGS_FILE" || settings_changed=true
      if [ "$settings_changed" = true ] && [ -f "$FAILED_SETTINGS_FILE" ] &&
        cmp -s "$NEXT_SETTINGS_FILE" "$FAILED_SETTINGS_FILE" &&
        [ "$(cat "$FAILED_VERSION_FILE" 2>/dev/null)" != "$version" ]; then
        # A put-back after the deploy of another version failed with these settings.
        log "keeping the settings in use on $version: the current ones left the server unhealthy with $(cat "$FAILED_VERSION_FILE")"
        settings_changed=false
      fi
    elif [ "$previous" = "$version" ]; then
      # A rollback or a repair: what runs stays as it was.
      log "keeping the settings in use on $version: $SETTINGS_REFUSAL"
    else
      fail "not deploying $version: Mastodon's other settings: $SETTINGS_REFUSAL; nothing changed"
    fi
  fi
  if [ "$previous" = "$version" ] && [ "$settings_changed" = false ] && runs_pulled "$version" && healthy_now; then
    rm -f "$NEXT_SETTINGS_FILE"
    log "already running $version and healthy; nothing to restart"
    report_digests "$version"
    echo "deployed $version on $ROLE (unchanged)"
    return 0
  fi
  [ "$previous" != "$version" ] || runs_pulled "$version" ||
    log "$version was pushed again with new images since the units started; they restart with them"
  local backup="$ETC_DIR/.settings.env.previous"
  if [ "$settings_changed" = true ]; then
    swap_in_settings "$backup"
    log "Mastodon's other settings changed; the units restart with them"
  fi
  rm -f "$NEXT_SETTINGS_FILE"
  local tmp
  tmp=$(mktemp "$ETC_DIR/.version.env.XXXXXX")
  printf 'MASTODON_VERSION=%s\n' "$version" >"$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$VERSION_FILE"
  log "version.env: ${previous:-none} -> $version; restarting ${UNITS[*]}"
  if [ "$settings_changed" = true ]; then
    if ! systemctl restart "${UNITS[@]}" || ! (wait_for_health "$version with the new settings"); then
      # The put-back of the previous version must not render these settings again.
      cp -p "$SETTINGS_FILE" "$FAILED_SETTINGS_FILE"
      printf '%s\n' "$version" >"$FAILED_VERSION_FILE"
      mv -f "$backup" "$SETTINGS_FILE"
      fail "${UNITS[*]} not healthy with $version and the new settings; the previous settings are back for the put-back of ${previous:-the version before}"
    fi
  else
    systemctl restart "${UNITS[@]}" || fail "systemctl could not restart ${UNITS[*]} with $version"
    wait_for_health "$version"
  fi
  # New settings that ran healthy replace any record of failed ones; a put-back keeps it.
  [ "$settings_changed" = false ] || rm -f "$backup" "$FAILED_SETTINGS_FILE" "$FAILED_VERSION_FILE"
  remove_old_images "$version" "$previous"
  report_digests "$version"
  echo "deployed $version on $ROLE (was ${previous:-none})"
}

# The image of each unit: the Mastodon image, and the streaming image for its unit.
unit_image() {
  if [ "$1" = mastodon-streaming ]; then printf '%s' "$STREAMING_IMAGE"; else printf '%s' "$MASTODON_IMAGE"; fi
}

# runs_pulled VERSION: whether every unit's container runs the image VERSION's tag names
# here now, as far as docker tells. A tag pushed again with new images (upgrade on push,
# RollRepushedTags) names another image after the pull: the units must restart, although
# the version is the one they run. When docker cannot tell, the tag is trusted.
runs_pulled() {
  local unit want have
  for unit in "${UNITS[@]}"; do
    want=$(docker image inspect --format '{{.Id}}' "$(unit_image "$unit"):$1" 2>/dev/null) || want=""
    have=$(docker inspect --format '{{.Image}}' "$unit" 2>/dev/null) || have=""
    case "$want $have" in
      "sha256:"*" sha256:"*) [ "$want" = "$have" ] || return 1 ;;
    esac
  done
  return 0
}

# image_digest IMAGE:TAG: the registry's digest (sha256:...) of the image docker pulled
# under that tag (its RepoDigests; Docker Hub's are recorded without docker.io/), or "-".
image_digest() {
  local repository=${1%:*} line
  while IFS= read -r line; do
    case $line in
      "$repository@sha256:"* | "${repository#docker.io/}@sha256:"*)
        printf '%s' "${line#*@}"
        return 0
        ;;
    esac
  done < <(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$1" 2>/dev/null || true)
  printf -- '-'
}

# The images this server's units run, as registry digests, in the order of the units'
# images (Mastodon's, then streaming's on a web server): the rollout records them on
# the server (lambdas/rollout, DIGEST_TAG) from this line of the command's output.
report_digests() {
  local -a digests=("$(image_digest "$MASTODON_IMAGE:$1")")
  [ "$ROLE" != web ] || digests+=("$(image_digest "$STREAMING_IMAGE:$1")")
  echo "image digests: ${digests[*]}"
}

# The rollout pulls ahead on every server while it serves, so that its deploy later only
# restarts; the disk guard of pull applies, and what runs is left untouched.
pull_ahead() {
  local version=$1
  local images=("$MASTODON_IMAGE:$version")
  [ "$ROLE" = web ] && images+=("$STREAMING_IMAGE:$version")
  pull_with_room "${images[@]}"
  echo "pulled $version on $ROLE"
}

migrate() {
  local phase=$1 version=$2
  [ "$ROLE" = worker ] || fail "migrations run on the worker, not on a $ROLE server"
  local -a skip=()
  case $phase in
    pre) skip=(-e SKIP_POST_DEPLOYMENT_MIGRATIONS=true) ;;
    post) ;;
    *) usage ;;
  esac
  pull_with_room "$MASTODON_IMAGE:$version"
  log "running the $phase-deployment migrations of $version"
  one_off "$ONE_OFF_DB_POOL" "$MASTODON_IMAGE:$version" "${skip[@]}" -- bundle exec rails db:migrate ||
    fail "the $phase-deployment migrations of $version failed (rails db:migrate)"
  echo "migrated ($phase) to $version"
}

# Applies changed settings on this server without a new version: restart, wait for health,
# and if the units do not turn healthy put the previous settings back and restart again.
apply_settings() {
  settings_enabled || fail "this stack names no settings source: set MastodonSettings or MastodonSettingsSecretArn (a stack update)"
  render_settings "$NEXT_SETTINGS_FILE" || fail "Mastodon's other settings: $SETTINGS_REFUSAL; nothing changed"
  if cmp -s "$NEXT_SETTINGS_FILE" "$SETTINGS_FILE"; then
    rm -f "$NEXT_SETTINGS_FILE"
    echo "settings unchanged on $ROLE; nothing restarted"
    return 0
  fi
  local backup="$ETC_DIR/.settings.env.previous" version
  version=$(current_version)
  swap_in_settings "$backup"
  log "Mastodon's other settings changed; restarting ${UNITS[*]}"
  if systemctl restart "${UNITS[@]}" && (wait_for_health "$version with the new settings"); then
    rm -f "$backup"
    echo "applied the settings on $ROLE ($version)"
    return 0
  fi
  log "the new settings left ${UNITS[*]} unhealthy; putting the previous ones back"
  mv -f "$backup" "$SETTINGS_FILE"
  systemctl restart "${UNITS[@]}" || fail "systemctl could not restart ${UNITS[*]} with the previous settings"
  wait_for_health "$version with the previous settings"
  fail "the new settings left ${UNITS[*]} unhealthy; the previous ones run again"
}

main() {
  if [ "${1:-}" = settings ]; then
    [ $# -eq 1 ] || usage
    load_stack_env
    mkdir -p "$(dirname "$LOCK_FILE")"
    exec 9>"$LOCK_FILE"
    flock -w "$LOCK_TIMEOUT" 9 || fail "another deploy held the lock for ${LOCK_TIMEOUT}s"
    apply_settings
    return 0
  fi
  [ $# -ge 2 ] || usage
  local mode=$1 version=${*: -1}
  [ "$mode" != migrate ] || [ "$2" = pre ] || [ "$2" = post ] || usage
  load_stack_env
  is_version_tag "$version" || fail "'$version' does not follow the stack's tag rule (TAG_PATTERN in stack.env)" 2
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 9>"$LOCK_FILE"
  flock -w "$LOCK_TIMEOUT" 9 || fail "another deploy held the lock for ${LOCK_TIMEOUT}s"
  case $mode in
    deploy)
      [ $# -eq 2 ] || usage
      deploy "$version"
      ;;
    pull)
      [ $# -eq 2 ] || usage
      pull_ahead "$version"
      ;;
    migrate)
      [ $# -eq 3 ] || usage
      migrate "$2" "$version"
      ;;
    *) usage ;;
  esac
}

main "$@"
