"""Upload receipts: the server signs, anyone with its public key verifies, forgeries fail."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from audit_helpers import fixed_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhft.audit import Receipt, ReceiptError, key_fingerprint, sign_receipt, verify_receipt
from fedhft.audit._record import SIGNING_CONTEXT
from fedhft.audit.receipts import (
    RECEIPT_CONTEXT,
    aggregation_receipt_from_wire,
    upload_accepted_from_wire,
    verify_receipt_payload,
)

UPLOAD = hashlib.sha256(b"masked upload").hexdigest()


def _receipt(server_key: Ed25519PrivateKey, **overrides: object) -> Receipt:
    fields: dict[str, object] = {
        "round": 3,
        "cluster": 1,
        "organization": "st-mary-hospital",
        "upload_sha256": UPLOAD,
        "sid": "ab" * 32,
    }
    fields.update(overrides)
    return sign_receipt(server_key, **fields)  # type: ignore[arg-type]


def test_receipt_verifies_with_the_server_key(server_key: Ed25519PrivateKey) -> None:
    """A receipt the server signed verifies with its public key and names its fingerprint."""
    receipt = _receipt(server_key)
    verify_receipt(server_key.public_key(), receipt)
    assert receipt.server == key_fingerprint(server_key.public_key())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("round", 4),
        ("cluster", 0),
        ("organization", "harbour-bank"),
        ("upload_sha256", "0" * 64),
        ("sid", "cd" * 32),
        ("sid", None),
    ],
)
def test_any_changed_field_breaks_the_receipt(
    server_key: Ed25519PrivateKey, field: str, value: object
) -> None:
    """Changing any signed field (round, cluster, organization, upload, session) after
    signing makes verification fail."""
    forged = dataclasses.replace(_receipt(server_key), **{field: value})
    with pytest.raises(ReceiptError, match="not signed by this server key"):
        verify_receipt(server_key.public_key(), forged)


def test_receipt_signed_by_another_key_is_refused(server_key: Ed25519PrivateKey) -> None:
    """A receipt a client signs itself (claiming the server's fingerprint) is refused."""
    genuine = _receipt(server_key)
    self_signed = _receipt(fixed_key("client:st-mary-hospital"))
    forged = dataclasses.replace(self_signed, server=genuine.server)
    with pytest.raises(ReceiptError):
        verify_receipt(server_key.public_key(), forged)
    with pytest.raises(ReceiptError):
        verify_receipt(server_key.public_key(), self_signed)


def test_receipt_signatures_are_domain_separated(server_key: Ed25519PrivateKey) -> None:
    """A receipt's signed message starts with its own context, distinct from records'."""
    message = _receipt(server_key).signing_message()
    assert message.startswith(RECEIPT_CONTEXT)
    assert not message.startswith(SIGNING_CONTEXT)


def test_receipt_round_trips_through_its_audit_payload(server_key: Ed25519PrivateKey) -> None:
    """`to_payload` / `from_payload` give back an equal, still valid receipt."""
    receipt = _receipt(server_key)
    again = Receipt.from_payload(receipt.to_payload())
    assert again == receipt
    verify_receipt_payload(server_key.public_key(), receipt.to_payload())


def test_sid_may_be_given_as_bytes(server_key: Ed25519PrivateKey) -> None:
    """A 32-byte session id is stored as hex and bound into the signature."""
    receipt = _receipt(server_key, sid=bytes(range(32)))
    assert receipt.sid == bytes(range(32)).hex()
    verify_receipt(server_key.public_key(), receipt)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("round", -1),
        ("cluster", "0"),
        ("organization", "St Mary"),
        ("upload_sha256", "XYZ"),
        ("sid", "not hex"),
    ],
)
def test_malformed_receipt_fields_are_refused(
    server_key: Ed25519PrivateKey, field: str, value: object
) -> None:
    """Receipts with malformed fields cannot even be built."""
    with pytest.raises(ReceiptError, match=field):
        _receipt(server_key, **{field: value})


def test_malformed_payload_is_refused() -> None:
    """A receipt payload missing a field is refused, naming it."""
    with pytest.raises(ReceiptError, match="receipt_sig"):
        Receipt.from_payload({"round": 1})


# ----------------------------------------------------------------- fedhft.v1 wire receipts


def _wire_receipt(server_key: Ed25519PrivateKey) -> object:
    from fedhft.protocol import fedhft_pb2
    from fedhft.protocol import sign_receipt as sign_wire

    statement = fedhft_pb2.ReceiptStatement(
        consortium="northern-health-finance",
        server="agg.example.org",
        organization="st-mary-hospital",
        session=fedhft_pb2.SessionRef(
            run_id="run-1", round=3, cluster=1, session_id=bytes(range(32))
        ),
        stage=fedhft_pb2.STAGE_MASKED_INPUT,
        payload_bytes=1234,
        payload_sha256=bytes.fromhex(UPLOAD),
        accepted_at_unix_ms=1_740_000_000_000,
    )
    return sign_wire(server_key, statement)


def test_wire_receipt_is_logged_verbatim_and_verifies(server_key: Ed25519PrivateKey) -> None:
    """A `fedhft.v1` wire receipt becomes a payload with the statement bytes, which
    verifies and matches the round, cluster, organization and upload it names."""
    receipt = _wire_receipt(server_key)
    payload = aggregation_receipt_from_wire(receipt, server_public_key=server_key.public_key())
    assert (payload["round"], payload["cluster"], payload["upload_sha256"]) == (3, 1, UPLOAD)
    verify_receipt_payload(server_key.public_key(), payload)
    accepted = upload_accepted_from_wire(receipt)
    assert accepted["upload_sha256"] == UPLOAD and accepted["receipt_sig"] == payload["receipt_sig"]


def test_wire_receipt_payload_with_edited_fields_is_refused(server_key: Ed25519PrivateKey) -> None:
    """Editing the matched fields of a logged wire receipt no longer agrees with what
    the server signed."""
    payload = aggregation_receipt_from_wire(
        _wire_receipt(server_key), server_public_key=server_key.public_key()
    )
    with pytest.raises(ReceiptError, match="upload_sha256"):
        verify_receipt_payload(server_key.public_key(), {**payload, "upload_sha256": "1" * 64})


def test_forged_wire_receipt_is_not_logged(server_key: Ed25519PrivateKey) -> None:
    """A wire receipt not signed by the server key is refused before it is logged."""
    other = fixed_key("impostor")
    with pytest.raises(ReceiptError):
        aggregation_receipt_from_wire(
            _wire_receipt(other), server_public_key=server_key.public_key()
        )
