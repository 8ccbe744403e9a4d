#!/usr/bin/env bash
# A fake for docker, aws, systemctl, curl, dnf and nproc in the bootstrap tests.
#
# Linked under each command's name. Appends every call to $STUB_DIR/calls.log (name
# and arguments separated by US, 0x1f) and answers like the real tool, from the
# response files the test harness writes into $STUB_DIR (docker images: the file
# images; docker rmi fails for the references listed in rmi_fail).
set -u
name=${0##*/}
{
  printf '%s' "$name"
  printf '\x1f%s' "$@"
  printf '\n'
} >>"$STUB_DIR/calls.log"

key() { printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_'; }
option() {
  local flag=$1
  shift
  while [ $# -gt 1 ]; do
    [ "$1" = "$flag" ] && { printf '%s' "$2"; return 0; }
    shift
  done
  return 1
}
setting() { cat "$STUB_DIR/$1" 2>/dev/null || printf '%s' "$2"; }

case $name in
  aws)
    case "$1 $2" in
      "secretsmanager get-secret-value")
        file="$STUB_DIR/secret-$(key "$(option --secret-id "$@")").json"
        [ -f "$file" ] || { echo "An error occurred (ResourceNotFoundException) when calling the GetSecretValue operation" >&2; exit 254; }
        cat "$file"
        ;;
      "ssm get-parameter") cat "$STUB_DIR/parameter-$(key "$(option --name "$@")").json" ;;
      "ec2 get-managed-prefix-list-entries") cat "$STUB_DIR/prefix-list-$(key "$(option --prefix-list-id "$@")").json" ;;
      "cloudformation signal-resource")
        # A server launched outside a stack operation: nothing waits for its signal.
        if [ "$(setting signal_state waiting)" = none ]; then
          echo "An error occurred (ValidationError) when calling the SignalResource operation: Resource $(option --logical-resource-id "$@") is in UPDATE_COMPLETE state and cannot be signaled" >&2
          exit 254
        fi
        ;;
      "logs put-log-events")
        events=$(option --log-events "$@")
        cp "${events#file://}" "$STUB_DIR/shipped-log-$$.json"
        echo '{"nextSequenceToken": "1"}'
        ;;
    esac
    ;;
  docker)
    case $1 in
      pull)
        if grep -qxF -- "$2" "$STUB_DIR/pull_fail" 2>/dev/null; then
          echo "Error response from daemon: manifest for $2 not found: manifest unknown" >&2
          exit 1
        fi
        echo "Status: Downloaded newer image for $2"
        ;;
      run)
        state=$(setting db_state initialized)
        case " $* " in
          *" runner "*)
            case $state in
              initialized) exit 0 ;;
              error) echo "PG::ConnectionBad: connection refused" >&2; exit 1 ;;
              *) exit 10 ;;
            esac
            ;;
          *" db:setup "*)
            echo initialized >"$STUB_DIR/db_state"
            echo "Database 'mastodon' already exists"
            ;;
        esac
        ;;
      ps)
        case $(setting sidekiq stable) in
          stable) echo 0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c ;;
          restarting)
            count=$(($(setting ps_count 0) + 1))
            echo "$count" >"$STUB_DIR/ps_count"
            printf '%064x\n' "$count"
            ;;
        esac
        ;;
      logs) echo "PG::ConnectionBad: could not connect to server (stub container log)" ;;
      images) setting images '' ;;
      rmi)
        if grep -qxF -- "$2" "$STUB_DIR/rmi_fail" 2>/dev/null; then
          echo "Error response from daemon: conflict: unable to remove repository reference \"$2\"" >&2
          exit 1
        fi
        echo "Untagged: $2"
        ;;
    esac
    ;;
  curl)
    url=""
    for arg in "$@"; do
      case $arg in http*) url=$arg ;; esac
    done
    case $url in
      */latest/api/token) printf 'AQAEAFakeImdsToken==' ;;
      */latest/meta-data/instance-id) setting instance_id i-0123456789abcdef0 ;;
      *)
        if [ "$(setting health ok)" != ok ]; then
          echo "curl: (7) Failed to connect to $url" >&2
          exit 7
        fi
        out=$(option -o "$@") || out=/dev/stdout
        printf 'OK' >"$out"
        ;;
    esac
    ;;
  nproc) setting nproc 2 ;;
  systemctl) [ "${1:-}" = is-active ] && echo active ;;
esac
exit 0
