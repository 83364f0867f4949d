"""The shared byte writer and strict reader of hand-encoded messages (`_encoding.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from fedhft.protocol._encoding import CKKS_IDS, SECAGG_IDS, ByteReader, ByteWriter
from fedhft.protocol.errors import MalformedMessageError


def test_the_two_id_rules_write_their_own_length_prefix_and_charset() -> None:
    """SECAGG_IDS writes a u8 length and ASCII; CKKS_IDS a u32 length and UTF-8."""
    secagg, ckks = ByteWriter(SECAGG_IDS), ByteWriter(CKKS_IDS)
    secagg.text("org-a")
    ckks.text("orgé")
    assert secagg.getvalue() == b"\x05org-a"
    assert ckks.getvalue() == b"\x00\x00\x00\x05org\xc3\xa9"
    with pytest.raises(UnicodeEncodeError):
        ByteWriter(SECAGG_IDS).text("orgé")


def test_each_rule_reads_back_only_its_own_text() -> None:
    """Non-ASCII under SECAGG_IDS and invalid UTF-8 under CKKS_IDS are refused."""
    assert ByteReader(b"\x05org-a", SECAGG_IDS).text("id") == "org-a"
    with pytest.raises(MalformedMessageError, match="ascii"):
        ByteReader(b"\x02\xc3\xa9", SECAGG_IDS).text("id")
    with pytest.raises(MalformedMessageError, match="utf-8"):
        ByteReader(b"\x00\x00\x00\x01\xff", CKKS_IDS).text("id")


def test_ckks_id_lengths_above_255_bytes_are_refused_before_reading() -> None:
    """A u32 id length above 255 is refused without reading the id."""
    with pytest.raises(MalformedMessageError, match="at most 255"):
        ByteReader(b"\x00\x00\x01\x00", CKKS_IDS).text("id")


def test_truncation_trailing_bytes_and_counts_are_refused() -> None:
    """Reading past the end, leaving bytes unread, or a count above its cap all raise."""
    with pytest.raises(MalformedMessageError, match="truncated"):
        ByteReader(b"\x00\x00", SECAGG_IDS).u32()
    reader = ByteReader(b"\x00", SECAGG_IDS)
    with pytest.raises(MalformedMessageError, match="trailing"):
        reader.done()
    with pytest.raises(MalformedMessageError, match="at most 3"):
        ByteReader(b"\x00\x00\x00\x04", SECAGG_IDS).count(3, "entries")


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_words_round_trip_little_endian(dtype: type[np.unsignedinteger]) -> None:
    """Vectors are a u32 count then little-endian words, and read back equal."""
    values = np.array([1, 2**31 + 5], dtype=dtype)
    writer = ByteWriter(SECAGG_IDS)
    writer.words(values)
    data = writer.getvalue()
    assert data[:4] == b"\x00\x00\x00\x02"
    assert data[4:] == values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    bits = np.dtype(dtype).itemsize * 8
    np.testing.assert_array_equal(ByteReader(data, SECAGG_IDS).words(bits, 2), values)


def test_words_are_read_only_views_of_the_message_not_copies() -> None:
    """A large masked input is held once: its words view the message's bytes, unchangeable,
    and a vector longer than the bytes left is refused before anything is viewed."""
    writer = ByteWriter(SECAGG_IDS)
    writer.words(np.arange(1000, dtype=np.uint32))
    message = writer.getvalue()
    words = ByteReader(message, SECAGG_IDS).words(32, 1000)
    assert np.shares_memory(words, np.frombuffer(message, dtype=np.uint8))
    np.testing.assert_array_equal(words, np.arange(1000, dtype=np.uint32))
    with pytest.raises(ValueError, match="read-only"):
        words[0] = 7
    with pytest.raises(MalformedMessageError, match="truncated"):
        ByteReader(message[:-4], SECAGG_IDS).words(32, 1000)
