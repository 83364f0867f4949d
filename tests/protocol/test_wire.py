"""Validation of wire envelopes, signed receipts, and the gRPC status of every error."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.errors import FedHFTError
from fedhft.protocol import errors as protocol_errors
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import (
    sign_receipt,
    status_code_for,
    validate_hello_response,
    validate_join_request,
    validate_model_header,
    validate_round_announcement,
    validate_session_announcement,
    validate_session_ref,
    validate_session_request,
    validate_stage_broadcast,
    verify_receipt,
)
from fedhft.protocol.errors import (
    ForgedReceiptError,
    InvalidEnvelopeError,
    MessageTooLargeError,
    WrongRoundError,
)

SESSION = pb.SessionRef(
    run_id="run-7", round=12, cluster=1, session_id=hashlib.sha256(b"sid").digest()
)


def _announcement(**changes: Any) -> pb.RoundAnnouncement:
    fields: dict[str, Any] = {
        "status": pb.ROUND_STATUS_OPEN,
        "round": 12,
        "run_id": "run-7",
        "consortium_config_hash": bytes(32),
        "model_hash": bytes(32),
        "clusters": 2,
        "blocks": [
            pb.BlockLayout(block_id="layer.0.attention.self.value", rows=8, cols=32),
            pb.BlockLayout(block_id="layer.1.attention.self.value", rows=8, cols=32),
        ],
        "tier_masks": [
            pb.TierMask(tier="edge", block_ids=["layer.1.attention.self.value"]),
            pb.TierMask(
                tier="full",
                block_ids=["layer.0.attention.self.value", "layer.1.attention.self.value"],
            ),
        ],
    }
    fields.update(changes)
    return pb.RoundAnnouncement(**fields)


# --------------------------------------------------------------------------- receipts


def _statement() -> pb.ReceiptStatement:
    return pb.ReceiptStatement(
        consortium="northern-health",
        server="localhost",
        organization="st-mary",
        session=SESSION,
        stage=pb.STAGE_MASKED_INPUT,
        payload_bytes=1000,
        payload_sha256=hashlib.sha256(b"masked").digest(),
        accepted_at_unix_ms=1_700_000_000_000,
    )


def test_receipt_round_trip() -> None:
    """A receipt signed by the server verifies under its key and returns the statement."""
    key = Ed25519PrivateKey.generate()
    receipt = sign_receipt(key, _statement())
    assert verify_receipt(receipt, key.public_key()) == _statement()


def test_tampered_or_foreign_receipts_are_forged() -> None:
    """A changed statement, or a signature by another key, raises ForgedReceiptError."""
    key = Ed25519PrivateKey.generate()
    receipt = sign_receipt(key, _statement())
    altered = _statement()
    altered.payload_bytes = 999
    tampered = pb.Receipt(
        statement=altered.SerializeToString(deterministic=True), signature=receipt.signature
    )
    with pytest.raises(ForgedReceiptError):
        verify_receipt(tampered, key.public_key())
    with pytest.raises(ForgedReceiptError):
        verify_receipt(receipt, Ed25519PrivateKey.generate().public_key())


def test_signature_is_domain_separated() -> None:
    """A plain signature over the statement bytes (another purpose) is not a receipt."""
    key = Ed25519PrivateKey.generate()
    encoded = _statement().SerializeToString(deterministic=True)
    with pytest.raises(ForgedReceiptError):
        verify_receipt(pb.Receipt(statement=encoded, signature=key.sign(encoded)), key.public_key())


def test_validly_signed_garbage_does_not_parse() -> None:
    """A correctly signed statement that is not a ReceiptStatement raises, not crashes."""
    key = Ed25519PrivateKey.generate()
    garbage = b"\xff\xff\xff"
    signature = key.sign(b"fedhft.v1/receipt\x00" + garbage)
    with pytest.raises(InvalidEnvelopeError, match="does not parse"):
        verify_receipt(pb.Receipt(statement=garbage, signature=signature), key.public_key())


# --------------------------------------------------------------------------- sessions


@settings(max_examples=50, deadline=None)
@given(
    field=st.sampled_from(["run_id", "round", "cluster", "session_id"]),
    seed=st.integers(min_value=1, max_value=2**31),
)
def test_only_the_exact_session_passes(field: str, seed: int) -> None:
    """Changing any one field of the session reference makes it a wrong-session message."""
    validate_session_ref(SESSION, expected=SESSION)
    other = pb.SessionRef()
    other.CopyFrom(SESSION)
    if field == "run_id":
        other.run_id = f"run-{seed}"
    elif field == "round":
        other.round = (SESSION.round + seed) % 10**9
    elif field == "cluster":
        other.cluster = (SESSION.cluster + seed) % 64
    else:
        other.session_id = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    if other == SESSION:
        return
    with pytest.raises(WrongRoundError):
        validate_session_ref(other, expected=SESSION)


@pytest.mark.parametrize(
    "changes",
    [
        {"run_id": ""},
        {"run_id": "x" * 129},
        {"round": 10**9 + 1},
        {"cluster": 64},
        {"session_id": bytes(31)},
    ],
)
def test_malformed_session_refs_are_invalid(changes: dict[str, Any]) -> None:
    """Out-of-range or malformed session fields are INVALID_ARGUMENT, not a wrong session."""
    other = pb.SessionRef()
    other.CopyFrom(SESSION)
    for name, value in changes.items():
        setattr(other, name, value)
    with pytest.raises(InvalidEnvelopeError):
        validate_session_ref(other, expected=SESSION)


# --------------------------------------------------------------------------- announcements


def test_well_formed_round_announcement_passes() -> None:
    """A consistent announcement and a bare PENDING one both pass."""
    validate_round_announcement(_announcement())
    validate_round_announcement(pb.RoundAnnouncement(status=pb.ROUND_STATUS_PENDING))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"status": pb.ROUND_STATUS_UNSPECIFIED}, InvalidEnvelopeError),
        ({"model_hash": bytes(16)}, InvalidEnvelopeError),
        ({"clusters": 0}, InvalidEnvelopeError),
        ({"run_id": "no spaces"}, InvalidEnvelopeError),
        ({"server_run_id": "no spaces"}, InvalidEnvelopeError),
        ({"blocks": [pb.BlockLayout(block_id="a", rows=0, cols=4)]}, InvalidEnvelopeError),
        ({"blocks": [pb.BlockLayout(block_id="a b", rows=1, cols=4)]}, InvalidEnvelopeError),
        (
            {"blocks": [pb.BlockLayout(block_id="a", rows=2, cols=2)] * 2, "tier_masks": []},
            InvalidEnvelopeError,
        ),
        ({"tier_masks": [pb.TierMask(tier="edge", block_ids=["unknown"])]}, InvalidEnvelopeError),
        (
            {"tier_masks": [pb.TierMask(tier="edge"), pb.TierMask(tier="edge")]},
            InvalidEnvelopeError,
        ),
        (
            {"blocks": [pb.BlockLayout(block_id="a", rows=1 << 20, cols=1 << 10)]},
            MessageTooLargeError,
        ),
    ],
    ids=[
        "status",
        "hash",
        "clusters",
        "run-id",
        "server-run-id",
        "zero-rows",
        "block-id",
        "repeated-block",
        "unknown-mask-block",
        "repeated-tier",
        "huge-block",
    ],
)
def test_malformed_round_announcements_are_refused(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    """Every inconsistent shape, id or hash in an announcement raises its typed error."""
    with pytest.raises(error):
        validate_round_announcement(_announcement(**changes))


def test_hello_response_needs_a_well_formed_run_id() -> None:
    """A `HelloResponse` without a run id, or with a malformed one, is refused."""
    validate_hello_response(pb.HelloResponse(run_id="tiny-test-0123abcd"))
    for run_id in ("", "no spaces", "x" * 200):
        with pytest.raises(InvalidEnvelopeError, match="run_id"):
            validate_hello_response(pb.HelloResponse(run_id=run_id))


@pytest.mark.parametrize(
    "rounds", [(0,), (2, 1), (1, 1), (4,)], ids=["zero", "descending", "repeated", "future"]
)
def test_hello_response_rounds_uploaded_must_be_ascending_known_rounds(
    rounds: tuple[int, ...],
) -> None:
    """`rounds_uploaded` lists distinct rounds 1 to `current_round` + 1 in ascending order."""
    run = "tiny-test-0123abcd"
    validate_hello_response(pb.HelloResponse(run_id=run, current_round=2, rounds_uploaded=[1, 3]))
    with pytest.raises(InvalidEnvelopeError, match="rounds_uploaded"):
        validate_hello_response(
            pb.HelloResponse(run_id=run, current_round=2, rounds_uploaded=rounds)
        )


def _session_announcement(**changes: Any) -> pb.SessionAnnouncement:
    fields: dict[str, Any] = {
        "status": pb.SESSION_STATUS_READY,
        "session": SESSION,
        "session_params": b"params",
        "peers": [pb.PeerIdentity(organization=name) for name in ("a-org", "b-org", "c-org")],
    }
    fields.update(changes)
    return pb.SessionAnnouncement(**fields)


def test_session_announcement_checks() -> None:
    """A ready session must be this round's and cluster's, with distinct peers."""
    validate_session_announcement(_session_announcement(), expected_round=12, expected_cluster=1)
    with pytest.raises(WrongRoundError):
        validate_session_announcement(
            _session_announcement(), expected_round=12, expected_cluster=0
        )
    with pytest.raises(WrongRoundError):
        validate_session_announcement(
            _session_announcement(), expected_round=13, expected_cluster=1
        )
    repeated = [pb.PeerIdentity(organization="a-org")] * 2
    with pytest.raises(InvalidEnvelopeError, match="repeated"):
        validate_session_announcement(
            _session_announcement(peers=repeated), expected_round=12, expected_cluster=1
        )
    with pytest.raises(InvalidEnvelopeError, match="session_params"):
        validate_session_announcement(
            _session_announcement(session_params=b""), expected_round=12, expected_cluster=1
        )
    pending = pb.SessionAnnouncement(status=pb.SESSION_STATUS_PENDING, retry_after_ms=50)
    validate_session_announcement(pending, expected_round=12, expected_cluster=1)


def test_stage_broadcast_checks() -> None:
    """A broadcast must be for the awaited stage and stay within its byte cap."""
    broadcast = pb.StageBroadcast(
        status=pb.STAGE_STATUS_READY,
        session=SESSION,
        stage=pb.STAGE_SHARE_KEYS,
        payloads=[b"a" * 100, b"b" * 100],
    )
    validate_stage_broadcast(
        broadcast,
        expected_session=SESSION,
        expected_stage=pb.STAGE_SHARE_KEYS,
        max_payload_bytes=200,
    )
    with pytest.raises(MessageTooLargeError):
        validate_stage_broadcast(
            broadcast,
            expected_session=SESSION,
            expected_stage=pb.STAGE_SHARE_KEYS,
            max_payload_bytes=199,
        )
    with pytest.raises(WrongRoundError, match="STAGE_SHARE_KEYS"):
        validate_stage_broadcast(
            broadcast,
            expected_session=SESSION,
            expected_stage=pb.STAGE_UNMASK,
            max_payload_bytes=200,
        )


def test_join_request_checks() -> None:
    """Joining names a tier; refusing gives a reason; both only for the current round."""
    validate_join_request(
        pb.JoinRequest(round=12, participate=True, tier="edge"), expected_round=12
    )
    refusal = pb.JoinRequest(round=12, refusal=pb.REFUSAL_REASON_BUDGET_EXHAUSTED)
    validate_join_request(refusal, expected_round=12)
    with pytest.raises(WrongRoundError):
        validate_join_request(refusal, expected_round=13)
    with pytest.raises(InvalidEnvelopeError, match="tier"):
        validate_join_request(pb.JoinRequest(round=12, participate=True), expected_round=12)
    with pytest.raises(InvalidEnvelopeError, match="reason"):
        validate_join_request(pb.JoinRequest(round=12), expected_round=12)
    with pytest.raises(InvalidEnvelopeError, match="unset"):
        validate_join_request(
            pb.JoinRequest(
                round=12,
                participate=True,
                tier="edge",
                refusal=pb.REFUSAL_REASON_OTHER,
            ),
            expected_round=12,
        )


def _join(**fields: Any) -> pb.JoinRequest:
    return pb.JoinRequest(round=12, participate=True, tier="edge", **fields)


def test_join_request_sketch_checks() -> None:
    """A round that clusters on sketches takes exactly one unit-norm sketch of the model's
    width from each participant; any other round takes none."""
    unit = [0.6, 0.8, 0.0]
    assert validate_join_request(_join(sketch=unit), expected_round=12, sketch_length=3) == (
        0.6,
        0.8,
        0.0,
    )
    assert validate_join_request(_join(), expected_round=12) is None
    refusal = pb.JoinRequest(round=12, refusal=pb.REFUSAL_REASON_BUDGET_EXHAUSTED)
    assert validate_join_request(refusal, expected_round=12, sketch_length=3) is None
    cases: list[tuple[pb.JoinRequest, int | None, type[Exception], str]] = [
        (_join(sketch=unit), None, WrongRoundError, "takes no `sketch`"),
        (_join(), 3, InvalidEnvelopeError, "must send its `sketch`"),
        (_join(sketch=[1.0, 0.0]), 3, InvalidEnvelopeError, "must have 3 values"),
        (_join(sketch=[1.0, 0.0, 0.0, 0.0]), 3, MessageTooLargeError, "above 3"),
        (_join(sketch=[1.0, 1.0, 0.0]), 3, InvalidEnvelopeError, "unit L2 norm"),
        (_join(sketch=[float("nan"), 1.0, 0.0]), 3, InvalidEnvelopeError, "finite"),
        (
            pb.JoinRequest(round=12, refusal=pb.REFUSAL_REASON_OTHER, sketch=unit),
            3,
            InvalidEnvelopeError,
            "only with `participate: true`",
        ),
    ]
    for request, length, error, message in cases:
        with pytest.raises(error, match=message):
            validate_join_request(request, expected_round=12, sketch_length=length)


def test_model_and_session_request_checks() -> None:
    """Model headers and session requests name an existing round and cluster."""
    header = pb.ModelHeader(round=12, cluster=1, format="safetensors", model_hash=bytes(32))
    validate_model_header(header, expected_round=12, expected_cluster=1)
    with pytest.raises(WrongRoundError):
        validate_model_header(header, expected_round=12, expected_cluster=0)
    with pytest.raises(InvalidEnvelopeError, match="model_hash"):
        validate_model_header(
            pb.ModelHeader(round=12, cluster=1, format="safetensors"),
            expected_round=12,
            expected_cluster=1,
        )
    validate_session_request(pb.SessionRequest(round=12, cluster=1), expected_round=12, clusters=2)
    with pytest.raises(InvalidEnvelopeError, match="below 2"):
        validate_session_request(
            pb.SessionRequest(round=12, cluster=2), expected_round=12, clusters=2
        )


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("UnauthenticatedPeerError", "UNAUTHENTICATED"),
        ("PeerNotEnrolledError", "PERMISSION_DENIED"),
        ("CertificateVerificationError", "PERMISSION_DENIED"),
        ("MessageTooLargeError", "RESOURCE_EXHAUSTED"),
        ("ChunkIntegrityError", "DATA_LOSS"),
        ("InvalidEnvelopeError", "INVALID_ARGUMENT"),
        ("WrongRoundError", "FAILED_PRECONDITION"),
        ("UnsupportedProtocolError", "FAILED_PRECONDITION"),
        ("ConsortiumMismatchError", "FAILED_PRECONDITION"),
        ("MalformedMessageError", "INVALID_ARGUMENT"),
        ("ForgedMessageError", "PERMISSION_DENIED"),
        ("ReplayError", "FAILED_PRECONDITION"),
        ("DuplicateMessageError", "ALREADY_EXISTS"),
        ("ThresholdError", "ABORTED"),
        ("EquivocationError", "ABORTED"),
        ("UnmaskRuleError", "PERMISSION_DENIED"),
        ("DecryptionError", "INVALID_ARGUMENT"),
    ],
)
def test_each_protocol_error_has_a_precise_status(name: str, status: str) -> None:
    """Typed protocol errors map to the gRPC status the wire protocol documents."""
    cls = getattr(protocol_errors, name)
    error = cls("message")
    assert issubclass(cls, FedHFTError)
    assert status_code_for(error) == getattr(grpc.StatusCode, status)


def test_statuses_of_subclasses_and_builtins() -> None:
    """Subclasses inherit their parent's status; built-ins fall back; the rest is INTERNAL."""

    class _LateArrival(protocol_errors.WrongRoundError):
        pass

    assert status_code_for(_LateArrival("x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_code_for(ValueError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code_for(PermissionError("x")) == grpc.StatusCode.PERMISSION_DENIED
    assert status_code_for(TimeoutError("x")) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_code_for(KeyError("x")) == grpc.StatusCode.INTERNAL
