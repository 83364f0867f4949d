"""How many records does DP-SGD need before it learns more than the label mix?

Local-only training of the full tier on the pretrained all-MiniLM-L6-v2 weights, the
same compute for every row (rounds × local steps × batch), through the product's
`LocalTrainer` (Opacus DP-SGD, privacy ledger): for several numbers of training records
per organization, the validation accuracy at ε = 8 (δ = 1e-5) against the same training
without noise or clipping and against always predicting the organization's majority
class. Four organizations of the synthetic federation (α = 0.3, seed 1); each one's
training split is cut 75/25 into train and validation, so no benchmark test split is
touched.

It also prints where a record's gradient lies at the start of training: the mean
per-record gradient norm on the classifier head and on the adapters. DP-SGD clips the
whole record gradient to norm 1 and then adds noise to every coordinate alike, so the
adapters' share of that norm bounds what they can learn under noise.

    python benchmarks/dp_data_size.py                     # 3 data sizes, ~5 min on 2 cores
    python benchmarks/dp_data_size.py --samples 160 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning

from fedhft.errors import SecurityWarning
from fedhft.model import ClusterAdapters
from fedhft.sdk import (
    LocalTrainer,
    MaskedAdapterModel,
    build_base_model,
    load_tokenizer,
    synthetic_federation,
)

ORGANIZATIONS = 4
EPSILON = 8.0
SETTINGS = replace(learning.FULL, rounds=4, local_steps=6, batch_size=32)
"""Same compute for every data size: 4 rounds × 6 steps × 32 records per organization."""


def _splits(samples: int) -> list[tuple[Any, Any]]:
    """Each organization's (train, validation): its training split cut 75/25."""
    data = synthetic_federation(
        num_organizations=ORGANIZATIONS, alpha=0.3, samples_per_org=samples, seed=1
    )
    return [org.train.split(0.25, seed=7) for org in data]


def run(samples: int, epsilon: float | None) -> dict[str, Any]:
    """Mean validation accuracy of local-only training over the organizations."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", SecurityWarning)
    settings = replace(SETTINGS, samples_per_org=samples)
    config = learning.consortium_for(settings, "local", 1)
    base = build_base_model(config.model)
    tokenizer = load_tokenizer(config.model)
    started = time.perf_counter()
    accuracies, majorities, sigma = [], [], None
    for i, (train, validation) in enumerate(_splits(samples)):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = LocalTrainer(
                MaskedAdapterModel(copy.deepcopy(base), config.adapter),
                learning.policy_for(settings, f"org-{i}", "full", epsilon, Path(tmp)),
                config,
                tokenizer=tokenizer,
                non_private_baseline=epsilon is None,
                seed=i,
            )
            clusters, personal = None, None
            for round_number in range(1, settings.rounds + 1):
                _, personal, stats = trainer.train_round(
                    train, clusters, round=round_number, personal=personal
                )
                clusters = ClusterAdapters.initial(trainer.model.get_block_state())
            sigma = stats.noise_multiplier
            accuracies.append(trainer.evaluate(validation)["accuracy"])
            counts = np.bincount(validation.labels, minlength=4)
            majorities.append(counts.max() / counts.sum())
    return {
        "samples_per_org": samples,
        "train_records": len(train),
        "epsilon": epsilon,
        "accuracy": float(np.mean(accuracies)),
        "majority": float(np.mean(majorities)),
        "noise_multiplier": sigma,
        "seconds": time.perf_counter() - started,
    }


def gradient_split(records: int = 32) -> dict[str, float]:
    """Mean per-record gradient norm on the head and on the adapters, at initialization."""
    config = learning.consortium_for(SETTINGS, "local", 1)
    model = MaskedAdapterModel(build_base_model(config.model), config.adapter)
    trained = model.apply_tier(config.tiers["full"])
    head = [b for b in trained if b.startswith("head.")]
    adapters = [b for b in trained if not b.startswith("head.")]
    train, _ = _splits(160)[0]
    encoded = load_tokenizer(config.model)(
        list(train.texts[:records]), padding=True, return_tensors="pt"
    )
    norms: dict[str, list[float]] = {"head": [], "adapters": []}
    for i in range(records):
        for parameter in model.trainable_parameters():
            parameter.grad = None
        logits = model.logits(encoded["input_ids"][i : i + 1], encoded["attention_mask"][i : i + 1])
        torch.nn.functional.cross_entropy(logits, torch.tensor([train.labels[i]])).backward()
        for name, blocks in (("head", head), ("adapters", adapters)):
            grads = [model.parameter(b).grad for b in blocks]
            norms[name].append(float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None))))
    return {name: float(np.mean(values)) for name, values in norms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[160, 1600, 8000],
        help="examples per organization",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console(width=120)
    started = time.perf_counter()
    split = gradient_split()
    share = split["adapters"] / float(np.hypot(split["head"], split["adapters"]))
    console.print(
        f"per-record gradient norm at start: head {split['head']:.3f}, adapters "
        f"{split['adapters']:.3f} (adapters' share of the whole: {share:.1%})"
    )
    cells = [(samples, eps) for samples in args.samples for eps in (None, EPSILON)]
    with ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        results = list(pool.map(run, *zip(*cells, strict=True)))
    table = Table(title=f"local-only, full tier, MiniLM, {ORGANIZATIONS} organizations (α = 0.3)")
    for column in ("train records / org", "majority class", "non-private", "ε = 8", "σ", "s"):
        table.add_column(column, justify="right")
    for i in range(0, len(results), 2):
        plain, private = results[i], results[i + 1]
        table.add_row(
            str(plain["train_records"]),
            f"{plain['majority']:.1%}",
            f"{plain['accuracy']:.1%}",
            f"{private['accuracy']:.1%}",
            f"{private['noise_multiplier']:.2f}",
            f"{plain['seconds'] + private['seconds']:.0f}",
        )
    console.print(table)
    console.print(f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"gradient_norms": split, "results": results}, indent=2))


if __name__ == "__main__":
    main()
