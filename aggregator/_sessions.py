"""One cluster's secure aggregation on the server, stage by stage, for either mode.

The round state machine (`_server.py`) opens one session per cluster and steps all of
them in lockstep: it waits until no participant of the current stage is pending (or the
stage's deadline passes: stragglers become dropouts), then closes the stage. The gRPC
servicer (`_service.py`) feeds each session the messages it accepted and reads back
what to relay to each organization. Both modes follow the same shape:

- masking (ARCHITECTURE.md §4.1): advertise keys → share keys → masked input → consistency →
  unmask, with `fedhft.protocol.SecAggServer` doing every check and the unmasking;
- CKKS (ARCHITECTURE.md §4.2): ciphertext input → decrypted sum, see `CKKSRoundSession`.

Notes:
    A session holds what the protocol gives the server and nothing more: running sums of
    masked inputs (masking) or of ciphertexts (CKKS), relayed ciphertexts of shares, and
    finally the per-block sums. No individual update is ever decoded here.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedhft.protocol import (
    AggregateResult,
    BlockSum,
    CKKSAggregator,
    CKKSServerContext,
    CKKSSession,
    SecAggServer,
    SessionParams,
    Stage,
    decode_message,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.errors import (
    ForgedMessageError,
    MalformedMessageError,
    ProtocolError,
    StageError,
    SumOutOfBoundsError,
    ThresholdError,
)
from fedhft.protocol.secagg.messages import (
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    Message,
    SurvivorSignature,
    UnmaskResponse,
)
from fedhft.protocol.session_codec import decode_block_sums, encode_session

from ._federation import RefusedSums

FloatArray = npt.NDArray[np.float64]

WIRE_STAGE: Final[Mapping[Stage, int]] = {
    Stage.ADVERTISE: pb.STAGE_ADVERTISE_KEYS,
    Stage.SHARE_KEYS: pb.STAGE_SHARE_KEYS,
    Stage.MASKED_INPUT: pb.STAGE_MASKED_INPUT,
    Stage.CONSISTENCY: pb.STAGE_CONSISTENCY,
    Stage.UNMASK: pb.STAGE_UNMASK,
}
STAGE_NAMES: Final[Mapping[int, str]] = {
    pb.STAGE_ADVERTISE_KEYS: "advertise",
    pb.STAGE_SHARE_KEYS: "share_keys",
    pb.STAGE_MASKED_INPUT: "masked_input",
    pb.STAGE_CONSISTENCY: "consistency",
    pb.STAGE_UNMASK: "unmask",
    pb.STAGE_CKKS_INPUT: "ckks_input",
}
INPUT_STAGES: Final = frozenset({pb.STAGE_MASKED_INPUT, pb.STAGE_CKKS_INPUT})
"""Stages whose accepted upload gets a signed receipt."""

_MESSAGE_OF_STAGE: Final[Mapping[int, type[Message]]] = {
    pb.STAGE_ADVERTISE_KEYS: KeyAdvertisement,
    pb.STAGE_SHARE_KEYS: EncryptedShares,
    pb.STAGE_MASKED_INPUT: MaskedInput,
    pb.STAGE_CONSISTENCY: SurvivorSignature,
    pb.STAGE_UNMASK: UnmaskResponse,
}
_UPLOAD_SLACK: Final = 64 * 1024


def _sender_of(message: Message) -> str:
    if isinstance(message, KeyAdvertisement):
        return message.organization
    sender = getattr(message, "sender", None)
    if not isinstance(sender, str):
        raise MalformedMessageError(f"{type(message).__name__} is not sent by a client")
    return sender


class AggregationSession(ABC):
    """The server's side of one cluster's secure sum in one attempt of a round."""

    stages: tuple[int, ...]
    """The wire stages of the session, in order."""
    upload_stages: frozenset[int]
    """Stages whose message travels through `UploadStage` (chunked)."""

    def __init__(self, parameters: SessionParams | CKKSSession) -> None:
        self.cluster = parameters.cluster
        self.ref = pb.SessionRef(
            run_id=parameters.run_id,
            round=parameters.round,
            cluster=parameters.cluster,
            session_id=parameters.sid,
        )
        self.encoded_params = encode_session(parameters)
        self._lock = threading.RLock()
        self._index = 0
        self._closed: dict[int, dict[str, list[bytes]]] = {}
        self.aborted: ProtocolError | None = None
        self.deadline_unix_ms = 0
        self.skipped: dict[str, int] = {}
        """Blocks the coordinator left out (fewer holders than the minimum cohort)."""

    @property
    @abstractmethod
    def roster(self) -> tuple[str, ...]:
        """Organizations invited to the session."""

    @property
    def stage(self) -> int | None:
        """The wire stage now accepting messages; None when finished or aborted."""
        with self._lock:
            if self.aborted is not None or self._index >= len(self.stages):
                return None
            return self.stages[self._index]

    @property
    def finished(self) -> bool:
        """Whether every stage closed and the result is available."""
        return self.aborted is None and self._index >= len(self.stages)

    @abstractmethod
    def pending(self) -> frozenset[str]:
        """Participants that have not answered the current stage."""

    @abstractmethod
    def accept(self, organization: str, stage: int, payload: bytes) -> None:
        """Take ``organization``'s message of the current stage (already authenticated)."""

    @abstractmethod
    def _finish_stage(self, stage: int) -> dict[str, list[bytes]]:
        """Close ``stage``; return organization → payloads relayed to it."""

    @abstractmethod
    def result(self) -> AggregateResult:
        """The per-block sums once every stage closed."""

    def upload_cap(self, stage: int) -> int:
        """Largest `UploadStage` payload accepted at ``stage``."""
        return _UPLOAD_SLACK

    def close_stage(self) -> None:
        """Close the current stage with whoever answered; abort the session on failure."""
        with self._lock:
            stage = self.stage
            if stage is None:
                return
            try:
                self._closed[stage] = self._finish_stage(stage)
            except ProtocolError as error:
                self.aborted = error
                return
            self._index += 1

    def abort(self, error: ProtocolError) -> None:
        """Abort the session (the round attempt failed elsewhere)."""
        with self._lock:
            if self.aborted is None and not self.finished:
                self.aborted = error

    def broadcast(self, organization: str, stage: int) -> tuple[int, list[bytes]]:
        """``(StageStatus, payloads)`` of ``stage`` for ``organization``."""
        with self._lock:
            relayed = self._closed.get(stage)
            if relayed is not None:
                if organization in relayed:
                    return pb.STAGE_STATUS_READY, relayed[organization]
                return pb.STAGE_STATUS_ABORTED, []
            if self.aborted is not None:
                return pb.STAGE_STATUS_ABORTED, []
            return pb.STAGE_STATUS_PENDING, []


class MaskingSession(AggregationSession):
    """Masking-mode secure aggregation of one cluster (SecAgg/SecAgg+)."""

    stages = (
        pb.STAGE_ADVERTISE_KEYS,
        pb.STAGE_SHARE_KEYS,
        pb.STAGE_MASKED_INPUT,
        pb.STAGE_CONSISTENCY,
        pb.STAGE_UNMASK,
    )
    upload_stages = frozenset({pb.STAGE_MASKED_INPUT})

    def __init__(
        self,
        params: SessionParams,
        *,
        peer_identities: Mapping[str, Ed25519PublicKey],
    ) -> None:
        super().__init__(params)
        self.params = params
        self.server = SecAggServer(params, peer_identities=peer_identities)
        self._result: AggregateResult | None = None

    @property
    def roster(self) -> tuple[str, ...]:
        return tuple(self.params.roster)

    def pending(self) -> frozenset[str]:
        return frozenset() if self.stage is None else self.server.pending

    def upload_cap(self, stage: int) -> int:
        # A masked input is one word (4 or 8 bytes) per value plus framing per block.
        words = sum(self.params.block_lengths.values())
        framing = 512 * (len(self.params.block_lengths) + 1)
        return words * self.params.fixed_point.bits // 8 + framing + _UPLOAD_SLACK

    def accept(self, organization: str, stage: int, payload: bytes) -> None:
        message = decode_message(payload)
        expected = _MESSAGE_OF_STAGE[stage]
        if not isinstance(message, expected):
            raise MalformedMessageError(
                f"a {STAGE_NAMES[stage]} envelope must carry a {expected.__name__}, "
                f"got {type(message).__name__}"
            )
        if _sender_of(message) != organization:
            raise ForgedMessageError(
                f"the message names {_sender_of(message)!r} as its sender, but it came "
                f"from {organization!r}"
            )
        with self._lock:
            if self.stage != stage:
                raise StageError(f"the session no longer accepts {STAGE_NAMES[stage]} messages")
            self.server.receive(message)

    def _finish_stage(self, stage: int) -> dict[str, list[bytes]]:
        server = self.server
        if stage == pb.STAGE_ADVERTISE_KEYS:
            advertised = server.finish_advertise().encode()
            return {org: [advertised] for org in server.participants}
        if stage == pb.STAGE_SHARE_KEYS:
            relayed = server.finish_share_keys()
            return {org: [message.encode()] for org, message in relayed.items()}
        if stage == pb.STAGE_MASKED_INPUT:
            announcement = server.finish_masked_input().encode()
            return {org: [announcement] for org in server.participants}
        if stage == pb.STAGE_CONSISTENCY:
            request = server.finish_consistency().encode()
            return {org: [request] for org in server.participants}
        try:
            self._result = server.finish_unmask()
        except SumOutOfBoundsError as refused:
            # A sum beyond the ring range is a refused sum like any other bound: the
            # session completes with nothing to apply, and the bound check before applying
            # (`_federation.check_sums`) reports it, so the server logs `sum_rejected`.
            self._result = RefusedSums(
                sid=self.params.sid,
                blocks={},
                skipped={},
                survivors=(),
                dropped=(),
                refused=refused,
            )
        # Everyone invited learns that the session completed (the sum is not relayed:
        # the next round's model carries it).
        return {org: [] for org in self.params.roster}

    def result(self) -> AggregateResult:
        if self._result is None:
            raise StageError(f"cluster {self.cluster}'s session has not released its sums")
        return self._result


class CKKSRoundSession(AggregationSession):
    """CKKS-mode aggregation of one cluster: encrypted inputs, then decrypted sums.

    Stage ``CKKS_INPUT``: each organization uploads its ciphertexts (receipted); the
    server adds them and relays the encrypted sums to the uploaders. Stage ``UNMASK``:
    each uploader decrypts the sums (only organizations hold the secret key) and sends
    the plaintext per-block sums back.

    Notes:
        The server takes the decrypted sums reported by a strict majority of the
        uploaders (two reports agree when every value is within the CKKS error bound of
        the sum); with fewer agreeing reports the session aborts. One dishonest
        organization can therefore neither bias the aggregate nor block it, as long as
        most uploaders are honest. The plaintext sums are what the masking mode releases
        to the server anyway; no individual update is ever decrypted.
    """

    stages = (pb.STAGE_CKKS_INPUT, pb.STAGE_UNMASK)
    upload_stages = frozenset({pb.STAGE_CKKS_INPUT, pb.STAGE_UNMASK})

    def __init__(
        self,
        session: CKKSSession,
        *,
        server_context: CKKSServerContext,
    ) -> None:
        super().__init__(session)
        self.session = session
        self._parameters = server_context.parameters
        self._aggregator = CKKSAggregator(session, server_context)
        self._layout = session.layout(server_context.parameters)
        self._uploaders: frozenset[str] = frozenset()
        self._contributors: dict[str, tuple[str, ...]] = {}
        self._skipped: dict[str, int] = {}
        self._reports: dict[str, dict[str, FloatArray]] = {}
        self._result: AggregateResult | None = None

    @property
    def roster(self) -> tuple[str, ...]:
        return tuple(self.session.roster)

    def pending(self) -> frozenset[str]:
        stage = self.stage
        if stage == pb.STAGE_CKKS_INPUT:
            return frozenset(self.session.roster) - self._aggregator.received
        if stage == pb.STAGE_UNMASK:
            return self._uploaders - set(self._reports)
        return frozenset()

    def upload_cap(self, stage: int) -> int:
        values = sum(segment.ciphertexts for segment in self._layout.segments)
        if stage == pb.STAGE_CKKS_INPUT:
            # A serialized fresh ciphertext: two polynomials of N coefficients, each at
            # most 8 bytes per prime, before compression.
            per_ciphertext = 2 * self._parameters.poly_modulus_degree * 8 * 2 + 4096
            return values * per_ciphertext + _UPLOAD_SLACK
        return 8 * sum(self.session.block_lengths.values()) + _UPLOAD_SLACK

    def accept(self, organization: str, stage: int, payload: bytes) -> None:
        with self._lock:
            if self.stage != stage:
                raise StageError(f"the session no longer accepts {STAGE_NAMES[stage]} messages")
            if stage == pb.STAGE_CKKS_INPUT:
                self._aggregator.receive(organization, payload)
                return
            if organization not in self._uploaders:
                raise ForgedMessageError(
                    f"{organization!r} did not upload to this session and cannot report its sum"
                )
            if organization in self._reports:
                raise StageError(f"{organization!r} already reported the decrypted sums")
            lengths = {block: self.session.block_lengths[block] for block in self._contributors}
            self._reports[organization] = decode_block_sums(payload, lengths)

    def _finish_stage(self, stage: int) -> dict[str, list[bytes]]:
        if stage == pb.STAGE_CKKS_INPUT:
            encrypted = self._aggregator.result()
            self._uploaders = self._aggregator.received
            segments = self._layout.segments
            for item in encrypted.released:
                for block in segments[item.index].blocks:
                    self._contributors[block.block_id] = tuple(item.contributors)
            for index in encrypted.withheld:
                segment = segments[index]
                held = len(set(segment.holders) & self._uploaders)
                for block in segment.blocks:
                    self._skipped[block.block_id] = held
            relayed = encrypted.encode()
            return {org: [relayed] for org in self._uploaders}
        self._result = self._majority()
        return {org: [] for org in self.session.roster}

    def _majority(self) -> AggregateResult:
        needed = len(self._uploaders) // 2 + 1
        reports = list(self._reports.values())
        best: dict[str, FloatArray] | None = None
        for candidate in reports:
            agreeing = sum(self._agree(candidate, other) for other in reports)
            if agreeing >= needed:
                best = candidate
                break
        if best is None:
            raise ThresholdError(
                f"no {needed} of the {len(self._uploaders)} uploaders reported the same "
                f"decrypted sums ({len(reports)} reports); nothing is applied"
            )
        blocks = {
            block: BlockSum(
                block=block,
                # CKKS sums are real-valued: there is no integer sum modulo 2^k.
                integer_sum=np.zeros(0, dtype=np.uint64),
                sum=best[block],
                contributors=contributors,
            )
            for block, contributors in self._contributors.items()
        }
        return AggregateResult(
            sid=self.session.sid,
            blocks=blocks,
            skipped=dict(self._skipped),
            survivors=tuple(sorted(self._uploaders)),
            dropped=tuple(sorted(set(self.session.roster) - self._uploaders)),
        )

    def _agree(self, first: Mapping[str, FloatArray], second: Mapping[str, FloatArray]) -> bool:
        for block, contributors in self._contributors.items():
            bound = self._parameters.error_bound(len(contributors))
            if np.max(np.abs(first[block] - second[block]), initial=0.0) > bound:
                return False
        return True

    def result(self) -> AggregateResult:
        if self._result is None:
            raise StageError(f"cluster {self.cluster}'s session has not released its sums")
        return self._result
