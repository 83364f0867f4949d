"""Clusters on DP sketches: centroids on the server, memberships on the clients
(fedhft.aggregator._sketches, RoundCoordinator's split, the in-process federation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from federation_helpers import TINY, consortium, policy

from fedhft.aggregator._federation import RoundCoordinator, clusters_digest
from fedhft.aggregator._sketches import sketch_centroids
from fedhft.aggregator.errors import RoundError
from fedhft.model import decode_clusters, encode_clusters, tier_mask
from fedhft.protocol.blocks import row_average
from fedhft.sdk import ClusterAdapters, LocalTrainer, MaskedAdapterModel, synthetic_federation
from fedhft.sdk._participant import RoundParticipant
from fedhft.simulation._fedhft import OrganizationRun, run_federation_in_process

SIX = {f"{d}-{i}": "full" if i % 2 else "edge" for i in range(3) for d in ("clin", "bank")}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _two_groups(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=16), rng.normal(size=16)
    sketches = {f"a-{i}": _unit(a + 0.1 * rng.normal(size=16)) for i in range(4)}
    sketches |= {f"b-{i}": _unit(b + 0.1 * rng.normal(size=16)) for i in range(4)}
    return sketches


def test_centroids_are_the_means_of_the_two_groups() -> None:
    """k-means on two separated groups returns each group's mean, in organization order."""
    sketches = _two_groups()
    first, second = sketch_centroids(sketches, 2, run_id="r")
    group_a = np.mean([v for k, v in sketches.items() if k.startswith("a")], axis=0)
    group_b = np.mean([v for k, v in sketches.items() if k.startswith("b")], axis=0)
    np.testing.assert_allclose(first, group_a)
    np.testing.assert_allclose(second, group_b)


def test_centroids_depend_only_on_the_sketches_and_the_run() -> None:
    """A restarted server (same run id, same sketches) computes the same centroids."""
    sketches = {org: v + 0.3 for org, v in _two_groups(1).items()}
    again = dict(reversed(list(sketches.items())))
    assert all(
        np.array_equal(x, y)
        for x, y in zip(
            sketch_centroids(sketches, 3, run_id="run-7"),
            sketch_centroids(again, 3, run_id="run-7"),
            strict=True,
        )
    )


def test_fewer_sketches_than_clusters_is_refused() -> None:
    """K clusters need K sketches; mismatched lengths are refused too."""
    with pytest.raises(ValueError, match="at least 3 sketches"):
        sketch_centroids({"a": np.ones(4), "b": np.zeros(4)}, 3, run_id="r")
    with pytest.raises(ValueError, match="one length"):
        sketch_centroids({"a": np.ones(4), "b": np.ones(3)}, 2, run_id="r")


def _coordinator(config: Any) -> RoundCoordinator:
    model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
    return RoundCoordinator(
        config,
        run_id="sketch-run",
        initial_state=model.get_block_state(),
        tier_blocks={t: tier_mask(config, t, tiny_config=TINY) for t in config.tiers},
    )


SKETCH = {"clusters": 2, "warmup_rounds": 1, "membership": "hard", "signal": "sketch"}


def test_split_publishes_centroids_that_travel_with_the_model() -> None:
    """The split computes the centroids, apply keeps them, the codec and the model hash
    carry them."""
    config = consortium(rounds=3, clustering=SKETCH)
    coordinator = _coordinator(config)
    assert config.takes_sketches(1) and not config.takes_sketches(2)
    assert coordinator.model_for_round(1).centroids == ()
    with pytest.raises(RoundError, match="at least 2 sketches"):
        coordinator.model_for_round(2)
    coordinator.sketches = {org: v for org, v in _two_groups().items()}
    split = coordinator.model_for_round(2)
    expected = sketch_centroids(coordinator.sketches, 2, run_id="sketch-run")
    for got, want in zip(split.centroids, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    decoded = decode_clusters(encode_clusters(split))
    for got, want in zip(decoded.centroids, split.centroids, strict=True):
        np.testing.assert_array_equal(got, want)
    moved = ClusterAdapters(
        states=split.states,
        last_updates=split.last_updates,
        centroids=(split.centroids[1], split.centroids[0]),
    )
    assert clusters_digest(moved) != clusters_digest(split)


def test_federation_clusters_domains_on_sketches_and_averages_securely(tmp_path: Path) -> None:
    """Six organizations in two domains: the sketch split puts each domain in its own
    cluster, every ledger holds the two releases once, and each cluster's shared head is
    its members' secure per-row average.

    The tiny random model's sentence embeddings differ little between domains (centred
    cosine ±0.85-0.94 without noise, but a domain gap of ~7 against a noise norm of ~57 at
    σ = 10), so the sketch noise here is σ = 0.5; with MiniLM the default σ = 10 recovers
    the domains (`python benchmarks/learning.py --demo`, ARI column).
    """
    config = consortium(
        rounds=2,
        clustering={**SKETCH, "sketch_noise_multiplier": 0.5},
        personalization={"head": "shared", "label_prior": "dp"},
        enrollment=[{"organization": org} for org in SIX],
    )
    data = synthetic_federation(num_organizations=6, alpha=1.0, samples_per_org=80, seed=1)
    runs = {}
    for (org, tier), org_data in zip(SIX.items(), data, strict=True):
        model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
        trainer = LocalTrainer(model, policy(org, tmp_path, tier=tier), config, seed=0)
        participant = RoundParticipant(trainer, org_data.train, state_dir=tmp_path / org)
        runs[org] = OrganizationRun(participant, tier, org_data.test, org_data.domain)
    coordinator = _coordinator(config)
    heads: dict[str, Any] = {}
    original_prepare = RoundParticipant.prepare

    def spy(self: RoundParticipant, round_number: int, clusters: Any) -> Any:
        update = original_prepare(self, round_number, clusters)
        if round_number == 2:
            heads[self.organization] = update
        return update

    RoundParticipant.prepare = spy  # type: ignore[method-assign]
    try:
        result = run_federation_in_process(config, coordinator, runs)
    finally:
        RoundParticipant.prepare = original_prepare  # type: ignore[method-assign]
    final = coordinator.clusters
    assert len(final.centroids) == 2
    clusters_of = {org: int(np.argmax(m["membership"])) for org, m in result.metrics.items()}
    for domain in ("clin", "bank"):
        assert len({c for org, c in clusters_of.items() if org.startswith(domain)}) == 1
    assert clusters_of["clin-0"] != clusters_of["bank-0"]
    for run in runs.values():
        ledger = run.participant.trainer.ledger
        assert ledger is not None
        assert [(r.mechanism, r.round) for r in ledger.records] == [
            ("gaussian", 1),
            ("gaussian", 1),
            ("dp-sgd", 1),
            ("dp-sgd", 2),
        ]
    # Round 2's aggregate of the shared head, cluster by cluster, from the clear updates.
    summary = result.rounds[1].summary
    assert summary is not None
    clip = config.secure_aggregation.clip
    for j in range(2):
        update = final.last_updates[j]
        assert update is not None
        plain = sum(np.clip(u.vectors(j)["head.weight"], -clip, clip) for u in heads.values())
        average, _ = row_average(plain, 4, 32)
        np.testing.assert_allclose(
            update["head.weight"], average, atol=len(heads) / config.secure_aggregation.scale
        )
