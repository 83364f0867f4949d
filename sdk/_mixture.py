"""FedHFT's mixture of masked adapters, computed on the organization (ARCHITECTURE.md §2.2).

Implements the client side of FedHFT (Ilhan et al., 2025) with fedhft's privacy
redesign:

- **Mixture start.** The server keeps ``K`` cluster adapters ``G_1..G_K`` (every block,
  head included). An organization starts a round from ``Σ_j π_j G_j`` and puts the rows
  it kept personal back on top.
- **Data mask.** After training, each trained block keeps the rows whose update
  ``ΔW_i = ΔB_i · A`` has the largest norm (``keep_ratio`` of the tier's trainable rows);
  the other rows stay personal.
- **Membership.** ``π`` is recomputed from the update alone: a softmax (temperature from
  the consortium) of the cosine similarity between Δ and each cluster's last aggregate
  update; one-hot at the arg-max for hard membership.

Notes:
    Everything here is post-processing of the DP-trained update and of public cluster
    state, so it costs no privacy (Dwork & Roth 2014, Prop. 2.1). The data mask and π
    never leave the organization in the clear: they enter the secure sum only as
    ``π_j · m`` (`MaskedUpdate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedhft.model import ClusterAdapters, MixtureError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _readonly(
    array: npt.ArrayLike, dtype: type[np.generic] = np.float64
) -> npt.NDArray[np.generic]:
    copy = np.array(array, dtype=dtype, copy=True)
    copy.flags.writeable = False
    return copy


def check_membership(pi: npt.ArrayLike, clusters: int) -> FloatArray:
    """π as a float64 vector; raises `MixtureError` unless it is a distribution over K."""
    vector = np.asarray(pi, dtype=np.float64)
    if vector.shape != (clusters,):
        raise MixtureError(f"membership must have {clusters} weights, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)) or np.any(vector < 0):
        raise MixtureError("membership weights must be finite and >= 0")
    if abs(float(vector.sum()) - 1.0) > 1e-9:
        raise MixtureError(f"membership must sum to 1, got {float(vector.sum())!r}")
    return vector


@dataclass(frozen=True)
class PersonalState:
    """What an organization keeps between rounds and never uploads in the clear.

    Attributes:
        membership: π, its weights over the K clusters.
        personal_rows: per block, the rows it kept personal (True = personal).
        values: per block, its own values of those blocks (only the personal rows are
            used; the others are overwritten by the mixture).
    """

    membership: FloatArray
    personal_rows: Mapping[str, BoolArray] = field(default_factory=dict)
    values: Mapping[str, FloatArray] = field(default_factory=dict)
    last_delta: Mapping[str, FloatArray] = field(default_factory=dict)
    """Δ of the organization's last round: compared with the clusters' aggregates of
    that same round to choose π for the next one. It never leaves the organization."""

    def __post_init__(self) -> None:
        membership = np.asarray(self.membership, dtype=np.float64)
        check_membership(membership, membership.size)
        if set(self.personal_rows) != set(self.values):
            raise MixtureError("personal_rows and values must name the same blocks")
        for block_id, rows in self.personal_rows.items():
            shape = np.shape(self.values[block_id])
            if len(shape) != 2 or np.shape(rows) != (shape[0],):
                raise MixtureError(f"personal block {block_id!r}: one bool per row expected")
        object.__setattr__(self, "membership", _readonly(membership))

    @property
    def head(self) -> dict[str, FloatArray]:
        """The organization's own head blocks, when it kept any head rows personal."""
        return {b: np.asarray(v) for b, v in self.values.items() if b.startswith("head.")}


def mixture_start(
    clusters: ClusterAdapters,
    pi: npt.ArrayLike,
    personal: PersonalState | None = None,
) -> dict[str, FloatArray]:
    """``Σ_j π_j G_j`` for every block, with the personal rows restored on top."""
    weights = check_membership(pi, clusters.k)
    start: dict[str, FloatArray] = {}
    for block_id in clusters.block_ids:
        total = np.zeros(np.shape(clusters.states[0][block_id]), dtype=np.float64)
        for weight, state in zip(weights, clusters.states, strict=True):
            if weight != 0.0:
                total += weight * state[block_id]
        start[block_id] = total
    if personal is not None:
        for block_id, rows in personal.personal_rows.items():
            if block_id not in start:
                raise MixtureError(f"personal block {block_id!r} is not a cluster block")
            own = np.asarray(personal.values[block_id], dtype=np.float64)
            if own.shape != start[block_id].shape:
                raise MixtureError(f"personal block {block_id!r} has the wrong shape")
            start[block_id][rows] = own[rows]
    return start


def row_update_norms(delta: FloatArray, lora_a: FloatArray | None = None) -> FloatArray:
    """Norm of each row of ``ΔW = Δ · A`` (or of Δ itself when there is no ``A``)."""
    rows = delta if lora_a is None else delta @ lora_a
    norms: FloatArray = np.linalg.norm(rows, axis=1)
    return norms


def data_mask(
    delta: FloatArray,
    *,
    keep_ratio: float,
    trainable_rows: BoolArray | None = None,
    lora_a: FloatArray | None = None,
) -> BoolArray:
    """The rows of a block to share: the ``keep_ratio`` share of trainable rows with the
    largest update norm (at least one; ties go to the lower row index)."""
    if not 0.0 < keep_ratio <= 1.0:
        raise MixtureError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    rows = delta.shape[0]
    eligible = np.ones(rows, dtype=np.bool_) if trainable_rows is None else trainable_rows
    candidates = np.flatnonzero(eligible)
    keep_count = max(1, math.ceil(keep_ratio * candidates.size - 1e-9))
    norms = row_update_norms(delta, lora_a)[candidates]
    # A stable sort on the negated norms keeps the lower index first among equal norms.
    chosen = candidates[np.argsort(-norms, kind="stable")[:keep_count]]
    mask = np.zeros(rows, dtype=np.bool_)
    mask[chosen] = True
    return mask


def _cosine(a: FloatArray, b: FloatArray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0.0 else 0.0


def update_membership(
    delta: Mapping[str, FloatArray],
    clusters: ClusterAdapters,
    *,
    temperature: float,
    hard: bool,
    previous: npt.ArrayLike | None = None,
) -> FloatArray:
    """π from an update alone, compared with the clusters' last aggregate updates.

    With a last aggregate update ``U_j`` for every cluster: ``softmax(s_j / T)`` with
    ``s_j = cos(Δ − Ū, U_j − Ū)`` over the blocks Δ and ``U_j`` share, where ``Ū`` is the
    mean of the ``U_j`` (hard: one-hot at the arg-max, lowest index on ties). Otherwise
    there is nothing to compare with: π stays ``previous`` (one-hot at its arg-max when
    hard), or uniform (hard: cluster 0).

    Notes:
        Raw cosines ``cos(Δ, U_j)`` are dominated by what every organization's update
        shares, so they are nearly equal across clusters and a soft π stays at the
        uniform fixed point: the clusters never separate (measured in the learning
        benchmark: adjusted Rand index 0.16). Centring on ``Ū`` compares only what
        distinguishes the clusters; with two clusters ``s_1 = −s_2``, the sign of Δ's
        projection on ``U_1 − U_2``, and rounds of (membership, aggregate) refine each
        other as in Lloyd's algorithm.
    """
    if temperature <= 0:
        raise MixtureError(f"temperature must be > 0, got {temperature}")
    k = clusters.k
    updates = [update for update in clusters.last_updates if update is not None]
    if len(updates) != k or k == 1 or not delta:
        pi = check_membership(previous, k) if previous is not None else np.full(k, 1.0 / k)
        return _one_hot(int(np.argmax(pi)), k) if hard else pi.copy()
    shared = [b for b in delta if all(b in update for update in updates)]
    if not shared:
        return np.full(k, 1.0 / k) if not hard else _one_hot(0, k)
    own = np.concatenate([np.ravel(delta[b]) for b in shared])
    theirs = np.stack([np.concatenate([np.ravel(u[b]) for b in shared]) for u in updates])
    return _closest(own, theirs, temperature=temperature, hard=hard)


def sketch_membership(
    sketch: npt.ArrayLike, clusters: ClusterAdapters, *, temperature: float, hard: bool
) -> FloatArray:
    """π from the organization's released sketch and the clusters' public centroids.

    ``softmax(s_j / T)`` with ``s_j = cos(s − c̄, c_j − c̄)``, ``c̄`` the mean centroid
    (hard: one-hot at the arg-max), as `update_membership` compares updates.

    Raises:
        MixtureError: the clusters carry no centroids, or the sketch's length differs.
    """
    if temperature <= 0:
        raise MixtureError(f"temperature must be > 0, got {temperature}")
    own = np.asarray(sketch, dtype=np.float64).reshape(-1)
    if not clusters.centroids or np.shape(clusters.centroids[0]) != own.shape:
        raise MixtureError(
            "sketch membership needs one centroid per cluster of the sketch's length"
        )
    return _closest(own, np.stack(clusters.centroids), temperature=temperature, hard=hard)


def _closest(
    own: FloatArray, references: FloatArray, *, temperature: float, hard: bool
) -> FloatArray:
    """softmax over the rows of ``references`` of ``cos(own − r̄, r_j − r̄) / T``."""
    centre = references.mean(axis=0)
    similarities = np.array([_cosine(own - centre, row - centre) for row in references])
    if hard:
        return _one_hot(int(np.argmax(similarities)), references.shape[0])
    logits = similarities / temperature
    weights = np.exp(logits - logits.max())
    result: FloatArray = weights / weights.sum()
    return result


def _one_hot(index: int, k: int) -> FloatArray:
    vector = np.zeros(k, dtype=np.float64)
    vector[index] = 1.0
    return vector


def personal_after_round(
    *,
    membership: FloatArray,
    end_state: Mapping[str, FloatArray],
    trainable_rows: Mapping[str, BoolArray],
    keep: Mapping[str, BoolArray],
    previous: PersonalState | None,
    delta: Mapping[str, FloatArray] | None = None,
) -> PersonalState:
    """The personal state after a round: trained rows not kept stay personal.

    Blocks trained this round replace their previous personal entry; personal blocks not
    trained this round (a tier change) are carried over unchanged.
    """
    rows: dict[str, BoolArray] = {}
    values: dict[str, FloatArray] = {}
    if previous is not None:
        for block_id in previous.personal_rows:
            if block_id not in trainable_rows:
                rows[block_id] = np.array(previous.personal_rows[block_id], dtype=np.bool_)
                values[block_id] = np.array(previous.values[block_id], dtype=np.float64)
    for block_id, trainable in trainable_rows.items():
        personal = trainable & ~keep[block_id]
        if personal.any():
            rows[block_id] = personal
            values[block_id] = np.array(end_state[block_id], dtype=np.float64)
    return PersonalState(
        membership=membership,
        personal_rows=rows,
        values=values,
        last_delta={b: np.array(v, dtype=np.float64) for b, v in (delta or {}).items()},
    )


def block_order(blocks: Sequence[str], chosen: Sequence[str]) -> tuple[str, ...]:
    """``chosen`` in the fixed order of ``blocks``."""
    wanted = set(chosen)
    return tuple(b for b in blocks if b in wanted)
