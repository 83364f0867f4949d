"""Validation of `fedhft.v1` wire envelopes on receipt, and signed upload receipts.

Every message that arrives over gRPC is checked here before anything acts on it: field
sizes (hashes and session ids are 32 bytes, certificates and payloads are bounded), ids
(identifiers, block ids), numbers (rounds, clusters, block shapes) and, given what the
receiver expects, that it belongs to the current run, round, cluster, session and stage.
Each failure raises a typed error that `fedhft.protocol.status_code_for` maps to one
precise gRPC status:

=============================  ====================
error                          gRPC status
=============================  ====================
`InvalidEnvelopeError`         INVALID_ARGUMENT
`MessageTooLargeError`         RESOURCE_EXHAUSTED
`WrongRoundError`              FAILED_PRECONDITION
`UnsupportedProtocolError`     FAILED_PRECONDITION
`ConsortiumMismatchError`      FAILED_PRECONDITION
`CertificateVerificationError` PERMISSION_DENIED
=============================  ====================

The secure-aggregation payloads inside the envelopes are opaque here; their own
`decode()` checks them strictly.

Receipts (ARCHITECTURE.md §6): the server signs, with its Ed25519 identity key, a serialized
`ReceiptStatement` preceded by a domain separator; the client verifies the signature
against the server's CA-certified identity key *before* parsing the statement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from google.protobuf.message import DecodeError

from ._certificates import verify_identity_certificate, verify_sealing_certificate
from ._generated.v1 import fedhft_pb2 as pb
from .errors import (
    ConsortiumMismatchError,
    ForgedReceiptError,
    InvalidEnvelopeError,
    MessageTooLargeError,
    UnsupportedProtocolError,
    WrongRoundError,
)

PROTOCOL_VERSION: Final = "fedhft.v1"
HASH_BYTES: Final = 32
SESSION_ID_BYTES: Final = 32
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
MAX_ROUND: Final = 10**9
MAX_CLUSTERS: Final = 64
SKETCH_NORM_TOLERANCE: Final = 1e-6
MAX_BLOCKS: Final = 100_000
MAX_BLOCK_ROWS: Final = 1 << 20
MAX_BLOCK_VALUES: Final = 1 << 28
MAX_PEERS: Final = 10_000
DEFAULT_MAX_STAGE_PAYLOAD_BYTES: Final = 1024 * 1024
"""Default cap of one `SubmitStage` payload (advertisements, shares, signatures)."""

_STAGE_NAMES: Final = {int(value): name for name, value in pb.Stage.items()}
_RECEIPT_DOMAIN: Final = b"fedhft.v1/receipt\x00"
_IDENTIFIER = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The same block ids as the secure-aggregation messages accept.
_BLOCK_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/#\[\]-]{0,254}")
_SUBMITTED_STAGES: Final = frozenset(
    {
        pb.STAGE_ADVERTISE_KEYS,
        pb.STAGE_SHARE_KEYS,
        pb.STAGE_MASKED_INPUT,
        pb.STAGE_CONSISTENCY,
        pb.STAGE_UNMASK,
        pb.STAGE_CKKS_INPUT,
    }
)


# --------------------------------------------------------------------------- pieces


def validate_session_ref(
    session: pb.SessionRef, *, expected: pb.SessionRef | None = None, field: str = "session"
) -> None:
    """Check a session reference's fields and, given `expected`, that it names it."""
    if _RUN_ID.fullmatch(session.run_id) is None:
        raise InvalidEnvelopeError(
            f"`{field}.run_id` must be 1-128 letters, digits, '.', '_' or '-', "
            f"got {session.run_id!r:.80}"
        )
    if session.round > MAX_ROUND:
        raise InvalidEnvelopeError(f"`{field}.round` must be <= {MAX_ROUND}, got {session.round}")
    if session.cluster >= MAX_CLUSTERS:
        raise InvalidEnvelopeError(
            f"`{field}.cluster` must be below {MAX_CLUSTERS}, got {session.cluster}"
        )
    _check_length(session.session_id, SESSION_ID_BYTES, f"{field}.session_id")
    if expected is None:
        return
    if session.run_id != expected.run_id:
        raise WrongRoundError(
            f"`{field}.run_id` is {session.run_id!r}, the current run is {expected.run_id!r}"
        )
    if session.round != expected.round:
        raise WrongRoundError(
            f"`{field}.round` is {session.round}, the current round is {expected.round}"
        )
    if session.cluster != expected.cluster:
        raise WrongRoundError(
            f"`{field}.cluster` is {session.cluster}, expected cluster {expected.cluster}"
        )
    if session.session_id != expected.session_id:
        raise WrongRoundError(f"`{field}.session_id` names another session of this round")


def validate_stage(
    stage: int, *, expected: Collection[int] | None = None, field: str = "stage"
) -> None:
    """Check that `stage` is a known stage and, given `expected`, one of those."""
    if stage not in _SUBMITTED_STAGES:
        raise InvalidEnvelopeError(f"`{field}` must name a secure-aggregation stage, got {stage}")
    if expected is not None and stage not in expected:
        names = ", ".join(sorted(_STAGE_NAMES.get(s, str(s)) for s in expected)) or "none"
        raise WrongRoundError(f"`{field}` is {_STAGE_NAMES[stage]}, the session expects {names}")


def validate_round(value: int, *, expected: int | None = None, field: str = "round") -> None:
    """Check a round number and, given `expected`, that it is the current round."""
    if value > MAX_ROUND:
        raise InvalidEnvelopeError(f"`{field}` must be <= {MAX_ROUND}, got {value}")
    if expected is not None and value != expected:
        raise WrongRoundError(f"`{field}` is {value}, the current round is {expected}")


def parse_certificate(der: bytes, field: str) -> x509.Certificate:
    """Parse a DER certificate a peer sent, refusing empty, oversized or malformed data."""
    if not der:
        raise InvalidEnvelopeError(f"`{field}` is empty; expected a DER certificate")
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise MessageTooLargeError(
            f"`{field}` has {len(der)} bytes, above the cap of {MAX_CERTIFICATE_BYTES}"
        )
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise InvalidEnvelopeError(f"`{field}` is not a DER certificate") from None


# --------------------------------------------------------------------------- requests


def validate_hello_request(
    request: pb.HelloRequest,
    *,
    ca_certificate: x509.Certificate,
    organization: str,
    config_hash: bytes,
) -> tuple[Ed25519PublicKey, X25519PublicKey]:
    """Check an organization's `Hello`; return its certified identity and sealing keys.

    `organization` is the caller as authenticated by its TLS client certificate; the
    certificates in the request must be issued to that same organization.
    """
    if request.protocol != PROTOCOL_VERSION:
        raise UnsupportedProtocolError(
            f"`protocol` is {request.protocol!r:.40}; this server speaks {PROTOCOL_VERSION!r}"
        )
    _check_length(request.consortium_config_hash, HASH_BYTES, "consortium_config_hash")
    if request.consortium_config_hash != config_hash:
        raise ConsortiumMismatchError(
            "`consortium_config_hash` differs from the server's consortium configuration; "
            "fetch the current consortium file"
        )
    identity = verify_identity_certificate(
        parse_certificate(request.identity_certificate, "identity_certificate"),
        ca_certificate,
        organization,
    )
    sealing = verify_sealing_certificate(
        parse_certificate(request.sealing_certificate, "sealing_certificate"),
        ca_certificate,
        organization,
    )
    return identity, sealing


def validate_join_request(
    request: pb.JoinRequest, *, expected_round: int, sketch_length: int | None = None
) -> tuple[float, ...] | None:
    """Check a `JoinRound` request for the current round; return its sketch, if any.

    ``sketch_length`` is the length of the sketch the round asks every participant for
    (``clustering.signal: sketch``, warm-up rounds), None when it asks for none: a
    participant must then send exactly that many finite values of unit L2 norm, and a
    sketch the round does not ask for is refused (FAILED_PRECONDITION).
    """
    validate_round(request.round, expected=expected_round)
    sketch = _validate_sketch(request, sketch_length)
    if request.participate:
        if _IDENTIFIER.fullmatch(request.tier) is None:
            raise InvalidEnvelopeError(f"`tier` must be a tier id, got {request.tier!r:.80}")
        if request.refusal != pb.REFUSAL_REASON_UNSPECIFIED:
            raise InvalidEnvelopeError("`refusal` must be unset when `participate` is true")
    elif request.refusal not in pb.RefusalReason.values() or (
        request.refusal == pb.REFUSAL_REASON_UNSPECIFIED
    ):
        raise InvalidEnvelopeError("`refusal` must give a reason when `participate` is false")
    return sketch


def _validate_sketch(request: pb.JoinRequest, length: int | None) -> tuple[float, ...] | None:
    values = tuple(request.sketch)
    if not values:
        if length is not None and request.participate:
            raise InvalidEnvelopeError(
                f"round {request.round} clusters on sketches: a participant must send its "
                f"`sketch` ({length} values)"
            )
        return None
    if length is None:
        raise WrongRoundError(f"round {request.round} takes no `sketch`")
    if not request.participate:
        raise InvalidEnvelopeError("`sketch` comes only with `participate: true`")
    if len(values) > length:
        raise MessageTooLargeError(f"`sketch` has {len(values)} values, above {length}")
    if len(values) != length:
        raise InvalidEnvelopeError(f"`sketch` must have {length} values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise InvalidEnvelopeError("`sketch` values must be finite")
    norm = math.sqrt(math.fsum(v * v for v in values))
    if abs(norm - 1.0) > SKETCH_NORM_TOLERANCE:
        raise InvalidEnvelopeError(f"`sketch` must have unit L2 norm, got {norm:.6g}")
    return values


def validate_stage_submission(
    submission: pb.StageSubmission,
    *,
    expected_session: pb.SessionRef,
    expected_stages: Collection[int],
    max_payload_bytes: int = DEFAULT_MAX_STAGE_PAYLOAD_BYTES,
) -> None:
    """Check a `SubmitStage` envelope against the current session and stage."""
    if not submission.HasField("session"):
        raise InvalidEnvelopeError("`session` is missing")
    validate_session_ref(submission.session, expected=expected_session)
    validate_stage(submission.stage, expected=expected_stages)
    if not submission.payload:
        raise InvalidEnvelopeError("`payload` is empty")
    if len(submission.payload) > max_payload_bytes:
        raise MessageTooLargeError(
            f"`payload` has {len(submission.payload)} bytes, above the cap of "
            f"{max_payload_bytes}; large stage messages go through UploadStage"
        )


def validate_stage_header(
    header: pb.StageHeader, *, expected_session: pb.SessionRef, expected_stages: Collection[int]
) -> None:
    """Check the header of an `UploadStage` stream against the current session and stage."""
    if not header.HasField("session"):
        raise InvalidEnvelopeError("`header.session` is missing")
    validate_session_ref(header.session, expected=expected_session, field="header.session")
    validate_stage(header.stage, expected=expected_stages, field="header.stage")
    for name in ("audit_head_sha256", "spend_sha256"):
        value = getattr(header, name)
        if value:
            _check_length(value, 32, f"header.{name}")


def validate_stage_request(request: pb.StageRequest, *, expected_session: pb.SessionRef) -> None:
    """Check an `AwaitStage` request: the current session and a known stage."""
    if not request.HasField("session"):
        raise InvalidEnvelopeError("`session` is missing")
    validate_session_ref(request.session, expected=expected_session)
    validate_stage(request.stage)


def validate_session_request(
    request: pb.SessionRequest, *, expected_round: int, clusters: int
) -> None:
    """Check an `AwaitSession` request: the current round and an existing cluster."""
    validate_round(request.round, expected=expected_round)
    if request.run_id and _RUN_ID.fullmatch(request.run_id) is None:
        raise InvalidEnvelopeError(f"`run_id` is malformed: {request.run_id!r:.80}")
    if request.cluster >= clusters:
        raise InvalidEnvelopeError(
            f"`cluster` must be below {clusters} (the round's clusters), got {request.cluster}"
        )


def validate_model_request(request: pb.ModelRequest, *, latest_round: int, clusters: int) -> None:
    """Check a `DownloadModel` request: a round that exists and an existing cluster."""
    validate_round(request.round)
    if request.round > latest_round:
        raise WrongRoundError(
            f"`round` is {request.round}; no model exists after round {latest_round}"
        )
    if request.cluster >= clusters:
        raise InvalidEnvelopeError(
            f"`cluster` must be below {clusters} (the round's clusters), got {request.cluster}"
        )


# --------------------------------------------------------------------------- responses


def validate_hello_response(response: pb.HelloResponse) -> None:
    """Check the run id and the rounds uploaded of a `HelloResponse` a client received
    (the rest is checked against the client's own configuration and CA)."""
    if _RUN_ID.fullmatch(response.run_id) is None:
        raise InvalidEnvelopeError(f"`run_id` is malformed: {response.run_id!r:.80}")
    # An upload can be in the round after the last completed one (still open).
    latest = min(int(response.current_round) + 1, MAX_ROUND)
    previous = 0
    for round_number in response.rounds_uploaded:
        if not previous < round_number <= latest:
            raise InvalidEnvelopeError(
                f"`rounds_uploaded` must be ascending distinct rounds 1 to {latest} "
                f"(`current_round` + 1), got {round_number} after {previous}"
            )
        previous = round_number


def validate_round_announcement(announcement: pb.RoundAnnouncement) -> None:
    """Check a `RoundAnnouncement` a client received (shapes, ids, masks)."""
    status = announcement.status
    if status not in (pb.ROUND_STATUS_OPEN, pb.ROUND_STATUS_PENDING, pb.ROUND_STATUS_FINISHED):
        raise InvalidEnvelopeError(f"`status` must be a known round status, got {status}")
    server_run = announcement.server_run_id
    if server_run and _RUN_ID.fullmatch(server_run) is None:
        raise InvalidEnvelopeError(f"`server_run_id` is malformed: {server_run!r:.80}")
    if status != pb.ROUND_STATUS_OPEN:
        return
    validate_round(announcement.round)
    if _RUN_ID.fullmatch(announcement.run_id) is None:
        raise InvalidEnvelopeError(f"`run_id` is malformed: {announcement.run_id!r:.80}")
    _check_length(announcement.consortium_config_hash, HASH_BYTES, "consortium_config_hash")
    _check_length(announcement.model_hash, HASH_BYTES, "model_hash")
    if not 1 <= announcement.clusters <= MAX_CLUSTERS:
        raise InvalidEnvelopeError(
            f"`clusters` must be 1 to {MAX_CLUSTERS}, got {announcement.clusters}"
        )
    if len(announcement.blocks) > MAX_BLOCKS:
        raise MessageTooLargeError(f"`blocks` lists more than {MAX_BLOCKS} blocks")
    block_ids: set[str] = set()
    for index, block in enumerate(announcement.blocks):
        where = f"blocks[{index}]"
        if _BLOCK_ID.fullmatch(block.block_id) is None:
            raise InvalidEnvelopeError(f"`{where}.block_id` is malformed: {block.block_id!r:.80}")
        if block.block_id in block_ids:
            raise InvalidEnvelopeError(f"`{where}.block_id` {block.block_id!r} appears twice")
        block_ids.add(block.block_id)
        if not 1 <= block.rows <= MAX_BLOCK_ROWS or block.cols < 1:
            raise InvalidEnvelopeError(
                f"`{where}` must have 1 to {MAX_BLOCK_ROWS} rows and at least one column, "
                f"got {block.rows} × {block.cols}"
            )
        if block.rows * block.cols > MAX_BLOCK_VALUES:
            raise MessageTooLargeError(
                f"`{where}` has {block.rows * block.cols} values, above {MAX_BLOCK_VALUES}"
            )
    tiers: set[str] = set()
    for index, mask in enumerate(announcement.tier_masks):
        where = f"tier_masks[{index}]"
        if _IDENTIFIER.fullmatch(mask.tier) is None or mask.tier in tiers:
            raise InvalidEnvelopeError(
                f"`{where}.tier` is malformed or repeated: {mask.tier!r:.80}"
            )
        tiers.add(mask.tier)
        unknown = sorted(set(mask.block_ids) - block_ids)
        if unknown or len(set(mask.block_ids)) != len(mask.block_ids):
            raise InvalidEnvelopeError(
                f"`{where}.block_ids` must name distinct announced blocks; unknown: {unknown[:3]!r}"
            )


def validate_model_header(
    header: pb.ModelHeader, *, expected_round: int, expected_cluster: int
) -> None:
    """Check the header of a `DownloadModel` stream against what the client asked for."""
    validate_round(header.round, expected=expected_round)
    if header.cluster != expected_cluster:
        raise WrongRoundError(
            f"`cluster` is {header.cluster}, asked for cluster {expected_cluster}"
        )
    if not header.format or len(header.format) > 64:
        raise InvalidEnvelopeError("`format` must name the model's serialization format")
    _check_length(header.model_hash, HASH_BYTES, "model_hash")


def validate_session_announcement(
    announcement: pb.SessionAnnouncement, *, expected_round: int, expected_cluster: int
) -> None:
    """Check a `SessionAnnouncement` a client received for its round and cluster."""
    status = announcement.status
    if status not in pb.SessionStatus.values() or status == pb.SESSION_STATUS_UNSPECIFIED:
        raise InvalidEnvelopeError(f"`status` must be a known session status, got {status}")
    if status != pb.SESSION_STATUS_READY:
        return
    if not announcement.HasField("session"):
        raise InvalidEnvelopeError("`session` is missing")
    validate_session_ref(announcement.session)
    validate_round(announcement.session.round, expected=expected_round, field="session.round")
    if announcement.session.cluster != expected_cluster:
        raise WrongRoundError(
            f"`session.cluster` is {announcement.session.cluster}, asked for "
            f"cluster {expected_cluster}"
        )
    if not announcement.session_params:
        raise InvalidEnvelopeError("`session_params` is empty")
    if not 1 <= len(announcement.peers) <= MAX_PEERS:
        raise InvalidEnvelopeError(f"`peers` must list 1 to {MAX_PEERS} organizations")
    seen: set[str] = set()
    for index, peer in enumerate(announcement.peers):
        if _IDENTIFIER.fullmatch(peer.organization) is None or peer.organization in seen:
            raise InvalidEnvelopeError(
                f"`peers[{index}].organization` is malformed or repeated: {peer.organization!r:.80}"
            )
        seen.add(peer.organization)


def validate_stage_broadcast(
    broadcast: pb.StageBroadcast,
    *,
    expected_session: pb.SessionRef,
    expected_stage: int,
    max_payload_bytes: int,
) -> None:
    """Check a `StageBroadcast` a client received for its session and stage."""
    status = broadcast.status
    if status not in pb.StageStatus.values() or status == pb.STAGE_STATUS_UNSPECIFIED:
        raise InvalidEnvelopeError(f"`status` must be a known stage status, got {status}")
    if not broadcast.HasField("session"):
        raise InvalidEnvelopeError("`session` is missing")
    validate_session_ref(broadcast.session, expected=expected_session)
    validate_stage(broadcast.stage, expected=(expected_stage,))
    total = sum(len(payload) for payload in broadcast.payloads)
    if total > max_payload_bytes:
        raise MessageTooLargeError(
            f"`payloads` carry {total} bytes, above the cap of {max_payload_bytes}"
        )


# --------------------------------------------------------------------------- receipts


def sign_receipt(identity_key: Ed25519PrivateKey, statement: pb.ReceiptStatement) -> pb.Receipt:
    """Sign `statement` with the server's identity key (ARCHITECTURE.md §6 upload receipt)."""
    encoded = statement.SerializeToString(deterministic=True)
    return pb.Receipt(statement=encoded, signature=identity_key.sign(_RECEIPT_DOMAIN + encoded))


def verify_receipt(receipt: pb.Receipt, server_identity: Ed25519PublicKey) -> pb.ReceiptStatement:
    """Verify a receipt's signature, then return its statement; raise `ForgedReceiptError`.

    `server_identity` must come from the server's identity certificate checked with
    `verify_server_identity_certificate`, never from the receipt itself.
    """
    try:
        server_identity.verify(receipt.signature, _RECEIPT_DOMAIN + receipt.statement)
    except InvalidSignature:
        raise ForgedReceiptError(
            "the receipt's signature does not verify under the server's identity key"
        ) from None
    statement = pb.ReceiptStatement()
    try:
        statement.ParseFromString(receipt.statement)
    except DecodeError:
        raise InvalidEnvelopeError("a validly signed receipt does not parse") from None
    return statement


def _check_length(value: bytes, length: int, field: str) -> None:
    if len(value) != length:
        raise InvalidEnvelopeError(f"`{field}` must be {length} bytes, got {len(value)}")
