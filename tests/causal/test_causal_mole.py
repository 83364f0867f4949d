"""FedAMoLE on a causal LM: the MoLE decoder's loss, per-record gradients, accounting, secure
rounds, export and zero-shot, on tiny random Llama and Qwen2 models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from causal_helpers import MAX_SEQ_LENGTH, batch_of, encoded, examples
from opacus.accountants import RDPAccountant
from tiny_causal import TinyCausal, causal_consortium, federation
from transformers import AutoModelForCausalLM

from fedhft.aggregator import MoLECoordinator
from fedhft.errors import SecurityWarning
from fedhft.model import AdapterError, CausalMoLEModel, MoLEModel, initial_mole_state
from fedhft.policies import AdapterSpec, ConsortiumConfig, OrganizationPolicy, PolicyError
from fedhft.sdk import DataError, TextDataset
from fedhft.sdk._causal import CausalBatch
from fedhft.sdk._generation import generate_responses, left_pad
from fedhft.sdk._instructions import prompt_ids
from fedhft.sdk.mole import PERSONALIZED_FILE, MoLEParticipant, MoLEPrivateStep, MoLETrainer
from fedhft.sdk.mole._private_step import mole_record_losses
from fedhft.sdk.privacy import SecureGaussian
from fedhft.simulation import (
    LocalTraining,
    OrganizationRun,
    SimulatedOrganization,
    run_fedamole_in_process,
    simulate_in_process,
)

ORGS = ("clin-a", "bank-a", "clin-b", "bank-b")
SPEC = AdapterSpec(target_modules=["q_proj", "v_proj"], rank=4, alpha=8.0, a_seed=1234)
BALANCE = 0.5
"""A large balancing weight, so that the balancing loss visibly shapes every gradient."""


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _mole(tiny: TinyCausal, experts: tuple[int, ...] = (0, 1, 2), seed: int = 0) -> Any:
    """A causal MoLE model with every held block randomized (router included)."""
    model = CausalMoLEModel(tiny.base(), SPEC, expert_ids=experts, top_k=2)
    rng = np.random.default_rng(seed)
    shapes = model.block_shapes()
    model.set_state({b: rng.normal(0.0, 0.3, size=shape) for b, shape in shapes.items()})
    return model


def _consortium(tiny: TinyCausal, **fields: Any) -> ConsortiumConfig:
    data: dict[str, Any] = {
        "method": "fedamole",
        "adapter": {"target_modules": ["q_proj", "v_proj"], "rank": 4, "alpha": 8, "a_seed": 3},
        "tiers": {"full": {"min_experts": 2, "max_experts": 4, "keep_ratio": 0.5}},
        "fedamole": {"num_experts": 4, "holders_per_expert": 3, "affinity_noise_multiplier": 2.0},
        "training": {"learning_rate": 0.02},
        "secure_aggregation": {"threshold_fraction": 0.75, "max_dropout_fraction": 0.25},
    }
    data.update(fields)
    return causal_consortium(tiny, organizations=ORGS, **data)


def _policy(org: str, state: Path, *, noise: float | str = 1.1) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "instruct",
            "privacy": {
                "epsilon": 50.0,
                "delta": 1e-3,
                "max_grad_norm": 1.0,
                "noise_multiplier": noise,
                "planned_rounds": 2,
                "ledger_path": str(state / org / "ledger.json"),
            },
            "training": {
                "tier": "full",
                "batch_size": 4,
                "local_steps": 2,
                "max_seq_length": MAX_SEQ_LENGTH,
            },
        }
    )


def _trainer(tiny: TinyCausal, config: ConsortiumConfig, org: str, state: Path) -> MoLETrainer:
    return MoLETrainer(
        _policy(org, state),
        config,
        base_factory=tiny.base,
        tokenizer=tiny.tokenizer,
        balance_weight=BALANCE,
    )


def test_schema_accepts_fedamole_for_a_causal_lm_and_still_refuses_label_prior(
    tiny_causal_models: dict[str, TinyCausal],
) -> None:
    """fedamole + causal-lm validates (tier expert bounds still required); label_prior: dp
    and a missing min/max_experts are still refused."""
    tiny = tiny_causal_models["llama"]
    config = _consortium(tiny)
    assert config.model.task == "causal-lm" and config.method.value == "fedamole"
    with pytest.raises((PolicyError, ValueError), match="label_prior: dp"):
        _consortium(tiny, personalization={"label_prior": "dp"})
    with pytest.raises((PolicyError, ValueError), match="min_experts and max_experts"):
        _consortium(tiny, tiers={"full": {}})


def test_loss_masks_exactly_the_prompt_and_padding(tiny_causal: TinyCausal) -> None:
    """`response_logits` scores exactly the response tokens, with the full forward pass's
    logits there; each record's loss (task + balance) in a padded batch equals its loss
    alone, so neither padding nor the prompt's labels enter it."""
    model = _mole(tiny_causal)
    records = encoded(tiny_causal, examples(5))
    batch = batch_of(tiny_causal, records)
    with torch.no_grad():
        logits, targets, record_index = model.response_logits(
            batch.input_ids, batch.attention_mask, batch.labels
        )
        full = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        together = mole_record_losses(
            model, batch.input_ids, batch.attention_mask, batch.labels, balance_weight=BALANCE
        )
        alone = [
            mole_record_losses(model, *_alone(batch, row), balance_weight=BALANCE)
            for row in range(len(records))
        ]
    responses = [list(r.input_ids[r.prompt_length :]) for r in records]
    assert targets.tolist() == [token for response in responses for token in response]
    assert record_index.tolist() == [i for i, r in enumerate(responses) for _ in r]
    expected = torch.cat(
        [full[i, r.prompt_length - 1 : len(r.input_ids) - 1] for i, r in enumerate(records)]
    )
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert len({len(r.input_ids) for r in records}) > 1  # Some records carry padding.
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-6)
    assert (model.balance_loss() > 0).all()


def _alone(batch: CausalBatch, row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = int(batch.attention_mask[row].sum())
    return (
        batch.input_ids[row : row + 1, :n],
        batch.attention_mask[row : row + 1, :n],
        batch.labels[row : row + 1, :n],
    )


def test_per_record_gradient_is_independent_of_batch_mates_and_padding(
    tiny_causal: TinyCausal,
) -> None:
    """Opacus' per-sample gradient of every trainable MoLE parameter (shared B, router P,
    expert B; balancing loss included) for one record equals its gradient alone, among
    short mates and next to a much longer one."""
    model = _mole(tiny_causal, seed=2)
    pool = encoded(tiny_causal, examples(12))
    pool.sort(key=lambda r: len(r.input_ids))
    record, long_mate = pool[5], pool[-1]
    assert len(long_mate.input_ids) > len(record.input_ids)
    parameters = model.trainable_parameters()
    alone_batch = batch_of(tiny_causal, [record])
    loss = mole_record_losses(
        model,
        alone_batch.input_ids,
        alone_batch.attention_mask,
        alone_batch.labels,
        balance_weight=BALANCE,
    ).sum()
    expected = [g.detach().clone() for g in torch.autograd.grad(loss, parameters)]
    assert all(g.abs().max() > 0 for g in expected)
    optimizer = torch.optim.SGD(parameters, lr=0.0)
    with MoLEPrivateStep(
        model,
        optimizer,
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        expected_batch_size=4.0,
        noise_sampler=SecureGaussian(),
        balance_weight=BALANCE,
    ) as step:
        for mates in ([pool[0], record, pool[1]], [long_mate, pool[7], record, pool[3]]):
            batch = batch_of(tiny_causal, mates)
            row = mates.index(record)
            step.step(batch.input_ids, batch.attention_mask, batch.labels)
            for parameter, want in zip(parameters, expected, strict=True):
                torch.testing.assert_close(parameter.grad_sample[row], want, rtol=1e-4, atol=1e-7)


def test_ledger_epsilon_equals_the_accountant_for_the_release_and_the_steps_taken(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The affinity release and two rounds: the ledger's ε equals a fresh Opacus RDP
    accountant's over the release (σ_a, q = 1, 1 step) and the DP-SGD steps actually run;
    only the held blocks are returned, and every one of them moved."""
    tiny = tiny_causal_models["qwen2"]
    taken: list[int] = []
    original = MoLEPrivateStep.step

    def counting(self: MoLEPrivateStep, *batch: torch.Tensor) -> float:
        taken.append(int(batch[0].shape[0]))
        return original(self, *batch)

    monkeypatch.setattr(MoLEPrivateStep, "step", counting)
    config = _consortium(tiny)
    trainer = _trainer(tiny, config, ORGS[0], tmp_path)
    dataset = federation()[0].train
    release = trainer.release_affinity(dataset)
    assert release.affinity.shape == (4,)
    model = trainer.set_experts((1, 3))
    assert isinstance(model, CausalMoLEModel)
    start = initial_mole_state(config)
    state = {b: start[b] for b in model.block_ids}
    history: list[tuple[float, float, int]] = [(2.0, 1.0, 1)]
    for round_number in (1, 2):
        before = len(taken)
        end, stats = trainer.train_round(dataset, state, round=round_number)
        assert trainer.ledger is not None
        record = trainer.ledger.records[-1]
        assert record.steps == len(taken) - before == 2
        history.append((record.noise_multiplier, record.sample_rate, len(taken) - before))
        accountant = RDPAccountant()
        accountant.history = list(history)
        independent = accountant.get_epsilon(delta=1e-3)
        assert stats.epsilon_spent == pytest.approx(independent, rel=1e-9)
        assert trainer.ledger.spent() == pytest.approx(independent, rel=1e-9)
        assert set(end) == set(model.block_ids)
        assert all(not np.array_equal(end[b], state[b]) for b in end)
        state = end
    assert [r.mechanism for r in trainer.ledger.records] == ["gaussian", "dp-sgd", "dp-sgd"]


def test_the_non_private_baseline_spends_nothing_and_learns(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """The non-private baseline (for benchmarks) warns, keeps no ledger, releases the
    plain affinity, and its rounds lower the training loss and the test response loss
    below the zero-shot base model's."""
    tiny = tiny_causal_models["llama"]
    config = _consortium(tiny)
    with pytest.warns(SecurityWarning):
        trainer = MoLETrainer(
            _policy(ORGS[0], tmp_path),
            config,
            base_factory=tiny.base,
            tokenizer=tiny.tokenizer,
            non_private_baseline=True,
            seed=0,
        )
    data = federation()[0]
    assert trainer.release_affinity(data.train).affinity.sum() == pytest.approx(1.0)
    model = trainer.set_experts((0, 1))
    start = initial_mole_state(config)
    state = {b: start[b] for b in model.block_ids}
    losses = []
    for round_number in (1, 2, 3):
        state, stats = trainer.train_round(data.train, state, round=round_number)
        assert stats.epsilon_spent is None
        losses.append(stats.mean_loss)
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
    scores = trainer.evaluate(data.test)
    assert scores["loss"] < scores["zero_shot_loss"]
    assert trainer.ledger is None and not (tmp_path / ORGS[0] / "ledger.json").exists()


def test_records_of_the_other_task_are_refused_before_any_spend(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """Labelled texts for a causal-lm FedAMoLE consortium: a DataError naming the task,
    raised before the affinity release spends anything."""
    tiny = tiny_causal_models["llama"]
    trainer = _trainer(tiny, _consortium(tiny), ORGS[0], tmp_path)
    texts = TextDataset(texts=("a note", "a payment"), labels=(0, 1), label_names=("x", "y"))
    with pytest.raises(DataError, match=r"'causal-lm'.*instruction records"):
        trainer.release_affinity(texts)
    assert trainer.ledger is not None and trainer.ledger.records == ()


def test_secure_round_equals_the_clear_average_of_holders(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four organizations, one in-process FedAMoLE round on a tiny Llama: every block's
    global value is the clear average of its holders' uploads (within the fixed-point
    step), every held block is aggregated, and each organization reports ROUGE-L; its
    saved personalized mixture, loaded on a fresh base, writes what its own model writes."""
    tiny = tiny_causal_models["llama"]
    config = _consortium(tiny)
    runs: dict[str, OrganizationRun[MoLEParticipant]] = {}
    for org, data in zip(ORGS, federation(), strict=True):
        participant = MoLEParticipant(
            _trainer(tiny, config, org, tmp_path), data.train, state_dir=tmp_path / org
        )
        runs[org] = OrganizationRun(participant, "full", data.test, data.domain)
    coordinator = MoLECoordinator(config, run_id="mole", initial_state=initial_mole_state(config))
    uploads: dict[str, dict[str, np.ndarray]] = {}
    original = MoLEParticipant.prepare

    def spy(self: MoLEParticipant, round_number: int, release: Any) -> Any:
        upload = original(self, round_number, release)
        uploads[self.organization] = upload
        return upload

    monkeypatch.setattr(MoLEParticipant, "prepare", spy)
    result = run_fedamole_in_process(config, coordinator, runs, rounds=1)
    clip = config.secure_aggregation.clip
    step = 1.0 / config.secure_aggregation.scale
    assert set(coordinator.aggregated) == set(coordinator.states)
    for block_id in coordinator.states:
        holders = [np.clip(u[block_id], -clip, clip) for u in uploads.values() if block_id in u]
        assert len(holders) == (3 if ".expert" in block_id else 4)
        np.testing.assert_allclose(
            coordinator.states[block_id], np.mean(holders, axis=0), atol=len(holders) * step
        )
    experts = [b for b in coordinator.states if ".expert" in b]
    assert any(not np.allclose(coordinator.states[b], 0.0) for b in experts)
    for org in ORGS:
        metrics = result.metrics[org]
        assert 0.0 <= metrics["rouge_l"] <= 1.0 and "zero_shot_rouge_l" in metrics
        assert metrics["epsilon"] is not None and metrics["epsilon"] > 0
    own = runs[ORGS[0]].participant.trainer.assigned_model()
    saved = CausalMoLEModel.load(
        tmp_path / ORGS[0] / PERSONALIZED_FILE, AutoModelForCausalLM.from_pretrained(tiny.folder)
    )
    assert saved.get_state().keys() == own.get_state().keys()
    assert all(np.array_equal(saved.get_state()[b], v) for b, v in own.get_state().items())
    prompts = [prompt_ids(tiny.tokenizer, e.prompt) for e in federation()[0].test.examples[:4]]
    assert generate_responses(saved, tiny.tokenizer, prompts, max_new_tokens=8) == (
        generate_responses(own, tiny.tokenizer, prompts, max_new_tokens=8)
    )


def test_save_then_load_on_a_fresh_base_generates_the_same_tokens(
    tiny_causal: TinyCausal, tmp_path: Path
) -> None:
    """`save` → `CausalMoLEModel.load` on a fresh `AutoModelForCausalLM` → `generate` gives
    the trained model's tokens, token for token (and they differ from the base model's);
    `MoLEModel.load` refuses the causal file."""
    model = _mole(tiny_causal, experts=(0, 2), seed=4)
    path = tmp_path / "mixture.safetensors"
    model.save(path)
    loaded = CausalMoLEModel.load(path, AutoModelForCausalLM.from_pretrained(tiny_causal.folder))
    assert loaded.expert_ids == (0, 2) and loaded.block_ids == model.block_ids
    tokenizer = tiny_causal.tokenizer
    prompts = [prompt_ids(tokenizer, e.prompt) for e in examples(6, organization=1)]
    ours = generate_responses(model, tokenizer, prompts, max_new_tokens=8)
    assert generate_responses(loaded, tokenizer, prompts, max_new_tokens=8) == ours
    with model.adapters_disabled():
        assert generate_responses(model, tokenizer, prompts, max_new_tokens=8) != ours
    with pytest.raises(AdapterError, match="causal-lm"):
        MoLEModel.load(path, AutoModelForCausalLM.from_pretrained(tiny_causal.folder))


def test_zero_shot_is_the_plain_base_models_generation(tiny_causal: TinyCausal) -> None:
    """With adapters disabled, the MoLE model generates exactly what the untouched base
    model's own `generate` does; afterwards its mixture is back."""
    model = _mole(tiny_causal, seed=5)
    tokenizer = tiny_causal.tokenizer
    pad, eos = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
    prompts = [prompt_ids(tokenizer, e.prompt) for e in examples(5, organization=2)]
    input_ids, attention_mask = left_pad(prompts, pad)
    plain = tiny_causal.base().eval()
    with torch.no_grad():
        expected = plain.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )[:, input_ids.shape[1] :]
    kwargs = {"max_new_tokens": 8, "eos_token_id": eos, "pad_token_id": pad}
    with model.adapters_disabled():
        zero_shot = model.generate(input_ids, attention_mask, **kwargs)
    assert zero_shot.tolist() == expected.tolist()
    assert model.generate(input_ids, attention_mask, **kwargs).tolist() != expected.tolist()


@pytest.mark.slow
def test_simulate_in_process_runs_fedamole_on_a_causal_lm(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """`simulate_in_process`, FedAMoLE on the tiny causal model, four organizations, two
    rounds at ε = 8: every organization reports ROUGE-L, spent at most ε = 8 and keeps
    its personalized mixture in its folder."""
    tiny = tiny_causal_models["llama"]
    organizations = {
        org: SimulatedOrganization(
            train=data.train,  # type: ignore[arg-type]
            test=data.test,  # type: ignore[arg-type]
            tier="full",
            domain=data.domain,
        )
        for org, data in zip(ORGS, federation(), strict=True)
    }
    result = simulate_in_process(
        _consortium(tiny),
        organizations,
        epsilon=8.0,
        workdir=tmp_path,
        rounds=2,
        training=LocalTraining(batch_size=4, local_steps=2, max_seq_length=MAX_SEQ_LENGTH),
        base_model=tiny.base(),
        tokenizer=tiny.tokenizer,
    )
    assert set(result.organizations) == set(ORGS)
    for org, metrics in result.organizations.items():
        assert 0.0 <= metrics["rouge_l"] <= 1.0
        assert 0.0 < metrics["epsilon"] <= 8.0
        saved = CausalMoLEModel.load(tmp_path / org / PERSONALIZED_FILE, tiny.base())
        assert list(saved.expert_ids) == metrics["experts"]
    assert len(result.rounds) == 2


def test_fedamole_layers_bound_where_the_mixture_sits_on_both_sides(
    tiny_causal: TinyCausal, tmp_path: Path
) -> None:
    """`fedamole.layers: [-1]` puts MoLE modules on the top layer only: the organization's
    model and the server's weightless initial state name the same blocks, the saved mixture
    loads with the same layers, a file without the field hashes as before, and a layer the
    model lacks is refused naming the setting."""
    from fedhft.policies import consortium_hash

    everywhere = _consortium(tiny_causal)
    top = _consortium(tiny_causal, fedamole={**everywhere.fedamole.model_dump(), "layers": [-1]})
    assert "layers" not in everywhere.fedamole.model_dump()
    assert consortium_hash(everywhere) != consortium_hash(top)
    model = CausalMoLEModel(
        tiny_causal.base(), top.adapter, expert_ids=range(4), top_k=2, layers=[-1]
    )
    layers = {b.layer for b in model.adapter_blocks}
    all_layers = {
        b.layer
        for b in CausalMoLEModel(tiny_causal.base(), top.adapter, expert_ids=[0]).adapter_blocks
    }
    assert layers == {max(all_layers)} and len(all_layers) > 1
    assert set(initial_mole_state(top)) == set(model.block_ids)
    assert set(initial_mole_state(everywhere)) > set(model.block_ids)
    # Only the top layer's projections were replaced: the others are plain Linear layers.
    assert len(model.modules) == len(model.adapter_blocks) == 2
    path = tmp_path / "top.safetensors"
    model.save(path)
    loaded = CausalMoLEModel.load(path, AutoModelForCausalLM.from_pretrained(tiny_causal.folder))
    assert loaded.layers == (-1,) and loaded.block_ids == model.block_ids
    with pytest.raises(AdapterError, match=r"fedamole\.layers"):
        CausalMoLEModel(tiny_causal.base(), top.adapter, expert_ids=[0], layers=[7])
