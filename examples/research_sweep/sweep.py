"""Compare federated methods on your own labelled texts across privacy budgets.

A researcher's sweep with fedhft's in-process simulation (`simulate_in_process`): no
certificates, no server, one process; every organization still runs the real DP-SGD
trainer with its own privacy ledger and audit log, and every round's sum is the real
secure aggregation. The CSV's rows are split into organizations by a column (``site``),
each organization's rows into train and test; for each method and ε the sweep runs one
federation and records how well each organization does on its own test rows.

    python make_data.py --out texts.csv                 # or bring your own CSV
    python sweep.py --data texts.csv --out results/     # local, fedavg, fedhft × ε 1, 4, 8, none
    # -> results/results.csv and results/accuracy_vs_epsilon.png

``FEDHFT_EXAMPLE_MODEL`` (or ``--model``) picks the base model: ``minilm`` (default,
all-MiniLM-L6-v2 from the installed package, nothing downloaded) or ``tiny`` (a small
random model, for a quick check of the pipeline).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: the sweep runs on servers without a display.

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pydantic import ValidationError

from fedhft.policies import ConsortiumConfig
from fedhft.sdk import TextDataset, build_base_model, load_tokenizer
from fedhft.simulation import (
    LocalTraining,
    SimulatedOrganization,
    SimulationResult,
    simulate_in_process,
)

METHODS = ("local", "fedavg", "fedhft", "fedamole")
COLUMNS = (
    "method",
    "epsilon",
    "mean_accuracy",
    "worst_accuracy",
    "mean_macro_f1",
    "epsilon_spent",
    "seconds",
)
TIERS = {
    # What each organization's hardware trains: the last layer's value projection, the
    # last two layers, or every layer; half of each layer's LoRA blocks in all three.
    "edge": {"layers": [-1], "modules": ["value"], "keep_ratio": 0.5},
    "standard": {"layers": [-2, -1], "keep_ratio": 0.5},
    "full": {"layers": "all", "keep_ratio": 0.5},
}


@dataclass(frozen=True)
class Sweep:
    """What is compared, and how long each federation trains."""

    methods: tuple[str, ...]
    epsilons: tuple[float | None, ...]
    rounds: int
    training: LocalTraining
    model: str
    seed: int


def read_organizations(
    path: Path,
    *,
    site_column: str,
    text_column: str,
    label_column: str,
    tier_column: str,
    test_fraction: float,
    seed: int,
) -> dict[str, SimulatedOrganization]:
    """The CSV's rows, one organization per value of ``site_column``, each split into
    train and test (``test_fraction`` of its rows, drawn with ``seed``)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in (site_column, text_column, label_column) if c not in frame.columns]
    if missing:
        raise SystemExit(f"{path}: no column {missing}; it has {list(frame.columns)}")
    # One label space for everyone, in a fixed order: the model's outputs.
    label_names = tuple(sorted(set(frame[label_column])))
    rng = np.random.default_rng(seed)
    organizations = {}
    for site, rows in frame.groupby(site_column, sort=True):
        tiers = set(rows[tier_column]) if tier_column in rows else {"full"}
        if len(tiers) != 1 or not tiers <= set(TIERS):
            raise SystemExit(
                f"{path}: site {site!r} has tiers {sorted(tiers)} in column `{tier_column}`; "
                f"give each site one of {sorted(TIERS)}"
            )
        order = rng.permutation(len(rows))
        cut = max(1, round(len(rows) * test_fraction))
        organizations[str(site)] = SimulatedOrganization(
            train=_dataset(rows.iloc[order[cut:]], text_column, label_column, label_names),
            test=_dataset(rows.iloc[order[:cut]], text_column, label_column, label_names),
            tier=tiers.pop(),
        )
    return organizations


def _dataset(
    rows: pd.DataFrame, text_column: str, label_column: str, label_names: tuple[str, ...]
) -> TextDataset:
    return TextDataset(
        texts=tuple(rows[text_column]),
        labels=tuple(label_names.index(label) for label in rows[label_column]),
        label_names=label_names,
    )


def consortium(
    method: str, organizations: dict[str, SimulatedOrganization], sweep: Sweep
) -> ConsortiumConfig:
    """The consortium all organizations would sign up to, running ``method``."""
    label_count = len(next(iter(organizations.values())).train.label_names)
    tiers: dict[str, dict[str, Any]] = {t: dict(spec) for t, spec in TIERS.items()}
    if method == "fedamole":
        # A pool of LoRA experts instead of blocks: edge holds one, full up to three.
        tiers = {
            "edge": {"min_experts": 1, "max_experts": 1},
            "standard": {"min_experts": 1, "max_experts": 2},
            "full": {"min_experts": 2, "max_experts": 3},
        }
    return ConsortiumConfig.model_validate(
        {
            "consortium": "research-sweep",
            "model": {"source": sweep.model, "num_labels": label_count},
            "adapter": {"target_modules": ["query", "value"], "rank": 8, "alpha": 16, "a_seed": 11},
            "tiers": tiers,
            "method": method,
            "rounds": sweep.rounds,
            # FedHFT's personalized head: shared, calibrated by each organization's DP
            # label prior (spent from the same ε).
            **(
                {"personalization": {"head": "shared", "label_prior": "dp"}}
                if method == "fedhft"
                else {}
            ),
            "fedamole": {"num_experts": 4, "holders_per_expert": 3},
            "enrollment": [{"organization": org} for org in organizations],
        }
    )


def run_sweep(
    organizations: dict[str, SimulatedOrganization], sweep: Sweep
) -> list[dict[str, Any]]:
    """One federation per (method, ε); each row what `results.csv` holds."""
    # One base model and tokenizer for the whole sweep; every organization of every
    # federation trains its own copy.
    base = build_base_model(consortium("local", organizations, sweep).model)
    tokenizer = load_tokenizer()
    rows = []
    for method in sweep.methods:
        for epsilon in sweep.epsilons:
            result: SimulationResult = simulate_in_process(
                consortium(method, organizations, sweep),
                organizations,
                epsilon=epsilon,
                training=sweep.training,
                seed=sweep.seed,
                base_model=base,
                tokenizer=tokenizer,
            )
            row = {
                "method": method,
                "epsilon": "none" if epsilon is None else f"{epsilon:g}",
                "mean_accuracy": round(result.mean_accuracy, 4),
                "worst_accuracy": round(result.worst_accuracy, 4),
                "mean_macro_f1": round(result.mean_macro_f1, 4),
                # The non-private baseline has no ε: it is not private at all.
                "epsilon_spent": ""
                if result.epsilon_spent is None
                else round(result.epsilon_spent, 4),
                "seconds": round(result.seconds, 1),
            }
            print(
                f"{method:8s} ε={row['epsilon']:>4s}: mean accuracy {row['mean_accuracy']:.3f}, "
                f"worst {row['worst_accuracy']:.3f}, ε spent {row['epsilon_spent'] or '-'} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )
            rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean accuracy against ε, one line per method; each method's non-private run as a
    dashed horizontal line of the same colour."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for method, colour in zip(
        methods, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False
    ):
        private = sorted(
            (float(r["epsilon"]), r["mean_accuracy"])
            for r in rows
            if r["method"] == method and r["epsilon"] != "none"
        )
        if private:
            axes.plot(*zip(*private, strict=True), marker="o", color=colour, label=method)
        for r in rows:
            if r["method"] == method and r["epsilon"] == "none":
                axes.axhline(
                    r["mean_accuracy"],
                    linestyle="--",
                    linewidth=1,
                    color=colour,
                    label=f"{method}, non-private",
                )
    epsilons = sorted({float(r["epsilon"]) for r in rows if r["epsilon"] != "none"})
    if epsilons:
        axes.set_xscale("log")
        axes.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        axes.minorticks_off()
    axes.set_xlabel("ε per organization (δ = 1e-5)")
    axes.set_ylabel("mean accuracy on each organization's test set")
    axes.set_title("Accuracy against privacy budget")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _epsilon(text: str) -> float | None:
    if text == "none":
        return None
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"ε must be a number > 0 or 'none', got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CSV of labelled texts")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the outputs")
    parser.add_argument("--site-column", default="site", help="one organization per value")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument(
        "--tier-column",
        default="tier",
        help="each site's tier (edge, standard, full); without it: full",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=["local", "fedavg", "fedhft"]
    )
    parser.add_argument(
        "--epsilons",
        nargs="+",
        type=_epsilon,
        default=[1.0, 4.0, 8.0, None],
        help="'none' = non-private",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=8, help="DP-SGD steps per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=32)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument(
        "--model",
        choices=("minilm", "tiny"),
        default=os.environ.get("FEDHFT_EXAMPLE_MODEL", "minilm"),
        help="base model (default: $FEDHFT_EXAMPLE_MODEL, else minilm)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sweep = Sweep(
        methods=tuple(args.methods),
        epsilons=tuple(args.epsilons),
        rounds=args.rounds,
        training=LocalTraining(
            batch_size=args.batch_size,
            local_steps=args.local_steps,
            max_seq_length=args.max_seq_length,
        ),
        model=args.model,
        seed=args.seed,
    )
    organizations = read_organizations(
        args.data,
        site_column=args.site_column,
        text_column=args.text_column,
        label_column=args.label_column,
        tier_column=args.tier_column,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    # Check every method's consortium before the first federation: FedAMoLE, for one,
    # needs enough organizations to hold every expert.
    for method in sweep.methods:
        try:
            consortium(method, organizations, sweep)
        except ValidationError as error:
            problem = "; ".join(str(e["msg"]) for e in error.errors())
            parser.error(f"--methods {method} cannot run on {args.data}: {problem}")
    print(
        f"{len(organizations)} organizations ({', '.join(organizations)}), model {sweep.model}, "
        f"{len(sweep.methods) * len(sweep.epsilons)} federations of {sweep.rounds} rounds",
        flush=True,
    )
    started = time.perf_counter()
    rows = run_sweep(organizations, sweep)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "results.csv")
    plot(rows, args.out / "accuracy_vs_epsilon.png")
    print(f"wrote {args.out / 'results.csv'} and {args.out / 'accuracy_vs_epsilon.png'}")
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
