#!/usr/bin/env bash
# Step 3: run the aggregation server in the foreground with exactly the command line of
# the systemd unit (its ExecStart), plus any arguments given here. First start:
#   ./03-serve.sh --new-run      # creates the run in $OPS_DIR/state; Ctrl-C when it serves
# then hand the server to systemd, which resumes that run:
#   ./render-unit.sh | sudo tee /etc/systemd/system/fedhft-aggregator.service
#   sudo systemctl enable --now fedhft-aggregator
set -euo pipefail
source "$(dirname "$0")/env.sh"

mkdir -p "$OPS_DIR/state" "$OPS_DIR/run"
command_line="$("$HERE/render-unit.sh" | sed -n 's/^ExecStart=//p')"
# The rendered line holds paths without spaces (env.sh's values); word splitting is meant.
# shellcheck disable=SC2086
exec env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 $command_line "$@"
