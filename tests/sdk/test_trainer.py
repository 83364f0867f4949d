"""Local DP-SGD training, ledger enforcement and audit events (fedhft.sdk._trainer, _dp)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from trainer_helpers import ORG, RecordingAudit, tiny_consortium, tiny_policy

from fedhft.accounting import compute_epsilon
from fedhft.errors import SecurityWarning
from fedhft.model import HEAD_BIAS, HEAD_WEIGHT, tier_mask
from fedhft.policies import (
    ConsortiumConfig,
    IncompatiblePolicyError,
    NoiseSource,
)
from fedhft.sdk import (
    AdapterError,
    BudgetExhaustedError,
    ClusterAdapters,
    DataError,
    LocalTrainer,
    MaskedAdapterModel,
    PrivacyLedger,
    SdkError,
    TextDataset,
    synthetic_federation,
)
from fedhft.sdk._mixture import mixture_start
from fedhft.sdk.privacy import PrivateStep, noise_sampler, poisson_batch
from fedhft.sdk.privacy._accounted_trainer import macro_f1


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def organization_data() -> Any:
    """One clinical organization of the synthetic federation (120 train, 40 test)."""
    return synthetic_federation(num_organizations=1, alpha=10.0, samples_per_org=160, seed=3)[0]


def _snapshot(model: MaskedAdapterModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.peft_model.named_parameters()}


def _trainer(
    tmp_path: Path,
    consortium: ConsortiumConfig | None = None,
    *,
    audit: RecordingAudit | None = None,
    privacy: Mapping[str, Any] | None = None,
    **training: Any,
) -> LocalTrainer:
    consortium = consortium or tiny_consortium()
    return LocalTrainer(
        MaskedAdapterModel.from_consortium(consortium),
        tiny_policy(tmp_path, privacy=privacy, **training),
        consortium,
        audit=audit,
    )


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("tier", ["edge", "full"])
def test_only_the_tiers_b_blocks_and_head_change(
    tmp_path: Path, organization_data: Any, tier: str
) -> None:
    """A DP round moves exactly the tier's B and the head; A and the base stay bit-identical."""
    trainer = _trainer(tmp_path, tier=tier)
    before = _snapshot(trainer.model)
    update, _, stats = trainer.train_round(organization_data.train, None, round=0)
    after = _snapshot(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    expected = {
        n
        for n, p in trainer.model.peft_model.named_parameters()
        if any(p is trainer.model.parameter(b) for b in trainer.trained_blocks)
    }
    assert changed == expected
    assert all("lora_A" not in n for n in changed)
    assert update.block_ids == tier_mask(trainer.consortium, tier)
    assert stats.trainable_parameters == trainer.model.num_trainable()


def test_rows_outside_the_tiers_slice_stay_bit_identical(
    tmp_path: Path, organization_data: Any
) -> None:
    """With row_fraction 0.5 the frozen half of every B is untouched, noise included."""
    trainer = _trainer(tmp_path, tier="sliced")
    trainer.train_round(organization_data.train, None, round=0)
    for block_id in trainer.trained_blocks:
        if block_id.startswith("head."):
            continue
        values = trainer.model.get_block_state([block_id])[block_id]
        rows = trainer.model.row_masks[block_id]
        assert not values[~rows].any()
        assert values[rows].any()


# ----------------------------------------------------------------------------- clipping


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(1000, 20000, (6, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[4, 5:] = 0
    return ids, mask, torch.tensor([0, 1, 2, 3, 1, 0])


@pytest.mark.parametrize(
    ("tier", "mode"),
    [("full", "hooks"), ("full", "functorch"), ("full", "ghost"), ("sliced", "hooks")],
)
def test_clipped_gradient_equals_hand_computed_per_example_clipping(tier: str, mode: Any) -> None:
    """Noise-free DP-SGD gradient = Σ_i g_i·min(1, C/‖g_i‖) over trainable coordinates / B."""
    consortium = tiny_consortium()
    model = MaskedAdapterModel.from_consortium(consortium)
    rng = np.random.default_rng(0)
    model.set_block_state({b: 0.3 * rng.normal(size=model.block(b).shape) for b in model.block_ids})
    model.apply_tier(consortium.tiers[tier])
    params = model.trainable_parameters()
    row_masks = [torch.from_numpy(model.row_masks[b]) for b in model.trainable]
    ids, mask, labels = _batch()

    model.peft_model.train()
    per_example = []
    for i in range(len(labels)):
        loss = nn.functional.cross_entropy(
            model.logits(ids[i : i + 1], mask[i : i + 1]), labels[i : i + 1]
        )
        grads = torch.autograd.grad(loss, params)
        per_example.append(
            [g * r.view(-1, *([1] * (g.dim() - 1))) for g, r in zip(grads, row_masks, strict=True)]
        )
    norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in gs)) for gs in per_example])
    clip = float(norms.median())
    assert (norms > clip * 1.01).any() and (norms < clip * 0.99).any()  # Clipping binds for some.
    expected = [
        sum(
            gs[k] * min(1.0, clip / (float(n) + 1e-6))
            for gs, n in zip(per_example, norms, strict=True)
        )
        for k in range(len(params))
    ]
    unclipped = [sum(gs[k] for gs in per_example) for k in range(len(params))]

    before = [p.detach().clone() for p in params]
    with PrivateStep(
        model,
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=len(labels),
        noise_sampler=noise_sampler(NoiseSource.SECURE),
        grad_sample_mode=mode,
    ) as private:
        private.step(ids, mask, labels)
    for k, (p, b) in enumerate(zip(params, before, strict=True)):
        produced = (b - p.detach()) * len(labels)
        torch.testing.assert_close(produced, expected[k], rtol=2e-4, atol=1e-6)
    assert not all(
        torch.allclose(e, u, rtol=1e-3) for e, u in zip(expected, unclipped, strict=True)
    )


def test_empty_poisson_batch_still_adds_noise() -> None:
    """An empty batch is a step too: the parameters move by noise alone."""
    consortium = tiny_consortium()
    model = MaskedAdapterModel.from_consortium(consortium)
    params = model.trainable_parameters()
    before = [p.detach().clone() for p in params]
    empty = torch.zeros((0, 1), dtype=torch.long)
    with PrivateStep(
        model,
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        noise_sampler=noise_sampler(NoiseSource.SECURE),
    ) as private:
        private.step(empty, empty, torch.zeros(0, dtype=torch.long))
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_ghost_clipping_refuses_a_row_slice() -> None:
    """Ghost clipping cannot mask rows, so a row-sliced tier must use hooks."""
    consortium = tiny_consortium()
    model = MaskedAdapterModel.from_consortium(consortium)
    model.apply_tier(consortium.tiers["sliced"])
    with pytest.raises(AdapterError, match="row slice"):
        PrivateStep(
            model,
            torch.optim.SGD(model.trainable_parameters(), lr=1.0),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
            noise_sampler=noise_sampler(NoiseSource.SECURE),
            grad_sample_mode="ghost",
        )


def test_ghost_clipping_with_a_row_slice_is_refused_before_any_round(tmp_path: Path) -> None:
    """A trainer asked for ghost clipping on a row-sliced tier refuses when it is built, so
    no round is admitted (and charged in full as an interrupted round) for steps that
    cannot run."""
    consortium = tiny_consortium()
    policy = tiny_policy(tmp_path, tier="sliced")
    with pytest.raises(AdapterError, match=r"row slice.*grad_sample_mode 'hooks'"):
        LocalTrainer(
            MaskedAdapterModel.from_consortium(consortium),
            policy,
            consortium,
            grad_sample_mode="ghost",
        )


def test_poisson_batches_have_the_expected_size() -> None:
    """Each record is in a batch with probability q: mean size q·n, sizes vary."""
    sizes = [len(poisson_batch(1000, 0.05)) for _ in range(200)]
    assert abs(np.mean(sizes) - 50) < 3
    assert len(set(sizes)) > 5
    batch = poisson_batch(1000, 0.05)
    assert len(set(batch.tolist())) == len(batch) and batch.max() < 1000
    assert len(poisson_batch(10, 1.0)) == 10


@pytest.mark.parametrize(("n", "q"), [(0, 0.5), (10, 0.0), (10, 1.5)])
def test_poisson_batch_rejects_bad_arguments(n: int, q: float) -> None:
    """No records, or a rate outside (0, 1], is an error."""
    with pytest.raises(ValueError, match="must be"):
        poisson_batch(n, q)


# ----------------------------------------------------------------------------- accounting


def test_epsilon_equals_the_logged_record_and_an_independent_accountant(
    tmp_path: Path, organization_data: Any
) -> None:
    """ε after each round = compute_epsilon(ledger) = a fresh Opacus RDP accountant."""
    audit = RecordingAudit()
    trainer = _trainer(tmp_path, audit=audit)
    history = []
    for round_number in (1, 2):
        _, _, stats = trainer.train_round(organization_data.train, None, round=round_number)
        record = trainer.ledger.records[-1] if trainer.ledger else None
        assert record is not None and record.round == round_number
        assert record.sample_rate == 16 / len(organization_data.train)
        assert (record.steps, record.noise_multiplier, record.max_grad_norm) == (4, 1.0, 1.0)
        history.append((record.noise_multiplier, record.sample_rate, record.steps))
        accountant = RDPAccountant()
        accountant.history = list(history)
        independent = accountant.get_epsilon(delta=1e-5)
        assert stats.epsilon_spent == pytest.approx(independent, rel=1e-9)
        assert stats.epsilon_spent == pytest.approx(
            compute_epsilon(trainer.ledger.records, accountant="rdp", delta=1e-5), rel=1e-12
        )
        kind, payload = audit.events[-1]
        assert kind == "privacy_spend"
        assert payload == {
            "round": round_number,
            "mechanism": "dp-sgd",
            "accountant": "rdp",
            "noise_multiplier": 1.0,
            "sample_rate": record.sample_rate,
            "steps": 4,
            "max_grad_norm": 1.0,
            "epsilon_after": stats.epsilon_spent,
            "delta": 1e-5,
            "noise_source": "secure",
        }
    reopened = PrivacyLedger.open(
        tmp_path / "ledger.json",
        organization=ORG,
        accountant="rdp",
        delta=1e-5,
        epsilon_budget=50.0,
    )
    assert reopened.spent() == pytest.approx(stats.epsilon_spent, rel=1e-12)


def test_a_budget_that_cannot_fit_one_more_round_refuses_before_any_step(
    tmp_path: Path, organization_data: Any
) -> None:
    """Round 2 over budget: BudgetExhaustedError, a refusal event, no parameter or spend change."""
    probe = _trainer(tmp_path / "probe")
    one_round = compute_epsilon(
        [probe.mechanism_record(1, len(organization_data.train))], accountant="rdp", delta=1e-5
    )
    audit = RecordingAudit()
    trainer = _trainer(tmp_path, audit=audit, privacy={"epsilon": one_round * 1.05})
    trainer.train_round(organization_data.train, None, round=1)
    assert trainer.ledger is not None
    spent = trainer.ledger.spent()

    before = _snapshot(trainer.model)
    # Cluster adapters that differ from the model: a refusal must not even apply them.
    clusters = ClusterAdapters.initial(
        {b: v + 1.0 for b, v in trainer.model.get_block_state().items()}
    )
    with pytest.raises(BudgetExhaustedError) as refusal:
        trainer.train_round(organization_data.train, clusters, round=2)
    after = _snapshot(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert len(trainer.ledger.records) == 1
    assert trainer.ledger.spent() == spent
    assert refusal.value.spent == pytest.approx(spent)
    assert refusal.value.budget == pytest.approx(one_round * 1.05)
    assert refusal.value.requested > refusal.value.budget
    kind, payload = audit.events[-1]
    assert kind == "refusal"
    assert payload["round"] == 2
    assert payload["requested"] == refusal.value.requested
    assert [k for k, _ in audit.events] == ["privacy_spend", "refusal"]


def test_an_interrupted_round_is_still_charged(
    tmp_path: Path, organization_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after noisy steps ran commits the round's spend before propagating."""
    audit = RecordingAudit()
    trainer = _trainer(tmp_path, audit=audit)
    calls = []
    original = PrivateStep.step

    def failing_step(self: PrivateStep, *args: torch.Tensor) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(PrivateStep, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_round(organization_data.train, None, round=1)
    assert trainer.ledger is not None and len(trainer.ledger.records) == 1
    assert [kind for kind, _ in audit.events] == ["privacy_spend"]


def test_auto_noise_multiplier_spreads_the_budget_over_planned_rounds(
    tmp_path: Path, organization_data: Any
) -> None:
    """σ=auto: planned_rounds rounds spend at most the budget, and the first round fits."""
    trainer = _trainer(tmp_path, privacy={"noise_multiplier": "auto", "epsilon": 3.0})
    record = trainer.mechanism_record(0, len(organization_data.train))
    planned = [record.model_copy(update={"round": r}) for r in range(3)]
    total = compute_epsilon(planned, accountant="rdp", delta=1e-5)
    assert total <= 3.0
    assert total > 2.9


def test_delta_not_below_one_over_n_is_refused(tmp_path: Path) -> None:
    """δ must be below 1/n for the data set it protects."""
    trainer = _trainer(tmp_path, privacy={"delta": 0.05})
    tiny = TextDataset(texts=("a b",) * 30, labels=(0,) * 30, label_names=("x", "y"))
    with pytest.raises(DataError, match="delta"):
        trainer.train_round(tiny, None, round=0)
    assert trainer.ledger is not None and trainer.ledger.records == ()


# ----------------------------------------------------------------------------- rounds


def test_hard_membership_contributes_to_one_cluster(tmp_path: Path, organization_data: Any) -> None:
    """With K=2, last updates and hard membership, exactly one cluster gets a nonzero update."""
    consortium = tiny_consortium(
        clustering={"clusters": 2, "warmup_rounds": 1, "membership": "hard"}
    )
    trainer = _trainer(tmp_path, consortium)
    state = trainer.model.get_block_state()
    rng = np.random.default_rng(1)
    clusters = ClusterAdapters(
        states=(state, state),
        last_updates=tuple({b: rng.normal(size=v.shape) for b, v in state.items()} for _ in "ab"),
    )
    update, personal, _ = trainer.train_round(organization_data.train, clusters, round=1)
    assert update.clusters == 2
    nonzero = [any(v.any() for v in update.vectors(j).values()) for j in (0, 1)]
    assert sorted(nonzero) == [False, True]
    assert personal.membership.tolist() in ([1.0, 0.0], [0.0, 1.0])
    assert nonzero[int(np.argmax(personal.membership))]


@pytest.mark.parametrize("head", ["personal", "shared"])
def test_a_personal_head_trains_but_never_enters_the_update(
    tmp_path: Path, organization_data: Any, head: str
) -> None:
    """A personal head trains, is absent from the update and stays whole in the personal
    state (the next start uses it); a shared head is uploaded whole (every row counted)."""
    consortium = tiny_consortium(personalization={"head": head})
    trainer = _trainer(tmp_path, consortium, local_steps=2)
    before = trainer.model.get_block_state()
    update, personal, _ = trainer.train_round(organization_data.train, None, round=1)
    after = trainer.model.get_block_state()
    assert not np.array_equal(after[HEAD_WEIGHT], before[HEAD_WEIGHT])
    uploaded_head = HEAD_WEIGHT in update.block_ids
    assert uploaded_head == (head == "shared")
    assert set(update.block_ids) == set(trainer.uploaded_blocks)
    if head == "personal":
        assert personal.personal_rows[HEAD_WEIGHT].all()
        clusters = ClusterAdapters.initial(before)
        start = mixture_start(clusters, [1.0], personal)
        np.testing.assert_array_equal(start[HEAD_WEIGHT], after[HEAD_WEIGHT])
        np.testing.assert_array_equal(start[HEAD_BIAS], after[HEAD_BIAS])
    else:
        # The data mask selects adapter rows only: every head row is shared, none personal.
        rows, cols = update.shapes[HEAD_WEIGHT]
        counts = update.vectors(0)[HEAD_WEIGHT][rows * cols :]
        np.testing.assert_array_equal(counts, np.ones(rows))
        assert HEAD_WEIGHT not in personal.personal_rows
        assert HEAD_BIAS not in personal.personal_rows


def test_personal_rows_are_restored_on_the_next_round_start(
    tmp_path: Path, organization_data: Any
) -> None:
    """Rows kept personal after round 1 start round 2 with their own trained values."""
    trainer = _trainer(tmp_path, local_steps=1)
    _, personal, _ = trainer.train_round(organization_data.train, None, round=1)
    assert personal.personal_rows
    block_id, rows = next(iter(personal.personal_rows.items()))
    clusters = ClusterAdapters.initial(
        {b: np.zeros(v.shape) for b, v in trainer.model.get_block_state().items()}
    )
    start = mixture_start(clusters, [1.0], personal)
    assert np.array_equal(start[block_id][rows], personal.values[block_id][rows])
    assert not start[block_id][~rows].any()


def test_non_private_baseline_warns_spends_nothing_and_fits_the_data(
    tmp_path: Path, organization_data: Any
) -> None:
    """The baseline (no DP) fits the synthetic task: training accuracy rises sharply."""
    consortium = tiny_consortium()
    with pytest.warns(SecurityWarning, match="NON-PRIVATE"):
        trainer = LocalTrainer(
            MaskedAdapterModel.from_consortium(consortium),
            tiny_policy(tmp_path, local_steps=200),
            consortium,
            non_private_baseline=True,
            seed=0,
        )
    before = trainer.evaluate(organization_data.train)
    update, _, stats = trainer.train_round(organization_data.train, None, round=0)
    after = trainer.evaluate(organization_data.train)
    assert after["accuracy"] >= before["accuracy"] + 0.3
    assert after["macro_f1"] >= before["macro_f1"] + 0.3
    assert update.private is False and stats.epsilon_spent is None
    assert not (tmp_path / "ledger.json").exists()


@pytest.mark.slow
def test_training_minilm_improves_held_out_accuracy(tmp_path: Path, organization_data: Any) -> None:
    """On the pretrained MiniLM a few dozen steps lift held-out accuracy far above chance."""
    torch.manual_seed(0)
    consortium = tiny_consortium(
        model={"source": "minilm", "num_labels": 4}, training={"learning_rate": 0.01}
    )
    with pytest.warns(SecurityWarning, match="NON-PRIVATE"):
        trainer = LocalTrainer(
            MaskedAdapterModel.from_consortium(consortium),
            tiny_policy(tmp_path, local_steps=40),
            consortium,
            non_private_baseline=True,
            seed=0,
        )
    before = trainer.evaluate(organization_data.test)
    trainer.train_round(organization_data.train, None, round=0)
    after = trainer.evaluate(organization_data.test)
    majority = max(organization_data.test.label_counts()) / len(organization_data.test)
    assert after["accuracy"] >= before["accuracy"] + 0.25
    assert after["accuracy"] >= majority + 0.25
    assert after["macro_f1"] >= before["macro_f1"] + 0.25


def test_pseudo_noise_is_loud(tmp_path: Path, organization_data: Any) -> None:
    """Pseudo-random noise trains only with a SecurityWarning, and the audit names it."""
    audit = RecordingAudit()
    trainer = _trainer(tmp_path, audit=audit, privacy={"noise_source": "pseudo"}, local_steps=1)
    with pytest.warns(SecurityWarning, match="pseudo"):
        trainer.train_round(organization_data.train, None, round=0)
    assert audit.events[-1][1]["noise_source"] == "pseudo"


# ----------------------------------------------------------------------------- misuse


def test_incompatible_policy_is_rejected(tmp_path: Path) -> None:
    """A policy for another consortium or an unknown tier cannot build a trainer."""
    consortium = tiny_consortium()
    with pytest.raises(IncompatiblePolicyError):
        LocalTrainer(
            MaskedAdapterModel.from_consortium(consortium),
            tiny_policy(tmp_path, tier="platinum"),
            consortium,
        )


def test_a_model_with_other_adapters_is_rejected(tmp_path: Path) -> None:
    """A model wrapped with another adapter spec (rank, seed) cannot train for this consortium."""
    consortium = tiny_consortium()
    other = tiny_consortium(
        adapter={"target_modules": ["query", "value"], "rank": 4, "alpha": 8, "a_seed": 12}
    )
    with pytest.raises(SdkError, match="adapter"):
        LocalTrainer(MaskedAdapterModel.from_consortium(other), tiny_policy(tmp_path), consortium)


def test_cluster_adapters_for_another_model_are_rejected(
    tmp_path: Path, organization_data: Any
) -> None:
    """Cluster adapters missing one of the model's blocks are refused before training."""
    trainer = _trainer(tmp_path)
    state = trainer.model.get_block_state()
    del state["head.bias"]
    with pytest.raises(SdkError, match="blocks"):
        trainer.train_round(organization_data.train, ClusterAdapters.initial(state), round=0)
    assert trainer.ledger is not None and trainer.ledger.records == ()


def test_a_foreign_ledger_is_rejected(tmp_path: Path) -> None:
    """A ledger opened with another δ or budget is not this policy's ledger."""
    consortium = tiny_consortium()
    ledger = PrivacyLedger.open(
        tmp_path / "other.json", organization=ORG, accountant="rdp", delta=1e-6, epsilon_budget=50.0
    )
    with pytest.raises(SdkError, match="ledger"):
        LocalTrainer(
            MaskedAdapterModel.from_consortium(consortium),
            tiny_policy(tmp_path),
            consortium,
            ledger=ledger,
        )


def test_datasets_the_model_cannot_learn_are_rejected(tmp_path: Path) -> None:
    """An empty data set, or more labels than the model's head, is a DataError."""
    trainer = _trainer(tmp_path)
    wide = TextDataset(texts=("a",), labels=(0,), label_names=tuple("abcde"))
    with pytest.raises(DataError, match="num_labels"):
        trainer.evaluate(wide)
    empty = TextDataset(texts=(), labels=(), label_names=("a", "b"))
    with pytest.raises(DataError, match="empty"):
        trainer.evaluate(empty)


def test_macro_f1_matches_a_hand_computation() -> None:
    """Macro-F1 averages per-class F1 over the classes seen in labels or predictions."""
    labels = np.array([0, 0, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0])
    # F1: class 0 = 2·1/(2+2) = 0.5; class 1 = 2·2/(3+2) = 0.8; class 2 = 0.
    assert macro_f1(labels, predictions) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(np.array([1, 1]), np.array([1, 1])) == 1.0
    assert not math.isnan(macro_f1(np.array([0]), np.array([1])))
