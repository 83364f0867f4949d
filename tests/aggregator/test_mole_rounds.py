"""FedAMoLE rounds in process: DP affinities, RSEA, secure per-holder averages, accuracy."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedhft.aggregator import assign_experts
from fedhft.aggregator._federation import RoundCoordinator
from fedhft.aggregator._mole_rounds import (
    MoLECoordinator,
    initial_mole_state,
)
from fedhft.aggregator.errors import RoundError
from fedhft.model import tier_mask
from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.protocol import Stage
from fedhft.sdk import (
    LocalTrainer,
    MaskedAdapterModel,
    OrganizationData,
    build_base_model,
    synthetic_federation,
)
from fedhft.sdk._participant import RoundParticipant
from fedhft.sdk.mole._participant import MoLEParticipant
from fedhft.sdk.mole._trainer import MoLETrainer
from fedhft.simulation import OrganizationRun, run_fedamole_in_process, run_federation_in_process


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _names(count: int) -> list[str]:
    """Organization i is in domain i % 2, as `synthetic_federation` makes it."""
    return [f"{('clin', 'bank')[i % 2]}-{i}" for i in range(count)]


def _consortium(orgs: list[str], method: str = "fedamole", **overrides: Any) -> ConsortiumConfig:
    data: dict[str, Any] = {
        "consortium": "t",
        "model": {"source": "tiny", "num_labels": 4},
        "adapter": {"target_modules": ["query", "value"], "rank": 4, "alpha": 8, "a_seed": 3},
        "tiers": {"full": {"min_experts": 2, "max_experts": 4, "keep_ratio": 0.5}},
        "method": method,
        "rounds": 3,
        "fedamole": {"num_experts": 4, "holders_per_expert": 3, "affinity_noise_multiplier": 2.0},
        "training": {"learning_rate": 0.02, "head_learning_rate": 0.05},
        "secure_aggregation": {"threshold_fraction": 0.75, "max_dropout_fraction": 0.25},
        "enrollment": [{"organization": o} for o in orgs],
    }
    data.update(overrides)
    return ConsortiumConfig.model_validate(data)


def _policy(
    org: str, state: Path, *, epsilon: float = 8.0, rounds: int = 3, noise_source: str = "secure"
) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "t",
            "privacy": {
                "epsilon": epsilon,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
                "noise_multiplier": "auto",
                "planned_rounds": rounds,
                "noise_source": noise_source,
                "ledger_path": str(state / org / "ledger.json"),
            },
            "training": {"tier": "full", "batch_size": 16, "local_steps": 6, "max_seq_length": 32},
        }
    )


def _fedamole(
    config: ConsortiumConfig, data: list[OrganizationData], state: Path, **policy: Any
) -> tuple[MoLECoordinator, dict[str, OrganizationRun[MoLEParticipant]]]:
    runs = {}
    for org, org_data in zip(config.enrolled(), data, strict=True):
        trainer = MoLETrainer(
            _policy(org, state, **policy),
            config,
            base_factory=lambda: build_base_model(config.model),
        )
        participant = MoLEParticipant(trainer, org_data.train, state_dir=state / org)
        runs[org] = OrganizationRun(participant, "full", org_data.test, org_data.domain)
    coordinator = MoLECoordinator(
        config, run_id="mole-run", initial_state=initial_mole_state(config)
    )
    return coordinator, runs


def _majority_share(assignment: dict[str, tuple[int, ...]], domains: dict[str, str]) -> float:
    """Mean over experts of the share of its holders from its most common domain."""
    holders: dict[int, list[str]] = {}
    for org, experts in assignment.items():
        for expert in experts:
            holders.setdefault(expert, []).append(domains[org])
    shares = [
        max(members.count(d) for d in set(members)) / len(members) for members in holders.values()
    ]
    return float(np.mean(shares))


def test_secure_round_equals_plain_average_of_holders(tmp_path: Path) -> None:
    """After one round, every aggregated block is the plain average of its holders' values."""
    orgs = _names(4)
    config = _consortium(orgs)
    data = synthetic_federation(num_organizations=4, alpha=1.0, samples_per_org=60, seed=1)
    coordinator, runs = _fedamole(config, data, tmp_path)
    uploads: dict[str, dict[str, np.ndarray]] = {}
    original = MoLEParticipant.prepare

    def spy(self: MoLEParticipant, round_number: int, release: Any) -> Any:
        upload = original(self, round_number, release)
        uploads[self.organization] = upload
        return upload

    MoLEParticipant.prepare = spy  # type: ignore[method-assign]
    try:
        result = run_fedamole_in_process(config, coordinator, runs, rounds=1)
    finally:
        MoLEParticipant.prepare = original  # type: ignore[method-assign]
    assert result.assignment == coordinator.assignment
    assert sorted(e for held in result.assignment.values() for e in held) == sorted(
        list(range(4)) * 3
    )
    clip = config.secure_aggregation.clip
    step = 1.0 / config.secure_aggregation.scale
    checked = 0
    for block_id in coordinator.aggregated:
        holders = [np.clip(u[block_id], -clip, clip) for u in uploads.values() if block_id in u]
        assert len(holders) == (3 if ".expert" in block_id else 4)
        np.testing.assert_allclose(
            coordinator.states[block_id], np.mean(holders, axis=0), atol=len(holders) * step
        )
        checked += 1
    # Every shared expert, router and pool expert is aggregated; the head stays personal.
    assert checked == len(coordinator.states) - 2
    assert "head.weight" not in coordinator.aggregated
    summary = result.rounds[0].summary
    assert summary is not None and summary.outcomes[0].skipped_blocks == {}
    for org, run in runs.items():
        ledger = run.participant.trainer.ledger
        assert ledger is not None
        assert [(r.round, r.mechanism) for r in ledger.records] == [
            (1, "gaussian"),
            (1, "dp-sgd"),
        ]
        assert result.metrics[org]["epsilon"] == pytest.approx(ledger.spent())


def test_expert_below_cohort_after_a_dropout_is_skipped_and_stays_personal(
    tmp_path: Path,
) -> None:
    """An organization dropping out of the secure sum leaves its experts below the cohort."""
    orgs = _names(4)
    config = _consortium(orgs)
    data = synthetic_federation(num_organizations=4, alpha=1.0, samples_per_org=40, seed=1)
    coordinator, runs = _fedamole(config, data, tmp_path)
    gone = orgs[0]
    result = run_fedamole_in_process(
        config,
        coordinator,
        runs,
        rounds=1,
        drop=lambda _round: {Stage.MASKED_INPUT: [gone]},
    )
    summary = result.rounds[0].summary
    assert summary is not None
    outcome = summary.outcomes[0]
    assert outcome.dropped == (gone,)
    held = {f".expert{e}" for e in result.assignment[gone]}
    skipped = set(outcome.skipped_blocks)
    assert skipped and all(any(b.endswith(h) for h in held) for b in skipped)
    assert all(count == 2 for count in outcome.skipped_blocks.values())
    assert not skipped & coordinator.aggregated
    initial = initial_mole_state(config)
    for block_id in skipped:
        np.testing.assert_array_equal(coordinator.states[block_id], initial[block_id])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::fedhft.errors.SecurityWarning")
def test_experts_specialize_by_domain(tmp_path: Path) -> None:
    """RSEA on DP affinities gives experts more same-domain holders than random assignments.

    Six organizations (three per domain): with four, every 3-holder expert has exactly
    2/3 of its holders from one domain whatever the assignment, so the share measures
    nothing there (holders per expert cannot drop below the minimum cohort, 3). The
    release noise is seeded ("pseudo" source) so that the measured share is fixed.
    """
    orgs = _names(6)
    config = _consortium(
        orgs,
        tiers={"full": {"min_experts": 1, "max_experts": 3}},
        fedamole={"num_experts": 4, "holders_per_expert": 3, "affinity_noise_multiplier": 1.0},
    )
    data = synthetic_federation(num_organizations=6, alpha=1.0, samples_per_org=2000, seed=3)
    coordinator, runs = _fedamole(config, data, tmp_path, epsilon=20.0, noise_source="pseudo")
    torch.manual_seed(0)
    result = run_fedamole_in_process(config, coordinator, runs, rounds=0)
    tiers = {org: "full" for org in orgs}
    assert result.assignment == assign_experts(config, result.affinities, tiers)
    domains = {org: run.domain for org, run in runs.items()}
    share = _majority_share(result.assignment, domains)
    rng = np.random.default_rng(0)
    random_shares = []
    for _ in range(200):
        scores = {org: rng.random(4) for org in orgs}
        random_shares.append(_majority_share(assign_experts(config, scores, tiers), domains))
    baseline = float(np.mean(random_shares))
    assert share > baseline + 0.1, (share, baseline)
    for run in runs.values():
        ledger = run.participant.trainer.ledger
        assert ledger is not None and [r.mechanism for r in ledger.records] == ["gaussian"]


def test_assignment_is_made_once(tmp_path: Path) -> None:
    """A second assignment is refused: supports must not change during the run."""
    orgs = _names(4)
    config = _consortium(orgs)
    coordinator = MoLECoordinator(config, run_id="r", initial_state=initial_mole_state(config))
    affinities = {org: np.full(4, 0.25) for org in orgs}
    coordinator.assign(affinities, {org: "full" for org in orgs})
    with pytest.raises(RoundError, match="once"):
        coordinator.assign(affinities, {org: "full" for org in orgs})
    with pytest.raises(RoundError, match="no experts"):
        coordinator.experts_of("stranger")


def test_initial_state_must_cover_the_pool() -> None:
    """A coordinator refuses an initial state whose experts differ from the pool."""
    orgs = _names(4)
    config = _consortium(orgs)
    state = initial_mole_state(config)
    partial = {b: v for b, v in state.items() if not b.endswith(".expert3")}
    with pytest.raises(RoundError, match="pool"):
        MoLECoordinator(config, run_id="r", initial_state=partial)


@pytest.mark.slow
def test_fedamole_beats_fedavg_lora_on_the_same_data(tmp_path: Path) -> None:
    """Mean personalized accuracy of FedAMoLE beats FedAvg-LoRA at the same ε (DP on)."""
    orgs = _names(4)
    data = synthetic_federation(num_organizations=4, alpha=1.0, samples_per_org=160, seed=1)
    mole_config = _consortium(orgs)
    coordinator, runs = _fedamole(mole_config, data, tmp_path / "mole")
    mole = run_fedamole_in_process(mole_config, coordinator, runs)
    avg_config = _consortium(orgs, method="fedavg")
    avg_runs = {}
    for org, org_data in zip(orgs, data, strict=True):
        trainer = LocalTrainer(
            MaskedAdapterModel.from_consortium(avg_config),
            _policy(org, tmp_path / "avg"),
            avg_config,
            seed=0,
        )
        participant = RoundParticipant(trainer, org_data.train, state_dir=tmp_path / "avg" / org)
        avg_runs[org] = OrganizationRun(participant, "full", org_data.test, org_data.domain)
    server = MaskedAdapterModel.from_consortium(avg_config)
    avg_coordinator = RoundCoordinator(
        avg_config,
        run_id="avg-run",
        initial_state=server.get_block_state(),
        tier_blocks={"full": tier_mask(avg_config, "full")},
    )
    avg = run_federation_in_process(avg_config, avg_coordinator, avg_runs)
    mole_accuracy = np.mean([m["accuracy"] for m in mole.metrics.values()])
    avg_accuracy = np.mean([m["accuracy"] for m in avg.metrics.values()])
    assert mole_accuracy > avg_accuracy + 0.05, (mole_accuracy, avg_accuracy)
    for org in orgs:
        assert mole.metrics[org]["epsilon"] <= 8.0
        assert mole.metrics[org]["epsilon"] == pytest.approx(8.0, rel=0.01)
        assert mole.metrics[org]["bytes_up"] > 0


def test_fedamole_needs_a_cohort_of_affinities(tmp_path: Path) -> None:
    """If too few organizations can afford the release, the run stops before assigning."""
    orgs = _names(4)
    config = _consortium(
        orgs,
        fedamole={"num_experts": 4, "holders_per_expert": 3, "affinity_noise_multiplier": 0.05},
    )
    data = synthetic_federation(num_organizations=4, alpha=1.0, samples_per_org=40, seed=1)
    coordinator, runs = _fedamole(config, data, tmp_path, epsilon=1.0)
    with pytest.raises(RoundError, match="released an affinity"):
        run_fedamole_in_process(config, coordinator, runs, rounds=1)
    assert coordinator.assignment is None
    assert all(run.refused == [1] for run in runs.values())


def test_majority_share_measure() -> None:
    """The specialization measure: 1 when every expert's holders share one domain."""
    domains = {"a": "x", "b": "x", "c": "x", "d": "y", "e": "y", "f": "y"}
    pure = {"a": (0,), "b": (0,), "c": (0,), "d": (1,), "e": (1,), "f": (1,)}
    mixed = {"a": (0,), "b": (0,), "d": (0,), "c": (1,), "e": (1,), "f": (1,)}
    assert _majority_share(pure, domains) == 1.0
    assert _majority_share(mixed, domains) == pytest.approx(2 / 3)
    assert list(itertools.islice(_names(3), 3)) == ["clin-0", "bank-1", "clin-2"]
