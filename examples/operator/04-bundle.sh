#!/usr/bin/env bash
# Step 4: build the bundle handed to each organization (over a channel that keeps it
# confidential: it holds the organization's private keys):
#   credentials/     its own TLS, identity and sealing keys and certificates, and ca.crt
#   consortium.yaml  the configuration every client must hold byte-for-byte in meaning
#   policy.yaml      a policy template for its privacy officer to complete
# Never in a bundle: the CA key, the server's keys, another organization's keys.
set -euo pipefail
source "$(dirname "$0")/env.sh"

for org in ${1:-$ORGANIZATIONS}; do
  bundle="$OPS_DIR/bundles/$org"
  rm -rf "$bundle" "$bundle.tar.gz"
  # Only the files `fedhft ca issue` writes, by name: nothing else in the folder leaves.
  mkdir -p "$bundle/credentials"
  for file in ca.crt tls.crt tls.key identity.crt identity.key sealing.crt sealing.key; do
    cp -p "$OPS_DIR/pki/$org/$file" "$bundle/credentials/$file"
  done
  cp "$OPS_DIR/consortium.yaml" "$bundle/consortium.yaml"
  sed -e "s|@ORGANIZATION@|$org|" -e "s|@CONSORTIUM@|$CONSORTIUM|" \
    "$HERE/policy-template.yaml" > "$bundle/policy.yaml"
  "$FEDHFT" policy check-compat "$bundle/policy.yaml" "$bundle/consortium.yaml"
  # A last check before anything leaves: the only private keys are the organization's.
  for key in "$OPS_DIR"/pki/*/*.key; do
    [[ "$key" == "$OPS_DIR/pki/$org/"* ]] && continue
    while IFS= read -r -d '' file; do
      if cmp -s "$key" "$file"; then
        rm -rf "$bundle"
        echo "error: the bundle of $org held a copy of $key; nothing written" >&2
        exit 1
      fi
    done < <(find "$bundle" -type f -print0)
  done
  tar -czf "$bundle.tar.gz" -C "$OPS_DIR/bundles" "$org"
  echo "bundle for $org: $bundle.tar.gz"
done
