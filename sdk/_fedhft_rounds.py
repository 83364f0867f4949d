"""FedHFT, FedAvg and local rounds of a `FederatedClient` over gRPC (ARCHITECTURE.md §7).

A round seen from the organization: check the announcement (configuration hash, the
model's block layout, its tier's mask), refuse it when the budget does not allow it
(``BUDGET_EXHAUSTED``, audited), release the sketch in the rounds that take one, join,
download the K cluster adapters (streamed, each checked against the announced model
hash), train one DP-SGD round through `RoundParticipant` (or re-send the update it
already trained when the server redoes an interrupted round), and take part in every
cluster's secure aggregation (`_client_sessions.py`), masking or CKKS mode.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from fedhft.audit import EventType, round_joined_payload
from fedhft.model import ClusterAdapters, decode_clusters
from fedhft.policies import Method
from fedhft.protocol import CKKSClient, CKKSSession, SessionParams
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.errors import ChunkIntegrityError, ConsortiumMismatchError, RemoteError
from fedhft.protocol.session_codec import decode_session, released_model_hash

from ._causal import CausalTrainer
from ._client_sessions import (
    ATTEMPT_OVER,
    CKKSRun,
    ClusterRun,
    SessionContext,
    check_ckks_session,
    run_sessions,
)
from ._participant import RoundParticipant
from ._round_files import EnteredSums
from ._rounds import ClientContext, RoundMethod, RoundOutcome
from ._trainer import LocalTrainer
from ._update import MaskedUpdate
from .errors import BudgetExhaustedError
from .privacy._ledger import PrivacyLedger

_LOG = logging.getLogger("fedhft.sdk.client")
FloatArray = npt.NDArray[np.float64]


class FedHFTRounds(RoundMethod):
    """The FedHFT (and FedAvg, local) side of a `FederatedClient`.

    Args:
        context: the client's context (connection, policy, audit log, run state).
        trainer: the organization's `LocalTrainer` over its masked adapter model, or its
            `CausalTrainer` over its causal LM (``model.task: causal-lm``).
    """

    def __init__(self, context: ClientContext, trainer: LocalTrainer | CausalTrainer) -> None:
        self.context = context
        self.trainer = trainer
        self._participant = RoundParticipant(trainer, context.dataset, state_dir=context.state_dir)
        self.final_model: ClusterAdapters | None = None

    @property
    def participant(self) -> RoundParticipant:
        return self._participant

    @property
    def ledger(self) -> PrivacyLedger | None:
        return self.trainer.ledger

    def membership(self) -> tuple[float, ...]:
        personal = self._participant.personal
        return () if personal is None else tuple(float(p) for p in personal.membership)

    # ------------------------------------------------------------------ rounds

    def take_part(self, announcement: pb.RoundAnnouncement) -> RoundOutcome:
        round_number = int(announcement.round)
        self.context.handled.add((round_number, announcement.run_id))
        refusal = self._refusal(announcement)
        if refusal is not None:
            return refusal
        try:
            return self._join(announcement)
        except RemoteError as error:
            if error.code not in ATTEMPT_OVER:
                raise
            _LOG.warning(
                "round %d: this attempt ended for %s (%s)",
                round_number,
                self.context.organization,
                error,
            )
            return RoundOutcome(round_number, "aborted", str(error))

    def _refusal(self, announcement: pb.RoundAnnouncement) -> RoundOutcome | None:
        """Refuse the round when it or the budget does not allow taking part."""
        context = self.context
        round_number = int(announcement.round)
        context.refuse_other_configuration(announcement)
        trainer = self.trainer
        model = trainer.model
        tier = context.policy.training.tier
        layout = {block.block_id: (block.rows, block.cols) for block in announcement.blocks}
        masks = {mask.tier: set(mask.block_ids) for mask in announcement.tier_masks}
        if layout != {b: model.block(b).shape for b in model.block_ids}:
            problem = "the server's adapter blocks differ from this organization's model"
        elif masks.get(tier) != set(trainer.uploaded_blocks):
            problem = f"the server's mask of tier {tier!r} differs"
        else:
            problem = ""
        if problem:
            error = ConsortiumMismatchError(f"{problem}; refusing the round")
            context.refuse(round_number, pb.REFUSAL_REASON_POLICY_INCOMPATIBLE, str(error))
            raise error
        ledger = trainer.ledger
        if ledger is None or self._participant.pending_update(round_number) is not None:
            return None
        try:
            ledger.check(trainer.mechanism_record(round_number, len(context.dataset)))
        except BudgetExhaustedError as refusal:
            context.refuse(
                round_number,
                pb.REFUSAL_REASON_BUDGET_EXHAUSTED,
                "privacy budget exhausted",
                spent=refusal.spent,
                requested=refusal.requested,
                budget=refusal.budget,
            )
            return RoundOutcome(round_number, "refused", "privacy budget exhausted")
        return None

    def _join(self, announcement: pb.RoundAnnouncement) -> RoundOutcome:
        context = self.context
        round_number = int(announcement.round)
        participant = self._participant
        sketch: FloatArray | None = None
        if context.consortium.takes_sketches(round_number):
            try:
                sketch = participant.sketch(round_number)
            except BudgetExhaustedError as refusal:
                # The trainer has audited the refusal; the server learns of it here.
                context.refuse(
                    round_number, pb.REFUSAL_REASON_BUDGET_EXHAUSTED, str(refusal), audit=False
                )
                return RoundOutcome(round_number, "refused", str(refusal))
        joined: pb.JoinResponse = context.require_connection().unary(
            "JoinRound",
            pb.JoinRequest(
                round=round_number,
                participate=True,
                tier=context.policy.training.tier,
                sketch=[] if sketch is None else [float(v) for v in sketch],
            ),
            timeout=context.rpc_timeout_s,
        )
        if not joined.accepted:
            return RoundOutcome(round_number, "late", "the round's join phase had closed")
        clusters = self._download(round_number, announcement.clusters, announcement.model_hash)
        if context.audit_log is not None:
            context.audit_log.append(
                EventType.ROUND_JOINED, round_joined_payload(round_number, range(clusters.k))
            )
        try:
            update = participant.prepare(round_number, clusters)
        except BudgetExhaustedError as refusal:
            # The trainer has audited the refusal; the server sees this one drop out.
            context.mark_refused(round_number)
            return RoundOutcome(round_number, "refused", str(refusal))
        context.pending_round = round_number
        if context.consortium.method is Method.LOCAL:
            context.mark_joined(round_number)
            return RoundOutcome(round_number, "joined")
        runs = [self._open_session(announcement, cluster, update) for cluster in range(clusters.k)]
        selected = [run for run in runs if run is not None]
        completed = run_sessions(selected, round_number) and len(selected) == len(runs)
        if completed:
            context.mark_joined(round_number)
            return RoundOutcome(round_number, "joined")
        return RoundOutcome(round_number, "aborted", "a session ended without this organization")

    def finish(self, announcement: pb.RoundAnnouncement) -> None:
        context = self.context
        final_round = int(announcement.round)
        self.final_model = self._download(
            final_round, announcement.clusters, announcement.model_hash
        )
        if context.test_dataset is not None:
            context.scores = self._participant.evaluate(context.test_dataset, self.final_model)
        _LOG.info("%s: the run finished after round %d", context.organization, final_round)

    # ------------------------------------------------------------------ models

    def _download(self, round_number: int, count: int, model_hash: bytes) -> ClusterAdapters:
        """Download and check the ``count`` cluster adapters of ``round_number``."""
        model = self.trainer.model
        values = sum(model.block(b).shape[0] * model.block(b).shape[1] for b in model.block_ids)
        parts: list[ClusterAdapters] = []
        hashes: list[bytes] = []
        for cluster in range(count):
            part_hash, data = self.context.fetch_model(round_number, cluster, values=values)
            hashes.append(part_hash)
            parts.append(decode_clusters(data))
        if released_model_hash(hashes) != model_hash:
            raise ChunkIntegrityError("the downloaded adapters are not the announced model")
        states = tuple(part.states[0] for part in parts)
        if set(states[0]) != set(model.block_ids):
            raise ConsortiumMismatchError("the server's adapters have other blocks than this model")
        return ClusterAdapters(
            states=states,
            last_updates=tuple(part.last_updates[0] for part in parts),
            centroids=tuple(c for part in parts for c in part.centroids),
        )

    # ------------------------------------------------------------------ sessions

    def _open_session(
        self, announcement: pb.RoundAnnouncement, cluster: int, update: MaskedUpdate
    ) -> ClusterRun | None:
        """Wait for cluster ``cluster``'s session, check it, and prepare this side of it."""
        context = self.context
        session = context.await_session(int(announcement.round), cluster, announcement.run_id)
        if session is None:
            return None
        model = self.trainer.model
        session_context = context.session_context(
            {b: model.block(b).shape for b in model.block_ids}, self.trainer.uploaded_blocks
        )
        params = decode_session(session.session_params)
        participant = self._participant
        if isinstance(params, SessionParams):
            return context.masking_run(
                params,
                session,
                announcement,
                cluster,
                session_context,
                lambda lengths, clip: participant.contributions(
                    update, cluster=cluster, block_lengths=lengths, clip=clip
                ),
                entered=participant.files.entered_sums(),
            )
        return self._ckks_run(
            params,
            session,
            announcement,
            cluster,
            update,
            session_context,
            entered=participant.files.entered_sums(),
        )

    def _ckks_run(
        self,
        params: CKKSSession,
        session: pb.SessionAnnouncement,
        announcement: pb.RoundAnnouncement,
        cluster: int,
        update: MaskedUpdate,
        session_context: SessionContext,
        *,
        entered: EnteredSums | None = None,
    ) -> ClusterRun:
        context = self.context
        keyring = context.keyring
        if keyring is None:
            raise ConsortiumMismatchError(
                "the server runs a CKKS session but the consortium file says masking mode"
            )
        check_ckks_session(
            params,
            context=session_context,
            announcement=announcement,
            cluster=cluster,
            session_id=session.session.session_id,
            keyring=keyring,
        )
        lengths = {
            b: length
            for b, length in params.block_lengths.items()
            if context.organization in params.block_supports[b]
        }
        clip = min(context.consortium.secure_aggregation.clip, keyring.parameters.value_bound)
        inputs = self._participant.contributions(
            update, cluster=cluster, block_lengths=lengths, clip=clip
        )
        return CKKSRun(
            context=session_context,
            ref=session.session,
            inputs=inputs,
            client=CKKSClient(params, keyring),
            entered=entered,
        )
