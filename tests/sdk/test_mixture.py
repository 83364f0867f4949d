"""FedHFT mixture, data mask, membership and masked update (fedhft.sdk._mixture, _update)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.protocol.blocks import pack_block, row_average, unpack_block
from fedhft.sdk import ClusterAdapters, MaskedUpdate, MixtureError, UpdateError
from fedhft.sdk._mixture import (
    PersonalState,
    data_mask,
    mixture_start,
    personal_after_round,
    update_membership,
)

SHAPES = {"layer.0.value": (6, 3), "layer.1.value": (6, 3), "head.weight": (4, 5)}


def _clusters(k: int, seed: int = 0, *, with_updates: bool = False) -> ClusterAdapters:
    rng = np.random.default_rng(seed)
    states = tuple({b: rng.normal(size=s) for b, s in SHAPES.items()} for _ in range(k))
    updates = (
        tuple({b: rng.normal(size=s) for b, s in SHAPES.items()} for _ in range(k))
        if with_updates
        else ()
    )
    return ClusterAdapters(states=states, last_updates=updates)


def _one_hot(index: int, k: int) -> np.ndarray:
    pi = np.zeros(k)
    pi[index] = 1.0
    return pi


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 5), data=st.data())
def test_one_hot_membership_reproduces_a_single_cluster_exactly(
    k: int, data: st.DataObject
) -> None:
    """With π one-hot at j the mixture start is G_j bit for bit."""
    index = data.draw(st.integers(0, k - 1))
    clusters = _clusters(k, seed=k)
    start = mixture_start(clusters, _one_hot(index, k))
    for block_id in SHAPES:
        assert np.array_equal(start[block_id], clusters.states[index][block_id])


def test_mixture_is_the_weighted_sum_with_personal_rows_on_top() -> None:
    """Σ_j π_j G_j everywhere except the personal rows, which keep the own values."""
    clusters = _clusters(3)
    pi = np.array([0.2, 0.5, 0.3])
    rows = np.array([True, False, False, True, False, False])
    own = np.full((6, 3), 42.0)
    personal = PersonalState(
        membership=pi, personal_rows={"layer.1.value": rows}, values={"layer.1.value": own}
    )
    start = mixture_start(clusters, pi, personal)
    for block_id in SHAPES:
        expected = sum(w * s[block_id] for w, s in zip(pi, clusters.states, strict=True))
        if block_id == "layer.1.value":
            expected[rows] = 42.0
        np.testing.assert_allclose(start[block_id], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "pi",
    [[0.5, 0.6], [1.0], [1.2, -0.2], [float("nan"), 1.0]],
    ids=["sum-not-1", "wrong-length", "negative", "nan"],
)
def test_bad_membership_is_rejected(pi: list[float]) -> None:
    """π must be K finite non-negative weights summing to 1."""
    with pytest.raises(MixtureError):
        mixture_start(_clusters(2), pi)


def test_clusters_with_different_blocks_are_rejected() -> None:
    """Every cluster must carry the same blocks with the same shapes."""
    with pytest.raises(MixtureError, match="cluster 1"):
        ClusterAdapters(states=({"a": np.zeros((2, 2))}, {"a": np.zeros((3, 2))}))
    with pytest.raises(MixtureError, match="last updates"):
        ClusterAdapters(states=({"a": np.zeros((2, 2))},), last_updates=(None, None))


def test_data_mask_keeps_the_rows_with_largest_update_norm() -> None:
    """keep_ratio of the trainable rows, chosen by ‖ΔB_i·A‖, never a frozen row."""
    delta = np.array([[1, 0, 0], [5, 0, 0], [3, 0, 0], [4, 0, 0], [2, 0, 0], [9, 0, 0]], float)
    lora_a = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    trainable = np.array([True, True, True, True, True, False])
    mask = data_mask(delta, keep_ratio=0.5, trainable_rows=trainable, lora_a=lora_a)
    # ceil(0.5 · 5) = 3 rows among the trainable ones: 5, 4, 3 (row 5 is frozen).
    assert mask.tolist() == [False, True, True, True, False, False]


def test_data_mask_uses_the_row_norm_of_delta_w() -> None:
    """Rows are ranked by ‖ΔB_i·A‖, which A can reorder relative to ‖ΔB_i‖."""
    delta = np.array([[1.0, 0.0], [0.0, 0.9]])
    lora_a = np.array([[0.1, 0.0], [0.0, 1.0]])
    assert data_mask(delta, keep_ratio=0.5).tolist() == [True, False]
    assert data_mask(delta, keep_ratio=0.5, lora_a=lora_a).tolist() == [False, True]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), ratio=st.floats(0.01, 1.0), seed=st.integers(0, 1000))
def test_data_mask_size_follows_keep_ratio(rows: int, ratio: float, seed: int) -> None:
    """Exactly max(1, ceil(keep_ratio · rows)) rows are kept."""
    delta = np.random.default_rng(seed).normal(size=(rows, 3))
    assert data_mask(delta, keep_ratio=ratio).sum() == max(1, math.ceil(ratio * rows - 1e-9))


def test_membership_is_softmax_of_centred_cosine_to_last_updates() -> None:
    """π_j ∝ exp(cos(Δ − Ū, U_j − Ū)/T) with Ū the mean U_j; hard is one-hot at the arg-max."""
    clusters = _clusters(3, with_updates=True)
    rng = np.random.default_rng(9)
    delta = {b: rng.normal(size=SHAPES[b]) for b in ("layer.0.value", "head.weight")}
    own = np.concatenate([delta[b].ravel() for b in delta])
    theirs = []
    for update in clusters.last_updates:
        assert update is not None
        theirs.append(np.concatenate([update[b].ravel() for b in delta]))
    centre = np.mean(theirs, axis=0)
    cosines = [
        (own - centre) @ (t - centre) / np.linalg.norm(own - centre) / np.linalg.norm(t - centre)
        for t in theirs
    ]
    expected = np.exp(np.array(cosines) / 0.5)
    expected /= expected.sum()
    pi = update_membership(delta, clusters, temperature=0.5, hard=False)
    np.testing.assert_allclose(pi, expected, rtol=1e-12)
    hard = update_membership(delta, clusters, temperature=0.5, hard=True)
    assert hard.tolist() == _one_hot(int(np.argmax(cosines)), 3).tolist()


def test_membership_separates_updates_that_share_a_large_common_part() -> None:
    """Two groups whose updates differ only slightly around a large shared drift get
    opposite memberships (raw cosines would leave both near uniform)."""
    rng = np.random.default_rng(3)
    common = {b: 50.0 * rng.normal(size=SHAPES[b]) for b in SHAPES}
    split = {b: rng.normal(size=SHAPES[b]) for b in SHAPES}
    states = tuple({b: np.zeros(SHAPES[b]) for b in SHAPES} for _ in range(2))
    clusters = ClusterAdapters(
        states=states,
        last_updates=(
            {b: common[b] + split[b] for b in SHAPES},
            {b: common[b] - split[b] for b in SHAPES},
        ),
    )
    noise = {b: 0.1 * rng.normal(size=SHAPES[b]) for b in SHAPES}
    first = update_membership(
        {b: common[b] + split[b] + noise[b] for b in SHAPES}, clusters, temperature=0.1, hard=False
    )
    second = update_membership(
        {b: common[b] - split[b] + noise[b] for b in SHAPES}, clusters, temperature=0.1, hard=False
    )
    assert first[0] > 0.99
    assert second[1] > 0.99


def test_membership_follows_the_update_direction() -> None:
    """An update close to cluster 1's last update gets most of its weight."""
    clusters = _clusters(2, with_updates=True)
    updates = clusters.last_updates[1]
    assert updates is not None
    rng = np.random.default_rng(1)
    delta = {b: v + 0.05 * rng.normal(size=v.shape) for b, v in updates.items()}
    pi = update_membership(delta, clusters, temperature=0.1, hard=False)
    assert pi[1] > 0.99


def test_membership_without_previous_updates_keeps_previous_or_uniform() -> None:
    """Before any aggregate exists π stays as it was (uniform at first)."""
    clusters = _clusters(4)
    delta = {"layer.0.value": np.ones((6, 3))}
    assert update_membership(delta, clusters, temperature=0.1, hard=False).tolist() == [0.25] * 4
    previous = np.array([0.1, 0.6, 0.2, 0.1])
    kept = update_membership(delta, clusters, temperature=0.1, hard=False, previous=previous)
    assert kept.tolist() == previous.tolist()
    hard = update_membership(delta, clusters, temperature=0.1, hard=True, previous=previous)
    assert hard.tolist() == [0.0, 1.0, 0.0, 0.0]


def _update(pi: np.ndarray, seed: int = 0) -> tuple[MaskedUpdate, dict, dict]:
    rng = np.random.default_rng(seed)
    delta = {b: rng.normal(size=s) for b, s in SHAPES.items()}
    keep = {b: rng.random(s[0]) < 0.5 for b, s in SHAPES.items()}
    update = MaskedUpdate.build(round=3, delta=delta, keep=keep, membership=pi, private=True)
    return update, delta, keep


def test_masked_update_packs_weighted_masked_rows_per_cluster() -> None:
    """Cluster j's vector of block b is pack_block(π_j·m⊙Δ, π_j·m)."""
    pi = np.array([0.25, 0.75])
    update, delta, keep = _update(pi)
    assert update.clusters == 2
    assert update.block_ids == tuple(SHAPES)
    assert dict(update.shapes) == SHAPES
    for j, weight in enumerate(pi):
        vectors = update.vectors(j)
        for block_id in SHAPES:
            m = keep[block_id].astype(float)
            expected = pack_block(weight * m[:, None] * delta[block_id], weight * m)
            np.testing.assert_array_equal(vectors[block_id], expected)
    assert update.num_values() == sum(r * c + r for r, c in SHAPES.values())


@settings(max_examples=25, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4).filter(lambda w: sum(w) > 0.1),
    seed=st.integers(0, 100),
)
def test_cluster_vectors_sum_to_the_unweighted_masked_update(
    weights: list[float], seed: int
) -> None:
    """Σ_j over clusters of π_j·(m⊙Δ, m) is (m⊙Δ, m): membership only splits the update."""
    pi = np.array(weights) / sum(weights)
    update, delta, keep = _update(pi, seed)
    for block_id, (rows, cols) in SHAPES.items():
        total = sum(update.vectors(j)[block_id] for j in range(update.clusters))
        weighted, counts = unpack_block(total, rows, cols)
        m = keep[block_id].astype(float)
        np.testing.assert_allclose(counts, m, atol=1e-12)
        np.testing.assert_allclose(weighted, m[:, None] * delta[block_id], atol=1e-12)


def test_secure_sum_row_average_is_the_mean_over_organizations_that_kept_the_row() -> None:
    """Summing two organizations' vectors and dividing per row gives the kept-row mean."""
    one, delta_one, keep_one = _update(np.array([1.0]), seed=1)
    two, delta_two, keep_two = _update(np.array([1.0]), seed=2)
    block_id = "layer.0.value"
    summed = one.vectors(0)[block_id] + two.vectors(0)[block_id]
    average, has_weight = row_average(summed, *SHAPES[block_id])
    for row in range(SHAPES[block_id][0]):
        kept = [
            d[block_id][row]
            for d, k in ((delta_one, keep_one), (delta_two, keep_two))
            if k[block_id][row]
        ]
        assert has_weight[row] == bool(kept)
        if kept:
            np.testing.assert_allclose(average[row], np.mean(kept, axis=0), atol=1e-12)


def test_digest_is_stable_and_binds_every_value() -> None:
    """Equal updates have equal digests; any changed value, round or flag changes it."""
    pi = np.array([0.5, 0.5])
    update, delta, keep = _update(pi)
    again = MaskedUpdate.build(round=3, delta=delta, keep=keep, membership=pi, private=True)
    assert update.digest() == again.digest()
    assert len(update.digest()) == 64
    changed = dict(delta)
    changed["head.weight"] = delta["head.weight"].copy()
    changed["head.weight"][0, 0] += 1e-9
    assert (
        MaskedUpdate.build(round=3, delta=changed, keep=keep, membership=pi, private=True).digest()
        != update.digest()
    )
    other_round = MaskedUpdate.build(round=4, delta=delta, keep=keep, membership=pi, private=True)
    assert other_round.digest() != update.digest()
    non_private = MaskedUpdate.build(round=3, delta=delta, keep=keep, membership=pi, private=False)
    assert non_private.digest() != update.digest()


def test_update_vectors_are_read_only() -> None:
    """A caller cannot alter an update after its digest was taken."""
    update, _, _ = _update(np.array([1.0]))
    vector = update.vectors(0)["head.weight"]
    with pytest.raises(ValueError, match="read-only"):
        vector[0] = 1.0


@pytest.mark.parametrize(
    "case",
    ["membership", "mask-length", "unknown-order", "cluster-index"],
)
def test_inconsistent_masked_updates_are_rejected(case: str) -> None:
    """Bad membership, a mask of the wrong length or a foreign block order raise UpdateError."""
    delta = {"a": np.ones((3, 2))}
    keep = {"a": np.array([True, False, True])}
    kwargs = {"round": 1, "delta": delta, "keep": keep, "membership": [1.0], "private": True}
    if case == "membership":
        kwargs["membership"] = [0.7, 0.7]
    elif case == "mask-length":
        kwargs["keep"] = {"a": np.array([True, False])}
    elif case == "unknown-order":
        kwargs["block_order"] = ["b"]
    if case == "cluster-index":
        with pytest.raises(UpdateError):
            MaskedUpdate.build(**kwargs).vectors(1)  # type: ignore[arg-type]
    else:
        with pytest.raises(UpdateError):
            MaskedUpdate.build(**kwargs)  # type: ignore[arg-type]


def test_personal_state_keeps_trained_rows_that_were_not_shared() -> None:
    """Trainable rows outside the data mask become personal with their trained values."""
    end = {"b": np.arange(12.0).reshape(4, 3)}
    trainable = {"b": np.array([True, True, True, False])}
    keep = {"b": np.array([True, False, False, False])}
    previous = PersonalState(
        membership=np.array([1.0]),
        personal_rows={"old": np.array([True])},
        values={"old": np.ones((1, 1))},
    )
    personal = personal_after_round(
        membership=np.array([1.0]),
        end_state=end,
        trainable_rows=trainable,
        keep=keep,
        previous=previous,
    )
    assert personal.personal_rows["b"].tolist() == [False, True, True, False]
    assert np.array_equal(personal.values["b"], end["b"])
    assert "old" in personal.personal_rows
