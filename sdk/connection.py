"""The organization's channel to the aggregation server: mTLS, retries, byte counts.

Every call goes over the mutual-TLS channel of `fedhft.protocol.create_channel`. A call
that fails with UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED (the server restarts, the
network drops) is retried with exponential backoff and jitter, a bounded number of times; then
`ServerUnreachableError`. Any other status is final and raised as the protocol's typed
`RemoteError`, which names the status.

Bytes up and down are counted as the serialized size of every message sent and
received (what the report shows; TLS framing is not included).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fedhft.protocol import (
    Credentials,
    create_channel,
    iter_upload,
    receive_model,
    remote_error,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc

from .errors import ServerUnreachableError

_LOG = logging.getLogger("fedhft.sdk.client")
# CANCELLED too: this client never cancels its own calls, so a cancelled call means the
# server went away in the middle of it (a restart or shutdown).
_RECONNECT_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})
# gRPC's own reconnection backoff grows to two minutes by default; a restarted server
# should be found within seconds.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
)
_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a client reconnects.

    The n-th retry waits ``min(max_backoff_s, initial_backoff_s · multiplier^n)``
    seconds, times a random factor in [0.5, 1] so that many clients do not reconnect in
    lockstep.
    """

    attempts: int = 12
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_backoff_s <= 0 or self.multiplier < 1:
            raise ValueError(
                "RetryPolicy needs attempts >= 1, initial_backoff_s > 0 and multiplier >= 1"
            )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (from 0)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry)
        return base * (0.5 + secrets.randbelow(1001) / 2000)


class Connection:
    """A channel to the aggregation server with retries and byte accounting."""

    def __init__(
        self,
        credentials: Credentials,
        target: str,
        server_hostname: str,
        *,
        retry: RetryPolicy,
        max_message_bytes: int,
    ) -> None:
        self.target = target
        self._channel = create_channel(
            credentials,
            target,
            server_hostname,
            max_message_bytes=max_message_bytes,
            options=_CHANNEL_OPTIONS,
        )
        self._stub = pb_grpc.AggregatorStub(self._channel)
        self._retry = retry
        self.bytes_up = 0
        self.bytes_down = 0

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _with_retries(self, name: str, call: Callable[[], _T]) -> _T:
        for retry in range(self._retry.attempts):
            try:
                return call()
            except grpc.RpcError as error:
                remote = remote_error(error)
                if remote.code not in _RECONNECT_STATUSES:
                    raise remote from None
                if retry + 1 == self._retry.attempts:
                    break
                delay = self._retry.delay(retry)
                _LOG.warning(
                    "%s to %s failed with %s; retrying in %.1f s (%d/%d)",
                    name,
                    self.target,
                    remote.code,
                    delay,
                    retry + 1,
                    self._retry.attempts - 1,
                )
                time.sleep(delay)
        raise ServerUnreachableError(
            f"the aggregation server at {self.target} did not answer {name} after "
            f"{self._retry.attempts} attempts; check that it runs and is reachable"
        )

    def unary(self, name: str, request: Any, *, timeout: float) -> Any:
        """Call the unary method ``name`` (e.g. ``"Hello"``) with retries."""
        method = getattr(self._stub, name)

        def call() -> Any:
            response = method(request, timeout=timeout)
            self.bytes_up += request.ByteSize()
            self.bytes_down += response.ByteSize()
            return response

        return self._with_retries(name, call)

    def download(
        self,
        request: pb.ModelRequest,
        *,
        max_total: int,
        check_header: Callable[[pb.ModelHeader], None],
        timeout: float,
    ) -> tuple[pb.ModelHeader, bytes]:
        """Download one model payload (`DownloadModel` stream) with retries.

        The payload is reassembled into one buffer as it streams in (`receive_model`).
        """

        def call() -> tuple[pb.ModelHeader, bytes]:
            stream = self._stub.DownloadModel(request, timeout=timeout)
            header, data = receive_model(
                self._counted(stream), max_total=max_total, check_header=check_header
            )
            self.bytes_up += request.ByteSize()
            return header, data

        return self._with_retries("DownloadModel", call)

    def upload(self, header: pb.StageHeader, data: bytes, *, timeout: float) -> pb.StageAck:
        """Upload one stage payload (`UploadStage` stream) with retries.

        Chunks are cut from ``data`` as gRPC sends them, not listed first: besides
        ``data``, only the chunks in flight are held.
        """

        def call() -> pb.StageAck:
            sent = [0]

            def counted() -> Iterator[pb.UploadChunk]:
                for message in iter_upload(header, data):
                    sent[0] += message.ByteSize()
                    yield message

            ack: pb.StageAck = self._stub.UploadStage(counted(), timeout=timeout)
            self.bytes_up += sent[0]
            self.bytes_down += ack.ByteSize()
            return ack

        return self._with_retries("UploadStage", call)

    def _counted(self, stream: Iterator[pb.ModelChunk]) -> Iterator[pb.ModelChunk]:
        for message in stream:
            self.bytes_down += message.ByteSize()
            yield message
