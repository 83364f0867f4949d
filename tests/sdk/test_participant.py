"""The organization's round participant: crash-safe pending updates and personal state."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedhft.aggregator._federation import RoundCoordinator
from fedhft.sdk import LocalTrainer, MaskedAdapterModel, synthetic_federation, tier_mask
from fedhft.sdk._participant import RoundParticipant

sys.path.insert(0, str(Path(__file__).parents[1] / "aggregator"))
from federation_helpers import TINY, consortium, policy


def _participant(tmp_path: Path) -> tuple[RoundParticipant, RoundCoordinator]:
    config = consortium()
    data = synthetic_federation(num_organizations=1, alpha=1.0, samples_per_org=40, seed=2)
    model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
    trainer = LocalTrainer(model, policy("clin-a", tmp_path), config, seed=0)
    coordinator = RoundCoordinator(
        config,
        run_id="p",
        initial_state=MaskedAdapterModel.from_consortium(
            config, tiny_config=TINY
        ).get_block_state(),
        tier_blocks={t: tier_mask(config, t, tiny_config=TINY) for t in config.tiers},
    )
    return RoundParticipant(trainer, data[0].train, state_dir=tmp_path / "state"), coordinator


def test_retry_after_restart_resends_the_same_update_and_spends_once(tmp_path: Path) -> None:
    """A round retried after a restart re-sends the trained update; the ledger has one spend."""
    first, coordinator = _participant(tmp_path)
    clusters = coordinator.model_for_round(1)
    update = first.prepare(1, clusters)
    again, _ = _participant(tmp_path)
    retried = again.prepare(1, clusters)
    assert retried.digest() == update.digest()
    ledger = again.trainer.ledger
    assert ledger is not None
    assert [r.round for r in ledger.records] == [1]


def test_restart_after_a_finished_round_makes_its_personal_state_current(tmp_path: Path) -> None:
    """A pending round the server finished while this process was down is completed first."""
    first, coordinator = _participant(tmp_path)
    first.prepare(1, coordinator.model_for_round(1))
    restarted, _ = _participant(tmp_path)
    assert restarted.completed_round == 0
    restarted.prepare(2, coordinator.model_for_round(2))
    assert restarted.completed_round == 1
    assert restarted.personal is not None
    assert restarted.personal.last_delta, "the last Δ is kept for the next membership"
    restarted.complete(2)
    reloaded, _ = _participant(tmp_path)
    assert reloaded.completed_round == 2
    assert reloaded.personal is not None
    for block_id, delta in restarted.personal.last_delta.items():
        np.testing.assert_array_equal(reloaded.personal.last_delta[block_id], delta)
