#!/usr/bin/env bash
# Step 2: verify one organization's audit log against its policy, the certificates and
# the server's log, and write the compliance report (report.html, report.json).
# Exit status: 0 the log verifies, 1 it does not (findings printed, report still
# written, saying so), 2 the inputs cannot be used.
#
#   verify.sh CASE ORG
set -euo pipefail
case_dir="${1:?usage: verify.sh CASE ORG}" org="${2:?usage: verify.sh CASE ORG}"
(cd "$case_dir" && sha256sum --quiet --check SHA256SUMS) ||
  echo "warning: the case folder changed since it was collected" >&2
args=("$case_dir/$org/audit.jsonl" --server-log "$case_dir/server/audit.jsonl"
      --policy "$case_dir/$org/policy.yaml" --certs "$case_dir/certs")
status=0
fedhft audit verify "${args[@]}" || status=$?
if [[ $status -le 1 ]]; then
  mkdir -p "$case_dir/reports"
  fedhft audit report "${args[@]}" --out "$case_dir/reports/$org" || true
fi
exit "$status"
