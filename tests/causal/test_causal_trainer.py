"""Accounted rounds of a causal LM: ε in the ledger is the accountant's for the steps run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from tiny_causal import TinyCausal, federation

from fedhft.model import AdapterError, CausalAdapterModel
from fedhft.policies import AdapterSpec, ConsortiumConfig, OrganizationPolicy
from fedhft.sdk import BudgetExhaustedError
from fedhft.sdk._causal import CausalPrivateStep, CausalTrainer
from fedhft.sdk.privacy import GradSampleMode

ORG = "org-a"
ADAPTER = {"target_modules": ["q_proj", "v_proj"], "rank": 4, "alpha": 8, "a_seed": 11}


class _Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def append(self, event_type: str, payload: Any) -> object:
        self.events.append((event_type, dict(payload)))
        return None


def _consortium() -> ConsortiumConfig:
    return ConsortiumConfig.model_validate(
        {
            "consortium": "test-consortium",
            "model": {"source": "tiny", "num_labels": 4},
            "adapter": ADAPTER,
            "tiers": {"standard": {"layers": [-1]}},
            "rounds": 3,
            "training": {"learning_rate": 0.01},
            "enrollment": [{"organization": ORG}],
        }
    )


def _policy(tmp_path: Path, epsilon: float) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": ORG,
            "consortium": "test-consortium",
            "privacy": {
                "epsilon": epsilon,
                "delta": 1e-3,
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.1,
                "planned_rounds": 3,
                "ledger_path": str(tmp_path / "ledger.json"),
            },
            "training": {
                "tier": "standard",
                "batch_size": 4,
                "local_steps": 3,
                "max_seq_length": 96,
            },
        }
    )


def _trainer(
    tiny: TinyCausal,
    tmp_path: Path,
    *,
    epsilon: float,
    audit: _Audit,
    grad_sample_mode: GradSampleMode = "hooks",
) -> CausalTrainer:
    model = CausalAdapterModel(tiny.base(), AdapterSpec.model_validate(ADAPTER))
    return CausalTrainer(
        model,
        _policy(tmp_path, epsilon),
        _consortium(),
        tokenizer=tiny.tokenizer,
        audit=audit,
        grad_sample_mode=grad_sample_mode,
    )


def test_ledger_epsilon_equals_the_accountant_for_the_steps_taken(
    tiny_causal: TinyCausal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rounds: the steps actually run equal the committed record's, and ε after each
    round (returned, in the ledger, in the audit event) equals a fresh Opacus RDP
    accountant's over those steps; only the tier's B moved."""
    taken: list[int] = []
    original = CausalPrivateStep.step

    def counting(self: CausalPrivateStep, batch: Any) -> float:
        taken.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(CausalPrivateStep, "step", counting)
    audit = _Audit()
    trainer = _trainer(tiny_causal, tmp_path, epsilon=50.0, audit=audit)
    dataset = federation()[0].train
    history = []
    for round_number in (1, 2):
        before = len(taken)
        delta, stats = trainer.train_round(dataset, round=round_number)
        assert trainer.ledger is not None
        record = trainer.ledger.records[-1]
        assert record.round == round_number and record.steps == len(taken) - before == 3
        assert record.sample_rate == 4 / len(dataset)
        history.append((record.noise_multiplier, record.sample_rate, len(taken) - before))
        accountant = RDPAccountant()
        accountant.history = list(history)
        independent = accountant.get_epsilon(delta=1e-3)
        assert stats.epsilon_spent == pytest.approx(independent, rel=1e-9)
        assert trainer.ledger.spent() == pytest.approx(independent, rel=1e-9)
        kind, payload = audit.events[-1]
        assert kind == "privacy_spend" and payload["epsilon_after"] == stats.epsilon_spent
        assert set(delta) == {"layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"}
        assert all(np.abs(d).max() > 0 for d in delta.values())
    untouched = trainer.model.get_block_state(["layers.0.self_attn.q_proj"])
    np.testing.assert_array_equal(untouched["layers.0.self_attn.q_proj"], 0.0)


def test_a_round_over_budget_is_refused_before_any_step(
    tiny_causal: TinyCausal, tmp_path: Path
) -> None:
    """A budget below one round: BudgetExhaustedError, a refusal event, B and ledger unchanged."""
    audit = _Audit()
    trainer = _trainer(tiny_causal, tmp_path, epsilon=0.05, audit=audit)
    before = trainer.model.get_block_state()
    with pytest.raises(BudgetExhaustedError):
        trainer.train_round(federation()[0].train, round=1)
    assert audit.events and audit.events[-1][0] == "refusal"
    assert trainer.ledger is not None and trainer.ledger.records == ()
    after = trainer.model.get_block_state()
    assert all(np.array_equal(after[b], before[b]) for b in before)


def test_ghost_clipping_rounds_are_accounted_as_hooks_rounds(
    tiny_causal: TinyCausal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round with ghost clipping runs its steps in ghost mode, trains the tier's B and
    commits the same mechanism record and the same ε as a hooks round (the accountant's)."""
    modes: list[str] = []
    original = CausalPrivateStep.step

    def recording(self: CausalPrivateStep, batch: Any) -> float:
        modes.append(self.mode)
        return original(self, batch)

    monkeypatch.setattr(CausalPrivateStep, "step", recording)
    dataset = federation()[0].train
    committed = {}
    for mode in ("hooks", "ghost"):
        folder = tmp_path / mode
        folder.mkdir()
        trainer = _trainer(tiny_causal, folder, epsilon=50.0, audit=_Audit(), grad_sample_mode=mode)
        delta, stats = trainer.train_round(dataset, round=1)
        assert modes[-3:] == [mode] * 3
        assert all(np.abs(d).max() > 0 for d in delta.values())
        assert trainer.ledger is not None
        committed[mode] = (trainer.ledger.records, stats.epsilon_spent)
    assert committed["ghost"] == committed["hooks"]
    (record,) = committed["ghost"][0]
    accountant = RDPAccountant()
    accountant.history = [(record.noise_multiplier, record.sample_rate, record.steps)]
    assert committed["ghost"][1] == pytest.approx(accountant.get_epsilon(delta=1e-3), rel=1e-9)


def test_ghost_clipping_with_a_row_slice_is_refused_before_any_round(
    tiny_causal: TinyCausal, tmp_path: Path
) -> None:
    """A trainer asked for ghost clipping on a row-sliced tier refuses when it is built,
    naming the fix, so no round can be admitted and charged for steps that cannot run."""
    consortium = _consortium().model_copy(
        update={
            "tiers": {
                "standard": _consortium().tiers["standard"].model_copy(update={"row_fraction": 0.5})
            }
        }
    )
    model = CausalAdapterModel(tiny_causal.base(), AdapterSpec.model_validate(ADAPTER))
    with pytest.raises(AdapterError, match=r"row slice.*grad_sample_mode 'hooks'"):
        CausalTrainer(
            model,
            _policy(tmp_path, 50.0),
            consortium,
            tokenizer=tiny_causal.tokenizer,
            grad_sample_mode="ghost",
        )
