"""Server-side round logic: cluster adapters move by the per-row averages of secure sums."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from federation_helpers import ORGS, TINY, consortium, policy

from fedhft.aggregator._federation import (
    RoundCoordinator,
    decode_clusters,
    encode_clusters,
)
from fedhft.model import tier_mask
from fedhft.protocol.blocks import clip_packed, row_average
from fedhft.sdk import LocalTrainer, MaskedAdapterModel, synthetic_federation
from fedhft.sdk._participant import RoundParticipant
from fedhft.simulation import OrganizationRun, run_federation_in_process

Runs = dict[str, OrganizationRun]


def _federation(tmp_path: Path, config: object) -> tuple[RoundCoordinator, Runs]:
    assert config is not None
    data = synthetic_federation(num_organizations=4, alpha=1.0, samples_per_org=48, seed=1)
    runs = {}
    for org, org_data in zip(ORGS, data, strict=True):
        model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)  # type: ignore[arg-type]
        trainer = LocalTrainer(model, policy(org, tmp_path), config, seed=0)  # type: ignore[arg-type]
        participant = RoundParticipant(trainer, org_data.train, state_dir=tmp_path / org)
        runs[org] = OrganizationRun(participant, ORGS[org], org_data.test, org_data.domain)
    server_model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)  # type: ignore[arg-type]
    coordinator = RoundCoordinator(
        config,  # type: ignore[arg-type]
        run_id="test-run",
        initial_state=server_model.get_block_state(),
        tier_blocks={t: tier_mask(config, t, tiny_config=TINY) for t in ("edge", "full")},  # type: ignore[arg-type]
    )
    return coordinator, runs


def test_clusters_encode_round_trip(tmp_path: Path) -> None:
    """Cluster adapters survive the safetensors encoding exactly."""
    config = consortium()
    coordinator, _ = _federation(tmp_path, config)
    model = coordinator.model_for_round(1)
    again = decode_clusters(encode_clusters(model))
    assert again.k == 2
    for j in range(2):
        for block_id, values in model.states[j].items():
            np.testing.assert_array_equal(again.states[j][block_id], values)
            reference = model.last_updates[j]
            assert reference is not None
            np.testing.assert_array_equal(again.last_updates[j][block_id], reference[block_id])  # type: ignore[index]


def test_secure_round_equals_plain_per_row_average(tmp_path: Path) -> None:
    """After a round, each cluster adapter equals the clear per-row average update."""
    config = consortium()
    coordinator, runs = _federation(tmp_path, config)
    before = coordinator.model_for_round(1)
    updates = {}

    original_prepare = RoundParticipant.prepare

    def spy(self: RoundParticipant, round_number: int, clusters: object) -> object:
        update = original_prepare(self, round_number, clusters)  # type: ignore[arg-type]
        updates[self.organization] = update
        return update

    RoundParticipant.prepare = spy  # type: ignore[method-assign]
    try:
        result = run_federation_in_process(config, coordinator, runs, rounds=1)
    finally:
        RoundParticipant.prepare = original_prepare  # type: ignore[method-assign]
    summary = result.rounds[0].summary
    assert summary is not None

    after = coordinator.clusters
    step = 1.0 / config.secure_aggregation.scale
    clip = config.secure_aggregation.clip
    for j in range(2):
        for block_id in before.states[j]:
            holders = [u for u in updates.values() if block_id in u.block_ids]
            if not holders:
                # The personal head: nobody uploads it, so no session carries it.
                assert block_id.startswith("head.")
                assert block_id not in summary.outcomes[j].skipped_blocks
                np.testing.assert_array_equal(after.states[j][block_id], before.states[j][block_id])
                continue
            if len(holders) < config.secure_aggregation.min_cohort:
                # Held by the two full-tier organizations only: below the minimum cohort,
                # so it is not aggregated, stays as it was, and is reported.
                assert summary.outcomes[j].skipped_blocks[block_id] == len(holders)
                np.testing.assert_array_equal(after.states[j][block_id], before.states[j][block_id])
                continue
            rows, cols = holders[0].shapes[block_id]
            plain = sum(clip_packed(u.vectors(j)[block_id], rows, cols, clip) for u in holders)
            average, has_weight = row_average(plain, rows, cols)
            expected = np.array(before.states[j][block_id])
            expected[has_weight] += average[has_weight]
            # Hard membership: row weights are whole numbers ≥ 1, so each average is
            # within len(holders) quantization steps of the clear one.
            tolerance = len(holders) * step
            np.testing.assert_allclose(after.states[j][block_id], expected, atol=tolerance)
    moved = sum(
        float(np.abs(after.states[j][b] - before.states[j][b]).sum())
        for j in range(2)
        for b in before.states[j]
    )
    assert moved > 0


def test_every_organization_spends_once_per_round(tmp_path: Path) -> None:
    """Two in-process rounds: each ledger holds one record per round, and metrics exist."""
    config = consortium()
    coordinator, runs = _federation(tmp_path, config)
    result = run_federation_in_process(config, coordinator, runs, rounds=2)
    for org, run in runs.items():
        ledger = run.participant.trainer.ledger
        assert ledger is not None
        assert [r.round for r in ledger.records] == [1, 2]
        metrics = result.metrics[org]
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics["rounds_joined"] == 2
        assert metrics["bytes_up"] > 0
    assert [r.summary.round for r in result.rounds if r.summary] == [1, 2]
