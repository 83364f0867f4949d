"""Canonical, strict encoding of secure-aggregation messages."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
from secagg_helpers import as_inputs, grid_levels, make_identities, make_params

from fedhft.protocol import (
    KeyAdvertisement,
    MaskedInput,
    SurvivorAnnouncement,
    TranscriptEntry,
    UnmaskResponse,
    decode_message,
    run_secagg_in_process,
)
from fedhft.protocol.errors import MalformedMessageError
from fedhft.protocol.secagg._shamir import MERSENNE_521
from fedhft.protocol.secagg.messages import MAX_PARTIES, MessageKind

SID = bytes(range(32))
HEADER_BYTES = 4 + 1 + 1 + 32 + 8 + 4


@pytest.fixture(scope="module")
def transcript() -> list[TranscriptEntry]:
    """Every message of one real session with a dropout, as carried on the wire."""
    params = make_params(5, threshold=3)
    entries: list[TranscriptEntry] = []
    run_secagg_in_process(
        params,
        as_inputs(params, grid_levels(params, np.random.default_rng(0))),
        make_identities(params.roster),
        drop={"masked_input": {"org-004"}},
        transcript=entries,
    )
    return entries


def test_every_message_kind_occurs_and_round_trips(transcript: list[TranscriptEntry]) -> None:
    """Decoding and re-encoding each message of a session gives back the same bytes."""
    kinds = set()
    for entry in transcript:
        message = decode_message(entry.data)
        kinds.add(message.KIND)
        assert message.encode() == entry.data
        assert type(message).decode(entry.data).encode() == entry.data
    assert kinds == set(MessageKind)


def test_every_truncation_is_rejected(transcript: list[TranscriptEntry]) -> None:
    """Every proper prefix of a message fails to decode."""
    data = transcript[0].data
    for end in range(len(data)):
        with pytest.raises(MalformedMessageError):
            decode_message(data[:end])


def test_trailing_bytes_are_rejected(transcript: list[TranscriptEntry]) -> None:
    """One extra byte after any message is refused."""
    for entry in transcript:
        with pytest.raises(MalformedMessageError, match="trailing"):
            decode_message(entry.data + b"\x00")


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [(0, b"X", "magic"), (4, b"\x02", "version"), (5, b"\x00", "kind"), (5, b"\x0a", "kind")],
)
def test_bad_magic_version_or_kind(
    transcript: list[TranscriptEntry], offset: int, value: bytes, match: str
) -> None:
    """Wrong magic, an unsupported version or an unknown kind is refused."""
    data = bytearray(transcript[0].data)
    data[offset : offset + 1] = value
    with pytest.raises(MalformedMessageError, match=match):
        decode_message(bytes(data))


def test_decoding_as_the_wrong_kind_is_refused(transcript: list[TranscriptEntry]) -> None:
    """A masked input does not decode as a key advertisement."""
    masked = next(e.data for e in transcript if decode_message(e.data).KIND == 5)
    with pytest.raises(MalformedMessageError, match="KEY_ADVERTISEMENT"):
        KeyAdvertisement.decode(masked)


def _announcement_body(body: bytes) -> bytes:
    header = SurvivorAnnouncement(SID, 1, 0, survivors=()).encode()[:HEADER_BYTES]
    return header + body


def test_unsorted_or_repeated_lists_are_refused() -> None:
    """A survivor list out of order, or repeating an id, has no canonical form."""
    unsorted = struct.pack(">I", 2) + b"\x05org-b" + b"\x05org-a"
    repeated = struct.pack(">I", 2) + b"\x05org-a" + b"\x05org-a"
    for body in (unsorted, repeated):
        with pytest.raises(MalformedMessageError, match="sorted and unique"):
            SurvivorAnnouncement.decode(_announcement_body(body))


@pytest.mark.parametrize("org", [b"ORG-A", b"org a", b"-org", b"\xc3\xa9t\xc3\xa9"])
def test_invalid_organization_ids_are_refused(org: bytes) -> None:
    """Ids outside the policy's identifier grammar (or not ASCII) are refused."""
    body = struct.pack(">I", 1) + bytes([len(org)]) + org
    with pytest.raises(MalformedMessageError):
        SurvivorAnnouncement.decode(_announcement_body(body))


def test_oversized_counts_are_refused_before_reading() -> None:
    """A list length above the cap is refused without allocating for it."""
    body = struct.pack(">I", MAX_PARTIES + 1)
    with pytest.raises(MalformedMessageError, match="at most"):
        SurvivorAnnouncement.decode(_announcement_body(body))


def test_masked_input_word_width_and_length_are_checked(
    transcript: list[TranscriptEntry],
) -> None:
    """Word widths other than 32/64 bits and vectors longer than the data are refused."""
    data = next(e.data for e in transcript if decode_message(e.data).KIND == 5)
    message = MaskedInput.decode(data)
    sender_end = HEADER_BYTES + 1 + len(message.sender)
    bad_width = bytearray(data)
    bad_width[sender_end] = 16
    with pytest.raises(MalformedMessageError, match="32 or 64"):
        MaskedInput.decode(bytes(bad_width))
    first_block = message.blocks[0][0]
    length_at = sender_end + 1 + 4 + 1 + len(first_block)
    too_long = bytearray(data)
    too_long[length_at : length_at + 4] = struct.pack(">I", 10_000)
    with pytest.raises(MalformedMessageError, match="truncated"):
        MaskedInput.decode(bytes(too_long))


def test_share_values_outside_the_field_are_refused() -> None:
    """An unmask response carrying a share value ≥ 2^521 − 1 is refused."""
    response = UnmaskResponse(SID, 1, 0, sender="org-000", self_mask_shares=(), key_shares=())
    body = response.encode()[:-4] + struct.pack(">I", 1) + b"\x07org-001"
    with pytest.raises(MalformedMessageError, match="outside the field"):
        UnmaskResponse.decode(body + MERSENNE_521.to_bytes(66, "big"))
    UnmaskResponse.decode(body + (MERSENNE_521 - 1).to_bytes(66, "big"))


def test_non_bytes_input_is_refused() -> None:
    """Decoding something that is not bytes is a MalformedMessageError, not a crash."""
    with pytest.raises(MalformedMessageError):
        SurvivorAnnouncement.decode("FHSA")  # type: ignore[arg-type]


def test_messages_are_frozen(transcript: list[TranscriptEntry]) -> None:
    """Messages cannot be altered after construction."""
    message = decode_message(transcript[0].data)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.round = 2  # type: ignore[misc]


def test_encoding_refuses_invalid_fields() -> None:
    """Encoding checks sizes: a short session id or key, a bad word width."""
    with pytest.raises(MalformedMessageError, match="session id"):
        SurvivorAnnouncement(b"short", 1, 0, survivors=()).encode()
    with pytest.raises(MalformedMessageError, match="public keys"):
        KeyAdvertisement(
            SID,
            1,
            0,
            organization="org-a",
            encryption_key=b"k",
            masking_key=b"k" * 32,
            signature=b"s" * 64,
        ).encode()
    with pytest.raises(MalformedMessageError, match="32 or 64"):
        MaskedInput(SID, 1, 0, sender="org-a", bits=16, blocks=()).encode()
