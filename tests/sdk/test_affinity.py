"""Private per-expert affinity release for RSEA (fedhft.sdk.mole._affinity)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedhft.accounting import MechanismRecord, compute_epsilon
from fedhft.model import MoLEModel
from fedhft.policies import Accountant, AdapterSpec, ModelSpec, NoiseSource
from fedhft.sdk import BudgetExhaustedError, PrivacyLedger, build_base_model
from fedhft.sdk.mole._affinity import AffinityRelease, record_affinities, release_affinity
from fedhft.sdk.privacy import SecureGaussian

ADAPTER = AdapterSpec(target_modules=["query", "value"], rank=4, alpha=8, a_seed=9)
POOL = 5
DELTA = 1e-5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> MoLEModel:
    """A tiny MoLE model holding experts 1 and 3 of a pool of five."""
    base = build_base_model(ModelSpec(source="tiny", num_labels=3))
    return MoLEModel(base, ADAPTER, expert_ids=[1, 3])


def _records(count: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 900, (count, 7), generator=generator)
    mask = torch.ones(count, 7, dtype=torch.long)
    mask[1, 4:] = 0
    return ids, mask


def _ledger(tmp_path: Path, budget: float = 10.0) -> PrivacyLedger:
    return PrivacyLedger.open(
        tmp_path / "ledger.json",
        organization="org-a",
        accountant=Accountant.RDP,
        delta=DELTA,
        epsilon_budget=budget,
    )


def _dp_sgd(round_number: int) -> MechanismRecord:
    return MechanismRecord(
        round=round_number,
        mechanism="dp-sgd",
        noise_multiplier=1.1,
        sample_rate=0.05,
        steps=20,
        max_grad_norm=1.0,
        noise_source=NoiseSource.SECURE,
    )


def test_record_affinities_are_probability_vectors_over_the_whole_pool(model: MoLEModel) -> None:
    """Each record's affinity covers all E pool experts (held or not) and sums to 1."""
    ids, mask = _records()
    affinities = record_affinities(model, ids, mask, num_experts=POOL)
    assert affinities.shape == (6, POOL)
    torch.testing.assert_close(affinities.sum(dim=1), torch.ones(6, dtype=torch.float64))
    assert bool((affinities > 0).all())


def test_padding_does_not_change_a_records_affinity(model: MoLEModel) -> None:
    """A record's affinity is the same alone as in a batch with longer records."""
    ids, mask = _records()
    batched = record_affinities(model, ids, mask, num_experts=POOL)
    alone = record_affinities(model, ids[1:2, :4], mask[1:2, :4], num_experts=POOL)
    torch.testing.assert_close(batched[1:2], alone)


def test_epsilon_of_dp_sgd_plus_release_matches_accountants(
    model: MoLEModel, tmp_path: Path
) -> None:
    """The release composes with DP-SGD in the same ledger: ε equals compute_epsilon and opacus."""
    ledger = _ledger(tmp_path)
    ledger.commit(_dp_sgd(1))
    ids, mask = _records()
    release = release_affinity(
        model,
        ids,
        mask,
        num_experts=POOL,
        noise_multiplier=4.0,
        ledger=ledger,
        round_number=1,
    )
    ledger.commit(_dp_sgd(2))
    assert ledger.records[1] == release.record
    assert release.record.mechanism == "gaussian"
    assert (release.record.sample_rate, release.record.steps) == (1.0, 1)
    accountant = RDPAccountant()
    accountant.history = [(1.1, 0.05, 20), (4.0, 1.0, 1), (1.1, 0.05, 20)]
    independent = accountant.get_epsilon(delta=DELTA)
    combined = compute_epsilon(ledger.records, accountant=Accountant.RDP, delta=DELTA)
    assert ledger.spent() == pytest.approx(combined, rel=1e-12)
    assert combined == pytest.approx(independent, rel=1e-9)
    assert release.epsilon_after == pytest.approx(
        compute_epsilon(ledger.records[:2], accountant=Accountant.RDP, delta=DELTA)
    )
    assert combined > compute_epsilon(
        [_dp_sgd(1), _dp_sgd(2)], accountant=Accountant.RDP, delta=DELTA
    )


def test_release_holds_only_the_noisy_statistic(model: MoLEModel, tmp_path: Path) -> None:
    """No field of the release equals the plaintext sum; the noise has the accounted scale."""
    ids, mask = _records()
    plain = record_affinities(model, ids, mask, num_experts=POOL).sum(dim=0).numpy()
    releases = [
        release_affinity(
            model,
            ids,
            mask,
            num_experts=POOL,
            noise_multiplier=2.0,
            ledger=_ledger(tmp_path / str(i), budget=1e6),
            round_number=1,
        )
        for i in range(40)
    ]
    fields = {f.name for f in dataclasses.fields(AffinityRelease)}
    assert fields == {"round", "noisy_sum", "record", "epsilon_after", "_array"}
    noise = np.array([r.noisy_sum for r in releases]) - plain
    assert not np.any(noise == 0.0)
    # 200 draws of N(0, 2²): the sample std lies within 20 % of 2 with overwhelming odds.
    assert 1.6 < float(noise.std()) < 2.4
    assert all(not np.allclose(r._array, plain) for r in releases)
    np.testing.assert_allclose(releases[0].affinity.sum(), 1.0)


def test_seeded_release_is_plain_sum_plus_sampler_noise(model: MoLEModel, tmp_path: Path) -> None:
    """The release is exactly the clipped sum plus σ·C noise from the given sampler."""
    ids, mask = _records()
    plain = record_affinities(model, ids, mask, num_experts=POOL).sum(dim=0)
    seed = bytes(range(32))
    release = release_affinity(
        model,
        ids,
        mask,
        num_experts=POOL,
        noise_multiplier=3.0,
        ledger=_ledger(tmp_path),
        round_number=2,
        sampler=SecureGaussian(seed=seed),
    )
    expected = plain + SecureGaussian(seed=seed).normal((POOL,), std=3.0, dtype=torch.float64)
    np.testing.assert_allclose(release.noisy_sum, expected.numpy(), rtol=1e-12)


def test_release_over_budget_refuses_and_commits_nothing(model: MoLEModel, tmp_path: Path) -> None:
    """A budget the release cannot fit raises BudgetExhaustedError and leaves the ledger as is."""
    ledger = _ledger(tmp_path, budget=0.5)
    ids, mask = _records()
    drawn: list[int] = []

    def sampler(shape: torch.Size, std: float, dtype: torch.dtype) -> torch.Tensor:
        drawn.append(1)
        return torch.zeros(shape, dtype=dtype)

    with pytest.raises(BudgetExhaustedError):
        release_affinity(
            model,
            ids,
            mask,
            num_experts=POOL,
            noise_multiplier=0.5,
            ledger=ledger,
            round_number=1,
            sampler=sampler,
        )
    assert ledger.records == ()
    assert drawn == []


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_noise_multiplier_is_rejected(model: MoLEModel, tmp_path: Path, sigma: float) -> None:
    """σ must be a finite number > 0; nothing is committed otherwise."""
    ledger = _ledger(tmp_path)
    ids, mask = _records()
    with pytest.raises(ValueError, match="affinity_noise_multiplier"):
        release_affinity(
            model,
            ids,
            mask,
            num_experts=POOL,
            noise_multiplier=sigma,
            ledger=ledger,
            round_number=1,
        )
    assert ledger.records == ()


def test_mismatched_tokens_are_rejected(model: MoLEModel) -> None:
    """input_ids and attention_mask of different shapes raise AdapterError."""
    ids, mask = _records()
    with pytest.raises(ValueError, match="one shape"):
        record_affinities(model, ids, mask[:, :3], num_experts=POOL)
