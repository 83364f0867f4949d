"""Chunked payload streams: exact reassembly, and refusal of every malformed stream."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import (
    iter_chunks,
    iter_model,
    iter_upload,
    join_chunks,
    receive_model,
    receive_upload,
)
from fedhft.protocol.errors import (
    ChunkIntegrityError,
    InvalidEnvelopeError,
    MessageTooLargeError,
    WrongRoundError,
)

PAYLOAD = bytes(range(256)) * 40  # 10 240 bytes


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), chunk_size=st.integers(min_value=1, max_value=700))
def test_round_trip_any_payload(data: bytes, chunk_size: int) -> None:
    """Joining the chunks of any payload gives back exactly that payload."""
    chunks = list(iter_chunks(data, chunk_size))
    assert all(len(chunk.data) <= chunk_size for chunk in chunks)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert join_chunks(chunks, max_total=len(data)) == data


def test_first_chunk_declares_size_and_digest() -> None:
    """Chunk 0 carries the total size and SHA-256; later chunks carry neither."""
    first, *rest = iter_chunks(PAYLOAD, 4096)
    assert first.total_bytes == len(PAYLOAD)
    assert first.sha256 == hashlib.sha256(PAYLOAD).digest()
    assert len(rest) == 2
    assert all(chunk.total_bytes == 0 and not chunk.sha256 for chunk in rest)


def test_declared_size_over_cap_is_refused_before_reading_on() -> None:
    """A declared size above the cap raises after chunk 0, without consuming the rest."""
    consumed: list[int] = []

    def stream() -> object:
        for chunk in iter_chunks(PAYLOAD, 1024):
            consumed.append(chunk.index)
            yield chunk

    with pytest.raises(MessageTooLargeError, match="above the cap"):
        join_chunks(stream(), max_total=len(PAYLOAD) - 1)  # type: ignore[arg-type]
    assert consumed == [0]


def test_wrong_checksum_is_refused() -> None:
    """A payload whose bytes differ from the declared SHA-256 raises ChunkIntegrityError."""
    chunks = list(iter_chunks(PAYLOAD, 1024))
    chunks[3] = pb.Chunk(index=3, data=bytes(len(chunks[3].data)))
    with pytest.raises(ChunkIntegrityError, match="SHA-256"):
        join_chunks(chunks, max_total=len(PAYLOAD))


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda c: c[:1] + c[2:], ChunkIntegrityError, "arrived where chunk 1"),
        (lambda c: [c[0], c[2], c[1], *c[3:]], ChunkIntegrityError, "arrived where"),
        (lambda c: c[:-1], ChunkIntegrityError, "ended after"),
        (lambda c: c[1:], ChunkIntegrityError, "starts with chunk 1"),
        (lambda c: [], ChunkIntegrityError, "empty"),
        (
            lambda c: [*c, pb.Chunk(index=len(c), data=b"x")],
            ChunkIntegrityError,
            "more than",
        ),
        (
            lambda c: [c[0], pb.Chunk(index=1, data=b"")],
            ChunkIntegrityError,
            "chunk 1 is empty",
        ),
        (
            lambda c: [c[0], pb.Chunk(index=1, data=c[1].data, total_bytes=1)],
            InvalidEnvelopeError,
            "only chunk 0",
        ),
        (
            lambda c: [pb.Chunk(index=0, data=c[0].data, total_bytes=c[0].total_bytes)],
            InvalidEnvelopeError,
            "32-byte",
        ),
    ],
    ids=[
        "missing",
        "reordered",
        "truncated",
        "no-first",
        "no-chunks",
        "extra",
        "empty-chunk",
        "late-total",
        "no-digest",
    ],
)
def test_malformed_streams_are_refused(
    mutate: object, error: type[Exception], message: str
) -> None:
    """Reordered, missing, truncated, extended, empty or mislabelled chunks raise."""
    chunks = list(iter_chunks(PAYLOAD, 1024))
    with pytest.raises(error, match=message):
        join_chunks(mutate(chunks), max_total=len(PAYLOAD))  # type: ignore[operator]


def test_empty_payload_cannot_be_padded_with_empty_chunks() -> None:
    """An empty payload is exactly one chunk; more empty chunks are refused."""
    (only,) = iter_chunks(b"", 16)
    assert join_chunks([only], max_total=0) == b""
    with pytest.raises(ChunkIntegrityError, match="chunk 1 is empty"):
        join_chunks([only, pb.Chunk(index=1)], max_total=0)


def test_upload_stream_round_trip_and_header_check_first() -> None:
    """An upload stream yields its header and payload; a failing header check stops early."""
    header = pb.StageHeader(stage=pb.STAGE_MASKED_INPUT)
    got_header, payload = receive_upload(iter_upload(header, PAYLOAD, 999), max_total=1 << 20)
    assert got_header == header
    assert payload == PAYLOAD

    consumed: list[str] = []

    def stream() -> object:
        for message in iter_upload(header, PAYLOAD, 999):
            consumed.append(message.WhichOneof("part") or "")
            yield message

    def refuse(_: pb.StageHeader) -> None:
        raise WrongRoundError("not this round")

    with pytest.raises(WrongRoundError):
        receive_upload(stream(), max_total=1 << 20, check_header=refuse)  # type: ignore[arg-type]
    assert consumed == ["header"]


def test_upload_stream_without_header_or_with_two_is_refused() -> None:
    """An upload must be one header followed by chunks only."""
    header = pb.StageHeader(stage=pb.STAGE_MASKED_INPUT)
    chunks = [pb.UploadChunk(chunk=c) for c in iter_chunks(PAYLOAD, 4096)]
    with pytest.raises(InvalidEnvelopeError, match="start with a `header`"):
        receive_upload(chunks, max_total=1 << 20)
    doubled = [pb.UploadChunk(header=header), pb.UploadChunk(header=header), *chunks]
    with pytest.raises(InvalidEnvelopeError, match="then only chunks"):
        receive_upload(doubled, max_total=1 << 20)


def test_model_stream_round_trip() -> None:
    """A model download stream yields its header and the exact serialized adapter."""
    header = pb.ModelHeader(round=3, cluster=1, format="safetensors", model_hash=bytes(32))
    got_header, payload = receive_model(iter_model(header, PAYLOAD, 3000), max_total=len(PAYLOAD))
    assert (got_header, payload) == (header, PAYLOAD)
    with pytest.raises(InvalidEnvelopeError, match="start with a `header`"):
        receive_model(iter([]), max_total=10)


def test_chunk_size_must_be_positive() -> None:
    """A chunk size below one byte is a programming error."""
    with pytest.raises(ValueError, match="chunk_size"):
        list(iter_chunks(b"abc", 0))
