"""FedHFT rounds of a causal LM in process: four organizations on tiny Llama and on tiny
Qwen2, masking secure sums, a server that derives the causal block state with no weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from tiny_causal import TinyCausal, causal_consortium, federation

from fedhft.aggregator import RoundCoordinator
from fedhft.model import CausalAdapterModel, ClusterAdapters, initial_block_state, tier_mask
from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.protocol.blocks import clip_packed, row_average
from fedhft.sdk import CausalTrainer, MaskedUpdate, build_base_model
from fedhft.sdk.participants import RoundParticipant
from fedhft.simulation import OrganizationRun, run_federation_in_process

ORGS = {"clin-a": "full", "clin-b": "top", "bank-a": "full", "bank-b": "full"}
DELTA = 1e-3


def _consortium(tiny: TinyCausal) -> ConsortiumConfig:
    return causal_consortium(
        tiny,
        organizations=tuple(ORGS),
        tiers={"full": {"keep_ratio": 0.5}, "top": {"layers": [-1], "keep_ratio": 0.5}},
        clustering={"clusters": 1, "membership": "hard"},
        training={"learning_rate": 0.05},
        secure_aggregation={"threshold_fraction": 0.75, "max_dropout_fraction": 0.25},
    )


def _policy(org: str, state: Path) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "instruct",
            "privacy": {
                "epsilon": 50.0,
                "delta": DELTA,
                "max_grad_norm": 1.0,
                "noise_multiplier": 0.9,
                "planned_rounds": 2,
                "ledger_path": str(state / org / "ledger.json"),
            },
            "training": {
                "tier": ORGS[org],
                "batch_size": 4,
                "local_steps": 2,
                "max_seq_length": 96,
            },
        }
    )


def test_causal_fedhft_rounds_move_by_the_clear_average_and_account_exactly(
    tiny_causal: TinyCausal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rounds: after each, the cluster adapter equals its start plus the clear per-row
    average of the organizations' clipped masked updates (within the fixed-point step),
    and every ledger's ε equals an independent RDP accountant's for the rounds' records."""
    tiny = tiny_causal
    config = _consortium(tiny)
    runs: dict[str, OrganizationRun[RoundParticipant]] = {}
    for org, data in zip(ORGS, federation(), strict=True):
        model = CausalAdapterModel(build_base_model(config.model), config.adapter)
        trainer = CausalTrainer(model, _policy(org, tmp_path), config, tokenizer=tiny.tokenizer)
        participant = RoundParticipant(trainer, data.train, state_dir=tmp_path / org)
        runs[org] = OrganizationRun(participant, ORGS[org], data.test, data.domain)
    coordinator = RoundCoordinator(
        config,
        run_id="causal-run",
        initial_state=initial_block_state(config),
        tier_blocks={tier: tier_mask(config, tier) for tier in config.tiers},
    )
    seen: dict[int, tuple[ClusterAdapters, dict[str, MaskedUpdate]]] = {}
    original = RoundParticipant.prepare

    def spy(self: RoundParticipant, round_number: int, clusters: ClusterAdapters) -> Any:
        update = original(self, round_number, clusters)
        seen.setdefault(round_number, (clusters, {}))[1][self.organization] = update
        return update

    monkeypatch.setattr(RoundParticipant, "prepare", spy)
    result = run_federation_in_process(config, coordinator, runs, rounds=2)

    step = 1.0 / config.secure_aggregation.scale
    clip = config.secure_aggregation.clip
    afters = {1: seen[2][0], 2: coordinator.clusters}
    moved = 0.0
    for round_number in (1, 2):
        before, updates = seen[round_number]
        after = afters[round_number]
        for block_id, start in before.states[0].items():
            holders = [u for u in updates.values() if block_id in u.block_ids]
            assert holders, block_id  # Every block is some tier's.
            if len(holders) < config.secure_aggregation.min_cohort:
                # Layer 0 is trained by the full tier's two organizations only: below the
                # minimum cohort, so it stays as it was and is reported.
                summary = result.rounds[round_number - 1].summary
                assert summary is not None
                assert summary.outcomes[0].skipped_blocks[block_id] == len(holders)
                np.testing.assert_array_equal(after.states[0][block_id], start)
                continue
            rows, cols = holders[0].shapes[block_id]
            plain = sum(clip_packed(u.vectors(0)[block_id], rows, cols, clip) for u in holders)
            average, has_weight = row_average(plain, rows, cols)
            expected = np.array(start)
            expected[has_weight] += average[has_weight]
            np.testing.assert_allclose(
                after.states[0][block_id], expected, atol=len(holders) * step
            )
            moved += float(np.abs(after.states[0][block_id] - start).sum())
    assert moved > 0

    for org, run in runs.items():
        ledger = run.participant.trainer.ledger
        assert ledger is not None and [r.round for r in ledger.records] == [1, 2]
        accountant = RDPAccountant()
        accountant.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in ledger.records]
        assert ledger.spent() == pytest.approx(accountant.get_epsilon(delta=DELTA), rel=1e-9)
        scores = result.metrics[org]
        assert 0.0 <= scores["rouge_l"] <= 1.0 and 0.0 <= scores["zero_shot_rouge_l"] <= 1.0
        assert scores["epsilon"] == pytest.approx(ledger.spent())
