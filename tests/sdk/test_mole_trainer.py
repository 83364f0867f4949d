"""FedAMoLE client rounds: affinity release, accounted DP-SGD rounds, crash-safe state."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from trainer_helpers import RecordingAudit

from fedhft.errors import SecurityWarning
from fedhft.model import (
    ModelError,
    MoLEModel,
    MoLERelease,
    decode_release,
    encode_release,
    upload_blocks,
)
from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.sdk import BudgetExhaustedError, SdkError, build_base_model, synthetic_federation
from fedhft.sdk.mole._affinity import AffinityRelease, record_affinities
from fedhft.sdk.mole._participant import MoLEParticipant
from fedhft.sdk.mole._trainer import MoLETrainer
from fedhft.sdk.privacy import _releases as releases_module

ORGS = ["org-a", "org-b", "org-c", "org-d"]
DELTA = 1e-5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _consortium(**overrides: Any) -> ConsortiumConfig:
    data: dict[str, Any] = {
        "consortium": "c",
        "model": {"source": "tiny", "num_labels": 4},
        "adapter": {"target_modules": ["value"], "rank": 2, "alpha": 4, "a_seed": 3},
        "tiers": {"full": {"min_experts": 1, "max_experts": 3}},
        "method": "fedamole",
        "rounds": 3,
        "fedamole": {"num_experts": 4, "holders_per_expert": 3, "affinity_noise_multiplier": 2.0},
        "training": {"learning_rate": 0.05},
        "enrollment": [{"organization": o} for o in ORGS],
    }
    data.update(overrides)
    return ConsortiumConfig.model_validate(data)


def _policy(tmp_path: Path, **privacy: Any) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": "org-a",
            "consortium": "c",
            "privacy": {
                "epsilon": 50.0,
                "delta": DELTA,
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.1,
                "planned_rounds": 3,
                "ledger_path": str(tmp_path / "ledger.json"),
                **privacy,
            },
            "training": {"tier": "full", "batch_size": 8, "local_steps": 2, "max_seq_length": 16},
        }
    )


def _trainer(
    tmp_path: Path, consortium: ConsortiumConfig | None = None, **privacy: Any
) -> tuple[MoLETrainer, RecordingAudit]:
    config = consortium or _consortium()
    audit = RecordingAudit()
    trainer = MoLETrainer(
        _policy(tmp_path, **privacy),
        config,
        base_factory=lambda: build_base_model(config.model),
        audit=audit,
    )
    return trainer, audit


def _data() -> Any:
    return synthetic_federation(num_organizations=1, alpha=1.0, samples_per_org=40, seed=2)[0]


def _release(trainer: MoLETrainer, round_number: int, experts: tuple[int, ...]) -> MoLERelease:
    """The server's release for a fresh federation: initial values of the held blocks."""
    model = trainer.set_experts(experts)
    return MoLERelease(round_number, experts, model.get_state())


def test_epsilon_of_release_and_rounds_equals_opacus_accountant(tmp_path: Path) -> None:
    """Affinity release then two DP-SGD rounds: the ledger's ε equals opacus' RDP accountant."""
    trainer, audit = _trainer(tmp_path)
    data = _data()
    release = trainer.release_affinity(data.train)
    assert isinstance(release, AffinityRelease)
    for round_number in (1, 2):
        trainer.train_round(
            data.train,
            _release(trainer, round_number, (0, 2)).states,
            round=round_number,
        )
    ledger = trainer.ledger
    assert ledger is not None
    assert [(r.round, r.mechanism) for r in ledger.records] == [
        (1, "gaussian"),
        (1, "dp-sgd"),
        (2, "dp-sgd"),
    ]
    q = 8 / len(data.train)
    accountant = RDPAccountant()
    accountant.history = [(2.0, 1.0, 1), (1.1, q, 2), (1.1, q, 2)]
    assert ledger.spent() == pytest.approx(accountant.get_epsilon(delta=DELTA), rel=1e-9)
    spends = [p for kind, p in audit.events if kind == "privacy_spend"]
    assert [p["mechanism"] for p in spends] == ["gaussian", "dp-sgd", "dp-sgd"]
    assert spends[-1]["epsilon_after"] == pytest.approx(ledger.spent())
    assert spends[0]["epsilon_after"] == pytest.approx(release.epsilon_after)


def test_auto_sigma_reserves_the_affinity_release(tmp_path: Path) -> None:
    """With σ auto, the release plus every planned round fits the budget, nearly exactly."""
    trainer, _ = _trainer(tmp_path, noise_multiplier="auto", epsilon=4.0)
    data = _data()
    trainer.release_affinity(data.train)
    for round_number in (1, 2, 3):
        trainer.train_round(
            data.train, _release(trainer, round_number, (1,)).states, round=round_number
        )
    ledger = trainer.ledger
    assert ledger is not None
    assert ledger.spent() <= 4.0
    assert ledger.spent() == pytest.approx(4.0, rel=0.01)
    sigma = ledger.records[1].noise_multiplier
    accountant = RDPAccountant()
    accountant.history = [(2.0, 1.0, 1)] + [(sigma, 8 / len(data.train), 2)] * 3
    assert ledger.spent() == pytest.approx(accountant.get_epsilon(delta=DELTA), rel=1e-9)


def test_round_over_budget_is_refused_before_any_parameter_changes(tmp_path: Path) -> None:
    """An over-budget round raises, audits a refusal, spends nothing and leaves the model."""
    trainer, audit = _trainer(tmp_path, epsilon=1.0, noise_multiplier=0.3)
    data = _data()
    model = trainer.set_experts((0, 1))
    before = model.get_state()
    start = {b: v + 0.5 for b, v in before.items()}
    with pytest.raises(BudgetExhaustedError):
        trainer.train_round(data.train, start, round=1)
    after = model.get_state()
    for block_id, values in before.items():
        np.testing.assert_array_equal(after[block_id], values)
    assert trainer.ledger is not None and trainer.ledger.records == ()
    assert [kind for kind, _ in audit.events] == ["refusal"]
    assert audit.events[0][1]["mechanism"] == "dp-sgd"


def test_affinity_release_over_budget_is_refused_and_audited(tmp_path: Path) -> None:
    """A release that would exceed the budget is refused before any noise is drawn."""
    config = _consortium(
        fedamole={"num_experts": 4, "holders_per_expert": 3, "affinity_noise_multiplier": 0.05}
    )
    trainer, audit = _trainer(tmp_path, config, epsilon=1.0)
    with pytest.raises(BudgetExhaustedError):
        trainer.release_affinity(_data().train)
    assert trainer.ledger is not None and trainer.ledger.records == ()
    assert [(kind, p["mechanism"]) for kind, p in audit.events] == [("refusal", "gaussian")]


def test_released_affinity_carries_only_the_noisy_statistic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release holds the plain sum plus the drawn noise, nothing else; the file too."""
    drawn = torch.tensor([0.7, -1.3, 2.1, -0.4], dtype=torch.float64)
    monkeypatch.setattr(
        releases_module, "noise_sampler", lambda _source: lambda shape, std, dtype: drawn.clone()
    )
    trainer, _ = _trainer(tmp_path)
    data = _data()
    participant = MoLEParticipant(trainer, data.train, state_dir=tmp_path / "state")
    released = participant.affinity()
    encoded = trainer._encode(data.train)
    probe = MoLEModel(
        build_base_model(trainer.consortium.model), trainer.consortium.adapter, expert_ids=[0]
    )
    plain = record_affinities(probe, encoded.input_ids, encoded.attention_mask, num_experts=4)
    plain_sum = plain.sum(dim=0).numpy()
    noisy = np.maximum(plain_sum + drawn.numpy(), 0.0)
    np.testing.assert_allclose(released, noisy / noisy.sum(), rtol=1e-12)
    assert not np.allclose(released, plain_sum / plain_sum.sum(), atol=1e-3)
    assert {f.name for f in dataclasses.fields(AffinityRelease) if f.init} == {
        "round",
        "noisy_sum",
        "record",
        "epsilon_after",
    }
    # A restart re-sends the kept release: no second spend.
    again = MoLEParticipant(trainer, data.train, state_dir=tmp_path / "state")
    np.testing.assert_array_equal(again.affinity(), released)
    assert trainer.ledger is not None and len(trainer.ledger.records) == 1


def test_participant_resends_a_staged_round_after_restart(tmp_path: Path) -> None:
    """A restarted participant re-sends the staged upload; the ledger shows one round."""
    trainer, _ = _trainer(tmp_path)
    data = _data()
    state = tmp_path / "state"
    participant = MoLEParticipant(trainer, data.train, state_dir=state)
    release = _release(trainer, 1, (0, 3))
    upload = participant.prepare(1, release)
    assert set(upload) == set(
        upload_blocks(trainer.set_experts((0, 3)).block_ids, trainer.consortium)
    )
    assert "head.weight" not in upload  # The head is personal by default.
    restarted = MoLEParticipant(trainer, data.train, state_dir=state)
    again = restarted.prepare(1, release)
    for block_id, values in upload.items():
        np.testing.assert_array_equal(again[block_id], values)
    assert trainer.ledger is not None and len(trainer.ledger.records) == 1
    restarted.complete(1)
    resumed = MoLEParticipant(trainer, data.train, state_dir=state)
    assert resumed.completed_round == 1 and resumed.experts == (0, 3)
    np.testing.assert_array_equal(
        resumed.personal["head.weight"], restarted.personal["head.weight"]
    )
    with pytest.raises(SdkError, match="already completed"):
        resumed.prepare(1, release)


def test_personal_head_and_unaggregated_blocks_start_from_own_values(tmp_path: Path) -> None:
    """Blocks the server did not aggregate start from the organization's own value."""
    trainer, _ = _trainer(tmp_path)
    data = _data()
    participant = MoLEParticipant(trainer, data.train, state_dir=tmp_path / "state")
    first = _release(trainer, 1, (0, 3))
    participant.prepare(1, first)
    participant.complete(1)
    aggregated = frozenset(b for b in first.states if b != "head.weight" and "expert3" not in b)
    second = MoLERelease(2, (0, 3), {b: v * 0 for b, v in first.states.items()}, aggregated)
    start = participant.start_state(second)
    for block_id, values in start.items():
        expected = (
            second.states[block_id] if block_id in aggregated else participant.personal[block_id]
        )
        np.testing.assert_array_equal(values, expected)
    assert not np.allclose(start["head.weight"], 0.0)


def test_release_round_trips_and_rejects_garbage() -> None:
    """A MoLE release survives its encoding exactly; malformed bytes are refused."""
    release = MoLERelease(
        3, (1, 2), {"a.shared": np.arange(6.0).reshape(3, 2)}, frozenset({"a.shared"})
    )
    again = decode_release(encode_release(release))
    assert (again.round, again.experts, again.aggregated) == (3, (1, 2), frozenset({"a.shared"}))
    np.testing.assert_array_equal(again.states["a.shared"], release.states["a.shared"])
    with pytest.raises(ModelError):
        decode_release(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")


def test_assignment_outside_the_tier_is_refused(tmp_path: Path) -> None:
    """Experts outside the pool, repeated, or too many for the tier are refused."""
    trainer, _ = _trainer(tmp_path)
    for experts in ((0, 1, 2, 3), (4,), (1, 1), ()):
        with pytest.raises(SdkError, match="assignment"):
            trainer.set_experts(experts)


def test_non_private_baseline_warns_and_spends_nothing(tmp_path: Path) -> None:
    """The baseline warns, has no ledger, and its round still trains the model."""
    config = _consortium()
    with pytest.warns(SecurityWarning):
        trainer = MoLETrainer(
            _policy(tmp_path),
            config,
            base_factory=lambda: build_base_model(config.model),
            non_private_baseline=True,
            seed=0,
        )
    data = _data()
    assert trainer.ledger is None
    affinity = trainer.release_affinity(data.train).affinity
    assert affinity.shape == (4,) and affinity.sum() == pytest.approx(1.0)
    release = _release(trainer, 1, (2,))
    end, stats = trainer.train_round(data.train, release.states, round=1)
    assert stats.epsilon_spent is None and not stats.private
    assert any(not np.allclose(end[b], release.states[b]) for b in end)
    assert not (tmp_path / "ledger.json").exists()
    assert json.dumps(stats.mean_loss) != "NaN"
