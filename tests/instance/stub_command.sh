#!/usr/bin/env bash
# A fake for docker, aws, systemctl, curl, dnf, nproc, df, the swap commands (dd,
# mkswap, swapon, sysctl) and the ECR credential helper in the instance script tests.
#
# Linked under each command's name. Appends every call to $STUB_DIR/calls.log (name
# and arguments separated by US, 0x1f) and answers like the real tool, from the
# response files the test harness writes into $STUB_DIR (docker images: the file
# images, which docker image inspect also reads; docker rmi fails for the references
# listed in rmi_fail; docker ps --format {{.Image}}: the file running_images;
# df: the file free_kib, one free-space figure a line, each call
# taking the next and the last one staying; dd fails when dd_fail exists; swapon
# lists the file it enables in the file swaps, in /proc/swaps' format).
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
    # fail-SERVICE-OPERATION holds how many calls fail next (throttled) and, on a second
    # line, the error code (ThrottlingException unless told); fail-SERVICE-OPERATION@TARGET
    # only the calls for one --secret-id or --path.
    failures="$STUB_DIR/fail-$1-$2"
    target=$(option --secret-id "$@" || option --path "$@" || true)
    [ -z "$target" ] || [ ! -s "$failures@$(key "$target")" ] || failures="$failures@$(key "$target")"
    if [ -s "$failures" ] && [ "$(head -n 1 "$failures")" -gt 0 ]; then
      code=$(sed -n 2p "$failures")
      sed -i "1s/.*/$(($(head -n 1 "$failures") - 1))/" "$failures"
      echo "An error occurred (${code:-ThrottlingException}) when calling the $2 operation: Rate exceeded" >&2
      exit 254
    fi
    case "$1 $2" in
      "ssm get-parameters-by-path")
        file="$STUB_DIR/parameters-by-path-$(key "$(option --path "$@")").json"
        if [ -f "$file" ]; then cat "$file"; else echo '{"Parameters": []}'; fi
        ;;
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
      "ec2 create-tags")
        if [ "$(setting tag_state ok)" = denied ]; then
          echo "An error occurred (UnauthorizedOperation) when calling the CreateTags operation" >&2
          exit 254
        fi
        ;;
      "autoscaling describe-auto-scaling-instances")
        # The web group's launch hook holds a new server in Pending:Wait (the file
        # lifecycle_state) until bootstrap completes the action.
        printf '%s\t%s\n' "$(setting group_name mastodon-test-WebAutoScalingGroup-1A2B3C)" \
          "$(setting lifecycle_state Pending:Wait)"
        ;;
      "autoscaling complete-lifecycle-action")
        # complete_fail: refused (always), lost (done, but the answer never arrives).
        if [ "$(setting lifecycle_state Pending:Wait)" != Pending:Wait ] ||
          [ "$(setting complete_fail none)" = refused ]; then
          echo "An error occurred (ValidationError) when calling the CompleteLifecycleAction operation: No active Lifecycle Action found with instance ID $(option --instance-id "$@")" >&2
          exit 254
        fi
        echo Pending:Proceed >"$STUB_DIR/lifecycle_state"
        if [ "$(setting complete_fail none)" = lost ]; then
          echo "Connection was closed before we received a valid response from endpoint URL" >&2
          exit 255
        fi
        ;;
      "elbv2 describe-target-health")
        # Not a target before the launch goes on; then one state a call from the file
        # target_health (the last one staying), healthy unless told otherwise.
        if [ "$(setting lifecycle_state Pending:Wait)" = Pending:Wait ]; then
          echo unused
        elif [ -s "$STUB_DIR/target_health" ]; then
          head -n 1 "$STUB_DIR/target_health"
          if [ "$(wc -l <"$STUB_DIR/target_health")" -gt 1 ]; then
            sed -i 1d "$STUB_DIR/target_health"
          fi
        else
          echo healthy
        fi
        ;;
      "cloudwatch put-metric-data")
        # put_metric_fail: how many calls are refused first (throttled), one a call.
        left=$(setting put_metric_fail 0)
        if [ "$left" -gt 0 ]; then
          echo $((left - 1)) >"$STUB_DIR/put_metric_fail"
          echo "An error occurred (Throttling) when calling the PutMetricData operation (reached max retries: 2): Rate exceeded" >&2
          exit 254
        fi
        data=$(option --metric-data "$@")
        cp "${data#file://}" "$STUB_DIR/metric-data-$(date +%s%N)-$$.json"
        ;;
      "logs put-log-events")
        events=$(option --log-events "$@")
        cp "${events#file://}" "$STUB_DIR/shipped-log-$(date +%s%N)-$$.json"
        echo '{"nextSequenceToken": "1"}'
        ;;
    esac
    ;;
  docker-credential-ecr-login)
    # The credential helper's protocol: the registry on stdin, the credentials as JSON on
    # stdout; an error on stdout with exit 1. ecr_login_fail: how many calls fail next.
    registry=$(cat)
    printf '%s\n' "$registry" >>"$STUB_DIR/ecr_logins"
    left=$(setting ecr_login_fail 0)
    if [ "$left" -gt 0 ]; then
      echo $((left - 1)) >"$STUB_DIR/ecr_login_fail"
      echo "ecr: Failed to get authorization token: operation error ECR: GetAuthorizationToken, AccessDeniedException: not authorized to perform: ecr:GetAuthorizationToken"
      exit 1
    fi
    printf '{"ServerURL": "%s", "Username": "AWS", "Secret": "%s"}\n' "$registry" "$(setting ecr_token ecr-token-SECRET)"
    ;;
  docker)
    case $1 in
      pull)
        # What Docker's configuration said at this pull (the credential helpers).
        printf '%s\x1f%s\n' "$2" "$(tr -d '\n' <"${DOCKER_CONFIG:-/nonexistent}/config.json" 2>/dev/null)" \
          >>"$STUB_DIR/pull_configs"
        if grep -qxF -- "$2" "$STUB_DIR/pull_fail" 2>/dev/null; then
          echo "Error response from daemon: manifest for $2 not found: manifest unknown" >&2
          exit 1
        fi
        echo "Status: Downloaded newer image for $2"
        ;;
      run)
        state=$(setting db_state initialized)
        case " $* " in
          *" runner "*"SELECT version()"*)
            # bootstrap.sh's query through PgBouncer: the file pooler_state says broken.
            if [ "$(setting pooler_state ok)" = broken ]; then
              echo "PG::ConnectionBad: server login has been failing (pgbouncer)" >&2
              exit 1
            fi
            ;;
          *" runner "*)
            case $state in
              initialized) exit 0 ;;
              error) echo "PG::ConnectionBad: connection refused" >&2; exit 1 ;;
              # Schema loaded, seeds never run: db:setup died half-way.
              unseeded) exit 11 ;;
              *) exit 10 ;;
            esac
            ;;
          *" bin/tootctl search deploy "*)
            # search_deploy_fail: how many runs fail before one succeeds.
            fails=$(setting search_deploy_fail 0)
            if [ "$fails" -gt 0 ]; then
              echo $((fails - 1)) >"$STUB_DIR/search_deploy_fail"
              echo "Faraday::ConnectionFailed: Failed to open TCP connection" >&2
              exit 1
            fi
            echo "Done! (stub search deploy)"
            ;;
          *" db:setup "*)
            echo initialized >"$STUB_DIR/db_state"
            echo "Database 'mastodon' already exists"
            ;;
          *" db:seed "*)
            [ "$state" = unseeded ] && echo initialized >"$STUB_DIR/db_state"
            ;;
          *" bin/tootctl accounts "*)
            # tootctl's answers (lib/mastodon/cli/accounts.rb, v4.7): Thor errors on
            # stderr with exit 1, "say" on stdout. The file accounts holds one
            # "username email" line per account made so far.
            while [ "$1" != bin/tootctl ]; do shift; done
            user=$4
            known() { awk -v f="$1" -v v="$2" 'tolower($f) == tolower(v) { found = 1 } END { exit !found }' \
              "$STUB_DIR/accounts" 2>/dev/null; }
            case $3 in
              create)
                email=$(option --email "$@")
                if ! printf '%s' "$user" | grep -Eq '^[A-Za-z0-9_]{1,30}$'; then
                  printf 'Failure/Error: account.username\n    invalid\n' >&2
                  exit 1
                fi
                if known 1 "$user"; then
                  printf 'Failure/Error: account.username\n    taken\n' >&2
                  exit 1
                fi
                if known 2 "$email"; then
                  printf 'Failure/Error: email\n    taken\n' >&2
                  exit 1
                fi
                echo "$user $email" >>"$STUB_DIR/accounts"
                echo OK
                echo "New password: $(setting new_password 0123456789abcdef0123456789abcdef)"
                ;;
              approve)
                known 1 "$user" || { echo "No such account" >&2; exit 1; }
                echo OK
                ;;
            esac
            ;;
        esac
        ;;
      ps)
        if [ "$*" = "ps --format {{.Image}}" ]; then
          setting running_images ''
          exit 0
        fi
        case $(setting sidekiq stable) in
          stable) echo 0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c0f3c ;;
          absent) ;;
          restarting)
            count=$(($(setting ps_count 0) + 1))
            echo "$count" >"$STUB_DIR/ps_count"
            printf '%064x\n' "$count"
            ;;
        esac
        ;;
      logs) echo "PG::ConnectionBad: could not connect to server (stub container log)" ;;
      exec)
        # The queue-metrics reader: the file sidekiq_statistics is what it prints; with
        # redis_down, Sidekiq's API cannot reach Redis.
        if [ -e "$STUB_DIR/redis_down" ]; then
          echo "RedisClient::CannotConnectError: Connection refused - connect(2) for 10.0.1.5:6379" >&2
          exit 1
        fi
        setting sidekiq_statistics ''
        ;;
      images) setting images '' ;;
      image)
        case ${2:-} in
          inspect)
            if ! grep -qxF -- "$3" "$STUB_DIR/images" 2>/dev/null; then
              echo "Error response from daemon: No such image: $3" >&2
              exit 1
            fi
            echo '[{"Id": "sha256:0f3c"}]'
            ;;
          prune) echo "Total reclaimed space: 0B" ;;
        esac
        ;;
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
      https://*)
        # The search domain: its credentials arrive on stdin (curl --config -), kept in
        # search_curl_config; search_domain down answers nothing; the file search_marker
        # is the marker index.
        cat >"$STUB_DIR/search_curl_config"
        if [ "$(setting search_domain up)" != up ]; then
          echo "curl: (28) Connection timed out after 30001 milliseconds" >&2
          printf 000
          exit 28
        fi
        if printf '%s\n' "$@" | grep -qx -- --head; then
          if [ -e "$STUB_DIR/search_marker" ]; then printf 200; else printf 404; fi
        elif [ "$(option -X "$@")" = PUT ]; then
          echo "$url" >"$STUB_DIR/search_marker"
          # search_put_lost: the index is created but the answer never arrives.
          if [ -e "$STUB_DIR/search_put_lost" ]; then
            echo "curl: (52) Empty reply from server" >&2
            printf 000
            exit 52
          fi
          printf 200
        else
          printf 400
        fi
        ;;
      *)
        # unhealthy_with holds a line that, found in settings.env, leaves the server unhealthy.
        if [ "$(setting health ok)" != ok ] || { [ -s "$STUB_DIR/unhealthy_with" ] &&
          grep -qxF "$(cat "$STUB_DIR/unhealthy_with")" "$MASTODON_ROOT/etc/mastodon/settings.env" 2>/dev/null; }; then
          echo "curl: (7) Failed to connect to $url" >&2
          exit 7
        fi
        out=$(option -o "$@") || out=/dev/stdout
        printf 'OK' >"$out"
        ;;
    esac
    ;;
  nproc) setting nproc 2 ;;
  df)
    # df -Pk PATH: POSIX format, sizes in KiB; 50 GiB free unless told otherwise.
    free=52428800
    if [ -s "$STUB_DIR/free_kib" ]; then
      free=$(head -n 1 "$STUB_DIR/free_kib")
      if [ "$(wc -l <"$STUB_DIR/free_kib")" -gt 1 ]; then
        sed -i 1d "$STUB_DIR/free_kib"
      fi
    fi
    echo "Filesystem     1024-blocks    Used Available Capacity Mounted on"
    echo "/dev/nvme0n1p1     8310764 2000000 $free 25% /"
    ;;
  dd)
    of="" count=0
    for arg in "$@"; do
      case $arg in
        of=*) of=${arg#of=} ;;
        count=*) count=${arg#count=} ;;
      esac
    done
    if [ -e "$STUB_DIR/dd_fail" ]; then
      : >"$of"
      echo "dd: error writing '$of': No space left on device" >&2
      exit 1
    fi
    # Sparse: the size is what the scripts check, the blocks cost nothing here.
    truncate -s "${count}M" "$of"
    ;;
  mkswap) echo "Setting up swapspace version 1, size = ${1:-}" ;;
  swapon)
    [ -s "$STUB_DIR/swaps" ] || echo "Filename Type Size Used Priority" >"$STUB_DIR/swaps"
    echo "$1 file $(($(stat -c %s "$1") / 1024)) 0 -2" >>"$STUB_DIR/swaps"
    ;;
  systemctl)
    # systemctl_fail: a unit name whose every systemctl call fails.
    fail_unit=$(setting systemctl_fail '')
    if [ -n "$fail_unit" ] && printf '%s\n' "$@" | grep -qxF -- "$fail_unit"; then
      echo "Failed to start $fail_unit.service: Unit $fail_unit.service has a bad unit file setting." >&2
      exit 1
    fi
    [ "${1:-}" = is-active ] && echo active
    ;;
esac
exit 0
