"""A FedAMoLE round in process: private affinity, RSEA, secure per-expert averages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhft.aggregator import assign_experts
from fedhft.aggregator._experts import aggregate_mole_blocks
from fedhft.aggregator.errors import RoundError
from fedhft.policies import Accountant, ConsortiumConfig
from fedhft.sdk import MoLEModel, PrivacyLedger, build_base_model
from fedhft.sdk.mole import release_affinity

ORGS = ["org-a", "org-b", "org-c", "org-d"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _consortium() -> ConsortiumConfig:
    return ConsortiumConfig.model_validate(
        {
            "consortium": "c",
            "model": {"source": "tiny", "num_labels": 2},
            "adapter": {"target_modules": ["value"], "rank": 2, "alpha": 4, "a_seed": 3},
            "tiers": {"full": {"min_experts": 1, "max_experts": 4}},
            "method": "fedamole",
            "rounds": 1,
            "fedamole": {"num_experts": 4, "holders_per_expert": 3},
            "enrollment": [{"organization": o} for o in ORGS],
        }
    )


def _round(
    consortium: ConsortiumConfig, tmp_path: Path
) -> tuple[dict[str, MoLEModel], dict[str, tuple[int, ...]]]:
    """Each organization releases its affinity under DP; the server assigns experts."""
    releases = {}
    for index, org in enumerate(ORGS):
        probe = MoLEModel(build_base_model(consortium.model), consortium.adapter, expert_ids=[0])
        generator = torch.Generator().manual_seed(index)
        low = 1 if index < 2 else 450  # Two domains: disjoint token ranges.
        ids = torch.randint(low, low + 400, (8, 6), generator=generator)
        ledger = PrivacyLedger.open(
            tmp_path / f"{org}.json",
            organization=org,
            accountant=Accountant.RDP,
            delta=1e-5,
            epsilon_budget=10.0,
        )
        release = release_affinity(
            probe,
            ids,
            torch.ones_like(ids),
            num_experts=consortium.fedamole.num_experts,
            noise_multiplier=consortium.fedamole.affinity_noise_multiplier,
            ledger=ledger,
            round_number=1,
        )
        assert ledger.records == (release.record,)
        releases[org] = release.affinity
    holdings = assign_experts(consortium, releases, {org: "full" for org in ORGS})
    models = {
        org: MoLEModel(build_base_model(consortium.model), consortium.adapter, expert_ids=held)
        for org, held in holdings.items()
    }
    for index, model in enumerate(models.values()):
        state = model.get_state()
        rng = np.random.default_rng(index)
        model.set_state({b: rng.normal(size=v.shape) for b, v in state.items()})
    return models, holdings


def test_fedamole_round_averages_each_block_over_its_holders(tmp_path: Path) -> None:
    """Every expert has 3 holders; each block's secure average equals its plain average."""
    consortium = _consortium()
    models, holdings = _round(consortium, tmp_path)
    assert sorted(e for held in holdings.values() for e in held) == sorted(list(range(4)) * 3)
    states = {org: model.get_state() for org, model in models.items()}
    aggregate = aggregate_mole_blocks(
        consortium,
        states,
        {org: Ed25519PrivateKey.generate() for org in ORGS},
        run_id="fedamole-test",
        round_number=1,
        config_hash=hashlib.sha256(b"config").digest(),
        model_hash=hashlib.sha256(b"model").digest(),
    )
    assert aggregate.skipped == {}
    for block_id, average in aggregate.averaged.items():
        holders = [states[org][block_id] for org in ORGS if block_id in states[org]]
        assert len(holders) == (3 if ".expert" in block_id else 4)
        np.testing.assert_allclose(average, np.mean(holders, axis=0), atol=1e-5)
    for model in models.values():
        model.set_state({b: aggregate.averaged[b] for b in model.block_ids})
        np.testing.assert_allclose(
            model.get_state(["head.weight"])["head.weight"],
            aggregate.averaged["head.weight"],
            atol=1e-6,
        )


def test_expert_below_min_cohort_is_skipped_and_reported(tmp_path: Path) -> None:
    """A holder dropping out leaves its experts with 2 holders: not aggregated, reported."""
    consortium = _consortium()
    models, _ = _round(consortium, tmp_path)
    states = {org: model.get_state() for org, model in models.items()}
    gone = "org-a"
    aggregate = aggregate_mole_blocks(
        consortium,
        states,
        {org: Ed25519PrivateKey.generate() for org in ORGS},
        run_id="fedamole-test",
        round_number=1,
        config_hash=hashlib.sha256(b"config").digest(),
        model_hash=hashlib.sha256(b"model").digest(),
        drop={"masked_input": [gone]},
    )
    lost = {b for b in states[gone] if ".expert" in b}
    assert lost and lost <= set(aggregate.skipped)
    assert not lost & set(aggregate.averaged)
    assert gone not in aggregate.survivors
    shared = [b for b in states[gone] if ".expert" not in b]
    for block_id in shared:
        holders = [states[org][block_id] for org in ORGS if org != gone]
        np.testing.assert_allclose(
            aggregate.averaged[block_id], np.mean(holders, axis=0), atol=1e-5
        )


def test_too_few_participants_are_refused(tmp_path: Path) -> None:
    """Fewer organizations than the minimum cohort raise RoundError before any session."""
    consortium = _consortium()
    with pytest.raises(RoundError, match="minimum cohort"):
        aggregate_mole_blocks(
            consortium,
            {"org-a": {"x": np.zeros((2, 2))}, "org-b": {"x": np.zeros((2, 2))}},
            {},
            run_id="r",
            round_number=1,
            config_hash=bytes(32),
            model_hash=bytes(32),
        )
