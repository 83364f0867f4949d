#!/usr/bin/env bash
# Step 1: create the consortium's CA and issue the server's and each organization's
# credentials. Run it offline; afterwards move pki/ca/ca.key to offline storage: it is
# needed again only to issue credentials, and must never leave the operator.
set -euo pipefail
source "$(dirname "$0")/env.sh"

if [[ -e "$OPS_DIR/pki/ca" ]]; then
  echo "error: $OPS_DIR/pki/ca exists; this consortium already has a CA" >&2
  exit 1
fi
mkdir -p "$OPS_DIR/pki"
"$FEDHFT" ca init --consortium "$CONSORTIUM" --out "$OPS_DIR/pki/ca"
# Clients dial the server by $SERVER_HOST; --ip adds the listening address as a SAN too.
"$FEDHFT" ca issue --ca "$OPS_DIR/pki/ca" --server "$SERVER_HOST" --ip "$LISTEN_HOST" \
  --out "$OPS_DIR/pki/server"
for org in $ORGANIZATIONS; do
  "$FEDHFT" ca issue --ca "$OPS_DIR/pki/ca" --org "$org" --out "$OPS_DIR/pki/$org"
done
