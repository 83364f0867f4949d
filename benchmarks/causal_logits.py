"""Seconds per DP-SGD step of a causal LM: logits at response positions only vs everywhere.

On a randomly initialised Llama with SmolLM2's 49,152-token vocabulary (default: hidden
192, 4 layers, batch 8 × 96 tokens of which the last 16 of each record are the response,
frozen-A LoRA rank 8 on the attention projections of the top two layers, one CPU
thread), each pair of steps runs `fedhft.sdk._causal.CausalPrivateStep` twice on the same
batch:

- baseline: every position's logits through ``lm_head`` (what ``model(...).logits``
  computes), then the same per-record mean cross-entropy over the response tokens;
- fedhft: the final hidden states gathered at the response positions first
  (`CausalAdapterModel.response_logits`), ``lm_head`` on those only.

Both sides share the Opacus per-sample gradients, clipping and noise; only the loss path
differs. The pairs alternate so that load from other processes hits both alike; the
table gives median seconds per step and the median of the per-pair ratios.

Usage::

    python benchmarks/causal_logits.py             # 12 pairs (about a minute on one core)
    python benchmarks/causal_logits.py --quick     # 3 pairs, smaller model
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

import fedhft.sdk._causal as causal
from fedhft.model import CausalAdapterModel
from fedhft.model._causal import position_ids
from fedhft.policies import AdapterSpec, TierSpec
from fedhft.sdk._instructions import IGNORE_INDEX
from fedhft.sdk.privacy import SecureGaussian


def _all_position_losses(model: CausalAdapterModel, batch: causal.CausalBatch) -> torch.Tensor:
    """The baseline: logits at every position, then each record's response-token mean."""
    logits = model.peft_model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids(batch.attention_mask),
    ).logits
    targets = batch.labels[:, 1:]
    token_losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    counts = (targets != IGNORE_INDEX).sum(dim=1).clamp_min(1)
    return token_losses.sum(dim=1) / counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 pairs on a smaller model")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--response", type=int, default=16)
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.hidden, args.layers = 3, 64, 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 32),
        num_key_value_heads=1,
        max_position_embeddings=max(256, args.length),
        tie_word_embeddings=True,
    )
    adapter = AdapterSpec(
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], rank=8, alpha=16.0, a_seed=1
    )
    model = CausalAdapterModel(AutoModelForCausalLM.from_config(config), adapter)
    model.apply_tier(TierSpec(layers=[-2, -1]))
    input_ids = torch.randint(0, args.vocab, (args.batch, args.length))
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, -args.response :] = input_ids[:, -args.response :]
    batch = causal.CausalBatch(input_ids, torch.ones_like(input_ids), labels)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.0)
    times: dict[str, list[float]] = {"all positions": [], "response only": []}
    with causal.CausalPrivateStep(
        model,
        optimizer,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=float(args.batch),
        noise_sampler=SecureGaussian(),
    ) as step:
        step.step(batch)  # Warm-up.
        for _ in range(args.pairs):
            with mock.patch.object(causal, "record_losses", _all_position_losses):
                started = time.perf_counter()
                step.step(batch)
                times["all positions"].append(time.perf_counter() - started)
            started = time.perf_counter()
            step.step(batch)
            times["response only"].append(time.perf_counter() - started)
    ratios = [a / r for a, r in zip(times["all positions"], times["response only"], strict=True)]
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch "
        f"{args.batch} x {args.length} tokens, {args.response} response tokens each; "
        f"LoRA r=8 on the top two layers; 1 thread; {args.pairs} pairs"
    )
    print(f"{'logits computed at':<20} {'s/step (median)':>16} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(
            f"{name:<20} {statistics.median(values):>16.3f} {min(values):>8.3f} {max(values):>8.3f}"
        )
    print(f"speed-up (median of per-pair ratios): {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
