"""One organization cannot stall the others: call quotas, idle streams, quiet refusals.

Each test starts a real aggregation server on 127.0.0.1 (mutual TLS, the tiny model),
plays organizations with raw gRPC stubs and stops the server itself. No assertion is on
wall time: a well-behaved call must succeed within a generous gRPC deadline set on the
call, where a server that lets one organization occupy every worker lets it expire.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from runtime_helpers import fast_consortium, provision, running_server

from fedhft.aggregator import ServerOptions
from fedhft.aggregator.errors import AggregatorError
from fedhft.protocol import PROTOCOL_VERSION, Credentials, create_channel, load_credentials
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc

PEER = "clin-a"
FLOODERS = ("bank-a", "bank-b", "clin-b")
QUOTA = 4
IDLE_STREAMS = 24
"""Idle upload streams per flooding organization."""
LONG_POLLS = 6
"""`AwaitRound` long polls per flooding organization (for a round that never comes)."""
CALL_DEADLINE_S = 10.0
"""The gRPC deadline of the well-behaved organization's calls: generous, not timed."""
SETTLE_S = 60.0
"""Upper bound on waiting for the flood's refusals to arrive (not an assertion)."""
ALL_SILENT = ("silent",)


def _options(**changes: Any) -> ServerOptions:
    """Join and poll windows far longer than a test, so that nothing held ends early."""
    fields: dict[str, Any] = {
        "join_timeout_s": 300,
        "max_wait_ms": 300_000,
        "max_calls_per_organization": QUOTA,
        "stream_idle_timeout_s": 300.0,
    }
    fields.update(changes)
    return ServerOptions(**fields)


def _hello(credentials: Credentials, config_hash: bytes) -> pb.HelloRequest:
    return pb.HelloRequest(
        protocol=PROTOCOL_VERSION,
        consortium_config_hash=config_hash,
        identity_certificate=credentials.identity_certificate.public_bytes(
            serialization.Encoding.DER
        ),
        sealing_certificate=credentials.sealing_certificate.public_bytes(
            serialization.Encoding.DER
        ),
    )


def _silent_upload(release: threading.Event) -> Iterator[pb.UploadChunk]:
    """An upload stream that sends nothing until `release` is set."""
    release.wait()
    yield from ()


def _code(future: Any) -> grpc.StatusCode | None:
    """The status a finished call future ended with (None: it succeeded)."""
    error = future.exception()
    return None if error is None else error.code()


def _wait_for(condition: Callable[[], bool], bound_s: float) -> None:
    """Wait until `condition()` holds, at most `bound_s` seconds (the caller then checks)."""
    end = time.monotonic() + bound_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.05)


def test_flooding_organizations_cannot_stall_another(tmp_path: Path) -> None:
    """Three organizations each open more calls than the whole worker pool holds; each is
    refused RESOURCE_EXHAUSTED beyond its quota, and the fourth's Hello and AwaitRound
    still succeed within their deadline."""
    pki = provision(tmp_path / "pki")
    release = threading.Event()
    flood: dict[str, list[Any]] = {org: [] for org in FLOODERS}
    with running_server(fast_consortium(), pki, tmp_path / "state", _options()) as server:
        channels = {
            org: create_channel(load_credentials(pki.org(org)), server.address, "localhost")
            for org in (*FLOODERS, PEER)
        }
        try:
            for org in FLOODERS:
                stub = pb_grpc.AggregatorStub(channels[org])
                for _ in range(IDLE_STREAMS):
                    flood[org].append(stub.UploadStage.future(_silent_upload(release), timeout=600))
                for _ in range(LONG_POLLS):
                    request = pb.RoundRequest(after_round=1_000_000, wait_ms=300_000)
                    flood[org].append(stub.AwaitRound.future(request, timeout=600))
            calls = IDLE_STREAMS + LONG_POLLS
            # More than the pool holds now, and than it held before quotas existed (64).
            assert calls > server.options.worker_threads(len(server.enrolled_organizations))
            assert calls * len(FLOODERS) > 64
            _wait_for(
                lambda: all(sum(f.done() for f in flood[o]) >= calls - QUOTA for o in FLOODERS),
                SETTLE_S,
            )

            peer = pb_grpc.AggregatorStub(channels[PEER])
            credentials = load_credentials(pki.org(PEER))
            hello = peer.Hello(_hello(credentials, server.config_hash), timeout=CALL_DEADLINE_S)
            announcement = peer.AwaitRound(
                pb.RoundRequest(after_round=0, wait_ms=1_000), timeout=CALL_DEADLINE_S
            )
            assert hello.organization == PEER
            assert announcement.status == pb.ROUND_STATUS_OPEN

            for org in FLOODERS:
                ended = [_code(f) for f in flood[org] if f.done()]
                assert ended == [grpc.StatusCode.RESOURCE_EXHAUSTED] * (calls - QUOTA), org
        finally:
            for futures in flood.values():
                for future in futures:
                    future.cancel()
            release.set()
            for channel in channels.values():
                channel.close()


def test_a_silent_stream_is_cancelled_and_frees_its_slot(tmp_path: Path) -> None:
    """An upload stream that sends nothing is cancelled after the idle deadline, and the
    organization's quota is whole again afterwards."""
    pki = provision(tmp_path / "pki")
    release = threading.Event()
    options = _options(max_calls_per_organization=1, stream_idle_timeout_s=0.5)
    with running_server(fast_consortium(), pki, tmp_path / "state", options) as server:
        credentials = load_credentials(pki.org(PEER))
        with create_channel(credentials, server.address, "localhost") as channel:
            stub = pb_grpc.AggregatorStub(channel)
            try:
                silent = stub.UploadStage.future(_silent_upload(release), timeout=120)
                _wait_for(silent.done, SETTLE_S)
                assert _code(silent) == grpc.StatusCode.CANCELLED
                # With a quota of one, this call needs the slot the silent stream held.
                hello = stub.Hello(_hello(credentials, server.config_hash), timeout=CALL_DEADLINE_S)
                assert hello.organization == PEER
            finally:
                release.set()


def test_garbage_requests_log_one_rate_limited_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """500 requests that do not parse (or do not validate) are all refused, and the server
    logs far fewer lines than requests: single lines, no traceback, no payload bytes."""
    pki = provision(tmp_path / "pki")
    rng = random.Random(18)
    marker = b"GARBAGE-MARKER"
    with running_server(fast_consortium(), pki, tmp_path / "state", _options()) as server:
        credentials = load_credentials(pki.org(PEER))
        with create_channel(credentials, server.address, "localhost") as channel:
            methods = {
                name: channel.unary_unary(f"/fedhft.v1.Aggregator/{name}")
                for name in ("Hello", "AwaitRound", "JoinRound", "SubmitStage", "AwaitStage")
            }
            upload = channel.stream_unary("/fedhft.v1.Aggregator/UploadStage")
            codes = []
            caplog.clear()
            caplog.set_level(logging.DEBUG)
            started = time.monotonic()
            for index in range(500):
                # A tag of field 0 never parses; the rest is random and may parse.
                garbage = (b"\x00" if index % 2 else b"") + rng.randbytes(40) + marker
                try:
                    if index % 6 == 5:
                        upload(iter([garbage, garbage]), timeout=CALL_DEADLINE_S)
                    else:
                        method = list(methods.values())[index % len(methods)]
                        method(garbage, timeout=CALL_DEADLINE_S)
                except grpc.RpcError as error:
                    codes.append(error.code())
            elapsed = time.monotonic() - started
            records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(codes) == 500
    assert grpc.StatusCode.INTERNAL not in codes
    assert grpc.StatusCode.INVALID_ARGUMENT in codes
    assert "Traceback" not in caplog.text
    assert marker.decode() not in caplog.text
    for record in records:
        assert record.exc_info is None
        assert "\n" not in record.getMessage()
    # One identity: a burst, then the refill rate, plus one suppressed-count report per
    # report interval (the defaults of `RejectionLog`).
    bound = 20 + 1.0 * elapsed + elapsed / 10.0 + 2
    assert 1 <= len(records) <= bound, (len(records), elapsed)


def test_a_worker_pool_smaller_than_the_quotas_is_refused() -> None:
    """Workers must outnumber every organization's quota together, or some organizations
    could hold them all; the error names the fields and the smallest allowed value."""
    assert ServerOptions(max_calls_per_organization=4).worker_threads(4) > 16
    with pytest.raises(AggregatorError, match=r"`max_workers` is 16.*set it above 16"):
        ServerOptions(max_calls_per_organization=4, max_workers=16).worker_threads(4)
    with pytest.raises(AggregatorError, match="`max_calls_per_organization` must be >= 1"):
        ServerOptions(max_calls_per_organization=0).worker_threads(4)
    with pytest.raises(AggregatorError, match="`stream_idle_timeout_s` must be > 0"):
        ServerOptions(stream_idle_timeout_s=0).worker_threads(4)
