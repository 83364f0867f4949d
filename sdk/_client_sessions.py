"""An organization's side of one round's secure-aggregation sessions, over gRPC.

One session per cluster; all of them advance in lockstep, as on the server: send this
stage's message for every cluster, then wait for every cluster's broadcast. Masking mode
(ARCHITECTURE.md §4.1) drives a `SecAggClient` per cluster; CKKS mode (§4.2) encrypts once per
cluster, then decrypts the server's encrypted sums and reports them back.

Before taking part the client checks the announced parameters against its own
consortium file and policy (`check_masking_session`, `check_ckks_session`): a server
cannot lower the threshold or the minimum cohort, change the clip or quantization,
bind the session to another configuration or model, or assign the organization other
blocks than its tier's. Each peer's identity key must be certified by the consortium CA
for that organization. Every input upload is committed in the audit log before it
leaves (`update_committed`, SHA-256 of the bytes sent), and the server's signed receipt
is verified and logged (`aggregation_receipt`).

A staged update enters at most one sum per cluster: before its masked input (CKKS: its
ciphertexts) leaves, and before it answers the unmask request (CKKS: reports the
decrypted sums), a run records the session's roster and survivors (`EnteredSums`) and
refuses a retry over other ones; the run then ends for that cluster with a ``refusal``
audit record.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedhft.audit import (
    AuditLog,
    EventType,
    ReceiptError,
    Record,
    aggregation_receipt_from_wire,
    refusal_payload,
    update_committed_payload,
    upload_sha256,
)
from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.protocol import (
    AdvertisedKeys,
    CKKSClient,
    CKKSEncryptedSum,
    CKKSKeyring,
    CKKSSession,
    RelayedShares,
    SecAggClient,
    SessionParams,
    SurvivorAnnouncement,
    UnmaskRequest,
    session_threshold,
    validate_stage_broadcast,
    verify_identity_certificate,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.blocks import packed_length
from fedhft.protocol.errors import (
    ConsortiumMismatchError,
    ForgedReceiptError,
    MalformedMessageError,
)
from fedhft.protocol.session_codec import encode_block_sums

from ._round_files import EnteredSums
from .connection import Connection
from .errors import SumAlreadyEnteredError
from .privacy._accounted_trainer import AuditSink

_LOG = logging.getLogger("fedhft.sdk.client")
FloatArray = npt.NDArray[np.float64]

ATTEMPT_OVER = frozenset({"FAILED_PRECONDITION", "ABORTED", "NOT_FOUND", "ALREADY_EXISTS"})
"""Statuses that end this attempt of a round (the server moved on, aborted the session or
refused a late message); the client goes back to waiting for the next announcement."""


@dataclass(frozen=True)
class SessionContext:
    """What every session of a round needs from the client."""

    organization: str
    policy: OrganizationPolicy
    consortium: ConsortiumConfig
    config_hash: bytes
    ca_certificate: x509.Certificate
    identity_key: Ed25519PrivateKey
    server_identity: Ed25519PublicKey
    block_shapes: Mapping[str, tuple[int, int]]
    uploaded_blocks: frozenset[str]
    audit: AuditSink | None
    connection: Connection
    wait_ms: int
    rpc_timeout_s: float
    max_broadcast_bytes: int


@dataclass
class StageStep:
    """One stage of a session on the wire."""

    stage: int
    upload: bool
    receipted: bool


@dataclass
class ClusterRun(ABC):
    """One cluster's session of the round, from this organization's side."""

    context: SessionContext
    ref: pb.SessionRef
    inputs: Mapping[str, FloatArray]
    steps: tuple[StageStep, ...] = field(init=False)
    failed: bool = False

    @abstractmethod
    def message(self, index: int, previous: list[bytes] | None) -> bytes:
        """This stage's payload, given the payloads the previous stage relayed to us."""

    @property
    def cluster(self) -> int:
        return int(self.ref.cluster)


# --------------------------------------------------------------------------- masking


def check_masking_session(
    params: SessionParams,
    *,
    context: SessionContext,
    announcement: pb.RoundAnnouncement,
    cluster: int,
    session_id: bytes,
) -> None:
    """Refuse a masking session the consortium file and policy do not allow.

    Raises `ConsortiumMismatchError` naming the first parameter that differs.
    """
    spec = context.consortium.secure_aggregation
    n = len(params.roster)
    required_threshold = session_threshold(n, neighbours=spec.neighbours, at_least=spec.threshold)
    required_cohort = max(spec.min_cohort, context.policy.secure_aggregation.min_cohort)
    problems = [
        (params.sid != session_id, "its session id does not match its parameters"),
        (params.run_id != announcement.run_id, "it names another run or attempt"),
        (params.round != announcement.round or params.cluster != cluster, "wrong round/cluster"),
        (params.config_hash != context.config_hash, "another consortium configuration"),
        (params.model_hash != announcement.model_hash, "another model than announced"),
        (params.threshold < required_threshold, f"threshold below {required_threshold}"),
        (params.min_cohort < required_cohort, f"minimum cohort below {required_cohort}"),
        (params.clip != spec.clip or params.scale != spec.scale, "another clip or scale"),
        (params.neighbours != spec.neighbours, "another neighbour graph degree"),
        (context.organization not in params.roster, "this organization is not in the roster"),
    ]
    _raise_first(problems, cluster)
    _check_blocks(params.block_lengths, params.block_supports, context, cluster)


def _check_blocks(
    lengths: Mapping[str, int],
    supports: Mapping[str, frozenset[str] | set[str] | object],
    context: SessionContext,
    cluster: int,
) -> None:
    mine = {b for b, holders in supports.items() if context.organization in holders}  # type: ignore[operator]
    expected = context.uploaded_blocks & set(lengths)
    if mine != expected:
        raise ConsortiumMismatchError(
            f"the session of cluster {cluster} assigns this organization other blocks than "
            f"its tier's ({len(mine)} instead of {len(expected)}); refusing it"
        )
    for block, length in lengths.items():
        shape = context.block_shapes.get(block)
        if shape is None or length != packed_length(*shape):
            raise ConsortiumMismatchError(
                f"the session of cluster {cluster} gives block {block!r} a length that does "
                "not match this organization's model; refusing it"
            )


def _raise_first(problems: list[tuple[bool, str]], cluster: int) -> None:
    for failed, reason in problems:
        if failed:
            raise ConsortiumMismatchError(
                f"refusing the secure-aggregation session of cluster {cluster}: {reason}"
            )


def peer_identities(
    peers: list[pb.PeerIdentity], roster: tuple[str, ...], ca: x509.Certificate
) -> dict[str, Ed25519PublicKey]:
    """Each roster member's identity key, certified by the consortium CA for it."""
    if sorted(peer.organization for peer in peers) != sorted(roster):
        raise ConsortiumMismatchError("the announced peers are not the session's roster")
    return {
        peer.organization: verify_identity_certificate(
            x509.load_der_x509_certificate(peer.identity_certificate), ca, peer.organization
        )
        for peer in peers
    }


@dataclass
class MaskingRun(ClusterRun):
    """The five masking-mode stages of one cluster, driven by a `SecAggClient`."""

    client: SecAggClient | None = None
    entered: EnteredSums | None = None
    """Where the staged update's sum per cluster is recorded; None: no staged update."""

    def __post_init__(self) -> None:
        self.steps = (
            StageStep(pb.STAGE_ADVERTISE_KEYS, upload=False, receipted=False),
            StageStep(pb.STAGE_SHARE_KEYS, upload=False, receipted=False),
            StageStep(pb.STAGE_MASKED_INPUT, upload=True, receipted=True),
            StageStep(pb.STAGE_CONSISTENCY, upload=False, receipted=False),
            StageStep(pb.STAGE_UNMASK, upload=False, receipted=False),
        )

    def message(self, index: int, previous: list[bytes] | None) -> bytes:
        client = self.client
        assert client is not None
        if index == 0:
            return client.advertise_keys().encode()
        relayed = _single(previous)
        if index == 1:
            return client.share_keys(AdvertisedKeys.decode(relayed)).encode()
        sid = bytes(self.ref.session_id)
        if index == 2:
            shares = RelayedShares.decode(relayed)
            if self.entered is not None:
                self.entered.enter(self.cluster, roster=client.params.roster, sid=sid)
            return client.mask_input(shares, self.inputs).encode()
        if index == 3:
            return client.sign_survivors(SurvivorAnnouncement.decode(relayed)).encode()
        request = UnmaskRequest.decode(relayed)
        if self.entered is not None:
            self.entered.unmask(self.cluster, survivors=request.survivors, sid=sid)
        return client.unmask(request).encode()


def _single(payloads: list[bytes] | None) -> bytes:
    if payloads is None or len(payloads) != 1:
        raise MalformedMessageError("a stage broadcast must relay exactly one message")
    return payloads[0]


# --------------------------------------------------------------------------- CKKS


def check_ckks_session(
    session: CKKSSession,
    *,
    context: SessionContext,
    announcement: pb.RoundAnnouncement,
    cluster: int,
    session_id: bytes,
    keyring: CKKSKeyring,
) -> None:
    """Refuse a CKKS session the consortium file and policy do not allow."""
    spec = context.consortium.secure_aggregation
    required_cohort = max(spec.min_cohort, context.policy.secure_aggregation.min_cohort)
    problems = [
        (session.sid != session_id, "its session id does not match its parameters"),
        (session.run_id != announcement.run_id, "it names another run or attempt"),
        (session.round != announcement.round or session.cluster != cluster, "wrong round"),
        (session.config_hash != context.config_hash.hex(), "another consortium configuration"),
        (session.model_hash != announcement.model_hash.hex(), "another model than announced"),
        (session.key_id != keyring.key_id, "another CKKS key generation"),
        (session.min_cohort < required_cohort, f"minimum cohort below {required_cohort}"),
        (context.organization not in session.roster, "this organization is not in the roster"),
    ]
    _raise_first(problems, cluster)
    _check_blocks(session.block_lengths, session.block_supports, context, cluster)


@dataclass
class CKKSRun(ClusterRun):
    """CKKS mode: upload the ciphertexts, then report the decrypted per-block sums."""

    client: CKKSClient | None = None
    entered: EnteredSums | None = None
    """Where the staged update's sum per cluster is recorded; None: no staged update."""

    def __post_init__(self) -> None:
        self.steps = (
            StageStep(pb.STAGE_CKKS_INPUT, upload=True, receipted=True),
            StageStep(pb.STAGE_UNMASK, upload=True, receipted=False),
        )

    def message(self, index: int, previous: list[bytes] | None) -> bytes:
        client = self.client
        assert client is not None
        sid = bytes(self.ref.session_id)
        if index == 0:
            if self.entered is not None:
                self.entered.enter(self.cluster, roster=client.session.roster, sid=sid)
            return client.encrypt(self.inputs)
        encrypted_sum = _single(previous)
        if self.entered is not None:
            # Reporting the decrypted sums reveals them: bind this update to the
            # organizations summed with it before it does.
            released = CKKSEncryptedSum.decode(
                encrypted_sum, max_ciphertext_bytes=len(encrypted_sum)
            ).released
            contributors = {org for item in released for org in item.contributors}
            self.entered.unmask(self.cluster, survivors=contributors, sid=sid)
        aggregate = client.decrypt(encrypted_sum)
        return encode_block_sums(aggregate.sums)


# --------------------------------------------------------------------------- lockstep


def run_sessions(runs: list[ClusterRun], round_number: int) -> bool:
    """Drive every cluster's session to its end; whether all of them completed.

    A cluster whose session the server aborts (or from which this organization was
    dropped) stops there; the others go on.
    """
    if not runs:
        return False
    previous: dict[int, list[bytes] | None] = {run.cluster: None for run in runs}
    for index in range(len(runs[0].steps)):
        for run in runs:
            if not run.failed:
                try:
                    _send(run, index, previous[run.cluster], round_number)
                except SumAlreadyEnteredError as refusal:
                    _refuse_sum(run, round_number, refusal)
        for run in runs:
            if not run.failed:
                previous[run.cluster] = _await(run, run.steps[index].stage)
    return not any(run.failed for run in runs)


def _refuse_sum(run: ClusterRun, round_number: int, refusal: SumAlreadyEnteredError) -> None:
    """End this cluster's session for this organization: its update is in another sum."""
    _LOG.warning("round %d cluster %d: %s", round_number, run.cluster, refusal)
    run.failed = True
    if run.context.audit is not None:
        run.context.audit.append(
            EventType.REFUSAL,
            refusal_payload(
                round_number,
                "update already entered another sum of this cluster",
                cluster=run.cluster,
            ),
        )


def _send(run: ClusterRun, index: int, previous: list[bytes] | None, round_number: int) -> None:
    context = run.context
    step = run.steps[index]
    payload = run.message(index, previous)
    if not step.upload:
        context.connection.unary(
            "SubmitStage",
            pb.StageSubmission(session=run.ref, stage=step.stage, payload=payload),  # type: ignore[arg-type]
            timeout=context.rpc_timeout_s,
        )
        return
    digest = upload_sha256(payload)
    header = pb.StageHeader(session=run.ref, stage=step.stage)  # type: ignore[arg-type]
    if step.receipted and context.audit is not None:
        committed = context.audit.append(
            EventType.UPDATE_COMMITTED, update_committed_payload(round_number, run.cluster, digest)
        )
        # The server signs these into the receipt: the log's head (this commitment) and
        # the round's spend, so the organization cannot later rewrite what led here.
        if isinstance(context.audit, AuditLog) and isinstance(committed, Record):
            header.audit_head_sha256 = bytes.fromhex(committed.digest())
            spend = context.audit.spend_sha256(round_number)
            if spend is not None:
                header.spend_sha256 = bytes.fromhex(spend)
    ack = context.connection.upload(header, payload, timeout=context.rpc_timeout_s)
    if step.receipted:
        _log_receipt(run, ack, digest, header)


def _log_receipt(
    run: ClusterRun, ack: pb.StageAck, digest: str, header: pb.StageHeader | None = None
) -> None:
    context = run.context
    if not ack.HasField("receipt"):
        raise ForgedReceiptError("the server accepted an input upload without a receipt")
    try:
        payload = aggregation_receipt_from_wire(
            ack.receipt, server_public_key=context.server_identity
        )
    except ReceiptError as error:
        raise ForgedReceiptError(str(error)) from None
    expected = {
        "round": int(run.ref.round),
        "cluster": run.cluster,
        "organization": context.organization,
        "upload_sha256": digest,
        "sid": bytes(run.ref.session_id).hex(),
        "audit_head_sha256": bytes(header.audit_head_sha256).hex() or None
        if header is not None
        else None,
        "spend_sha256": bytes(header.spend_sha256).hex() or None if header is not None else None,
    }
    differing = sorted(name for name, value in expected.items() if payload.get(name) != value)
    if differing:
        raise ForgedReceiptError(f"the server's receipt names other {differing}")
    if context.audit is not None:
        context.audit.append(EventType.AGGREGATION_RECEIPT, payload)


def _await(run: ClusterRun, stage: int) -> list[bytes] | None:
    context = run.context
    while True:
        broadcast = context.connection.unary(
            "AwaitStage",
            pb.StageRequest(session=run.ref, stage=stage, wait_ms=context.wait_ms),  # type: ignore[arg-type]
            timeout=context.rpc_timeout_s + context.wait_ms / 1000,
        )
        validate_stage_broadcast(
            broadcast,
            expected_session=run.ref,
            expected_stage=stage,
            max_payload_bytes=context.max_broadcast_bytes,
        )
        if broadcast.status == pb.STAGE_STATUS_READY:
            return list(broadcast.payloads)
        if broadcast.status == pb.STAGE_STATUS_ABORTED:
            _LOG.warning(
                "round %d cluster %d: the session ended without this organization",
                run.ref.round,
                run.cluster,
            )
            run.failed = True
            return None
