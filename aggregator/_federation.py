"""The server's side of federated rounds, independent of any transport.

One round: the coordinator releases the cluster adapters (K of them, or one during
warm-up), builds one secure-aggregation session per cluster over the round's
participants, and moves every cluster adapter by the per-row averages of its members'
updates, computed from secure sums alone (ARCHITECTURE.md §2.2, §4):

``G_j[b] ← G_j[b] + Σ_i π_ij·m_i⊙Δ_i[b] / Σ_i π_ij·m_i``   (rows with no weight stay).

The same code drives the gRPC aggregation server and the in-process simulation used by
the learning benchmark.

Notes:
    Clusters split after the warm-up rounds, in one of two ways (``clustering.signal``).

    ``sketch``: the split computes the K centroids of the sketches the organizations
    released during the warm-up (DP releases; `_sketches.sketch_centroids`). They travel
    with the cluster adapters from then on, and each organization's π compares its own
    sketch with them.

    ``update``: the server cannot see individual updates, so it cannot seed clusters the
    way the FedHFT paper does (k-means on updates). Instead each cluster starts from the
    warm-up model with a *reference update*: the last warm-up aggregate plus a small
    public random direction, different per cluster. Organizations compare their own DP
    update with these references (post-processing), and from then on each reference is
    the cluster's real last aggregate, so memberships and references refine each other
    round by round, as in Lloyd's algorithm, with the server seeing only secure sums.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedhft.model import HEAD_WEIGHT, ClusterAdapters
from fedhft.model import decode_clusters as decode_clusters
from fedhft.model import encode_clusters as encode_clusters
from fedhft.policies import ConsortiumConfig, Method, consortium_hash
from fedhft.protocol import AggregateResult, SessionParams, session_threshold
from fedhft.protocol.blocks import check_packed_sum, packed_length, row_average
from fedhft.protocol.errors import CohortTooSmallError, SumOutOfBoundsError

from ._sketches import sketch_centroids
from .errors import RoundError

FloatArray = npt.NDArray[np.float64]

_SPLIT_TAG = b"fedhft/cluster-split/v1"


def clusters_digest(clusters: ClusterAdapters) -> bytes:
    """SHA-256 of the released model's values, independent of how they are serialized.

    Bound into every session id of the round. The safetensors bytes are not used: their
    header order is not guaranteed, the arrays are.
    """
    hasher = hashlib.sha256(b"fedhft/clusters/v1")
    centroids = tuple({"sketch": c} for c in clusters.centroids)
    for kind, maps in (
        ("state", clusters.states),
        ("update", clusters.last_updates),
        ("centroid", centroids),
    ):
        for j, arrays in enumerate(maps):
            for block_id in sorted(arrays or {}):
                values = np.ascontiguousarray((arrays or {})[block_id], dtype="<f8")
                name = f"{kind}/{j}/{block_id}/{values.shape}".encode()
                hasher.update(len(name).to_bytes(4, "big") + name + values.tobytes())
    return hasher.digest()


def cohort_session(
    consortium: ConsortiumConfig,
    *,
    run_id: str,
    round_number: int,
    cluster: int,
    roster: Sequence[str],
    config_hash: bytes,
    model_hash: bytes,
    shapes: Mapping[str, tuple[int, int]],
    supports: Mapping[str, Collection[str]],
) -> tuple[SessionParams, dict[str, int]]:
    """One secure-aggregation session over ``roster`` for the blocks held (``supports``)
    by at least the minimum cohort; the blocks left out are returned with their holder
    counts (they stay with their holders this round).

    Raises:
        CohortTooSmallError: fewer participants than the minimum cohort, or no block
            held by that many of them.
    """
    spec = consortium.secure_aggregation
    if len(roster) < spec.min_cohort:
        raise CohortTooSmallError(
            f"round {round_number} has {len(roster)} participants, fewer than the "
            f"minimum cohort {spec.min_cohort}"
        )
    kept = {b: orgs for b, orgs in supports.items() if len(orgs) >= spec.min_cohort}
    skipped = {b: len(orgs) for b, orgs in supports.items() if b not in kept}
    if not kept:
        raise CohortTooSmallError(
            f"no block of round {round_number} is held by {spec.min_cohort} participants"
        )
    params = SessionParams(
        run_id=run_id,
        round=round_number,
        cluster=cluster,
        roster=list(roster),
        config_hash=config_hash,
        model_hash=model_hash,
        threshold=session_threshold(
            len(roster), neighbours=spec.neighbours, at_least=spec.threshold
        ),
        min_cohort=spec.min_cohort,
        block_lengths={b: packed_length(*shapes[b]) for b in sorted(kept)},
        block_supports={b: frozenset(kept[b]) for b in sorted(kept)},
        clip=spec.clip,
        scale=spec.scale,
        neighbours=spec.neighbours,
    )
    return params, skipped


@dataclass(frozen=True, eq=False)
class RefusedSums(AggregateResult):
    """A session whose unmasked sum of a block decoded beyond the ring range its
    contributors can reach (`fedhft.protocol.SecAggServer.finish_unmask`): it releases
    no block, and `check_sums` reports ``refused`` like any other broken bound."""

    refused: SumOutOfBoundsError


SumError = Callable[[int], float]
"""Contributors → bound on the total rounding error of one coordinate of their sum."""


def check_sums(
    consortium: ConsortiumConfig,
    results: Mapping[int, AggregateResult],
    shapes: Mapping[str, tuple[int, int]],
    sum_error: SumError | None = None,
) -> None:
    """Refuse every cluster's sums unless each block is one its contributors' clipped
    inputs can produce (`fedhft.protocol.blocks.check_packed_sum`).

    ``sum_error`` defaults to the masking mode's: one quantization step per contributor
    (plus float64 slack).

    A cluster whose session already refused its sums (`RefusedSums`) is reported the
    same way.

    Raises:
        SumOutOfBoundsError: the first block out of bounds; nothing may be applied.
    """
    spec = consortium.secure_aggregation
    for cluster in sorted(results):
        result = results[cluster]
        if isinstance(result, RefusedSums):
            refused = result.refused
            raise SumOutOfBoundsError(
                f"cluster {cluster}: {refused}",
                block=refused.block,
                bound=refused.bound,
                cluster=cluster,
            )
        for block_id, block_sum in sorted(result.blocks.items()):
            if block_id not in shapes:
                raise RoundError(f"the secure sum carries unknown block {block_id!r}")
            n = block_sum.count
            error = sum_error(n) if sum_error is not None else n / spec.scale
            try:
                check_packed_sum(
                    block_sum.sum,
                    *shapes[block_id],
                    block=block_id,
                    contributors=n,
                    clip=spec.clip,
                    error=error + 1e-9 * max(1.0, n * spec.clip),
                )
            except SumOutOfBoundsError as refused:
                raise SumOutOfBoundsError(
                    f"cluster {cluster}: {refused}",
                    block=refused.block,
                    bound=refused.bound,
                    cluster=cluster,
                ) from None


@dataclass(frozen=True)
class ClusterOutcome:
    """What one cluster's secure sum did in a round."""

    cluster: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    aggregated_blocks: int
    skipped_blocks: dict[str, int] = field(default_factory=dict)
    """Blocks left out (held by fewer than the minimum cohort) → holder count."""


@dataclass(frozen=True)
class RoundSummary:
    """A completed round, as the server reports it (no individual value in it)."""

    round: int
    clusters: int
    participants: tuple[str, ...]
    outcomes: tuple[ClusterOutcome, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "clusters": self.clusters,
            "participants": list(self.participants),
            "outcomes": [
                {
                    "cluster": o.cluster,
                    "survivors": list(o.survivors),
                    "dropped": list(o.dropped),
                    "aggregated_blocks": o.aggregated_blocks,
                    "skipped_blocks": o.skipped_blocks,
                }
                for o in self.outcomes
            ],
        }


class RoundCoordinator:
    """The learning state of the server: cluster adapters and how a round moves them.

    Args:
        consortium: the consortium configuration.
        run_id: the training run (bound into session ids).
        initial_state: every block's starting value (B blocks zero, the head as
            initialized from the consortium seed), ``rows × cols`` each.
        tier_blocks: tier name → the blocks that tier trains and uploads (public).
        clusters: the model to resume from, when the server restarts.
        sketch_length: the length of a sketch (``clustering.signal: sketch``; the base
            model's hidden width, `fedhft.model.sketch_dimension`); default: the input
            width of the head in ``initial_state``, None without one.

    Attributes:
        sketches: organization → its released sketch (``clustering.signal: sketch``),
            added by the transport as they arrive during the warm-up.
    """

    def __init__(
        self,
        consortium: ConsortiumConfig,
        *,
        run_id: str,
        initial_state: Mapping[str, FloatArray],
        tier_blocks: Mapping[str, Sequence[str]],
        clusters: ClusterAdapters | None = None,
        sketch_length: int | None = None,
    ) -> None:
        self.consortium = consortium
        self.run_id = run_id
        self.config_hash = bytes.fromhex(consortium_hash(consortium))
        self.shapes = {b: (int(v.shape[0]), int(v.shape[1])) for b, v in initial_state.items()}
        self.tier_blocks = {tier: tuple(blocks) for tier, blocks in tier_blocks.items()}
        self.clusters = (
            clusters if clusters is not None else ClusterAdapters.initial(initial_state, 1)
        )
        self.sketches: dict[str, FloatArray] = {}
        head = self.shapes.get(HEAD_WEIGHT)
        self.sketch_length = (
            sketch_length if sketch_length is not None else (head[1] if head is not None else None)
        )

    # ------------------------------------------------------------------ planning

    def clusters_in_round(self, round_number: int) -> int:
        """K during a round: one during warm-up (and for single-cluster methods)."""
        spec = self.consortium.clustering
        if self.consortium.method in (Method.FEDAVG, Method.LOCAL):
            return 1
        return 1 if round_number <= spec.warmup_rounds else spec.clusters

    def model_for_round(self, round_number: int) -> ClusterAdapters:
        """The cluster adapters released at the start of ``round_number``.

        At the first round after warm-up the single adapter is split into K copies whose
        reference updates differ by a small public random direction (see the module
        notes); the split is deterministic in the run id, so a restarted server makes
        the same one.
        """
        k = self.clusters_in_round(round_number)
        if self.clusters.k == k:
            return self.clusters
        if self.clusters.k != 1:
            raise RoundError(f"cannot go from {self.clusters.k} clusters to {k}")
        self.clusters = self._split(k)
        return self.clusters

    def _split(self, k: int) -> ClusterAdapters:
        state = self.clusters.states[0]
        base = self.clusters.last_updates[0]
        seed = hashlib.sha256(_SPLIT_TAG + self.run_id.encode()).digest()
        rng = np.random.default_rng(int.from_bytes(seed, "big"))
        references: list[dict[str, FloatArray]] = []
        for _ in range(k):
            reference: dict[str, FloatArray] = {}
            # In block-id order: the state's own order is the model's in the server that
            # started the run but the stored (sorted) one in a restarted server, and the
            # redone round must release the model its first attempt announced.
            for block_id in sorted(state):
                values = state[block_id]
                centre = base[block_id] if base is not None else np.zeros_like(values)
                scale = float(np.std(centre)) if base is not None else 0.0
                scale = scale if scale > 0 else 1e-3
                reference[block_id] = centre + 0.5 * scale * rng.standard_normal(values.shape)
            references.append(reference)
        centroids: tuple[FloatArray, ...] = ()
        if self.consortium.clustering.signal == "sketch":
            try:
                centroids = sketch_centroids(self.sketches, k, run_id=self.run_id)
            except ValueError as error:
                raise RoundError(
                    f"the clusters cannot split on sketches: {error} (warm-up participants "
                    "release them)"
                ) from None
        return ClusterAdapters(
            states=tuple(dict(state) for _ in range(k)),
            last_updates=tuple(references),
            centroids=centroids,
        )

    def session_params(
        self,
        *,
        round_number: int,
        attempt: int,
        cluster: int,
        participants: Mapping[str, str],
    ) -> tuple[SessionParams, dict[str, int]]:
        """The secure-aggregation session of one cluster, and the blocks left out.

        ``participants`` maps each organization of the round to its tier. Blocks held
        by fewer than the minimum cohort are left out of the session (they stay with
        their holders this round) and returned with their holder counts.

        Raises:
            CohortTooSmallError: fewer participants than the minimum cohort.
        """
        supports: dict[str, set[str]] = {}
        for org, tier in participants.items():
            for block_id in self.tier_blocks[tier]:
                supports.setdefault(block_id, set()).add(org)
        return cohort_session(
            self.consortium,
            run_id=f"{self.run_id}.a{attempt}",
            round_number=round_number,
            cluster=cluster,
            roster=sorted(participants),
            config_hash=self.config_hash,
            model_hash=clusters_digest(self.model_for_round(round_number)),
            shapes=self.shapes,
            supports=supports,
        )

    # ------------------------------------------------------------------ applying

    def apply(
        self,
        *,
        round_number: int,
        participants: Sequence[str],
        results: Mapping[int, AggregateResult],
        skipped: Mapping[int, Mapping[str, int]] | None = None,
        sum_error: SumError | None = None,
    ) -> RoundSummary:
        """Move every cluster adapter by its per-row averaged secure sum.

        Blocks that were not aggregated keep their value, and their last update is zero.
        Every sum is checked against its bounds first (`check_sums`, with ``sum_error``).

        Raises:
            SumOutOfBoundsError: a sum no honest contributors can produce; nothing of the
                round is applied.
        """
        current = self.model_for_round(round_number)
        if set(results) != set(range(current.k)):
            raise RoundError(
                f"round {round_number} needs the secure sums of clusters 0..{current.k - 1}, "
                f"got {sorted(results)}"
            )
        check_sums(self.consortium, results, self.shapes, sum_error)
        states: list[dict[str, FloatArray]] = []
        updates: list[dict[str, FloatArray]] = []
        outcomes: list[ClusterOutcome] = []
        for j in range(current.k):
            result = results[j]
            state = {b: np.array(v, dtype=np.float64) for b, v in current.states[j].items()}
            update = {b: np.zeros_like(v) for b, v in state.items()}
            for block_id, block_sum in result.blocks.items():
                rows, cols = self.shapes[block_id]
                average, has_weight = row_average(block_sum.sum, rows, cols)
                state[block_id][has_weight] += average[has_weight]
                update[block_id] = average
            states.append(state)
            updates.append(update)
            left_out = dict((skipped or {}).get(j, {}))
            left_out.update(result.skipped)
            outcomes.append(
                ClusterOutcome(
                    cluster=j,
                    survivors=tuple(result.survivors),
                    dropped=tuple(result.dropped),
                    aggregated_blocks=len(result.blocks),
                    skipped_blocks=left_out,
                )
            )
        self.clusters = ClusterAdapters(
            states=tuple(states), last_updates=tuple(updates), centroids=current.centroids
        )
        return RoundSummary(
            round=round_number,
            clusters=current.k,
            participants=tuple(sorted(participants)),
            outcomes=tuple(outcomes),
        )
