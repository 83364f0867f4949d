"""Chunked streaming of payloads larger than one gRPC message.

A payload (a serialized cluster adapter, a masked input, CKKS ciphertexts) is sent as a
stream of `Chunk` messages: chunk 0 declares the payload's total size and SHA-256, and
every chunk carries the next slice in order. The receiver refuses, before buffering
anything more, a declared size above its cap; and it refuses chunks out of order, more or
fewer bytes than declared, empty chunks (which could keep a stream alive for free) and a
digest mismatch.

Notes:
    The SHA-256 guards against truncation and reordering bugs, not against an attacker:
    the stream already runs inside mutual TLS, which authenticates every byte.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from ._generated.v1 import fedhft_pb2 as pb
from .errors import ChunkIntegrityError, InvalidEnvelopeError, MessageTooLargeError

DEFAULT_CHUNK_BYTES: Final = 1024 * 1024
"""Default slice size; well below gRPC's default 4 MiB message limit."""

_SHA256_BYTES: Final = 32


def iter_chunks(data: bytes, chunk_size: int = DEFAULT_CHUNK_BYTES) -> Iterator[pb.Chunk]:
    """Split `data` into `Chunk` messages of at most `chunk_size` bytes, in order.

    An empty payload is one empty chunk, so the receiver still gets size and digest.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    yield pb.Chunk(
        index=0,
        data=data[:chunk_size],
        total_bytes=len(data),
        sha256=hashlib.sha256(data).digest(),
    )
    for index, start in enumerate(range(chunk_size, len(data), chunk_size), start=1):
        yield pb.Chunk(index=index, data=data[start : start + chunk_size])


def join_chunks(chunks: Iterable[pb.Chunk], max_total: int) -> bytes:
    """Reassemble a payload streamed by `iter_chunks`, checking size, order and digest.

    Raises `MessageTooLargeError` when the declared size exceeds `max_total`,
    `ChunkIntegrityError` for a missing, reordered, truncated, oversized (relative to the
    declaration) or corrupted stream, and `InvalidEnvelopeError` for malformed fields.

    The payload is held once: each chunk is appended to one `io.BytesIO` as it arrives,
    and `getvalue` hands that buffer over as the returned `bytes` without a copy
    (CPython; glibc grows large buffers in place), so no list of parts and no joined
    copy exist side by side. The buffer grows with the bytes received, not with the
    declaration: a stream that declares the cap and stalls does not hold the cap's memory.
    """
    buffer = io.BytesIO()
    for part in _checked_parts(chunks, max_total):
        buffer.write(part)
    return buffer.getvalue()


def _checked_parts(chunks: Iterable[pb.Chunk], max_total: int) -> Iterator[bytes]:
    """The chunks' data in order, once chunk 0's declared size passed `max_total`
    (checked here, before anything is buffered). The iterator raises on the first order
    or size fault, and checks the total and the digest when the stream ends: exhaust it
    before using what it gave."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        raise ChunkIntegrityError("the chunk stream is empty; expected chunk 0 first")
    if first.index != 0:
        raise ChunkIntegrityError(f"the stream starts with chunk {first.index}, not chunk 0")
    if len(first.sha256) != _SHA256_BYTES:
        raise InvalidEnvelopeError(
            f"chunk 0 must carry a 32-byte `sha256`, got {len(first.sha256)} bytes"
        )
    total = first.total_bytes
    if total > max_total:
        raise MessageTooLargeError(
            f"the payload declares {total} bytes, above the cap of {max_total} bytes"
        )
    return _parts(first, iterator, total)


def _parts(first: pb.Chunk, rest: Iterator[pb.Chunk], total: int) -> Iterator[bytes]:
    digest = hashlib.sha256()
    received = 0
    for expected_index, chunk in enumerate(_chain_first(first, rest)):
        if chunk.index != expected_index:
            raise ChunkIntegrityError(
                f"chunk {chunk.index} arrived where chunk {expected_index} was expected"
            )
        if chunk.index > 0 and (chunk.total_bytes or chunk.sha256):
            raise InvalidEnvelopeError(
                f"chunk {chunk.index} sets `total_bytes` or `sha256`; only chunk 0 may"
            )
        # Each access to a bytes field copies it: every chunk's data is read once.
        data = chunk.data
        if not data and (total > 0 or chunk.index > 0):
            raise ChunkIntegrityError(f"chunk {chunk.index} is empty")
        received += len(data)
        if received > total:
            raise ChunkIntegrityError(
                f"the stream carries more than the {total} bytes chunk 0 declared"
            )
        digest.update(data)
        yield data
    if received != total:
        raise ChunkIntegrityError(
            f"the stream ended after {received} of the {total} declared bytes"
        )
    if not hmac.compare_digest(digest.digest(), first.sha256):
        raise ChunkIntegrityError("the payload does not match the SHA-256 chunk 0 declared")


def iter_upload(
    header: pb.StageHeader, data: bytes, chunk_size: int = DEFAULT_CHUNK_BYTES
) -> Iterator[pb.UploadChunk]:
    """The request stream of `UploadStage`: `header`, then `data` in chunks."""
    yield pb.UploadChunk(header=header)
    for chunk in iter_chunks(data, chunk_size):
        yield pb.UploadChunk(chunk=chunk)


def receive_upload(
    messages: Iterable[pb.UploadChunk],
    *,
    max_total: int,
    check_header: Callable[[pb.StageHeader], None] | None = None,
) -> tuple[pb.StageHeader, bytes]:
    """Read an `UploadStage` request stream: its header and its reassembled payload.

    `check_header` (e.g. a closure over `fedhft.protocol.validate_stage_header`) runs on
    the header before any chunk is read, so an upload for the wrong round or stage is
    refused without buffering its payload.
    """
    iterator = iter(messages)
    first = next(iterator, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidEnvelopeError("an upload stream must start with a `header` message")
    if check_header is not None:
        check_header(first.header)
    chunks = (_upload_chunk(message) for message in iterator)
    return first.header, join_chunks(chunks, max_total)


def iter_model(
    header: pb.ModelHeader, data: bytes, chunk_size: int = DEFAULT_CHUNK_BYTES
) -> Iterator[pb.ModelChunk]:
    """The response stream of `DownloadModel`: `header`, then `data` in chunks."""
    yield pb.ModelChunk(header=header)
    for chunk in iter_chunks(data, chunk_size):
        yield pb.ModelChunk(chunk=chunk)


def receive_model(
    messages: Iterable[pb.ModelChunk],
    *,
    max_total: int,
    check_header: Callable[[pb.ModelHeader], None] | None = None,
) -> tuple[pb.ModelHeader, bytes]:
    """Read a `DownloadModel` response stream: its header and its reassembled payload.

    `check_header` runs on the header before any chunk is read.
    """
    iterator = iter(messages)
    first = next(iterator, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidEnvelopeError("a model stream must start with a `header` message")
    if check_header is not None:
        check_header(first.header)
    chunks = (_model_chunk(message) for message in iterator)
    return first.header, join_chunks(chunks, max_total)


def _chain_first(first: pb.Chunk, rest: Iterator[pb.Chunk]) -> Iterator[pb.Chunk]:
    yield first
    yield from rest


def _upload_chunk(message: pb.UploadChunk) -> pb.Chunk:
    if message.WhichOneof("part") != "chunk":
        raise InvalidEnvelopeError("an upload stream carries one `header`, then only chunks")
    return message.chunk


def _model_chunk(message: pb.ModelChunk) -> pb.Chunk:
    if message.WhichOneof("part") != "chunk":
        raise InvalidEnvelopeError("a model stream carries one `header`, then only chunks")
    return message.chunk
