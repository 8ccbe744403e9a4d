#!/bin/bash
# Runs one tootctl command in a one-off container of the version this server runs.
#
#   tootctl.sh media remove --days 7
#
# Used by the operator (scripts/tootctl.py, through SSM Run Command) and by the
# stack's daily cleanup. Reads the image from stack.env and the version from
# version.env (what the units run, rewritten by every deploy), and the runtime
# environment bootstrap.sh rendered. Tests redirect the paths with MASTODON_ROOT.
# shellcheck disable=SC2153 source-path=SCRIPTDIR  # MASTODON_IMAGE and MASTODON_VERSION come from the sourced files
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_NAME=tootctl
# shellcheck source=SCRIPTDIR/common.sh
. "$SCRIPT_DIR/common.sh"
if [ $# -eq 0 ]; then
  echo "usage: tootctl.sh COMMAND [ARGS...]   e.g. tootctl.sh accounts modify alice --role Owner" >&2
  exit 2
fi
for file in "$STACK_ENV_FILE" "$VERSION_FILE" "$ENV_FILE"; do
  if [ ! -r "$file" ]; then
    echo "tootctl.sh: $file is missing: this server has not finished booting" >&2
    exit 3
  fi
done
# shellcheck source=/dev/null
. "$STACK_ENV_FILE"
# shellcheck source=/dev/null
. "$VERSION_FILE"
# tootctl's threads each hold a connection: TOOTCTL_DB_POOL fits them within the stack's
# reserve for one-off containers (templates/capacity.py).
require_stack_env MASTODON_IMAGE TOOTCTL_DB_POOL

one_off --exec "$TOOTCTL_DB_POOL" "$MASTODON_IMAGE:$MASTODON_VERSION" -- bin/tootctl "$@"
