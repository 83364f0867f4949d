"""Sketches of a causal LM (`clustering.signal: sketch`): the statistic, its release and
accounting, and a FedHFT federation that clusters on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from causal_helpers import RecordingNoise, examples
from opacus.accountants import RDPAccountant
from tiny_causal import TinyCausal, causal_consortium, federation

from fedhft.aggregator import RoundCoordinator
from fedhft.model import (
    CausalAdapterModel,
    ClusterAdapters,
    build_base_model,
    initial_block_state,
    sketch_dimension,
    tier_mask,
)
from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.sdk import CausalTrainer, SdkError
from fedhft.sdk._instructions import prompt_ids
from fedhft.sdk._mixture import sketch_membership
from fedhft.sdk.participants import RoundParticipant
from fedhft.sdk.privacy import _releases
from fedhft.sdk.privacy._releases import unit_sketch
from fedhft.simulation import OrganizationRun, run_federation_in_process

DELTA = 1e-3
SIGMA = 3.0
SKETCHED = {"clusters": 2, "signal": "sketch", "warmup_rounds": 1, "sketch_noise_multiplier": SIGMA}
ORGS = {"clin-a": "full", "clin-b": "full", "bank-a": "full", "bank-b": "full"}


def _consortium(tiny: TinyCausal, **fields: Any) -> ConsortiumConfig:
    return causal_consortium(
        tiny,
        organizations=tuple(ORGS),
        clustering=SKETCHED,
        secure_aggregation={"threshold_fraction": 0.75, "max_dropout_fraction": 0.25},
        **fields,
    )


def _policy(org: str, tmp_path: Path, *, noise_multiplier: float | str = 1.0) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "instruct",
            "privacy": {
                "epsilon": 8.0,
                "delta": DELTA,
                "max_grad_norm": 1.0,
                "noise_multiplier": noise_multiplier,
                "planned_rounds": 2,
                "ledger_path": str(tmp_path / org / "ledger.json"),
            },
            "training": {"tier": "full", "batch_size": 4, "local_steps": 2, "max_seq_length": 96},
        }
    )


def _trainer(
    tiny: TinyCausal, tmp_path: Path, *, noise_multiplier: float | str = 1.0
) -> CausalTrainer:
    config = _consortium(tiny)
    model = CausalAdapterModel(build_base_model(config.model), config.adapter)
    policy = _policy("clin-a", tmp_path, noise_multiplier=noise_multiplier)
    return CausalTrainer(model, policy, config, tokenizer=tiny.tokenizer)


def _prompts(tiny: TinyCausal, count: int, organization: int = 0) -> list[list[int]]:
    return [prompt_ids(tiny.tokenizer, e.prompt) for e in examples(count, organization)]


def _sum(model: CausalAdapterModel, tiny: TinyCausal, prompts: list[list[int]], **kw: Any) -> Any:
    pad = int(tiny.tokenizer.pad_token_id)
    return model.prompt_embedding_sum(prompts, pad_token_id=pad, **kw)


# ----------------------------------------------------------------------------- statistic


def test_each_record_adds_a_unit_vector_whatever_its_batch_mates(tiny_causal: TinyCausal) -> None:
    """The statistic is a sum of one unit vector per record: removing a record moves it by
    exactly 1 (the sensitivity), replacing one by at most 2, and batching and padding
    change nothing (each record's term equals its term alone)."""
    model = tiny_causal.adapted()
    prompts = _prompts(tiny_causal, 8)
    assert len({len(p) for p in prompts}) > 1  # Padding happens.
    full = _sum(model, tiny_causal, prompts)
    assert full.shape == (model.sketch_dimension,) and full.dtype == torch.float64
    alone = [_sum(model, tiny_causal, [p]) for p in prompts]
    for term in alone:
        assert float(torch.linalg.vector_norm(term)) == pytest.approx(1.0, abs=1e-9)
    # Equal up to float32 rounding of the decoder (batched matrix products differ in the
    # last bits).
    torch.testing.assert_close(full, sum(alone), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        full, _sum(model, tiny_causal, prompts, batch_size=3), rtol=0, atol=1e-6
    )
    for index in range(len(prompts)):
        without = _sum(model, tiny_causal, prompts[:index] + prompts[index + 1 :])
        assert float(torch.linalg.vector_norm(full - without)) <= 1.0 + 1e-6
    replaced = _sum(model, tiny_causal, [*prompts[:-1], _prompts(tiny_causal, 1, 3)[0]])
    assert float(torch.linalg.vector_norm(full - replaced)) <= 2.0 + 1e-6


def test_the_statistic_reads_the_public_initial_model_and_keeps_the_tier(
    tiny_causal: TinyCausal,
) -> None:
    """Trained ``B`` values do not change the statistic (it is computed with B = 0), and
    computing it leaves exactly the tier's parameters trainable."""
    model = tiny_causal.adapted()
    prompts = _prompts(tiny_causal, 5)
    before = _sum(model, tiny_causal, prompts)
    rng = np.random.default_rng(4)
    model.set_block_state({b.block_id: rng.normal(0.0, 0.5, size=b.shape) for b in model.blocks})
    trainable = {n for n, p in model.peft_model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(_sum(model, tiny_causal, prompts), before, rtol=0, atol=1e-12)
    assert {n for n, p in model.peft_model.named_parameters() if p.requires_grad} == trainable
    assert not any("lora_A" in name for name in trainable)


# ----------------------------------------------------------------------------- release


def test_the_release_is_the_statistic_plus_noise_of_the_configured_sigma(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What leaves is unit_sketch(Σ unit prompt embeddings + N(0, σ²)) with the consortium's
    σ (sensitivity 1), the noise drawn once, from the policy's noise source."""
    tiny = tiny_causal_models["qwen2"]
    sampler = RecordingNoise(seed=9)
    sources: list[object] = []

    def recording(source: object) -> RecordingNoise:
        sources.append(source)
        return sampler

    monkeypatch.setattr(_releases, "noise_sampler", recording)
    trainer = _trainer(tiny, tmp_path)
    dataset = federation()[0].train
    released = trainer.release_sketch(dataset)
    prompts = [list(r.input_ids[: r.prompt_length]) for r in trainer.encode(dataset)]
    assert prompts == [prompt_ids(tiny.tokenizer, e.prompt) for e in dataset]  # None cut.
    statistic = _sum(trainer.model, tiny, prompts)
    assert len(sampler.draws) == 1 and sources == [trainer.policy.privacy.noise_source]
    (noise,) = sampler.draws
    np.testing.assert_allclose(released, unit_sketch((statistic + noise).numpy()), atol=1e-12)
    # The draw had std σ·C = σ: the seeded generator's standard normals times σ.
    standard = torch.randn(
        noise.shape, generator=torch.Generator().manual_seed(9), dtype=noise.dtype
    )
    torch.testing.assert_close(noise, standard * SIGMA)
    assert released.shape == (sketch_dimension(trainer.consortium),)


def test_the_release_noise_has_the_configured_sigma_over_many_draws(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """With the real (secure) sampler, release minus statistic over many releases has mean
    0 and standard deviation σ per coordinate (before the unit-norm post-processing,
    which is checked above)."""
    tiny = tiny_causal_models["llama"]
    trainer = _trainer(tiny, tmp_path)
    record = trainer.sketch_record()
    assert record is not None
    statistic = torch.ones(4000, dtype=torch.float64)
    noise = np.concatenate(
        [
            _releases.gaussian_release(statistic, record, ledger=_Unlimited(), sampler=None).array()
            - 1.0
            for _ in range(5)
        ]
    )
    # 20 000 draws: the sample std is within 3 % of σ, the mean within 0.1 σ, far beyond
    # five standard errors of either.
    assert abs(float(noise.mean())) < 0.1 * SIGMA
    assert float(noise.std()) == pytest.approx(SIGMA, rel=0.03)


class _Unlimited:
    """A ledger that admits everything (the noise test spends nothing real)."""

    def commit(self, record: object) -> float:
        return 0.0


def test_sketch_epsilon_equals_the_accountant_and_auto_sigma_reserves_it(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """With `auto` σ the sketch and every planned round fit the budget together; the
    ledger holds the sketch once (Gaussian, σ, q = 1, one step) then the rounds, and its ε
    equals Opacus' RDP accountant over exactly those."""
    tiny = tiny_causal_models["llama"]
    trainer = _trainer(tiny, tmp_path, noise_multiplier="auto")
    assert trainer.reserved_records() == (trainer.sketch_record(),)
    participant = RoundParticipant(trainer, federation()[0].train, state_dir=tmp_path / "st")
    clusters = ClusterAdapters.initial(trainer.model.get_block_state())
    sketch = participant.sketch(1)
    assert sketch is not None
    np.testing.assert_array_equal(participant.sketch(1), sketch)  # Released once, kept.
    for round_number in (1, 2):
        participant.prepare(round_number, clusters)
        participant.complete(round_number)
    ledger = trainer.ledger
    assert ledger is not None
    kinds = [(r.mechanism, r.noise_multiplier, r.sample_rate, r.steps) for r in ledger.records]
    assert kinds[0] == ("gaussian", SIGMA, 1.0, 1)
    assert [k[0] for k in kinds[1:]] == ["dp-sgd", "dp-sgd"]
    accountant = RDPAccountant()
    accountant.history = [r.history_entry() for r in ledger.records]
    assert ledger.spent() == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)
    assert ledger.spent() <= 8.0


def test_a_consortium_without_sketches_releases_none(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """Without `signal: sketch` nothing is released or reserved, and asking is an error."""
    tiny = tiny_causal_models["llama"]
    config = causal_consortium(tiny, organizations=tuple(ORGS))
    model = CausalAdapterModel(build_base_model(config.model), config.adapter)
    trainer = CausalTrainer(model, _policy("clin-a", tmp_path), config, tokenizer=tiny.tokenizer)
    assert trainer.sketch_record() is None and trainer.reserved_records() == ()
    participant = RoundParticipant(trainer, federation()[0].train, state_dir=tmp_path / "st")
    assert participant.sketch(1) is None
    with pytest.raises(SdkError, match=r"clustering\.signal"):
        trainer.release_sketch(federation()[0].train)


# ----------------------------------------------------------------------------- federation


def test_a_causal_federation_clusters_on_one_sketch_per_organization(
    tiny_causal: TinyCausal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rounds, warm-up 1, K = 2: the server holds exactly one sketch per organization,
    of the model's hidden width, each the organization's own release; the clusters split
    on their centroids, and each organization's π in round 2 follows its sketch."""
    config = _consortium(tiny_causal)
    runs: dict[str, OrganizationRun[RoundParticipant]] = {}
    for org, data in zip(ORGS, federation(), strict=True):
        model = CausalAdapterModel(build_base_model(config.model), config.adapter)
        trainer = CausalTrainer(
            model, _policy(org, tmp_path), config, tokenizer=tiny_causal.tokenizer
        )
        participant = RoundParticipant(trainer, data.train, state_dir=tmp_path / org)
        runs[org] = OrganizationRun(participant, ORGS[org], data.test, data.domain)
    coordinator = RoundCoordinator(
        config,
        run_id="causal-sketch",
        initial_state=initial_block_state(config),
        tier_blocks={tier: tier_mask(config, tier) for tier in config.tiers},
        sketch_length=sketch_dimension(config),
    )
    released: dict[str, list[np.ndarray]] = {org: [] for org in ORGS}
    original = CausalTrainer.release_sketch

    def spy(self: CausalTrainer, dataset: Any, *, round: int = 1) -> Any:
        value = original(self, dataset, round=round)
        released[self.policy.organization].append(value)
        return value

    monkeypatch.setattr(CausalTrainer, "release_sketch", spy)
    result = run_federation_in_process(config, coordinator, runs, rounds=2)

    hidden = tiny_causal.base().config.hidden_size
    assert coordinator.sketch_length == sketch_dimension(config) == hidden
    assert sorted(coordinator.sketches) == sorted(ORGS)
    for org, sketch in coordinator.sketches.items():
        assert len(released[org]) == 1  # Released once, in the warm-up round.
        assert sketch.shape == (hidden,)
        np.testing.assert_array_equal(sketch, released[org][0])
        assert float(np.linalg.norm(sketch)) == pytest.approx(1.0)
    clusters = coordinator.clusters
    assert clusters.k == 2 and len(clusters.centroids) == 2
    for org, run in runs.items():
        ledger = run.participant.trainer.ledger
        assert ledger is not None and [r.mechanism for r in ledger.records] == [
            "gaussian",
            "dp-sgd",
            "dp-sgd",
        ]
        personal = run.participant.personal
        assert personal is not None and personal.membership.size == 2
        # π in round 2 compares the organization's own sketch with the centroids.
        expected = sketch_membership(
            coordinator.sketches[org], clusters, temperature=0.1, hard=False
        )
        np.testing.assert_allclose(personal.membership, expected, rtol=1e-12)
        distances = [np.linalg.norm(coordinator.sketches[org] - c) for c in clusters.centroids]
        assert int(np.argmax(personal.membership)) == int(np.argmin(distances))
        assert 0.0 <= result.metrics[org]["rouge_l"] <= 1.0
