#!/usr/bin/env bash
# Step 1: collect the evidence of one organization into a case folder, read-only, with
# SHA-256 sums (chain of custody). From the organization: its audit log and policy; from
# the operator: the server's audit log; from the consortium: the CA certificate and the
# two parties' identity certificates. Certificates only: an auditor never needs a key.
#
#   collect.sh CASE ORG ORG_AUDIT_LOG ORG_POLICY ORG_IDENTITY_CRT \
#              SERVER_AUDIT_LOG SERVER_NAME SERVER_IDENTITY_CRT CA_CRT
set -euo pipefail
if [[ $# -ne 9 ]]; then
  sed -n '7,8p' "$0" | sed 's/^# *//' >&2
  exit 2
fi
case_dir="$1" org="$2"
mkdir -p "$case_dir/$org" "$case_dir/server" "$case_dir/certs"
cp "$3" "$case_dir/$org/audit.jsonl"
cp "$4" "$case_dir/$org/policy.yaml"
cp "$5" "$case_dir/certs/$org.crt"
cp "$6" "$case_dir/server/audit.jsonl"
# `fedhft audit verify --certs` finds a party's certificate as <party>.crt; the server's
# party name is its host name, as in its log.
cp "$8" "$case_dir/certs/$7.crt"
cp "$9" "$case_dir/certs/ca.crt"
(cd "$case_dir" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum) \
  > "$case_dir/SHA256SUMS"
chmod -R a-w "$case_dir/$org" "$case_dir/server" "$case_dir/certs"
echo "collected $org's evidence in $case_dir"
