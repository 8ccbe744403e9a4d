# shellcheck shell=bash
# Room on the root volume for an image pull, shared by bootstrap.sh and deploy.sh.
# Sourced; the caller defines log (a line on stderr).
#
#   mastodon_free_mib PATH
#       free MiB on the file system that holds PATH, or would hold it: the nearest
#       existing parent is measured (Docker creates its data root on first use)
#   mastodon_missing_images IMAGE...
#       the IMAGEs (repository:tag) Docker does not hold yet, one a line
#   mastodon_make_room PATH NEED_MIB KEEP_IMAGE...
#       returns 0 when NEED_MIB are free under PATH. Otherwise removes dangling
#       images and every tagged image that neither a running container uses nor is a
#       KEEP_IMAGE (the running release, the one about to be pulled), measures again,
#       and if still short prints the reason on stdout and returns 1
#
# A pull needs MASTODON_PULL_MIB free. Since v4.3 the mastodon image is ~0.7-1 GB
# unpacked and mastodon-streaming a few hundred MB; while pulling, Docker holds each
# compressed layer (~40% of its unpacked size) until it is unpacked. A web server
# pulling both images of a release that shares no layer with the last one therefore
# peaks near 1.8 GB; 2 GiB covers that, and more than covers the worker's one image.
# shellcheck disable=SC2034  # read by the scripts that source this file
MASTODON_PULL_MIB=2048

mastodon_free_mib() {
  local dir=${1:-/} kib
  while [ ! -e "$dir" ] && [ "$dir" != / ]; do
    dir=$(dirname "$dir")
  done
  kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }') || return 1
  case $kib in
    '' | *[!0-9]*) return 1 ;;
  esac
  echo $((kib / 1024))
}

mastodon_missing_images() {
  local image
  for image in "$@"; do
    docker image inspect "$image" >/dev/null 2>&1 || printf '%s\n' "$image"
  done
}

mastodon_make_room() {
  local dir=$1 need=$2 free
  shift 2
  if ! free=$(mastodon_free_mib "$dir"); then
    # Not worth refusing a pull over: docker pull reports a full disk by itself.
    log "cannot measure the free space under $dir; pulling without the check"
    return 0
  fi
  if [ "$free" -ge "$need" ]; then
    log "$free MiB free under $dir; a pull needs $need"
    return 0
  fi
  log "$free MiB free under $dir, a pull needs $need: removing images no running container uses"
  docker image prune --force >/dev/null || log "could not remove the dangling images"

  # Never the images asked to keep or any a running container uses; `docker rmi`
  # without --force also refuses an image that any container, even stopped, uses.
  local -a spared=("$@")
  local running refs ref spare
  running=$(docker ps --format '{{.Image}}') || running=""
  while IFS= read -r ref; do
    [ -n "$ref" ] && spared+=("$ref")
  done <<<"$running"
  refs=$(docker images --format '{{.Repository}}:{{.Tag}}') || refs=""
  while IFS= read -r ref; do
    case $ref in
      '' | *'<none>'*) continue ;;
    esac
    for spare in "${spared[@]}"; do
      [ "$ref" = "$spare" ] && continue 2
    done
    if docker rmi "$ref" >/dev/null; then
      log "removed the unused image $ref"
    else
      log "could not remove the image $ref; leaving it"
    fi
  done <<<"$refs"

  free=$(mastodon_free_mib "$dir") || free=0
  if [ "$free" -lt "$need" ]; then
    echo "only $free MiB free under $dir after removing every unused image; a pull needs" \
      "$need MiB: free space on the root volume or replace this server"
    return 1
  fi
  log "$free MiB free under $dir now"
}
