#!/usr/bin/env bash
# Print fedhft-aggregator.service with its placeholders filled in from env.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
sed -e "s|@CONSORTIUM@|$CONSORTIUM|g" -e "s|@USER@|$(id -un)|g" -e "s|@FEDHFT@|$FEDHFT|g" \
  -e "s|@OPS_DIR@|$OPS_DIR|g" -e "s|@LISTEN_HOST@|$LISTEN_HOST|g" -e "s|@PORT@|$PORT|g" \
  "$HERE/fedhft-aggregator.service"
