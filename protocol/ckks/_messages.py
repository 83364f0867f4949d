"""Wire format of the CKKS mode: one upload per client, one encrypted sum per session.

Each message is a frozen dataclass with ``encode() -> bytes`` and a strict
``decode(bytes)``: ``magic ‖ version ‖ sid (32 bytes)`` followed by length-prefixed ids
and ciphertexts (big-endian u32 lengths and counts; ids as UTF-8 under
`fedhft.protocol._encoding.CKKS_IDS`). Lists of segments are ascending and
unique, sizes are capped before anything is allocated, and trailing bytes are refused;
any violation is :class:`~fedhft.protocol.errors.MalformedMessageError`. Whether a
message belongs to *this* session is for the client and server to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import tenseal as ts

from .._encoding import CKKS_IDS, MAX_ID_BYTES, ByteReader, ByteWriter
from ..errors import MalformedMessageError, SessionParamsError
from ._scheme import CKKSParameters

SID_BYTES = 32
_UPLOAD_MAGIC = b"FHCU\x01"  # fedhft CKKS upload, format version 1
_SUM_MAGIC = b"FHCA\x01"  # fedhft CKKS encrypted aggregate, format version 1
MAX_PARTIES = 10_000
_MAX_SEGMENTS = 100_000
_MAX_CIPHERTEXTS = 1 << 22


def check_id(value: object, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value.encode("utf-8")) > MAX_ID_BYTES
        or not value.isprintable()
    ):
        raise SessionParamsError(f"{what} must be a printable string of 1 to 255 bytes")
    return value


def _writer(magic: bytes) -> ByteWriter:
    writer = ByteWriter(CKKS_IDS)
    writer.raw(magic)
    return writer


def _reader(data: bytes, magic: bytes, what: str) -> ByteReader:
    reader = ByteReader(data, CKKS_IDS, what)
    reader.expect(magic, f"{what} does not start with its format marker")
    return reader


def _read_id(reader: ByteReader, what: str) -> str:
    value = reader.text(what)
    try:
        return check_id(value, what)
    except SessionParamsError:
        raise MalformedMessageError(f"{what} is not a valid id") from None


def _indices_ascending(indices: list[int], what: str) -> None:
    if indices != sorted(set(indices)):
        raise MalformedMessageError(f"{what} must list segments in ascending order, once each")


@dataclass(frozen=True)
class CKKSUpload:
    """One organization's encrypted contribution: per held segment, its ciphertexts."""

    sid: bytes
    organization: str
    segments: tuple[tuple[int, tuple[bytes, ...]], ...]

    def encode(self) -> bytes:
        """Canonical bytes: ``"FHCU" ‖ version ‖ sid ‖ organization ‖ segments``."""
        writer = _writer(_UPLOAD_MAGIC)
        writer.raw(self.sid)
        writer.text(self.organization)
        writer.u32(len(self.segments))
        for index, ciphertexts in self.segments:
            writer.u32(index)
            writer.u32(len(ciphertexts))
            for ciphertext in ciphertexts:
                writer.blob(ciphertext)
        return writer.getvalue()

    @classmethod
    def decode(cls, data: bytes, *, max_ciphertext_bytes: int) -> Self:
        """Strictly parse :meth:`encode`'s output; anything else is `MalformedMessageError`."""
        reader = _reader(data, _UPLOAD_MAGIC, "CKKS upload")
        sid = reader.raw(SID_BYTES)
        organization = _read_id(reader, "organization id")
        segments = []
        for _ in range(reader.count(_MAX_SEGMENTS, "segment count")):
            index = reader.u32()
            ciphertexts = tuple(
                reader.blob(max_ciphertext_bytes, "ciphertext size")
                for _ in range(reader.count(_MAX_CIPHERTEXTS, "ciphertext count"))
            )
            segments.append((index, ciphertexts))
        reader.done()
        _indices_ascending([index for index, _ in segments], "CKKS upload")
        return cls(sid=sid, organization=organization, segments=tuple(segments))


@dataclass(frozen=True)
class EncryptedSegmentSum:
    """The encrypted sum of one segment and the organizations it adds up."""

    index: int
    contributors: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class CKKSEncryptedSum:
    """What the server returns: released segment sums and the segments it withheld."""

    sid: bytes
    released: tuple[EncryptedSegmentSum, ...]
    withheld: tuple[int, ...]

    def encode(self) -> bytes:
        """Canonical bytes: ``"FHCA" ‖ version ‖ sid ‖ released sums ‖ withheld indices``."""
        writer = _writer(_SUM_MAGIC)
        writer.raw(self.sid)
        writer.u32(len(self.released))
        for segment in self.released:
            writer.u32(segment.index)
            writer.u32(len(segment.contributors))
            for organization in segment.contributors:
                writer.text(organization)
            writer.u32(len(segment.ciphertexts))
            for ciphertext in segment.ciphertexts:
                writer.blob(ciphertext)
        writer.u32(len(self.withheld))
        for index in self.withheld:
            writer.u32(index)
        return writer.getvalue()

    @classmethod
    def decode(cls, data: bytes, *, max_ciphertext_bytes: int) -> Self:
        """Strictly parse :meth:`encode`'s output; anything else is `MalformedMessageError`."""
        reader = _reader(data, _SUM_MAGIC, "CKKS encrypted sum")
        sid = reader.raw(SID_BYTES)
        released = []
        for _ in range(reader.count(_MAX_SEGMENTS, "segment count")):
            index = reader.u32()
            contributors = tuple(
                _read_id(reader, "contributor id")
                for _ in range(reader.count(MAX_PARTIES, "contributor count"))
            )
            if list(contributors) != sorted(set(contributors)):
                raise MalformedMessageError("contributors must be sorted and unique")
            ciphertexts = tuple(
                reader.blob(max_ciphertext_bytes, "ciphertext size")
                for _ in range(reader.count(_MAX_CIPHERTEXTS, "ciphertext count"))
            )
            released.append(EncryptedSegmentSum(index, contributors, ciphertexts))
        withheld = [reader.u32() for _ in range(reader.count(_MAX_SEGMENTS, "withheld count"))]
        reader.done()
        _indices_ascending([s.index for s in released], "released sums")
        _indices_ascending(withheld, "withheld segments")
        return cls(sid=sid, released=tuple(released), withheld=tuple(withheld))


def max_ciphertext_bytes(parameters: CKKSParameters) -> int:
    """Upper bound on one serialized fresh ciphertext (two uncompressed polynomials)."""
    return 2 * parameters.poly_modulus_degree * 8 * 2 + 4096


def load_ciphertext(
    context: ts.Context, data: bytes, *, length: int, parameters: CKKSParameters
) -> ts.CKKSVector:
    """Load one ciphertext and check it is a fresh CKKS vector of the expected shape."""
    try:
        vector = ts.ckks_vector_from(context, data)
        parts = vector.ciphertext()
        ok = (
            vector.size() == length
            and len(parts) == 1
            and parts[0].size() == 2
            and parts[0].coeff_modulus_size() == 1
            and parts[0].scale == parameters.scale
        )
    except (ValueError, RuntimeError, TypeError):
        ok = False
    if not ok:
        raise MalformedMessageError(
            f"a ciphertext is not a fresh CKKS vector of {length} values at scale "
            f"2^{parameters.scale_bits}"
        )
    return vector
