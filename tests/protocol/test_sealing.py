"""Tests of the sealed-box recipe used to hand each organization the CKKS secret context."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.protocol._sealing import open_sealed, seal_to
from fedhft.protocol.errors import DecryptionError

OPAQUE = r"^sealed payload could not be opened$"
CONTEXT = {"purpose": "test/purpose", "consortium": "consortium-a", "organization": "st-mary"}


@pytest.fixture(scope="module")
def recipient() -> X25519PrivateKey:
    """The recipient organization's sealing key pair."""
    return X25519PrivateKey.generate()


@given(payload=st.binary(max_size=2048))
@settings(max_examples=25, deadline=None)
def test_round_trip(recipient: X25519PrivateKey, payload: bytes) -> None:
    """Any payload sealed to a key opens with that key and the same context, unchanged."""
    sealed = seal_to(recipient.public_key(), payload, **CONTEXT)
    assert len(sealed) == len(payload) + 53
    assert open_sealed(recipient, sealed, **CONTEXT) == payload


def test_sealing_is_randomized(recipient: X25519PrivateKey) -> None:
    """Two sealings of one payload differ (fresh ephemeral key), so equal payloads don't show."""
    payload = b"secret context"
    assert seal_to(recipient.public_key(), payload, **CONTEXT) != seal_to(
        recipient.public_key(), payload, **CONTEXT
    )


def test_payload_is_not_in_the_box(recipient: X25519PrivateKey) -> None:
    """The sealed box does not contain the payload in the clear."""
    payload = b"0123456789abcdef" * 8
    assert payload[:16] not in seal_to(recipient.public_key(), payload, **CONTEXT)


def test_wrong_key_fails_opaquely(recipient: X25519PrivateKey) -> None:
    """Another organization's private key cannot open the box, with the one opaque error."""
    sealed = seal_to(recipient.public_key(), b"payload", **CONTEXT)
    with pytest.raises(DecryptionError, match=OPAQUE):
        open_sealed(X25519PrivateKey.generate(), sealed, **CONTEXT)


@pytest.mark.parametrize("field", ["purpose", "consortium", "organization"])
def test_other_context_fails(recipient: X25519PrivateKey, field: str) -> None:
    """A box sealed for one purpose, consortium or organization does not open as another."""
    sealed = seal_to(recipient.public_key(), b"payload", **CONTEXT)
    with pytest.raises(DecryptionError, match=OPAQUE):
        open_sealed(recipient, sealed, **{**CONTEXT, field: CONTEXT[field] + "x"})


def test_every_flipped_bit_fails_with_one_error(recipient: X25519PrivateKey) -> None:
    """Flipping any single bit (marker, ephemeral key, ciphertext or tag) fails identically."""
    sealed = seal_to(recipient.public_key(), b"payload!", **CONTEXT)
    messages = set()
    for position in range(len(sealed)):
        for bit in (0, 7):
            tampered = bytearray(sealed)
            tampered[position] ^= 1 << bit
            with pytest.raises(DecryptionError) as caught:
                open_sealed(recipient, bytes(tampered), **CONTEXT)
            messages.add(str(caught.value))
    assert messages == {"sealed payload could not be opened"}


@pytest.mark.parametrize("cut", [0, 1, 5, 37, 52])
def test_truncated_box_fails(recipient: X25519PrivateKey, cut: int) -> None:
    """A truncated box (down to nothing) fails with the opaque error, not an IndexError."""
    sealed = seal_to(recipient.public_key(), b"", **CONTEXT)
    with pytest.raises(DecryptionError):
        open_sealed(recipient, sealed[:cut], **CONTEXT)


def test_low_order_ephemeral_point_fails(recipient: X25519PrivateKey) -> None:
    """An all-zero ephemeral key (a low-order point, zero shared secret) is rejected opaquely."""
    sealed = bytearray(seal_to(recipient.public_key(), b"payload", **CONTEXT))
    sealed[5:37] = bytes(32)
    with pytest.raises(DecryptionError, match=OPAQUE):
        open_sealed(recipient, bytes(sealed), **CONTEXT)


@pytest.mark.parametrize("field", ["purpose", "consortium", "organization"])
def test_empty_context_field_rejected(recipient: X25519PrivateKey, field: str) -> None:
    """An empty purpose, consortium or organization is a caller error, named in the message."""
    with pytest.raises(ValueError, match=field):
        seal_to(recipient.public_key(), b"payload", **{**CONTEXT, field: ""})
