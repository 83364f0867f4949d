#!/usr/bin/env bash
# The GPU check of training devices and precision, on a machine with a CUDA GPU.
#
# Runs, from the repository root, on the machine's own CUDA build of PyTorch (the
# package's CPU torch pin is bypassed: fedhft runs from the source tree, its folders
# linked into a `fedhft` package on PYTHONPATH):
#   1. tests/sdk/test_device.py: one DP step's B update against a hand-computed
#      clip-noise-average, on the CPU and on CUDA, and under bf16 autocast;
#   2. benchmarks/dp_step.py --model llama-1b --device cuda --precision bf16: DP-SGD vs
#      non-private s/step and peak memory per tier on a random Llama-3.2-1B shape;
#   3. the same on the pretrained MiniLM, fp32, as a baseline on the same card.
# Packages the machine lacks (opacus, pydantic, ...) are installed first from wheels in
# .whl/ when that folder is there. Results and logs go to $OUT (default /tmp/fedhft-gpu-check).
#
# Usage: bash benchmarks/gpu_check.sh        (DEVICE=cpu for a dry run without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/fedhft-gpu-check}"
DEVICE="${DEVICE:-cuda}"
PRECISION="${PRECISION:-bf16}"
mkdir -p "$OUT"

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fedhft-site .whl/*.whl
    export PYTHONPATH="/tmp/fedhft-site${PYTHONPATH:+:$PYTHONPATH}"
fi

source_tree="$(mktemp -d)"
trap 'rm -rf "$source_tree"' EXIT
mkdir "$source_tree/fedhft"
for file in core/*; do ln -s "$PWD/$file" "$source_tree/fedhft/"; done
for package in accounting aggregator audit cli model policies protocol sdk simulation; do
    ln -s "$PWD/$package" "$source_tree/fedhft/$package"
done
export PYTHONPATH="$source_tree${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

python3 - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import torch, transformers, peft, opacus, fedhft
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "peft", peft.__version__, "opacus", opacus.__version__)
print("fedhft from", fedhft.__file__)
PY

python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/sdk/test_device.py 2>&1 \
    | tee "$OUT/test_device.txt"
python3 benchmarks/dp_step.py --model llama-1b --device "$DEVICE" --precision "$PRECISION" \
    --quick --batch 8 --seq 256 --json "$OUT/dp_step_llama1b.json" 2>&1 \
    | tee "$OUT/dp_step_llama1b.txt"
python3 benchmarks/dp_step.py --model minilm --device "$DEVICE" --quick \
    --json "$OUT/dp_step_minilm.json" 2>&1 | tee "$OUT/dp_step_minilm.txt"
