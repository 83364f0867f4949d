"""The gRPC servicer of the aggregation server (`fedhft.v1.Aggregator`).

Every call comes over mutual TLS; `EnrollmentInterceptor` has already refused callers
whose organization is not enrolled, and each handler reads the organization again from
the verified certificate (never from a request field). Every request is validated with
the `fedhft.protocol` validators before it touches any state, and typed errors become
precise gRPC statuses (`translate_errors`): a message for another round, session or
stage is FAILED_PRECONDITION, an oversized one RESOURCE_EXHAUSTED, a malformed one
INVALID_ARGUMENT, a forged one PERMISSION_DENIED.

Long polls (`AwaitRound`, `AwaitSession`, `AwaitStage`) wait on the server's condition
variable at most ``wait_ms`` (capped by the server), then answer PENDING with a retry
delay.

Model downloads: ``ModelRequest.round`` names the open round (its released model), or,
once the run finished, the last completed round (the final model).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedhft.audit import EventType, key_event_payload, key_fingerprint
from fedhft.audit.receipts import upload_accepted_from_wire
from fedhft.protocol import (
    PROTOCOL_VERSION,
    iter_model,
    peer_organization,
    receive_upload,
    sign_receipt,
    translate_errors,
    validate_hello_request,
    validate_join_request,
    validate_model_request,
    validate_session_request,
    validate_stage_header,
    validate_stage_request,
    validate_stage_submission,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc
from fedhft.protocol.errors import (
    DuplicateMessageError,
    InvalidEnvelopeError,
    StageError,
    WrongRoundError,
)
from fedhft.protocol.session_codec import MODEL_FORMAT

from ._federation import RoundCoordinator
from ._mole_rounds import MoLECoordinator, mole_plan, validate_affinity_upload
from ._round_state import Attempt, JoinAnswer, ReleasedModel, ServerContext
from ._sessions import INPUT_STAGES, STAGE_NAMES, AggregationSession


class AggregatorService(pb_grpc.AggregatorServicer):
    """Serves one aggregation server's state (its `ServerContext`) over gRPC."""

    def __init__(self, context: ServerContext) -> None:
        self._server = context
        self._ca = context.credentials.ca_certificate
        self._enrolled = frozenset(context.enrolled_organizations)

    # ------------------------------------------------------------------ helpers

    def _caller(self, context: Any) -> str:
        return peer_organization(context, ca_certificate=self._ca, enrolled=self._enrolled)

    def _wait(self, context: Any, wait_ms: int, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()`` holds, ``wait_ms`` passed, the caller left or we stop.

        A caller that cancelled its long poll or went away gets the worker and the slot
        of its quota back at once (within a second), not after ``wait_ms``.
        """
        server = self._server
        deadline = time.time() + min(wait_ms, server.max_wait_ms) / 1000
        server.rounds.wait_until(ready, deadline, active=context.is_active)

    def _open_attempt(self) -> Attempt:
        attempt = self._server.rounds.attempt
        if attempt is None:
            raise WrongRoundError("no round is open now; wait for the next announcement")
        return attempt

    def _completed_model(self, round_number: int) -> ReleasedModel | None:
        """The model a recently completed attempt of ``round_number`` served, if any.

        A local-only round completes as soon as every organization has answered, so an
        organization that joined may ask for its model after the round is over; the
        model of a completed round was released to its participants already.
        """
        return self._server.rounds.completed_model(round_number)

    def _session(self, ref: pb.SessionRef) -> tuple[Attempt, AggregationSession]:
        """The session ``ref`` names: of the open attempt, or of one that just ended.

        Recent attempts stay reachable so that a client learns how its session ended
        (READY or ABORTED) even after the server moved on; the envelope validators
        then refuse anything but reading their broadcasts.
        """
        attempt = self._server.rounds.recent(ref.run_id, ref.round) or self._open_attempt()
        session = attempt.sessions.get(ref.cluster)
        if session is None:
            raise WrongRoundError(
                f"round {attempt.round} has no open session for cluster {ref.cluster}"
            )
        return attempt, session

    def _record_stage(
        self,
        attempt: Attempt,
        session: AggregationSession,
        stage: int,
        organization: str,
        payload: bytes,
        keep: bool,
    ) -> str:
        digest = hashlib.sha256(payload).hexdigest()
        self._server.store.record_stage(
            round_number=attempt.round,
            attempt=attempt.attempt,
            cluster=session.cluster,
            stage=STAGE_NAMES[stage],
            organization=organization,
            payload_sha256=digest,
            payload=payload if keep else None,
        )
        return digest

    # ------------------------------------------------------------------ enrollment

    @translate_errors
    def Hello(self, request: pb.HelloRequest, context: Any) -> pb.HelloResponse:
        server = self._server
        organization = self._caller(context)
        identity, _ = validate_hello_request(
            request,
            ca_certificate=self._ca,
            organization=organization,
            config_hash=server.config_hash,
        )
        changed = server.store.enroll(
            organization, request.identity_certificate, request.sealing_certificate
        )
        current = server.store.completed_rounds()
        uploaded = server.store.upload_rounds(
            organization, input_stages=[STAGE_NAMES[stage] for stage in INPUT_STAGES]
        )
        if changed:
            server.audit.append(
                EventType.KEY_EVENT,
                key_event_payload(
                    "organization_enrolled", key_fingerprint(identity), organization=organization
                ),
            )
        return pb.HelloResponse(
            protocol=PROTOCOL_VERSION,
            consortium=server.consortium.consortium,
            consortium_config_hash=server.config_hash,
            server_identity_certificate=_der(server.credentials.identity_certificate),
            organization=organization,
            current_round=current,
            run_id=server.run_id,
            # What the server knows of the caller's participation, so that a client
            # whose ledger lost spend is stopped even when nothing local remembers it.
            rounds_uploaded=uploaded,
        )

    # ------------------------------------------------------------------ rounds

    @translate_errors
    def AwaitRound(self, request: pb.RoundRequest, context: Any) -> pb.RoundAnnouncement:
        self._caller(context)
        server = self._server

        rounds = server.rounds

        def announced() -> bool:
            attempt = rounds.attempt
            return rounds.final is not None or (
                attempt is not None and attempt.round > request.after_round
            )

        self._wait(context, request.wait_ms, announced)
        final, attempt = rounds.read(lambda: (rounds.final, rounds.attempt))
        if final is not None:
            return self._finished_announcement(final)
        if attempt is not None and attempt.round > request.after_round:
            return self._open_announcement(attempt)
        return pb.RoundAnnouncement(
            status=pb.ROUND_STATUS_PENDING,
            retry_after_ms=server.poll_interval_ms,
            server_run_id=server.run_id,
        )

    def _open_announcement(self, attempt: Attempt) -> pb.RoundAnnouncement:
        coordinator = self._server.coordinator
        clustering = self._server.consortium.clustering
        return pb.RoundAnnouncement(
            status=pb.ROUND_STATUS_OPEN,
            round=attempt.round,
            run_id=attempt.run_id,
            consortium_config_hash=self._server.config_hash,
            model_hash=attempt.model.model_hash,
            clusters=attempt.model.clusters.k,
            warmup=attempt.round <= clustering.warmup_rounds and clustering.clusters > 1,
            blocks=[
                pb.BlockLayout(block_id=block, rows=rows, cols=cols)
                for block, (rows, cols) in sorted(coordinator.shapes.items())
            ],
            tier_masks=[
                pb.TierMask(tier=tier, block_ids=list(blocks))
                for tier, blocks in sorted(coordinator.tier_blocks.items())
            ],
            join_deadline_unix_ms=attempt.join_deadline_unix_ms,
            retry_after_ms=self._server.poll_interval_ms,
            mole=self._mole_plan(),
            server_run_id=self._server.run_id,
        )

    def _mole_plan(self) -> pb.MoLEPlan | None:
        coordinator = self._server.coordinator
        if not isinstance(coordinator, MoLECoordinator):
            return None
        # The round thread makes the assignment under the round state's lock.
        return self._server.rounds.read(lambda: mole_plan(coordinator))

    def _finished_announcement(self, final: ReleasedModel) -> pb.RoundAnnouncement:
        return pb.RoundAnnouncement(
            status=pb.ROUND_STATUS_FINISHED,
            round=final.round,
            run_id=self._server.run_id,
            consortium_config_hash=self._server.config_hash,
            model_hash=final.model_hash,
            clusters=final.clusters.k,
            mole=self._mole_plan(),
            server_run_id=self._server.run_id,
        )

    @translate_errors
    def JoinRound(self, request: pb.JoinRequest, context: Any) -> pb.JoinResponse:
        organization = self._caller(context)
        server = self._server
        attempt = self._open_attempt()
        coordinator = server.coordinator
        sketch_length = (
            coordinator.sketch_length
            if isinstance(coordinator, RoundCoordinator)
            and server.consortium.takes_sketches(attempt.round)
            else None
        )
        sketch = validate_join_request(
            request, expected_round=attempt.round, sketch_length=sketch_length
        )
        if request.participate and request.tier not in server.consortium.tiers:
            raise InvalidEnvelopeError(
                f"`tier` {request.tier!r:.80} is not a consortium tier; allowed: "
                f"{', '.join(sorted(server.consortium.tiers))}"
            )
        enrolled = organization in server.store.enrolled()
        if not enrolled:
            raise StageError(f"{organization} must call Hello before joining a round")

        def record_join() -> bool:
            if attempt.phase != "joining" or server.rounds.attempt is not attempt:
                return False
            attempt.joins[organization] = JoinAnswer(
                participate=request.participate, tier=request.tier, refusal=request.refusal
            )
            if sketch is not None and isinstance(coordinator, RoundCoordinator):
                # A DP release: kept, so that a restarted server splits the same way.
                server.store.save_sketch(organization, attempt.round, sketch)
                coordinator.sketches[organization] = np.asarray(sketch, dtype=np.float64)
            return True

        accepted = server.rounds.update(record_join)
        return pb.JoinResponse(round=request.round, accepted=accepted)

    @translate_errors
    def SubmitAffinity(self, request: pb.AffinityUpload, context: Any) -> pb.AffinityAck:
        organization = self._caller(context)
        server = self._server
        coordinator = server.coordinator
        if not isinstance(coordinator, MoLECoordinator):
            raise WrongRoundError("this consortium's method takes no affinity (not fedamole)")
        attempt = self._open_attempt()
        values = validate_affinity_upload(
            request,
            expected_round=attempt.round,
            run_id=attempt.run_id,
            num_experts=server.consortium.fedamole.num_experts,
        )

        def record_affinity() -> None:
            if server.rounds.attempt is not attempt or attempt.phase not in ("joining", "affinity"):
                raise WrongRoundError("the round no longer takes affinities; wait for the next")
            if coordinator.assignment is not None:
                raise WrongRoundError("the experts are already assigned; no affinity is asked")
            joined = attempt.joins.get(organization)
            if joined is None or not joined.participate:
                raise StageError(f"{organization} must join round {attempt.round} first")
            previous = attempt.affinities.get(organization)
            if previous is not None and previous != values:
                raise DuplicateMessageError(
                    f"{organization} already sent another affinity for this round"
                )
            attempt.affinities[organization] = values

        server.rounds.update(record_affinity)
        return pb.AffinityAck(round=request.round, accepted=True)

    # ------------------------------------------------------------------ models

    @translate_errors
    def DownloadModel(self, request: pb.ModelRequest, context: Any) -> Iterator[pb.ModelChunk]:
        self._caller(context)
        server = self._server

        def served() -> ReleasedModel:
            final = server.rounds.final
            if final is not None:
                return final
            return self._completed_model(request.round) or self._open_attempt().model

        released = server.rounds.read(served)
        validate_model_request(request, latest_round=released.round, clusters=released.clusters.k)
        if request.round != released.round:
            raise WrongRoundError(
                f"`round` is {request.round}; only the model of round {released.round} is served"
            )
        header = pb.ModelHeader(
            round=released.round,
            cluster=request.cluster,
            format=MODEL_FORMAT,
            model_hash=released.hashes[request.cluster],
        )
        yield from iter_model(header, released.payloads[request.cluster])

    # ------------------------------------------------------------------ secure aggregation

    @translate_errors
    def AwaitSession(self, request: pb.SessionRequest, context: Any) -> pb.SessionAnnouncement:
        organization = self._caller(context)
        server = self._server
        attempt = self._open_attempt()
        validate_session_request(
            request, expected_round=attempt.round, clusters=attempt.model.clusters.k
        )
        if request.run_id and request.run_id != attempt.run_id:
            # The client joined an attempt this server no longer runs (it restarted).
            return pb.SessionAnnouncement(status=pb.SESSION_STATUS_ABORTED)

        def ended() -> bool:
            return server.rounds.attempt is not attempt or attempt.phase == "aborted"

        self._wait(context, request.wait_ms, lambda: ended() or request.cluster in attempt.sessions)
        found = attempt.sessions.get(request.cluster)
        if attempt.phase == "aborted" or (ended() and found is None):
            return pb.SessionAnnouncement(status=pb.SESSION_STATUS_ABORTED)
        if found is None:
            return pb.SessionAnnouncement(
                status=pb.SESSION_STATUS_PENDING, retry_after_ms=server.poll_interval_ms
            )
        if organization not in found.roster:
            return pb.SessionAnnouncement(status=pb.SESSION_STATUS_NOT_SELECTED)
        return pb.SessionAnnouncement(
            status=pb.SESSION_STATUS_READY,
            session=found.ref,
            session_params=found.encoded_params,
            peers=[attempt.peers[org] for org in found.roster],
            stage_deadline_unix_ms=found.deadline_unix_ms,
        )

    @translate_errors
    def SubmitStage(self, request: pb.StageSubmission, context: Any) -> pb.StageAck:
        organization = self._caller(context)
        if not request.HasField("session"):
            raise InvalidEnvelopeError("`session` is missing")
        attempt, session = self._session(request.session)
        stage = session.stage
        expected = {stage} if stage is not None and stage not in session.upload_stages else set()
        validate_stage_submission(request, expected_session=session.ref, expected_stages=expected)
        session.accept(organization, request.stage, request.payload)
        self._record_stage(attempt, session, request.stage, organization, request.payload, False)
        self._server.rounds.notify()
        return pb.StageAck(session=session.ref, stage=request.stage)

    @translate_errors
    def UploadStage(self, request_iterator: Iterator[pb.UploadChunk], context: Any) -> pb.StageAck:
        organization = self._caller(context)
        iterator = iter(request_iterator)
        first = next(iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidEnvelopeError("an upload stream must start with a `header` message")
        header = first.header
        if not header.HasField("session"):
            raise InvalidEnvelopeError("`header.session` is missing")
        attempt, session = self._session(header.session)
        stage = session.stage
        expected = {stage} if stage is not None and stage in session.upload_stages else set()
        validate_stage_header(header, expected_session=session.ref, expected_stages=expected)
        # The cap depends on the session: check the declared size before buffering.
        _, payload = receive_upload(
            itertools.chain([first], iterator), max_total=session.upload_cap(header.stage)
        )
        session.accept(organization, header.stage, payload)
        is_input = header.stage in INPUT_STAGES
        # Masked inputs are uniformly random words and are kept as received; CKKS
        # ciphertexts are not kept (anyone holding the consortium key could open them).
        keep = header.stage == pb.STAGE_MASKED_INPUT
        digest = self._record_stage(attempt, session, header.stage, organization, payload, keep)
        self._server.rounds.notify()
        if not is_input:
            return pb.StageAck(session=session.ref, stage=header.stage)
        return pb.StageAck(
            session=session.ref,
            stage=header.stage,
            receipt=self._receipt(attempt, session, header, organization, payload, digest),
        )

    def _receipt(
        self,
        attempt: Attempt,
        session: AggregationSession,
        header: pb.StageHeader,
        organization: str,
        payload: bytes,
        digest: str,
    ) -> pb.Receipt:
        server = self._server
        statement = pb.ReceiptStatement(
            consortium=server.consortium.consortium,
            server=server.credentials.name,
            organization=organization,
            session=session.ref,
            stage=header.stage,
            payload_bytes=len(payload),
            payload_sha256=bytes.fromhex(digest),
            accepted_at_unix_ms=int(time.time() * 1000),
            # The uploader's audit-log head and round spend, as it declared them: signing
            # them binds its history up to this upload (audit/FORMAT.md, Receipts).
            audit_head_sha256=header.audit_head_sha256,
            spend_sha256=header.spend_sha256,
        )
        receipt = sign_receipt(server.credentials.identity_key, statement)
        server.store.record_receipt(
            round_number=attempt.round,
            attempt=attempt.attempt,
            cluster=session.cluster,
            organization=organization,
            upload_sha256=digest,
            receipt=receipt.SerializeToString(),
        )
        server.audit.append(EventType.UPLOAD_ACCEPTED, upload_accepted_from_wire(receipt))
        return receipt

    @translate_errors
    def AwaitStage(self, request: pb.StageRequest, context: Any) -> pb.StageBroadcast:
        organization = self._caller(context)
        if not request.HasField("session"):
            raise InvalidEnvelopeError("`session` is missing")
        _, session = self._session(request.session)
        validate_stage_request(request, expected_session=session.ref)
        if request.stage not in session.stages:
            raise WrongRoundError(
                f"stage {STAGE_NAMES.get(request.stage, request.stage)} is not part of this session"
            )

        def relayed() -> bool:
            status, _ = session.broadcast(organization, request.stage)
            return status != pb.STAGE_STATUS_PENDING

        self._wait(context, request.wait_ms, relayed)
        status, payloads = session.broadcast(organization, request.stage)
        return pb.StageBroadcast(
            status=status,  # type: ignore[arg-type]
            session=session.ref,
            stage=request.stage,
            payloads=payloads,
            retry_after_ms=self._server.poll_interval_ms,
        )


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)
