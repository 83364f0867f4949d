"""The server's side of FedAMoLE rounds, and a whole FedAMoLE federation in one process.

`MoLECoordinator` holds the learning state of a FedAMoLE run (ARCHITECTURE.md §2.3, issue 7):

- **Round 1: assignment.** Each organization's affinity arrives as a DP release (noisy,
  accounted on the client); the coordinator runs reverse-selection expert assignment
  (`assign_experts`, an exact MILP checked before return) with the organizations' tiers
  and publishes the result. The assignment is public: it decides the secure-sum
  supports, which every party must know.
- **Every round.** Each organization receives the global value of the blocks it holds
  (`MoLERelease`); one masking-mode secure sum averages every block over its holders
  (the shared expert and router ``P`` over everyone, each expert over its holders, the
  head too when the consortium shares it); a block with fewer holders than the minimum
  cohort is left out and reported, and stays with its holders.

The gRPC server drives the same coordinator; `run_fedamole_in_process` drives it with the
real participants and the real secure aggregation, without a network (tests, benchmark).

Notes:
    Values, not deltas, are averaged (every ``A`` is frozen and shared, so averaging ``B``
    is exact); organizations clip every value to ``secure_aggregation.clip``. The server
    sees only the assignment (public), secure sums and DP affinity releases.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedhft.model import (
    ClusterAdapters,
    MoLERelease,
    decode_clusters,
    encode_clusters,
    initial_mole_state,
    upload_blocks,
)
from fedhft.policies import ConsortiumConfig, consortium_hash
from fedhft.protocol import (
    AggregateResult,
    SessionParams,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.blocks import row_average
from fedhft.protocol.errors import (
    InvalidEnvelopeError,
    MessageTooLargeError,
    UnsupportedProtocolError,
    WrongRoundError,
)

from ._assignment import assign_experts
from ._federation import ClusterOutcome, RoundSummary, SumError, check_sums, cohort_session
from ._store import AggregatorStore
from .errors import RoundError

FloatArray = npt.NDArray[np.float64]

_EXPERT_BLOCK = re.compile(r"\.expert(\d+)$")


def expert_of(block_id: str) -> int | None:
    """The pool expert a block belongs to, or None for shared, router and head blocks."""
    match = _EXPERT_BLOCK.search(block_id)
    return int(match.group(1)) if match else None


def mole_digest(states: Mapping[str, FloatArray], assignment: Mapping[str, Sequence[int]]) -> bytes:
    """SHA-256 of the global block values and the assignment, bound into session ids."""
    hasher = hashlib.sha256(b"fedhft/mole-state/v1")
    plan = json.dumps({org: list(experts) for org, experts in sorted(assignment.items())})
    hasher.update(len(plan).to_bytes(4, "big") + plan.encode())
    for block_id in sorted(states):
        values = np.ascontiguousarray(states[block_id], dtype="<f8")
        name = f"{block_id}/{values.shape}".encode()
        hasher.update(len(name).to_bytes(4, "big") + name + values.tobytes())
    return hasher.digest()


class MoLECoordinator:
    """The learning state of a FedAMoLE server: assignment and global block values.

    Args:
        consortium: the consortium configuration (method ``fedamole``).
        run_id: the training run (bound into session ids).
        initial_state: every pool block's starting value
            (`fedhft.model.initial_mole_state`).
        assignment: the published assignment, when the server restarts after round 1.
        aggregated: the blocks the last completed round averaged, on restart.
    """

    def __init__(
        self,
        consortium: ConsortiumConfig,
        *,
        run_id: str,
        initial_state: Mapping[str, npt.ArrayLike],
        assignment: Mapping[str, Sequence[int]] | None = None,
        aggregated: Collection[str] = (),
    ) -> None:
        self.consortium = consortium
        self.run_id = run_id
        self.config_hash = bytes.fromhex(consortium_hash(consortium))
        self.states: dict[str, FloatArray] = {
            b: np.array(v, dtype=np.float64) for b, v in initial_state.items()
        }
        pool = consortium.fedamole.num_experts
        experts = {expert_of(b) for b in self.states} - {None}
        if experts != set(range(pool)):
            raise RoundError(
                f"the initial state holds experts {sorted(e for e in experts if e is not None)}, "
                f"the consortium's pool is 0..{pool - 1}"
            )
        self.shapes = {b: (int(v.shape[0]), int(v.shape[1])) for b, v in self.states.items()}
        self.assignment: dict[str, tuple[int, ...]] | None = (
            None if assignment is None else {o: tuple(e) for o, e in assignment.items()}
        )
        self.aggregated: frozenset[str] = frozenset(aggregated)
        # Architectures come from the assignment, not from tier masks.
        self.tier_blocks: dict[str, tuple[str, ...]] = {}

    @property
    def clusters(self) -> ClusterAdapters:
        """The global state as one "cluster" (the form the server stores and serves)."""
        return ClusterAdapters(states=(dict(self.states),), last_updates=(None,))

    def model_for_round(self, round_number: int) -> ClusterAdapters:
        """The global state released at the start of ``round_number`` (every round alike)."""
        del round_number
        return self.clusters

    def restore(self, summary: Mapping[str, Any] | None) -> None:
        """Recompute which blocks the last completed round averaged, from its summary.

        Every block its participants upload was aggregated except those it reports as
        left out, so the summary the store keeps is enough after a restart.
        """
        if summary is None or self.assignment is None:
            self.aggregated = frozenset()
            return
        participants = [o for o in summary.get("participants", []) if o in self.assignment]
        left_out = {
            b for outcome in summary.get("outcomes", []) for b in outcome.get("skipped_blocks", {})
        }
        self.aggregated = frozenset(set(self.supports(participants)) - left_out)

    # ------------------------------------------------------------------ assignment

    def assign(
        self, affinities: Mapping[str, npt.ArrayLike], tiers_of_orgs: Mapping[str, str]
    ) -> dict[str, tuple[int, ...]]:
        """RSEA over the organizations that released an affinity; publish the result.

        Raises:
            InfeasibleAssignmentError: the organizations' tiers admit no assignment, or an
                affinity has the wrong length or non-finite values.
            RoundError: the assignment was already made (it is fixed for the run).
        """
        if self.assignment is not None:
            raise RoundError("the FedAMoLE assignment is made once, in round 1")
        self.assignment = assign_experts(self.consortium, affinities, tiers_of_orgs)
        return dict(self.assignment)

    def experts_of(self, organization: str) -> tuple[int, ...]:
        """The experts ``organization`` holds under the published assignment."""
        if self.assignment is None:
            raise RoundError("no FedAMoLE assignment yet: collect the affinities of round 1")
        try:
            return self.assignment[organization]
        except KeyError:
            raise RoundError(f"{organization} has no experts in this run's assignment") from None

    def held_blocks(self, organization: str) -> tuple[str, ...]:
        """Every block ``organization`` holds (shared, router, its experts, the head)."""
        experts = set(self.experts_of(organization))
        return tuple(b for b in self.states if expert_of(b) in experts or expert_of(b) is None)

    def release_for(self, organization: str, round_number: int) -> MoLERelease:
        """What ``organization`` receives at the start of ``round_number``."""
        return MoLERelease(
            round=round_number,
            experts=self.experts_of(organization),
            states={b: self.states[b].copy() for b in self.held_blocks(organization)},
            aggregated=frozenset(b for b in self.aggregated if b in self.held_blocks(organization)),
        )

    # ------------------------------------------------------------------ rounds

    def supports(self, participants: Collection[str]) -> dict[str, frozenset[str]]:
        """Block id → the participants that upload it (public, from the assignment)."""
        supports: dict[str, set[str]] = {}
        for org in participants:
            for block_id in upload_blocks(self.held_blocks(org), self.consortium):
                supports.setdefault(block_id, set()).add(org)
        return {b: frozenset(orgs) for b, orgs in supports.items()}

    def session_params(
        self,
        *,
        round_number: int,
        attempt: int,
        participants: Collection[str],
        cluster: int = 0,
    ) -> tuple[SessionParams, dict[str, int]]:
        """The round's secure-aggregation session and the blocks left out of it.

        FedAMoLE has one session per round (``cluster`` 0); ``participants`` may map each
        organization to its tier, as the server passes it.

        Raises:
            RoundError: ``cluster`` is not 0, or a participant has no experts.
            CohortTooSmallError: fewer participants than the minimum cohort, or no block
                held by that many of them.
        """
        if cluster != 0:
            raise RoundError(f"FedAMoLE rounds have one session (cluster 0), not {cluster}")
        roster = sorted(participants)
        return cohort_session(
            self.consortium,
            run_id=f"{self.run_id}.a{attempt}",
            round_number=round_number,
            cluster=0,
            roster=roster,
            config_hash=self.config_hash,
            model_hash=mole_digest(self.states, self.assignment or {}),
            shapes=self.shapes,
            supports=self.supports(roster),
        )

    def apply(
        self,
        *,
        round_number: int,
        participants: Sequence[str],
        results: Mapping[int, AggregateResult],
        skipped: Mapping[int, Mapping[str, int]] | None = None,
        sum_error: SumError | None = None,
    ) -> RoundSummary:
        """Set every aggregated block to its holders' secure average; report the rest.

        ``results`` and ``skipped`` are keyed by session (only 0), as the server has them.
        Every sum is checked against its bounds first (`check_sums`).

        Raises:
            SumOutOfBoundsError: a sum no honest contributors can produce; nothing of the
                round is applied.
        """
        if set(results) != {0}:
            raise RoundError(f"round {round_number} needs the one FedAMoLE secure sum (0)")
        check_sums(self.consortium, results, self.shapes, sum_error)
        result = results[0]
        for block_id, block_sum in result.blocks.items():
            if block_id not in self.shapes:
                raise RoundError(f"the secure sum carries unknown block {block_id!r}")
            average, has_weight = row_average(block_sum.sum, *self.shapes[block_id])
            self.states[block_id][has_weight] = average[has_weight]
        self.aggregated = frozenset(result.blocks)
        left_out = dict((skipped or {}).get(0, {}))
        left_out.update(result.skipped)
        outcome = ClusterOutcome(
            cluster=0,
            survivors=tuple(result.survivors),
            dropped=tuple(result.dropped),
            aggregated_blocks=len(result.blocks),
            skipped_blocks=left_out,
        )
        return RoundSummary(
            round=round_number,
            clusters=1,
            participants=tuple(sorted(participants)),
            outcomes=(outcome,),
        )


# --------------------------------------------------------------------------- server


AFFINITY_VERSION = 1
"""Version of the `AffinityUpload` message this server accepts."""


def mole_coordinator_for_server(
    consortium: ConsortiumConfig,
    *,
    run_id: str,
    store: AggregatorStore,
) -> MoLECoordinator:
    """The FedAMoLE coordinator of a server: fresh, or restored from its SQLite state.

    Restores the global values of the last completed round, the assignment (made once,
    in round 1) and which blocks that round averaged.
    """
    initial = initial_mole_state(consortium)
    stored = store.latest_model()
    if stored is not None:
        initial = dict(decode_clusters(stored[1]).states[0])
    coordinator = MoLECoordinator(
        consortium, run_id=run_id, initial_state=initial, assignment=store.assignment()
    )
    if stored is None:
        store.set_initial_model(encode_clusters(coordinator.clusters))
    coordinator.restore(store.last_summary())
    return coordinator


def mole_plan(coordinator: MoLECoordinator) -> pb.MoLEPlan:
    """FedAMoLE's part of a round announcement: the assignment, or a request for it."""
    assignment = coordinator.assignment
    return pb.MoLEPlan(
        affinity_requested=assignment is None,
        num_experts=coordinator.consortium.fedamole.num_experts,
        assignment=[
            pb.ExpertAssignment(organization=org, experts=list(experts))
            for org, experts in sorted((assignment or {}).items())
        ],
        aggregated_blocks=sorted(coordinator.aggregated),
    )


def validate_affinity_upload(
    request: pb.AffinityUpload, *, expected_round: int, run_id: str, num_experts: int
) -> tuple[float, ...]:
    """The affinity of a well-formed `AffinityUpload` for the open attempt.

    Raises:
        UnsupportedProtocolError: another message version.
        WrongRoundError: the upload names another round or attempt.
        MessageTooLargeError: more values than the pool has experts.
        InvalidEnvelopeError: a value is not finite or outside [0, 1], or they do not sum
            to 1 (a release is normalized on the client).
    """
    if request.version != AFFINITY_VERSION:
        raise UnsupportedProtocolError(
            f"`version` {request.version} of AffinityUpload is not supported; use "
            f"{AFFINITY_VERSION}"
        )
    if request.round != expected_round or request.run_id != run_id:
        raise WrongRoundError(
            f"the affinity is for round {request.round} ({request.run_id!r:.80}); round "
            f"{expected_round} ({run_id}) is open"
        )
    values = tuple(float(v) for v in request.affinity)
    if len(values) > num_experts:
        raise MessageTooLargeError(
            f"`affinity` has {len(values)} values; the pool has {num_experts} experts"
        )
    if len(values) != num_experts:
        raise InvalidEnvelopeError(
            f"`affinity` needs fedamole.num_experts = {num_experts} values, got {len(values)}"
        )
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise InvalidEnvelopeError("`affinity` values must be finite numbers in [0, 1]")
    if abs(math.fsum(values) - 1.0) > 1e-6:
        raise InvalidEnvelopeError("`affinity` must sum to 1 (the normalized noisy release)")
    return values


# --------------------------------------------------------------------------- in process
