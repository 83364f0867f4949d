#!/usr/bin/env bash
# Step 5: rotate out an organization that leaves. What the design allows today:
#  - Enrollment lives in consortium.yaml; removing an organization writes a new file with
#    another hash. A running run cannot take it: the server refuses to resume a state
#    made under another configuration, and clients refuse a server whose hash differs
#    from their file. So the organization leaves between runs: stop the server, start a
#    new run (new --state folder) on the new config, and hand the new config to the rest.
#  - There is no revocation list: the organization's certificates stay valid until they
#    expire. The new run refuses them because the organization is no longer enrolled;
#    the old run's server, if someone restarted it, would still accept them.
set -euo pipefail
source "$(dirname "$0")/env.sh"

leaving="${1:?usage: 05-remove-org.sh ORGANIZATION}"
case " $ORGANIZATIONS " in *" $leaving "*) ;; *)
  echo "error: $leaving is not in ORGANIZATIONS ($ORGANIZATIONS)" >&2; exit 1 ;;
esac
hash_of() {
  "$PYTHON" -c 'import sys; from fedhft.policies import load_consortium_config, policy_hash
print(policy_hash(load_consortium_config(sys.argv[1])))' "$1"
}
old_hash="$(hash_of "$OPS_DIR/consortium.yaml")"
# Keep the old configuration: the old run's audit logs and state were made under it.
cp "$OPS_DIR/consortium.yaml" "$OPS_DIR/consortium-$old_hash.yaml"
remaining="$(tr ' ' '\n' <<< "$ORGANIZATIONS" | grep -vxF "$leaving" | xargs)"
ORGANIZATIONS="$remaining" "$HERE/02-config.sh" > /dev/null
new_hash="$(hash_of "$OPS_DIR/consortium.yaml")"
rm -rf "$OPS_DIR/bundles/$leaving" "$OPS_DIR/bundles/$leaving.tar.gz"
# The old state folder belongs to the old run; the new run starts in an empty one.
if [[ -d "$OPS_DIR/state" ]]; then mv "$OPS_DIR/state" "$OPS_DIR/state-$old_hash"; fi
cat <<TEXT
removed $leaving; config hash $old_hash -> $new_hash
next: stop the server; set ORGANIZATIONS="$remaining"; ./04-bundle.sh; send each
remaining organization its new consortium.yaml (each client runs the new run with a new
--state folder, keeping its ledger and audit log); start the new run: ./03-serve.sh --new-run
TEXT
