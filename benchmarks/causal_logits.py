"""Seconds per DP-SGD step of a causal LM: logits at response positions only vs everywhere.

On a randomly initialised Llama with SmolLM2's 49,152-token vocabulary (default: hidden
192, 4 layers, batch 8 × 96 tokens of which the last 16 of each record are the response,
frozen-A LoRA rank 8 on the attention projections of the top two layers, one CPU
thread), each pair of measurements times the part of a DP-SGD step that the choice
changes, forward and backward with Opacus' per-sample-gradient hooks on the trainable
``B`` blocks (what `CausalPrivateStep` attaches), on the same batch:

- baseline: every position's logits through ``lm_head`` (what ``model(...).logits``
  computes), then each record's mean cross-entropy over its response tokens;
- fedhft: `CausalAdapterModel.response_logits`, which gathers the final hidden states at
  the response positions first and applies ``lm_head`` to those only, then the same loss.

Clipping and noise on the per-sample gradients of B come after and cost the same on both
sides. The pairs alternate so that load from other processes hits both alike; the table
gives median seconds and the median of the per-pair ratios.

Usage::

    python benchmarks/causal_logits.py             # 12 pairs (a few minutes on one core)
    python benchmarks/causal_logits.py --quick     # 3 pairs, smaller model
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from opacus.grad_sample.utils import prepare_module
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

from fedhft.model import CausalAdapterModel
from fedhft.policies import AdapterSpec, TierSpec

IGNORE_INDEX = -100  # PyTorch's cross-entropy ignore index, as fedhft's labels use it.

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _per_record_mean(token_losses: torch.Tensor, record: torch.Tensor, n: int) -> torch.Tensor:
    totals = torch.zeros(n).index_add(0, record, token_losses)
    counts = torch.zeros(n).index_add(0, record, torch.ones_like(token_losses))
    return totals / counts.clamp_min(1.0)


def all_position_loss(model: CausalAdapterModel, batch: Batch) -> torch.Tensor:
    """The baseline: logits at every position, then each record's response-token mean."""
    input_ids, attention_mask, labels = batch
    logits = model.peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    targets = labels[:, 1:]
    token_losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    counts = (targets != IGNORE_INDEX).sum(dim=1).clamp_min(1)
    return (token_losses.sum(dim=1) / counts).mean()


def response_only_loss(model: CausalAdapterModel, batch: Batch) -> torch.Tensor:
    """fedhft's: logits gathered at the response positions only."""
    logits, targets, record = model.response_logits(*batch)
    token_losses = F.cross_entropy(logits, targets, reduction="none")
    return _per_record_mean(token_losses, record, batch[0].shape[0]).mean()


def _timed(
    loss_of: Callable[[CausalAdapterModel, Batch], torch.Tensor],
    model: CausalAdapterModel,
    batch: Batch,
) -> float:
    for parameter in model.trainable_parameters():
        parameter.grad = None
        parameter.grad_sample = None  # type: ignore[attr-defined]
    started = time.perf_counter()
    torch.autograd.backward(loss_of(model, batch))
    return time.perf_counter() - started


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
    batch = (input_ids, torch.ones_like(input_ids), labels)
    times: dict[str, list[float]] = {"all positions": [], "response only": []}
    model.peft_model.train()
    hooks = prepare_module(
        model.peft_model, "hooks", wrap_model=False, batch_first=True, loss_reduction="mean"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        _timed(response_only_loss, model, batch)  # Warm-up.
        for _ in range(args.pairs):
            times["all positions"].append(_timed(all_position_loss, model, batch))
            times["response only"].append(_timed(response_only_loss, model, batch))
    hooks.remove_hooks()
    ratios = [a / r for a, r in zip(times["all positions"], times["response only"], strict=True)]
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch "
        f"{args.batch} x {args.length} tokens, {args.response} response tokens each; "
        f"LoRA r=8 on the top two layers; 1 thread; {args.pairs} pairs"
    )
    print(f"{'logits computed at':<20} {'s fwd+bwd (med.)':>16} {'min':>8} {'max':>8}")
    for name, values in times.items():
        print(
            f"{name:<20} {statistics.median(values):>16.3f} {min(values):>8.3f} {max(values):>8.3f}"
        )
    print(f"speed-up (median of per-pair ratios): {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
