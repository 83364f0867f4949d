"""The byte writer and strict reader of the hand-encoded protocol messages.

Both secure-aggregation modes encode their messages by hand (`secagg/messages.py`,
`ckks/_messages.py`) with these two classes: big-endian unsigned integers, byte strings
with a big-endian u32 length, vectors of little-endian u32/u64 words with a u32 count, and
ids (organization and block names) as length-prefixed text under an explicit
:class:`IdRule`. The reader refuses, with :class:`MalformedMessageError`, a truncated
message, a count or size above its cap (before anything is allocated for it), text that
is not in the rule's character set, and trailing bytes.

Notes:
    The two modes spell ids differently on the wire, and both layouts are fixed by their
    format versions (``FHSA`` v1, ``FHCU``/``FHCA`` v1), so the rule is a parameter
    rather than one hidden choice. `SECAGG_IDS` (u8 length, ASCII) fits ids that are
    validated against the policy grammar ``[a-z0-9][a-z0-9_-]*`` or the block-id grammar,
    both ASCII and at most 255 characters. `CKKS_IDS` (u32 length, UTF-8) is what the CKKS
    format has always written; its ids are checked by `ckks._messages.check_id` (printable,
    1–255 bytes). Validating an id's grammar is the message's job, not the reader's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from .errors import MalformedMessageError

Words = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
"""A vector of masked words, as a 1-D unsigned array."""

MAX_ID_BYTES = 255
"""Most bytes of one encoded id, under either rule."""


@dataclass(frozen=True)
class IdRule:
    """How an id is written: the width of its big-endian length prefix and its charset."""

    length_bytes: Literal[1, 4]
    charset: Literal["ascii", "utf-8"]


SECAGG_IDS = IdRule(length_bytes=1, charset="ascii")
"""Masking-mode ids: a u8 length and ASCII (organization and block ids)."""
CKKS_IDS = IdRule(length_bytes=4, charset="utf-8")
"""CKKS-mode ids: a u32 length and UTF-8."""

_LENGTH_FORMAT = {1: ">B", 4: ">I"}


class ByteWriter:
    """Appends the fields of one message; `getvalue` returns its bytes."""

    def __init__(self, ids: IdRule) -> None:
        self._ids = ids
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> None:
        """Fixed-size bytes (a magic, a session id, a key, a signature), as they are."""
        self._parts.append(bytes(data))

    def u8(self, value: int) -> None:
        self._parts.append(struct.pack(">B", value))

    def u32(self, value: int) -> None:
        self._parts.append(struct.pack(">I", value))

    def u64(self, value: int) -> None:
        self._parts.append(struct.pack(">Q", value))

    def text(self, value: str) -> None:
        """An id under this writer's `IdRule`."""
        data = value.encode(self._ids.charset)
        if len(data) >= 1 << (8 * self._ids.length_bytes):
            raise MalformedMessageError(f"an id of {len(data)} bytes does not fit its length")
        self._parts.append(struct.pack(_LENGTH_FORMAT[self._ids.length_bytes], len(data)))
        self._parts.append(data)

    def blob(self, value: bytes) -> None:
        """A byte string with a u32 length."""
        self.u32(len(value))
        self._parts.append(bytes(value))

    def words(self, value: Words) -> None:
        """A 1-D uint32 or uint64 vector: u32 count, then little-endian words."""
        array = np.asarray(value)
        if array.dtype not in (np.uint32, np.uint64) or array.ndim != 1:
            raise MalformedMessageError("a masked block must be a 1-D uint32 or uint64 vector")
        self.u32(array.size)
        self._parts.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class ByteReader:
    """Reads the fields of one message in order, refusing anything malformed.

    ``what`` names the message in errors ("message", "CKKS upload").
    """

    def __init__(self, data: bytes, ids: IdRule, what: str = "message") -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedMessageError(f"a {what} must be bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._ids = ids
        self._what = what
        self._pos = 0

    def raw(self, size: int) -> bytes:
        """The next ``size`` bytes."""
        end = self._pos + size
        if end > len(self._data):
            raise MalformedMessageError(
                f"{self._what} truncated: needed {size} bytes at offset {self._pos}, "
                f"{len(self._data) - self._pos} remain"
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def expect(self, marker: bytes, error: str) -> None:
        """Read ``marker`` (a magic), or raise ``error``."""
        if self.raw(len(marker)) != marker:
            raise MalformedMessageError(error)

    def u8(self) -> int:
        value: int = struct.unpack(">B", self.raw(1))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.raw(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.raw(8))[0]
        return value

    def count(self, limit: int, what: str) -> int:
        """A u32 count or size, refused above ``limit`` before anything is read for it."""
        value = self.u32()
        if value > limit:
            raise MalformedMessageError(
                f"{self._what}: {what} {value} exceeds the limit, at most {limit} allowed"
            )
        return value

    def text(self, what: str) -> str:
        """An id under this reader's `IdRule` (its grammar is for the caller to check)."""
        size = self.u8() if self._ids.length_bytes == 1 else self.count(MAX_ID_BYTES, what)
        try:
            return self.raw(size).decode(self._ids.charset)
        except UnicodeDecodeError:
            raise MalformedMessageError(
                f"{self._what}: {what} is not {self._ids.charset} text"
            ) from None

    def blob(self, limit: int, what: str) -> bytes:
        """A byte string with a u32 length of at most ``limit``."""
        return self.raw(self.count(limit, what))

    def words(self, width_bits: int, limit: int) -> Words:
        """A vector written by `ByteWriter.words`: at most ``limit`` words of
        ``width_bits`` bits."""
        size = self.count(limit, "block length")
        dtype = np.dtype("<u4") if width_bits == 32 else np.dtype("<u8")
        start = self._pos
        end = start + size * dtype.itemsize
        if end > len(self._data):
            raise MalformedMessageError(
                f"{self._what} truncated: needed {end - start} bytes at offset {start}, "
                f"{len(self._data) - start} remain"
            )
        self._pos = end
        # A read-only view of the message's bytes, not a copy: a masked input is mostly its
        # words, and a large one must not be held twice while it is checked and summed.
        view = memoryview(self._data)[start:end]
        array = np.frombuffer(view, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
        return cast(Words, array)

    def done(self) -> None:
        """Raise unless every byte has been read."""
        if self._pos != len(self._data):
            raise MalformedMessageError(
                f"{len(self._data) - self._pos} unexpected trailing bytes after the {self._what}"
            )
