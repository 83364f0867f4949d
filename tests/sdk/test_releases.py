"""One-shot Gaussian releases: label prior, sketch, their accounting and their use
(fedhft.sdk.privacy._releases, LocalTrainer releases, RoundParticipant keeping them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant
from peft import PeftModel
from trainer_helpers import ORG, RecordingAudit, tiny_consortium, tiny_policy

from fedhft.policies import NoiseSource
from fedhft.sdk import (
    BudgetExhaustedError,
    ClusterAdapters,
    MaskedAdapterModel,
    PrivacyLedger,
    build_base_model,
    synthetic_federation,
)
from fedhft.sdk._mixture import MixtureError, sketch_membership
from fedhft.sdk._participant import RoundParticipant
from fedhft.sdk._trainer import LocalTrainer
from fedhft.sdk.privacy._releases import (
    gaussian_record,
    gaussian_release,
    label_counts,
    log_label_prior,
    unit_sketch,
)

CALIBRATED = {"head": "shared", "label_prior": "dp", "label_prior_noise_multiplier": 8.0}
SKETCHED = {"clusters": 2, "warmup_rounds": 1, "signal": "sketch", "sketch_noise_multiplier": 10.0}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def organization_data() -> Any:
    """One clinical organization of the synthetic federation (120 train, 40 test)."""
    return synthetic_federation(num_organizations=1, alpha=1.0, samples_per_org=160, seed=4)[0]


def _ledger(tmp_path: Path, budget: float = 8.0) -> PrivacyLedger:
    return PrivacyLedger.open(
        tmp_path / "ledger.json",
        organization=ORG,
        accountant="rdp",
        delta=1e-5,
        epsilon_budget=budget,
    )


def _trainer(tmp_path: Path, audit: RecordingAudit | None = None, **privacy: Any) -> LocalTrainer:
    consortium = tiny_consortium(personalization=CALIBRATED, clustering=SKETCHED)
    return LocalTrainer(
        MaskedAdapterModel.from_consortium(consortium),
        tiny_policy(tmp_path, privacy=privacy, local_steps=2),
        consortium,
        audit=audit,
    )


class FixedDraw:
    """A noise sampler returning a known draw, recording each request."""

    def __init__(self, draw: torch.Tensor) -> None:
        self.draw = draw
        self.requests: list[tuple[tuple[int, ...], float]] = []

    def __call__(self, shape: torch.Size, std: float, dtype: torch.dtype) -> torch.Tensor:
        self.requests.append((tuple(shape), std))
        return self.draw.clone().to(dtype)


# ----------------------------------------------------------------------------- mechanism


def test_release_is_statistic_plus_the_drawn_noise_of_std_sigma_c(tmp_path: Path) -> None:
    """The release is the statistic plus N(0, (σC)²) from the sampler, spent first."""
    ledger = _ledger(tmp_path)
    record = gaussian_record(
        round_number=1, noise_multiplier=4.0, sensitivity=0.5, noise_source=NoiseSource.SECURE
    )
    sampler = FixedDraw(torch.tensor([0.25, -1.0, 3.0], dtype=torch.float64))
    release = gaussian_release(
        torch.tensor([1.0, 2.0, 3.0]), record, ledger=ledger, sampler=sampler
    )
    assert release.values == (1.25, 1.0, 6.0)
    assert sampler.requests == [((3,), 2.0)]
    assert ledger.records == (record,)
    assert release.epsilon_after == ledger.spent()


def test_release_over_budget_draws_nothing_and_spends_nothing(tmp_path: Path) -> None:
    """A release that does not fit is refused before any noise exists."""
    ledger = _ledger(tmp_path, budget=0.01)
    record = gaussian_record(
        round_number=1, noise_multiplier=1.0, sensitivity=1.0, noise_source=NoiseSource.SECURE
    )
    sampler = FixedDraw(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(BudgetExhaustedError):
        gaussian_release(torch.ones(2), record, ledger=ledger, sampler=sampler)
    assert sampler.requests == []
    assert ledger.records == ()


def test_epsilon_of_a_release_equals_the_opacus_accountant(tmp_path: Path) -> None:
    """ε of one Gaussian release (q = 1, one step) is what Opacus' RDP accountant says."""
    ledger = _ledger(tmp_path)
    record = gaussian_record(
        round_number=1, noise_multiplier=8.0, sensitivity=1.0, noise_source=NoiseSource.SECURE
    )
    release = gaussian_release(torch.zeros(4), record, ledger=ledger)
    accountant = RDPAccountant()
    accountant.history = [(8.0, 1.0, 1)]
    assert release.epsilon_after == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    extra=st.integers(0, 3),
)
@settings(max_examples=50, deadline=None)
def test_label_counts_move_by_exactly_one_per_record(labels: list[int], extra: int) -> None:
    """Adding one record changes the count vector by exactly 1 in L2 (sensitivity 1)."""
    before = label_counts(torch.tensor(labels), 4)
    after = label_counts(torch.tensor([*labels, extra]), 4)
    assert float(torch.linalg.vector_norm(after - before)) == 1.0
    assert float(before.sum()) == len(labels)


def test_log_label_prior_clamps_noisy_counts_and_is_a_distribution() -> None:
    """Noisy counts below 1 count as 1; the prior's exponent sums to 1."""
    prior = log_label_prior([30.0, -4.0, 0.5, 9.0])
    np.testing.assert_allclose(np.exp(prior), [30 / 41, 1 / 41, 1 / 41, 9 / 41])


def test_unit_sketch_is_unit_norm_and_refuses_zero() -> None:
    """A sketch is scaled to unit norm; a zero or non-finite one is refused."""
    assert np.linalg.norm(unit_sketch([3.0, 4.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-zero"):
        unit_sketch([0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        unit_sketch([np.nan, 1.0])


# ----------------------------------------------------------------------------- statistics


def test_one_record_moves_the_sketch_sum_by_exactly_one(
    tmp_path: Path, organization_data: Any
) -> None:
    """The sketch statistic has L2 sensitivity 1: one more record adds a unit vector."""
    trainer = _trainer(tmp_path)
    encoded = trainer._encode(organization_data.train)
    ids, mask = encoded.input_ids, encoded.attention_mask
    model = trainer.model
    without = model.sentence_embedding_sum(ids[:-1], mask[:-1])
    with_it = model.sentence_embedding_sum(ids, mask)
    assert float(torch.linalg.vector_norm(with_it - without)) == pytest.approx(1.0, abs=1e-9)


def test_sketch_statistic_ignores_the_adapters_and_keeps_the_tier(
    tmp_path: Path, organization_data: Any
) -> None:
    """The sketch reads the public initial model (adapters off), and computing it leaves
    exactly the tier's parameters trainable (PEFT's disable_adapter would unfreeze A)."""
    trainer = _trainer(tmp_path)
    model = trainer.model
    encoded = trainer._encode(organization_data.train)
    before = model.sentence_embedding_sum(encoded.input_ids, encoded.attention_mask)
    rng = np.random.default_rng(0)
    model.set_block_state({b: rng.normal(size=model.block(b).shape) for b in model.block_ids})
    trainable = {n for n, p in model.peft_model.named_parameters() if p.requires_grad}
    after = model.sentence_embedding_sum(encoded.input_ids, encoded.attention_mask)
    torch.testing.assert_close(after, before)
    assert {n for n, p in model.peft_model.named_parameters() if p.requires_grad} == trainable
    assert not any("lora_A" in name for name in trainable)


# ----------------------------------------------------------------------------- trainer


def test_releases_and_rounds_compose_to_the_opacus_accountant_within_budget(
    tmp_path: Path, organization_data: Any
) -> None:
    """With `auto` σ the two releases and every planned round fit the budget together, and
    ε is Opacus' RDP accountant over all of them; each release is audited."""
    audit = RecordingAudit()
    trainer = _trainer(tmp_path, audit, epsilon=8.0, noise_multiplier="auto")
    participant = RoundParticipant(trainer, organization_data.train, state_dir=tmp_path / "st")
    clusters = ClusterAdapters.initial(trainer.model.get_block_state())
    for round_number in (1, 2, 3):
        participant.prepare(round_number, clusters)
        participant.complete(round_number)
    ledger = trainer.ledger
    assert ledger is not None
    kinds = [(r.mechanism, r.noise_multiplier) for r in ledger.records]
    assert kinds[:2] == [("gaussian", 8.0), ("gaussian", 10.0)]
    assert [k for k, _ in kinds[2:]] == ["dp-sgd"] * 3
    accountant = RDPAccountant()
    accountant.history = [r.history_entry() for r in ledger.records]
    assert ledger.spent() == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert ledger.spent() <= 8.0
    spends = [p for kind, p in audit.events if kind == "privacy_spend"]
    assert [p["mechanism"] for p in spends] == [
        "gaussian",
        "gaussian",
        "dp-sgd",
        "dp-sgd",
        "dp-sgd",
    ]


def test_a_kept_release_is_never_released_again(tmp_path: Path, organization_data: Any) -> None:
    """A participant restarted on the same state folder reuses its releases: the ledger
    holds each release once."""
    trainer = _trainer(tmp_path)
    first = RoundParticipant(trainer, organization_data.train, state_dir=tmp_path / "st")
    prior, sketch = first.label_prior(), first.sketch()
    again = RoundParticipant(trainer, organization_data.train, state_dir=tmp_path / "st")
    assert prior is not None and sketch is not None
    np.testing.assert_array_equal(again.label_prior(), prior)
    np.testing.assert_array_equal(again.sketch(), sketch)
    assert trainer.ledger is not None
    assert [r.mechanism for r in trainer.ledger.records] == ["gaussian", "gaussian"]


def test_label_prior_release_is_the_counts_plus_noise_of_its_sigma(
    tmp_path: Path, organization_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The label prior leaves as counts + N(0, σ²) with the consortium's σ, nothing else."""
    from fedhft.sdk.privacy import _releases

    sampler = FixedDraw(torch.tensor([1.5, -2.0, 0.25, 3.0], dtype=torch.float64))
    monkeypatch.setattr(_releases, "noise_sampler", lambda _source: sampler)
    trainer = _trainer(tmp_path)
    released = trainer.release_label_prior(organization_data.train)
    counts = np.bincount(organization_data.train.labels, minlength=4)
    np.testing.assert_array_equal(released, counts + np.array([1.5, -2.0, 0.25, 3.0]))
    assert sampler.requests == [((4,), 8.0)]


# Plain PEFT calls a transformers method deprecated in v5 while loading.
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_logit_adjustment_adds_the_log_prior_and_survives_peft_export(
    tmp_path: Path, organization_data: Any
) -> None:
    """Logits carry + log prior; the exported PEFT adapter folds it into the head bias, so
    the plainly loaded model gives the same logits."""
    trainer = _trainer(tmp_path)
    model = trainer.model
    ids = torch.randint(1000, 20000, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    model.peft_model.eval()
    with torch.no_grad():
        plain = model.logits(ids, mask)
    trainer.use_label_prior([60.0, 30.0, 20.0, 10.0])
    with torch.no_grad():
        adjusted = model.logits(ids, mask)
    prior = torch.log(torch.tensor([0.5, 0.25, 1 / 6, 1 / 12]))
    torch.testing.assert_close(adjusted, plain + prior)
    model.export_peft(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(
        build_base_model(trainer.consortium.model), tmp_path / "adapter"
    )
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, adjusted)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(ids, mask), adjusted)


def test_label_prior_needs_one_finite_value_per_label(tmp_path: Path) -> None:
    """A prior of the wrong length or with NaN is refused."""
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match="4 finite values"):
        trainer.model.set_label_prior([0.0, 0.0])
    with pytest.raises(ValueError, match="4 finite values"):
        trainer.model.set_label_prior([0.0, np.nan, 0.0, 0.0])


# ----------------------------------------------------------------------------- membership


def test_sketch_membership_follows_the_closest_centroid() -> None:
    """π puts its weight on the centroid the sketch is closest to (hard: one-hot)."""
    state = {"head.bias": np.zeros((2, 1))}
    clusters = ClusterAdapters(
        states=(state, state),
        centroids=(np.array([1.0, 0.1, 0.0]), np.array([0.0, 0.1, 1.0])),
    )
    near_second = np.array([0.1, 0.1, 0.9])
    soft = sketch_membership(near_second, clusters, temperature=0.1, hard=False)
    assert soft.sum() == pytest.approx(1.0) and soft[1] > 0.99
    hard = sketch_membership(near_second, clusters, temperature=0.1, hard=True)
    assert hard.tolist() == [0.0, 1.0]
    with pytest.raises(MixtureError, match="length"):
        sketch_membership(np.ones(4), clusters, temperature=0.1, hard=True)
    with pytest.raises(MixtureError, match="one centroid per cluster"):
        sketch_membership(
            near_second, ClusterAdapters.initial(state, 2), temperature=0.1, hard=True
        )
