"""FedAMoLE rounds of a `FederatedClient` over gRPC (ARCHITECTURE.md §2.3, §7; issue 7).

A FedAMoLE round seen from the organization, on the wire:

1. round 1 (until the server announces the assignment): check the budget for the
   affinity release *and* the round, join, and upload the DP affinity release
   (`AffinityUpload`, version 1) — released once, kept on disk and re-sent after a
   restart; then wait for the same attempt to be announced again with the assignment;
2. every round: check the announcement (configuration hash, pool size, block layout,
   a well-formed assignment), refuse it when the budget does not allow the round,
   join, download the global state (streamed, checked against the announced hash),
   train one accounted round through `MoLEParticipant` (or re-send the staged one), and
   take part in the round's one masking-mode session, whose supports must be exactly the
   blocks this organization holds under the assignment (`check_masking_session`).

Everything else — enrollment, retries, waiting for announcements, the refusal and
session wire operations of its `ClientContext` — is the `FederatedClient`'s own.

Notes:
    The server sends every organization the whole pool's global values (averages of
    secure sums, post-processing of DP outputs); an organization trains and uploads only
    the blocks it holds. CKKS mode is not supported for FedAMoLE yet.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import numpy.typing as npt
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedhft.accounting import compute_epsilon
from fedhft.audit import EventType, round_joined_payload
from fedhft.model import (
    CausalMoLEModel,
    MoLEModel,
    MoLERelease,
    decode_clusters,
    upload_blocks,
)
from fedhft.policies import SecureAggregationMode
from fedhft.protocol import (
    SessionParams,
    validate_round_announcement,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.errors import ChunkIntegrityError, ConsortiumMismatchError, RemoteError
from fedhft.protocol.session_codec import decode_session, released_model_hash

from .._client_sessions import ATTEMPT_OVER, MaskingRun, run_sessions
from .._data import TextDataset
from .._instructions import InstructionDataset
from .._rounds import ClientContext, RoundMethod, RoundOutcome
from ..errors import BudgetExhaustedError, DataError
from ..privacy._ledger import PrivacyLedger
from ._participant import MoLEParticipant
from ._trainer import MoLETrainer

_LOG = logging.getLogger("fedhft.sdk.client")
FloatArray = npt.NDArray[np.float64]

AFFINITY_VERSION = 1


class FedAMoLERounds(RoundMethod):
    """The FedAMoLE side of a `FederatedClient`: its trainer, participant and rounds.

    Args:
        context: the client's context (connection, policy, audit log, run state).
        base_model: the base model (a sequence classifier, or the causal LM for
            ``model.task: causal-lm``); never modified (each MoLE model is
            installed into a copy).
    """

    def __init__(
        self,
        context: ClientContext,
        base_model: PreTrainedModel,
        *,
        tokenizer: PreTrainedTokenizerBase | None,
        seed: int | None,
        non_private_baseline: bool,
    ) -> None:
        if context.consortium.secure_aggregation.mode is not SecureAggregationMode.MASKING:
            # Refused here, before any release: a CKKS session would be found only after
            # a round had been trained and spent.
            raise ConsortiumMismatchError("FedAMoLE runs with masking-mode secure aggregation only")
        self.context = context
        pristine = copy.deepcopy(base_model)
        self.trainer = MoLETrainer(
            context.policy,
            context.consortium,
            base_factory=lambda: copy.deepcopy(pristine),
            audit=context.audit_log,
            tokenizer=tokenizer,
            non_private_baseline=non_private_baseline,
            seed=seed,
        )
        causal = context.consortium.model.task == "causal-lm"
        if causal != isinstance(context.dataset, InstructionDataset):
            raise DataError(
                f"the consortium's `model.task` is {context.consortium.model.task!r}: "
                f"FedAMoLE trains on {'instruction records' if causal else 'labelled texts'}, "
                f"got {type(context.dataset).__name__}"
            )
        self._participant = MoLEParticipant(
            self.trainer, context.dataset, state_dir=context.state_dir
        )
        pool = (CausalMoLEModel if causal else MoLEModel)(
            copy.deepcopy(pristine),
            context.consortium.adapter,
            expert_ids=range(context.consortium.fedamole.num_experts),
            layers=context.consortium.fedamole.layers,
        )
        self.pool_shapes = pool.block_shapes()
        del pool
        self.joined: set[tuple[int, str]] = set()
        """(round, attempt run id) pairs joined; attempt ids restart at ".a1" each round."""

    # ------------------------------------------------------------------ rounds

    @property
    def participant(self) -> MoLEParticipant:
        return self._participant

    @property
    def ledger(self) -> PrivacyLedger | None:
        return self.trainer.ledger

    def take_part(self, announcement: pb.RoundAnnouncement) -> RoundOutcome:
        round_number = int(announcement.round)
        self._check(announcement)
        if announcement.mole.affinity_requested:
            refused = self._send_affinity(announcement)
            if refused is not None:
                return refused
            ready = self._await_assignment(announcement)
            if ready is None:
                return RoundOutcome(round_number, "aborted", "the attempt ended before RSEA")
            announcement = ready
            self._check(announcement)
        self.context.handled.add((round_number, announcement.run_id))
        assignment = {a.organization: tuple(a.experts) for a in announcement.mole.assignment}
        experts = assignment.get(self.context.organization)
        if experts is None:
            return RoundOutcome(round_number, "late", "this organization holds no experts")
        try:
            return self._contribute(announcement, experts)
        except RemoteError as error:
            if error.code not in ATTEMPT_OVER:
                raise
            _LOG.warning("round %d: this attempt ended (%s)", round_number, error)
            return RoundOutcome(round_number, "aborted", str(error))

    def _check(self, announcement: pb.RoundAnnouncement) -> None:
        """Refuse a round whose configuration, layout or assignment this client rejects."""
        context = self.context
        round_number = int(announcement.round)
        consortium = context.consortium
        plan = announcement.mole
        layout = {b.block_id: (b.rows, b.cols) for b in announcement.blocks}
        problem = ""
        if announcement.consortium_config_hash != context.config_hash:
            problem = "the announced round uses another consortium configuration"
        elif (
            not announcement.HasField("mole") or plan.num_experts != consortium.fedamole.num_experts
        ):
            problem = "the server does not run this consortium's FedAMoLE pool"
        elif announcement.clusters != 1 or layout != self.pool_shapes:
            problem = "the server's MoLE blocks differ from this organization's model"
        else:
            problem = _assignment_problem(plan, consortium.fedamole.num_experts)
        if problem:
            error = ConsortiumMismatchError(f"{problem}; refusing round {round_number}")
            context.refuse(round_number, pb.REFUSAL_REASON_POLICY_INCOMPATIBLE, str(error))
            raise error

    def _budget_refusal(self, round_number: int, *, with_affinity: bool) -> RoundOutcome | None:
        """Refuse (and audit) a round the budget does not allow; None when it fits."""
        ledger = self.trainer.ledger
        if ledger is None or self._participant.pending_upload(round_number) is not None:
            return None
        records = [self.trainer.mechanism_record(round_number, len(self.context.dataset))]
        if with_affinity and not self._participant.affinity_released():
            records.insert(0, self.trainer.affinity_record(round_number))
        # The affinity release and the round must fit together, not each alone.
        requested = compute_epsilon(
            (*ledger.records, *records), accountant=ledger.accountant, delta=ledger.delta
        )
        if requested <= ledger.epsilon_budget:
            return None
        self.context.refuse(
            round_number,
            pb.REFUSAL_REASON_BUDGET_EXHAUSTED,
            "privacy budget exhausted",
            spent=ledger.spent(),
            requested=requested,
            budget=ledger.epsilon_budget,
        )
        return RoundOutcome(round_number, "refused", "privacy budget exhausted")

    def _join(self, announcement: pb.RoundAnnouncement) -> bool:
        """Join the announced attempt once; whether the server accepted the join."""
        attempt = (int(announcement.round), announcement.run_id)
        if attempt in self.joined:
            return True
        context = self.context
        joined: pb.JoinResponse = context.require_connection().unary(
            "JoinRound",
            pb.JoinRequest(
                round=announcement.round, participate=True, tier=context.policy.training.tier
            ),
            timeout=context.rpc_timeout_s,
        )
        if joined.accepted:
            self.joined.add(attempt)
        return bool(joined.accepted)

    def _send_affinity(self, announcement: pb.RoundAnnouncement) -> RoundOutcome | None:
        """Round 1: join and upload the DP affinity release (released at most once)."""
        round_number = int(announcement.round)
        refused = self._budget_refusal(round_number, with_affinity=True)
        if refused is not None:
            return refused
        if not self._join(announcement):
            return RoundOutcome(round_number, "late", "the round's join phase had closed")
        try:
            affinity = self._participant.affinity(round_number)
        except BudgetExhaustedError as refusal:
            # The trainer has audited the refusal; the server sees this one drop out.
            self.context.rounds_refused.append(round_number)
            return RoundOutcome(round_number, "refused", str(refusal))
        context = self.context
        context.require_connection().unary(
            "SubmitAffinity",
            pb.AffinityUpload(
                version=AFFINITY_VERSION,
                round=round_number,
                run_id=announcement.run_id,
                affinity=[float(v) for v in affinity],
            ),
            timeout=context.rpc_timeout_s,
        )
        return None

    def _await_assignment(self, announcement: pb.RoundAnnouncement) -> pb.RoundAnnouncement | None:
        """The same attempt announced with the assignment, or None if it ended first.

        Raises:
            RunMismatchError: the server now runs another run (its state was reset or
                replaced while this client waited), as `FederatedClient` checks it.
        """
        context = self.context
        while True:
            again: pb.RoundAnnouncement = context.require_connection().unary(
                "AwaitRound",
                pb.RoundRequest(
                    after_round=self._participant.completed_round, wait_ms=context.wait_ms
                ),
                timeout=context.rpc_timeout_s + context.wait_ms / 1000,
            )
            validate_round_announcement(again)
            context.check_server_run(again)
            same = (again.round, again.run_id) == (announcement.round, announcement.run_id)
            if again.status == pb.ROUND_STATUS_OPEN and same:
                if not again.mole.affinity_requested:
                    return again
            elif again.status != pb.ROUND_STATUS_PENDING:
                return None
            time.sleep(max(again.retry_after_ms, 50) / 1000)

    def _contribute(
        self, announcement: pb.RoundAnnouncement, experts: tuple[int, ...]
    ) -> RoundOutcome:
        context = self.context
        round_number = int(announcement.round)
        refused = self._budget_refusal(round_number, with_affinity=False)
        if refused is not None:
            return refused
        if not self._join(announcement):
            return RoundOutcome(round_number, "late", "the round's join phase had closed")
        states = self._download(round_number, announcement.model_hash)
        if context.audit_log is not None:
            context.audit_log.append(
                EventType.ROUND_JOINED, round_joined_payload(round_number, [0])
            )
        release = self._release(round_number, experts, states, announcement.mole)
        try:
            upload = self._participant.prepare(round_number, release)
        except BudgetExhaustedError as refusal:
            context.mark_refused(round_number)
            return RoundOutcome(round_number, "refused", str(refusal))
        context.pending_round = round_number
        run = self._session(announcement, upload)
        if run is not None and run_sessions([run], round_number):
            context.mark_joined(round_number)
            return RoundOutcome(round_number, "joined")
        return RoundOutcome(round_number, "aborted", "the session ended without this organization")

    def _release(
        self,
        round_number: int,
        experts: tuple[int, ...],
        states: dict[str, FloatArray],
        plan: pb.MoLEPlan,
    ) -> MoLERelease:
        held = self.trainer.set_experts(experts).block_ids
        return MoLERelease(
            round=round_number,
            experts=experts,
            states={b: states[b] for b in held},
            aggregated=frozenset(plan.aggregated_blocks) & frozenset(held),
        )

    # ------------------------------------------------------------------ wire

    def _download(self, round_number: int, model_hash: bytes) -> dict[str, FloatArray]:
        """The global state of ``round_number``, checked against the announced hash."""
        values = sum(rows * cols for rows, cols in self.pool_shapes.values())
        part_hash, data = self.context.fetch_model(round_number, 0, values=values)
        if released_model_hash([part_hash]) != model_hash:
            raise ChunkIntegrityError("the downloaded state is not the announced model")
        states = decode_clusters(data).states[0]
        shapes = {b: (int(v.shape[0]), int(v.shape[1])) for b, v in states.items()}
        if shapes != self.pool_shapes:
            raise ConsortiumMismatchError("the server's FedAMoLE state has other blocks")
        return {b: np.array(v, dtype=np.float64) for b, v in states.items()}

    def _session(
        self, announcement: pb.RoundAnnouncement, upload: dict[str, FloatArray]
    ) -> MaskingRun | None:
        context = self.context
        session = context.await_session(int(announcement.round), 0, announcement.run_id)
        if session is None:
            return None
        params = decode_session(session.session_params)
        if not isinstance(params, SessionParams):
            raise ConsortiumMismatchError("FedAMoLE runs in masking mode only")
        model = self.trainer.assigned_model()
        session_context = context.session_context(
            self.pool_shapes, upload_blocks(model.block_ids, context.consortium)
        )
        return context.masking_run(
            params,
            session,
            announcement,
            0,
            session_context,
            lambda lengths, clip: self._participant.contributions(
                upload, block_lengths=lengths, clip=clip
            ),
            entered=self._participant.files.entered_sums(),
        )

    # ------------------------------------------------------------------ end

    def finish(self, announcement: pb.RoundAnnouncement) -> None:
        context = self.context
        final_round = int(announcement.round)
        experts = self._participant.experts
        if experts is None:
            return
        states = self._download(final_round, announcement.model_hash)
        release = self._release(final_round + 1, experts, states, announcement.mole)
        # The organization keeps its personalized mixture (`PERSONALIZED_FILE`).
        self._participant.personalize(release)
        if isinstance(context.test_dataset, TextDataset | InstructionDataset):
            context.scores = self._participant.evaluate(context.test_dataset, release)
        _LOG.info("%s: the run finished after round %d", context.organization, final_round)


def _assignment_problem(plan: pb.MoLEPlan, num_experts: int) -> str:
    """What is wrong with an announced assignment ("" when it is well formed)."""
    seen: set[str] = set()
    for entry in plan.assignment:
        experts = list(entry.experts)
        if entry.organization in seen:
            return f"the assignment lists {entry.organization!r:.80} twice"
        seen.add(entry.organization)
        if experts != sorted(set(experts)) or any(e >= num_experts for e in experts):
            return f"the assignment of {entry.organization!r:.80} is not distinct pool experts"
    if plan.affinity_requested and plan.assignment:
        return "the round asks for affinities but already has an assignment"
    return ""
