"""Learning benchmark: does personalized, private, secure federated fine-tuning pay off?

One command runs every method on the same synthetic federation (two domain groups with
concept shift, Dirichlet label skew, three resource tiers) through the product's own
code: `LocalTrainer` (DP-SGD with Opacus, privacy ledger), `RoundParticipant`,
`RoundCoordinator` and masking-mode secure aggregation, in one process (the gRPC path is
tested elsewhere), each federation assembled by `fedhft.simulation.simulate_in_process`
as a researcher would run it. It prints one table per scenario and, with ``--json``, the same
figures.

    python benchmarks/learning.py --quick            # tiny random model, CI-sized
    python benchmarks/learning.py                    # MiniLM weights, 3 seeds
    python benchmarks/learning.py --demo             # at `fedhft simulate`'s scale
    python benchmarks/learning.py --task instruct --quick   # tiny random Llama, CI-sized
    python benchmarks/learning.py --task instruct           # SmolLM2-135M-Instruct, 3 seeds

Methods: local-only, FedAvg-LoRA (dense: every organization trains every block, no data
mask, one cluster, one shared head), FedHFT K=1 (tier and data masks, a shared head
calibrated by each organization's DP label prior), FedHFT K=2 (the same, plus clusters
on the organizations' DP sketches), FedAMoLE (a pool of 4 LoRA experts, each tier
holding 1-3 of them by private RSEA; the affinity release is in the same ε); each
non-private and with DP-SGD at ε = 8 and ε = 2 (δ = 1e-5).

``--task instruct`` (issue 21): instruction tuning of a causal LM on
`synthetic_instruction_federation` (clinical and banking organizations; short answers, the
same prompt wording expecting different answers in the two groups; per-organization skew
of texts and questions), each federation through `simulate_in_process` with a
`CausalTrainer` per organization. Methods: the zero-shot base (scored once per seed, no
training), local-only, FedAvg-LoRA (dense), FedHFT K=1, FedHFT K=2 (clusters on the
updates: ``clustering.signal: update``), FedAMoLE (a pool of 4 experts on the same top
layers, ``fedamole.layers``, each tier holding 1-3 of them); non-private and ε = 8
(δ = 1e-5); 3 seeds. Per method: ROUGE-L F1 and exact match, mean ± std over seeds of the
organizations' mean and of the worst organization, bytes up per round per organization,
wall and CPU seconds.

Scale of the full instruct run (`INSTRUCT_FULL`), chosen to fit 40 minutes on two cores:
one SmolLM2 federation (fedhft-k1, 6 organizations × 3 rounds × 4 DP-SGD steps of batch
8, 12 test records each) takes 104-122 s of CPU on its one thread (seven runs; 106 s
wall on a free core, up to 744 s on the shared 2-core machine busy with other work); the
zero-shot base 36 s. The full grid is 33 cells (3 seeds × (zero-shot + 5 methods × 2
privacy settings)), about 3,600 CPU-seconds on two worker processes: ~30 minutes on two
free cores. Learning rate (Adam; fedhft-k1, seed 0; mean ROUGE-L / exact match in %):
non-private 0.01 → 10.2 / 8.3, 0.03 → 10.6 / 8.3, 0.1 → 32.2 / 30.6, 0.3 → 38.2 / 37.5;
at ε = 8 0.03 → 3.0 / 0.0, 0.1 → 7.3 / 5.6, 0.3 → 13.8 / 12.5 (zero-shot base 2.9 /
0.0: it writes paragraphs). 0.3 learns the short-answer format in 12 local steps, so
0.3. FedAMoLE (its mixture on the same two layers; non-private, seed 0): 0.3 → 30.6 / 30.6,
0.1 → 40.3 / 40.3, so 0.1 for FedAMoLE. LoRA (rank 8) sits on q/v of
the top two of SmolLM2's 30 layers only: the backward pass stops there, and the frozen
forward pass through the other 28 dominates a step; logits are computed on response
positions only. Prompts with SmolLM2's chat template take 48-66 tokens and answers at most
5, so ``max_seq_length`` 96 loses nothing; answers are generated greedily up to 8 new
tokens (``evaluation.max_new_tokens``; a trained model stops at the end token after a
few, the zero-shot base writes all 8, but it is scored once per seed). ``--quick`` is the
same grid on the tiny random Llama (it learns next to nothing: a sanity check that every
method runs, not a result).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sklearn.metrics import adjusted_rand_score

from fedhft.aggregator import InfeasibleAssignmentError, check_fedamole_feasible
from fedhft.errors import SecurityWarning
from fedhft.policies import ConsortiumConfig, ModelSpec, OrganizationPolicy
from fedhft.sdk import (
    LocalTrainer,
    MaskedAdapterModel,
    build_base_model,
    load_tokenizer,
    synthetic_federation,
    synthetic_instruction_federation,
)
from fedhft.simulation import (
    LocalTraining,
    SimulatedOrganization,
    causal_model_spec,
    score_zero_shot,
    simulate_in_process,
)

TIERS = ("full", "full", "standard", "standard", "edge", "edge", "full", "standard")
"""Organization i's tier; domains alternate (even: clinical, odd: banking), so each
domain group has every tier."""

METHODS = {
    # name: (consortium method, clusters, dense)
    "local": ("local", 1, False),
    "fedavg-lora": ("fedavg", 1, True),
    "fedhft-k1": ("fedhft", 1, False),
    "fedhft-k2": ("fedhft", 2, False),
    "fedamole": ("fedamole", 1, False),
}
FEDAMOLE_EXPERTS = {"edge": (1, 1), "standard": (1, 2), "full": (2, 3)}
"""Experts each tier holds (min, max) in the FedAMoLE runs: a pool of 4, 3 holders each."""


@dataclass(frozen=True)
class Settings:
    """Everything that defines one benchmark run besides method, privacy and seed."""

    model: str
    organizations: int
    samples_per_org: int
    rounds: int
    warmup_rounds: int
    local_steps: int
    batch_size: int
    max_seq_length: int
    learning_rate: float
    head_learning_rate: float
    temperature: float
    membership: str


QUICK = Settings(
    model="tiny",
    organizations=8,
    samples_per_org=120,
    rounds=5,
    warmup_rounds=2,
    local_steps=8,
    batch_size=16,
    max_seq_length=32,
    learning_rate=0.02,
    head_learning_rate=0.05,
    temperature=0.05,
    membership="soft",
)
FULL = Settings(
    model="minilm",
    organizations=8,
    samples_per_org=160,
    rounds=5,
    warmup_rounds=2,
    local_steps=4,
    batch_size=16,
    max_seq_length=32,
    learning_rate=0.01,
    head_learning_rate=0.02,
    temperature=0.05,
    membership="soft",
)

DEMO = Settings(
    model="minilm",
    organizations=8,
    samples_per_org=400,
    rounds=4,
    warmup_rounds=1,
    local_steps=12,
    batch_size=32,
    max_seq_length=32,
    learning_rate=0.01,
    head_learning_rate=0.05,
    temperature=0.05,
    membership="soft",
)
"""The scale of the default `fedhft simulate` (its organizations, data, rounds, steps,
batch and learning rates, α = 2; tiers and experts as in this benchmark)."""


def consortium_for(settings: Settings, method: str, clusters: int) -> ConsortiumConfig:
    """The consortium of one run: three tiers, the method, its clusters."""
    tiers: dict[str, dict[str, Any]] = {
        "edge": {"layers": [-1], "modules": ["value"], "keep_ratio": 0.5},
        "standard": {"layers": [-2, -1], "keep_ratio": 0.5},
        "full": {"layers": "all", "keep_ratio": 0.5},
    }
    if method == "fedamole":
        for tier, (low, high) in FEDAMOLE_EXPERTS.items():
            tiers[tier] = {"min_experts": low, "max_experts": high}
    return ConsortiumConfig.model_validate(
        {
            "consortium": "bench",
            "model": {"source": settings.model, "num_labels": 4},
            "adapter": {
                "target_modules": ["query", "value"],
                "rank": 8,
                "alpha": 16,
                "a_seed": 11,
            },
            "tiers": tiers,
            "method": method,
            "rounds": settings.rounds,
            "clustering": {
                "clusters": clusters,
                "warmup_rounds": settings.warmup_rounds if clusters > 1 else 0,
                "membership": settings.membership,
                "temperature": settings.temperature,
                **({"signal": "sketch"} if clusters > 1 else {}),
            },
            # FedHFT as `fedhft simulate` runs it: one head per cluster, calibrated by each
            # organization's DP label prior. FedAvg-LoRA stays the plain dense baseline.
            **(
                {"personalization": {"head": "shared", "label_prior": "dp"}}
                if method == "fedhft"
                else {}
            ),
            "training": {
                "learning_rate": settings.learning_rate,
                "head_learning_rate": settings.head_learning_rate,
            },
            "secure_aggregation": {"threshold_fraction": 0.6, "max_dropout_fraction": 0.4},
            "fedamole": {"num_experts": 4, "holders_per_expert": 3},
            "enrollment": [{"organization": f"org-{i}"} for i in range(settings.organizations)],
        }
    )


def policy_for(
    settings: Settings, org: str, tier: str, epsilon: float | None, state: Path
) -> OrganizationPolicy:
    """An organization policy; ``epsilon=None`` is the non-private baseline's (unused)."""
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "bench",
            "privacy": {
                "epsilon": epsilon if epsilon is not None else 1.0,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
                "noise_multiplier": "auto",
                "planned_rounds": settings.rounds,
                "ledger_path": str(state / org / "ledger.json"),
            },
            "training": {
                "tier": tier,
                "batch_size": settings.batch_size,
                "local_steps": settings.local_steps,
                "max_seq_length": settings.max_seq_length,
            },
            "audit": {"log_path": str(state / org / "audit.jsonl")},
        }
    )


def run_once(
    settings: Settings,
    *,
    method_name: str,
    epsilon: float | None,
    alpha: float,
    seed: int,
    base: torch.nn.Module,
    tokenizer: Any,
) -> dict[str, Any]:
    """One federation: every organization's metrics and the run's cost."""
    method, clusters, dense = METHODS[method_name]
    config = consortium_for(settings, method, clusters)
    data = synthetic_federation(
        num_organizations=settings.organizations,
        alpha=alpha,
        samples_per_org=settings.samples_per_org,
        seed=seed,
    )
    torch.manual_seed(seed)
    started = time.perf_counter()
    organizations = {
        f"org-{i}": SimulatedOrganization(
            org_data.train,
            org_data.test,
            "full" if dense else TIERS[i % len(TIERS)],
            org_data.domain,
        )
        for i, org_data in enumerate(data)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        result = simulate_in_process(
            config,
            organizations,
            epsilon=epsilon,
            training=LocalTraining(
                batch_size=settings.batch_size,
                local_steps=settings.local_steps,
                max_seq_length=settings.max_seq_length,
            ),
            rounds=settings.rounds,
            seed=seed,
            base_model=base,  # type: ignore[arg-type]
            tokenizer=tokenizer,
        )
    metrics = result.organizations
    for m in metrics.values():
        m.setdefault("membership", [])
    return summarize(settings, method_name, epsilon, alpha, seed, clusters, metrics, started)


def summarize(
    settings: Settings,
    method_name: str,
    epsilon: float | None,
    alpha: float,
    seed: int,
    clusters: int,
    metrics: dict[str, dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """The run's figures from every organization's metrics."""
    seconds = time.perf_counter() - started
    accuracies = [m["accuracy"] for m in metrics.values()]
    f1s = [m["macro_f1"] for m in metrics.values()]
    by_tier: dict[str, list[float]] = {}
    for m in metrics.values():
        by_tier.setdefault(m["tier"], []).append(m["accuracy"])
    by_tier_domain: dict[str, list[float]] = {}
    for m in metrics.values():
        by_tier_domain.setdefault(f"{m['domain']}/{m['tier']}", []).append(m["accuracy"])
    bytes_up: dict[str, list[float]] = {}
    for m in metrics.values():
        bytes_up.setdefault(m["tier"], []).append(m["bytes_up"] / settings.rounds)
    ari = None
    if clusters > 1:
        domains = [m["domain"] for m in metrics.values()]
        assigned = [int(np.argmax(m["membership"])) for m in metrics.values()]
        ari = float(adjusted_rand_score(domains, assigned))
    return {
        "method": method_name,
        "epsilon": epsilon,
        "alpha": alpha,
        "seed": seed,
        "mean_accuracy": float(np.mean(accuracies)),
        "worst_accuracy": float(np.min(accuracies)),
        "mean_macro_f1": float(np.mean(f1s)),
        "worst_macro_f1": float(np.min(f1s)),
        "accuracy_by_tier": {t: float(np.mean(v)) for t, v in sorted(by_tier.items())},
        "accuracy_by_domain_tier": {
            k: float(np.mean(v)) for k, v in sorted(by_tier_domain.items())
        },
        "bytes_up_per_round_by_tier": {t: float(np.mean(v)) for t, v in bytes_up.items()},
        "bytes_down_per_round": float(
            np.mean([m["bytes_down"] for m in metrics.values()]) / settings.rounds
        ),
        "epsilon_spent_max": max((m["epsilon"] or 0.0) for m in metrics.values()),
        "ari": ari,
        "memberships": {org: m["membership"] for org, m in metrics.items()},
        "seconds": seconds,
        "organizations": metrics,
    }


def peak_memory_by_tier(settings: Settings) -> dict[str, float]:
    """Peak RSS (MiB) of one DP-SGD round per tier, each in a fresh process."""
    peaks: dict[str, float] = {}
    for tier in ("edge", "standard", "full"):
        done = subprocess.run(
            [sys.executable, __file__, "--_memory-probe", tier, "--_model", settings.model],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[tier] = float(done.stdout.strip().splitlines()[-1])
    return peaks


def _memory_probe(tier: str, model: str) -> None:
    settings = QUICK if model == "tiny" else FULL
    config = consortium_for(settings, "fedhft", 1)
    base = build_base_model(config.model)
    data = synthetic_federation(num_organizations=1, alpha=1.0, samples_per_org=64, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        trainer = LocalTrainer(
            MaskedAdapterModel(base, config.adapter),
            policy_for(settings, "org-0", tier, 8.0, Path(tmp)),
            config,
        )
        trainer.train_round(data[0].train, None, round=1)
    del before
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _fmt(values: list[float], scale: float = 100.0) -> str:
    """Mean ± std of the finite values ("-" when there is none, e.g. a tier FedAvg lacks)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "-"
    if len(finite) == 1:
        return f"{finite[0] * scale:.1f}"
    return f"{np.mean(finite) * scale:.1f} ± {np.std(finite, ddof=1) * scale:.1f}"


def render(results: list[dict[str, Any]], console: Console) -> None:
    """One table per α: methods × privacy, mean ± std over seeds."""
    for alpha in sorted({r["alpha"] for r in results}):
        table = Table(title=f"Dirichlet α = {alpha} (accuracy and macro-F1 in %)")
        for column in (
            "method",
            "ε",
            "mean acc",
            "worst acc",
            "mean F1",
            "edge / std / full acc",
            "ARI",
            "KiB up/round edge·full",
            "KiB down/round",
            "s",
        ):
            table.add_column(column, justify="right" if column != "method" else "left")
        for (method, epsilon), runs in _groups([r for r in results if r["alpha"] == alpha]).items():
            tiers = [
                _fmt([r["accuracy_by_tier"].get(t, float("nan")) for r in runs])
                for t in ("edge", "standard", "full")
            ]
            aris = [r["ari"] for r in runs if r["ari"] is not None]
            ups = runs[0]["bytes_up_per_round_by_tier"]
            table.add_row(
                method,
                "∞" if epsilon is None else f"{epsilon:g}",
                _fmt([r["mean_accuracy"] for r in runs]),
                _fmt([r["worst_accuracy"] for r in runs]),
                _fmt([r["mean_macro_f1"] for r in runs]),
                " / ".join(tiers),
                _fmt(aris, 1.0) if aris else "-",
                f"{ups.get('edge', 0) / 1024:.0f} · {ups.get('full', 0) / 1024:.0f}",
                f"{runs[0]['bytes_down_per_round'] / 1024:.0f}",
                f"{statistics.mean(r['seconds'] for r in runs):.0f}",
            )
        console.print(table)


# ------------------------------------------------------------------ instruction tuning


@dataclass(frozen=True)
class InstructSettings:
    """One ``--task instruct`` run besides method, privacy and seed."""

    model: str
    """``tiny`` (a random Llama built offline), ``smollm2`` or a causal-LM folder."""
    organizations: int
    samples_per_org: int
    """Records per organization before the split (a quarter is its test set)."""
    test_records: int
    """Each organization's test records that are generated from and scored (the first)."""
    rounds: int
    warmup_rounds: int
    local_steps: int
    batch_size: int
    max_seq_length: int
    learning_rate: float
    fedamole_learning_rate: float
    """FedAMoLE's own: a shared expert plus up to top-k gated experts move each output
    together, so one Adam step moves it further than one LoRA's."""
    top_layers: int
    """LoRA trains on the decoder's top layers only (the tiers split them)."""
    alpha: float


INSTRUCT_QUICK = InstructSettings(
    model="tiny",
    organizations=6,
    samples_per_org=48,
    test_records=12,
    rounds=3,
    warmup_rounds=1,
    local_steps=4,
    batch_size=8,
    max_seq_length=96,
    learning_rate=0.3,
    fedamole_learning_rate=0.1,
    top_layers=2,
    alpha=1.0,
)
INSTRUCT_FULL = replace(INSTRUCT_QUICK, model="smollm2", samples_per_org=64)

INSTRUCT_TIERS = ("full", "full", "standard", "full", "edge", "standard")
"""Organization i's tier in ``--task instruct`` (domains alternate): every block a tier
trains has at least three holders (the minimum cohort of a secure sum), so no tier's
blocks are skipped for want of holders."""

INSTRUCT_METHODS = ("zero-shot", *METHODS)
"""``zero-shot``: the base model as it is, scored once per seed (no training, no ε)."""


def instruct_consortium(
    settings: InstructSettings, model: dict[str, str], method: str, clusters: int
) -> ConsortiumConfig:
    """A causal-LM consortium: LoRA on q/v of the top layers; ``full`` trains them all,
    ``standard`` the top layer, ``edge`` its ``v_proj``."""
    top = list(range(-settings.top_layers, 0))
    tiers: dict[str, dict[str, Any]] = {
        "edge": {"layers": [-1], "modules": ["v_proj"], "keep_ratio": 0.5},
        "standard": {"layers": [-1], "keep_ratio": 0.5},
        "full": {"layers": top, "keep_ratio": 0.5},
    }
    if method == "fedamole":
        for tier, (low, high) in FEDAMOLE_EXPERTS.items():
            tiers[tier] = {"layers": top, "min_experts": low, "max_experts": high}
    return ConsortiumConfig.model_validate(
        {
            "consortium": "bench",
            "model": model,
            "adapter": {
                "target_modules": ["q_proj", "v_proj"],
                "rank": 8,
                "alpha": 16,
                "a_seed": 11,
            },
            "tiers": tiers,
            "method": method,
            "rounds": settings.rounds,
            "clustering": {
                "clusters": clusters,
                "warmup_rounds": settings.warmup_rounds if clusters > 1 else 0,
                "membership": "soft",
                "temperature": 0.05,
                "signal": "update",
            },
            "training": {
                "learning_rate": settings.fedamole_learning_rate
                if method == "fedamole"
                else settings.learning_rate
            },
            "secure_aggregation": {"threshold_fraction": 0.6, "max_dropout_fraction": 0.4},
            # The mixture on the same top layers FedHFT's tiers train: FedAMoLE on all 30
            # layers costs about 4x a step (benchmarks/mole_causal_step.py).
            "fedamole": {"num_experts": 4, "holders_per_expert": 3, "layers": top},
            # Answers take at most 5 tokens; the zero-shot base writes all of them.
            "evaluation": {"max_new_tokens": 8},
            "enrollment": [{"organization": f"org-{i}"} for i in range(settings.organizations)],
        }
    )


def instruct_organizations(
    settings: InstructSettings, seed: int, *, dense: bool = False
) -> dict[str, SimulatedOrganization]:
    """The seeded clinical/banking instruction federation, each test set cut to
    ``test_records``."""
    data = synthetic_instruction_federation(
        num_organizations=settings.organizations,
        alpha=settings.alpha,
        samples_per_org=settings.samples_per_org,
        seed=seed,
    )
    return {
        f"org-{i}": SimulatedOrganization(
            org.train,
            org.test.select(range(min(settings.test_records, len(org.test)))),
            "full" if dense else INSTRUCT_TIERS[i % len(INSTRUCT_TIERS)],
            org.domain,
        )
        for i, org in enumerate(data)
    }


def run_instruct_once(
    settings: InstructSettings,
    model: dict[str, str],
    *,
    method_name: str,
    epsilon: float | None,
    seed: int,
    base: Any,
    tokenizer: Any,
) -> dict[str, Any]:
    """One instruction-tuning federation (or the zero-shot base): its figures."""
    started = time.perf_counter()
    cpu = time.process_time()
    training = LocalTraining(
        batch_size=settings.batch_size,
        local_steps=settings.local_steps,
        max_seq_length=settings.max_seq_length,
    )
    if method_name == "zero-shot":
        config = instruct_consortium(settings, model, "local", 1)
        metrics = score_zero_shot(
            config,
            instruct_organizations(settings, seed),
            max_seq_length=settings.max_seq_length,
            base_model=base,
            tokenizer=tokenizer,
        )
        for m in metrics.values():
            m.update(epsilon=None, bytes_up=0, bytes_down=0)
    else:
        method, clusters, dense = METHODS[method_name]
        config = instruct_consortium(settings, model, method, clusters)
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            result = simulate_in_process(
                config,
                instruct_organizations(settings, seed, dense=dense),
                epsilon=epsilon,
                training=training,
                rounds=settings.rounds,
                seed=seed,
                base_model=base,
                tokenizer=tokenizer,
                zero_shot=False,
            )
        metrics = result.organizations
    figures = summarize_instruct(settings, method_name, epsilon, seed, metrics, started)
    # The worker runs one thread: its CPU time is the federation's cost on a free core.
    figures["cpu_seconds"] = time.process_time() - cpu
    return figures


def summarize_instruct(
    settings: InstructSettings,
    method_name: str,
    epsilon: float | None,
    seed: int,
    metrics: dict[str, dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """The run's figures: ROUGE-L and exact match, mean and worst organization."""
    scored = [m for m in metrics.values() if "rouge_l" in m]
    rouge = [m["rouge_l"] for m in scored]
    exact = [m["exact_match"] for m in scored]
    return {
        "method": method_name,
        "epsilon": epsilon,
        "alpha": settings.alpha,
        "seed": seed,
        "mean_rouge_l": float(np.mean(rouge)),
        "worst_rouge_l": float(np.min(rouge)),
        "mean_exact_match": float(np.mean(exact)),
        "worst_exact_match": float(np.min(exact)),
        "bytes_up_per_round": float(np.mean([m["bytes_up"] for m in scored]) / settings.rounds),
        "epsilon_spent_max": max((m["epsilon"] or 0.0) for m in scored),
        "seconds": time.perf_counter() - started,
        "organizations": metrics,
    }


def render_instruct(
    results: list[dict[str, Any]], unavailable: dict[str, str], console: Console
) -> None:
    """One table: methods × privacy, mean ± std over seeds of the organizations' mean
    and of the worst organization."""
    table = Table(title="instruction tuning (ROUGE-L F1 and exact match in %)")
    for column in (
        "method",
        "ε",
        "mean ROUGE-L",
        "worst ROUGE-L",
        "mean EM",
        "worst EM",
        "KiB up/round/org",
        "s",
        "CPU s",
    ):
        table.add_column(column, justify="right" if column != "method" else "left")
    for (method, epsilon), runs in _groups(results).items():
        table.add_row(
            method,
            "∞" if epsilon is None else f"{epsilon:g}",
            _fmt([r["mean_rouge_l"] for r in runs]),
            _fmt([r["worst_rouge_l"] for r in runs]),
            _fmt([r["mean_exact_match"] for r in runs]),
            _fmt([r["worst_exact_match"] for r in runs]),
            f"{statistics.mean(r['bytes_up_per_round'] for r in runs) / 1024:.0f}",
            f"{statistics.mean(r['seconds'] for r in runs):.0f}",
            f"{statistics.mean(r['cpu_seconds'] for r in runs):.0f}",
        )
    for method, why in unavailable.items():
        table.add_row(method, "-", f"not available ({why})", "", "", "", "", "", "")
    console.print(table)


def _instruct_sanity(
    results: list[dict[str, Any]], grid: list[tuple[int, str, float | None]]
) -> list[str]:
    """What makes an instruct run unusable: a missing cell, a metric out of [0, 1], an
    overspent budget."""
    problems = []
    done = {(r["seed"], r["method"], r["epsilon"]) for r in results}
    problems += [f"{m} at ε={e}, seed {s}: no result" for s, m, e in grid if (s, m, e) not in done]
    for r in results:
        values = [r[k] for k in ("mean_rouge_l", "worst_rouge_l", "mean_exact_match")]
        if not all(np.isfinite(values)) or not all(0.0 <= v <= 1.0 for v in values):
            problems.append(f"{r['method']} ε={r['epsilon']}: bad metric")
        if r["epsilon"] is not None and not r["epsilon_spent_max"] <= r["epsilon"] + 1e-6:
            problems.append(f"{r['method']} overspent: {r['epsilon_spent_max']} > {r['epsilon']}")
        if r["epsilon"] is None and r["epsilon_spent_max"] != 0.0:
            problems.append(f"{r['method']} non-private spent ε {r['epsilon_spent_max']}")
    return problems


def _groups(
    results: list[dict[str, Any]],
) -> dict[tuple[str, float | None], list[dict[str, Any]]]:
    """Results by (method, ε), in the order first seen."""
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["method"], r["epsilon"]), []).append(r)
    return groups


_WORKER: dict[str, Any] = {}


def _init_worker(settings: Settings) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", SecurityWarning)
    model = consortium_for(settings, "fedhft", 1).model
    _WORKER["base"] = build_base_model(model)
    _WORKER["tokenizer"] = load_tokenizer(model)


def _init_instruct_worker(model: dict[str, str]) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", SecurityWarning)
    spec = ModelSpec.model_validate(model)
    _WORKER["base"] = build_base_model(spec)
    _WORKER["tokenizer"] = load_tokenizer(spec)


def _run_instruct_in_worker(
    settings: InstructSettings,
    model: dict[str, str],
    seed: int,
    method: str,
    epsilon: float | None,
) -> dict[str, Any]:
    return run_instruct_once(
        settings,
        model,
        method_name=method,
        epsilon=epsilon,
        seed=seed,
        base=_WORKER["base"],
        tokenizer=_WORKER["tokenizer"],
    )


def _run_in_worker(
    settings: Settings, seed: int, alpha: float, method: str, epsilon: float | None
) -> dict[str, Any]:
    return run_once(
        settings,
        method_name=method,
        epsilon=epsilon,
        alpha=alpha,
        seed=seed,
        base=_WORKER["base"],
        tokenizer=_WORKER["tokenizer"],
    )


def _sanity_problems(
    results: list[dict[str, Any]],
    methods: list[str],
    epsilons: list[float | None],
    alphas: list[float],
    seeds: int,
) -> list[str]:
    """What makes a run unusable: a missing method, or a metric that is not finite."""
    problems = []
    for method in methods:
        for epsilon in epsilons:
            runs = [r for r in results if r["method"] == method and r["epsilon"] == epsilon]
            if len(runs) != len(alphas) * seeds:
                problems.append(f"{method} at ε={epsilon}: {len(runs)} runs")
    for r in results:
        values = [r["mean_accuracy"], r["worst_accuracy"], r["mean_macro_f1"]]
        values += list(r["accuracy_by_tier"].values())
        if not all(np.isfinite(values)) or not all(0.0 <= v <= 1.0 for v in values):
            problems.append(f"{r['method']} ε={r['epsilon']} α={r['alpha']}: bad metric")
        if r["epsilon"] is not None and not r["epsilon_spent_max"] <= r["epsilon"] + 1e-6:
            problems.append(f"{r['method']} overspent: {r['epsilon_spent_max']} > {r['epsilon']}")
    return problems


def _run_pool(
    console: Console,
    jobs: int,
    initializer: Any,
    initargs: tuple[Any, ...],
    worker: Any,
    cells: list[tuple[Any, ...]],
    describe: Any,
) -> list[dict[str, Any]]:
    """Run ``worker(*cell)`` for every cell on ``jobs`` processes, each set up once by
    ``initializer`` (it loads the base model and runs whole federations with one thread:
    on two cores two workers halve the wall time); prints ``describe(result)`` as each
    ends."""
    results = []
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    ) as pool:
        futures = [pool.submit(worker, *cell) for cell in cells]
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                result = future.result()
            except BaseException:
                # Leaving the `with` would otherwise run every queued federation first.
                pool.shutdown(cancel_futures=True)
                raise
            results.append(result)
            console.print(f"[{done}/{len(cells)}] {describe(result)}")
    return results


def _describe(result: dict[str, Any]) -> str:
    epsilon = result["epsilon"]
    return (
        f"seed {result['seed']} α={result['alpha']} "
        f"{result['method']:12s} ε={'∞' if epsilon is None else epsilon}: "
        + (
            f"mean ROUGE-L {result['mean_rouge_l']:.3f}, worst {result['worst_rouge_l']:.3f}, "
            f"EM {result['mean_exact_match']:.3f}"
            if "mean_rouge_l" in result
            else f"mean acc {result['mean_accuracy']:.3f}, worst {result['worst_accuracy']:.3f}"
            + (f", ARI {result['ari']:.2f}" if result["ari"] is not None else "")
        )
        + f" ({result['seconds']:.0f} s"
        + (f", {result['cpu_seconds']:.0f} s CPU)" if "cpu_seconds" in result else ")")
    )


def main_instruct(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--task instruct``: the instruction-tuning benchmark (see INSTRUCT_FULL)."""
    settings = INSTRUCT_QUICK if args.quick else INSTRUCT_FULL
    if args.model:
        settings = replace(settings, model=args.model)
    if args.learning_rate:
        settings = replace(
            settings,
            learning_rate=args.learning_rate,
            fedamole_learning_rate=args.learning_rate,
        )
    if args.records:
        settings = replace(settings, samples_per_org=args.records)
    if args.batch_size:
        settings = replace(settings, batch_size=args.batch_size)
    seeds = list(range(args.seeds if args.seeds else (1 if args.quick else 3)))
    methods = args.methods or list(INSTRUCT_METHODS)
    epsilons = [None if e == "none" else float(e) for e in args.epsilons or ["none", "8"]]
    console = Console(width=160)
    name = "quick" if args.quick else "full"
    console.print(f"[bold]fedhft learning benchmark, instruct[/] ({name}): {settings}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = causal_model_spec(settings.model, Path(tmp), seed=0)
        unavailable: dict[str, str] = {}
        if "fedamole" in methods:
            try:
                config = instruct_consortium(settings, model, "fedamole", 1)
                tiers = {
                    f"org-{i}": INSTRUCT_TIERS[i % len(INSTRUCT_TIERS)]
                    for i in range(settings.organizations)
                }
                check_fedamole_feasible(config, tiers)
            except (ValueError, InfeasibleAssignmentError) as error:
                # Until FedAMoLE is causal-aware the consortium refuses it: a row that
                # says so, so the rest of the table still comes out.
                unavailable["fedamole"] = _reason(error)
        grid = [
            (seed, method, epsilon)
            for seed in seeds
            for method in methods
            if method not in unavailable
            for epsilon in ([None] if method == "zero-shot" else epsilons)
        ]
        results = _run_pool(
            console,
            args.jobs,
            _init_instruct_worker,
            (model,),
            _run_instruct_in_worker,
            [(settings, model, *cell) for cell in grid],
            _describe,
        )
    order = {cell: i for i, cell in enumerate(grid)}
    results.sort(key=lambda r: order[(r["seed"], r["method"], r["epsilon"])])
    render_instruct(results, unavailable, console)
    wall = time.perf_counter() - started
    console.print(f"wall time {wall:.0f} s")
    _finish(
        args,
        console,
        _instruct_sanity(results, grid) if args.check else None,
        {
            "task": "instruct",
            "settings": settings.__dict__,
            "seeds": seeds,
            "results": results,
            "unavailable": unavailable,
            "wall_seconds": wall,
            "date": time.strftime("%Y-%m-%d"),
        },
    )


def _reason(error: Exception) -> str:
    """The first sentence of a refusal (a schema error's message, not its pydantic frame)."""
    message = (
        str(error.errors()[0]["msg"]).removeprefix("Value error, ")
        if isinstance(error, ValidationError)
        else str(error)
    )
    return message.split(" (")[0].split("; ")[0]


def _finish(
    args: argparse.Namespace,
    console: Console,
    problems: list[str] | None,
    figures: dict[str, Any],
) -> None:
    """``--check``: exit 1 on any problem; ``--json``: write the figures."""
    if problems is not None:
        for problem in problems:
            console.print(f"[red]sanity: {problem}[/]")
        if problems:
            raise SystemExit(1)
        console.print("sanity: every method ran and every metric is finite")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task",
        choices=["classify", "instruct"],
        default="classify",
        help="classify (default): labelled texts; instruct: instruction tuning of a causal LM",
    )
    parser.add_argument(
        "--model",
        help="--task instruct: smollm2 (default), tiny (--quick) or a causal-LM folder",
    )
    parser.add_argument(
        "--learning-rate", type=float, help="--task instruct: override the learning rate"
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="tiny random model, one seed")
    preset.add_argument("--demo", action="store_true", help="the default simulate's scale, α 2")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--seeds", type=int, help="seeds (default: 1 quick, 3 full)")
    parser.add_argument("--alphas", type=float, nargs="+", help="default: 0.3 10 (demo: 2)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(INSTRUCT_METHODS),
        help="default: all (demo: all but fedamole, the slowest, which `fedhft simulate` "
        "does not run by default either)",
    )
    parser.add_argument(
        "--epsilons",
        nargs="+",
        help="'none' = non-private (default: none 8 2; --task instruct: none 8)",
    )
    parser.add_argument(
        "--records",
        type=int,
        help="--task instruct: records per organization, a quarter held out (default 64)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="--task instruct: expected DP-SGD batch (default 8)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--jobs", type=int, default=2, help="federations run in parallel")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless every method ran and every metric is finite (CI sanity, not targets)",
    )
    parser.add_argument("--_memory-probe", dest="memory_probe", help=argparse.SUPPRESS)
    parser.add_argument("--_model", dest="probe_model", default="tiny", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        _memory_probe(args.memory_probe, args.probe_model)
        return
    if args.task == "instruct":
        torch.set_num_threads(1)
        main_instruct(args, parser)
        return
    if (
        args.model
        or args.learning_rate
        or args.records
        or args.batch_size
        or (args.methods and "zero-shot" in args.methods)
    ):
        parser.error("--model, --learning-rate and zero-shot are for --task instruct")

    # One thread: with several processes on two cores, OpenMP spin-waits make a
    # tiny model six times slower (measured with cProfile).
    torch.set_num_threads(1)
    name, settings = (
        ("quick", QUICK) if args.quick else ("demo", DEMO) if args.demo else ("full", FULL)
    )
    seeds = list(range(args.seeds if args.seeds else (1 if args.quick else 3)))
    alphas = args.alphas or ([2.0] if args.demo else [0.3, 10.0])
    methods = args.methods or [m for m in METHODS if not (args.demo and m == "fedamole")]
    if "fedamole" in methods:
        tiers = {f"org-{i}": TIERS[i % len(TIERS)] for i in range(settings.organizations)}
        try:
            check_fedamole_feasible(consortium_for(settings, "fedamole", 1), tiers)
        except InfeasibleAssignmentError as error:
            parser.error(f"fedamole cannot run with these settings: {error}")
    epsilons = [None if e == "none" else float(e) for e in args.epsilons or ["none", "8", "2"]]
    console = Console(width=160)
    console.print(f"[bold]fedhft learning benchmark[/] ({name}): {settings}")
    started = time.perf_counter()
    grid = [
        (seed, alpha, method, epsilon)
        for seed in seeds
        for alpha in alphas
        for method in methods
        for epsilon in epsilons
    ]
    results = _run_pool(
        console,
        args.jobs,
        _init_worker,
        (settings,),
        _run_in_worker,
        [(settings, *cell) for cell in grid],
        _describe,
    )
    order = {cell: i for i, cell in enumerate(grid)}
    results.sort(key=lambda r: order[(r["seed"], r["alpha"], r["method"], r["epsilon"])])
    if args.json:
        args.json.write_text(json.dumps({"settings": settings.__dict__, "results": results}))
    render(results, console)
    memory = {} if args.no_memory else peak_memory_by_tier(settings)
    if memory:
        console.print(
            "peak RSS of one DP-SGD round (MiB): "
            + ", ".join(f"{t} {v:.0f}" for t, v in memory.items())
        )
    wall = time.perf_counter() - started
    console.print(f"wall time {wall:.0f} s")
    _finish(
        args,
        console,
        _sanity_problems(results, methods, epsilons, alphas, len(seeds)) if args.check else None,
        {
            "settings": settings.__dict__,
            "seeds": seeds,
            "results": results,
            "peak_rss_mib_by_tier": memory,
            "wall_seconds": wall,
            "date": time.strftime("%Y-%m-%d"),
        },
    )


if __name__ == "__main__":
    main()
