#!/usr/bin/env bash
# Step 2: write the consortium configuration and validate it. Enrollment (which
# organizations may join) is part of this file, so its hash, which every client checks,
# changes whenever an organization is added or removed.
set -euo pipefail
source "$(dirname "$0")/env.sh"

# The tiny test model has 2 layers, MiniLM 6: the `standard` tier trains the last 2 or 3.
if [[ "$MODEL" == tiny ]]; then standard_layers="[-2, -1]"; else standard_layers="[-3, -2, -1]"; fi
config="$OPS_DIR/consortium.yaml"
{
  cat <<YAML
kind: consortium
consortium: $CONSORTIUM
model: {source: $MODEL, num_labels: 4}
adapter: {target_modules: [query, value], rank: 8, alpha: 16, a_seed: 1000}
tiers:
  edge: {layers: [-1], modules: [value], keep_ratio: 0.5}
  standard: {layers: $standard_layers, keep_ratio: 0.5}
  full: {layers: all, keep_ratio: 0.5}
method: fedhft
rounds: 4
clustering: {clusters: 2, warmup_rounds: 1, membership: soft, temperature: 0.05, signal: sketch}
personalization: {head: shared, label_prior: dp}
training: {learning_rate: 0.01, head_learning_rate: 0.05}
secure_aggregation:
  mode: masking
  threshold_fraction: 0.6
  min_cohort: 3
  max_dropout_fraction: 0.4
  stage_timeout_s: 120
enrollment:
YAML
  for org in $ORGANIZATIONS; do echo "  - organization: $org"; done
} > "$config"
"$FEDHFT" policy validate "$config"
echo "config hash: $("$PYTHON" -c 'import sys; from fedhft.policies import load_consortium_config, policy_hash; print(policy_hash(load_consortium_config(sys.argv[1])))' "$config")"
