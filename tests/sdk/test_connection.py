"""The client's `Connection` streams multi-chunk payloads over mutual TLS byte for byte.

A real gRPC server on 127.0.0.1 with the consortium's certificates serves `DownloadModel`
and takes `UploadStage` with the chunk functions the aggregator uses (`iter_model`,
`receive_upload`); the client is the SDK's `Connection`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedhft.protocol import (
    DEFAULT_CHUNK_BYTES,
    EnrollmentInterceptor,
    create_server,
    init_ca,
    issue_organization,
    issue_server,
    iter_model,
    iter_upload,
    receive_upload,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc
from fedhft.protocol.errors import MessageTooLargeError
from fedhft.sdk.connection import Connection, RetryPolicy

ORG = "bank-a"
# Three full chunks and a partial one, neither a multiple of a chunk nor of 8 bytes.
PAYLOAD = hashlib.shake_256(b"model").digest(3 * DEFAULT_CHUNK_BYTES + 12_345)
UPLOAD = hashlib.shake_256(b"masked input").digest(2 * DEFAULT_CHUNK_BYTES + 7)


class _Servicer(pb_grpc.AggregatorServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.uploads: list[tuple[pb.StageHeader, bytes]] = []

    def DownloadModel(self, request: pb.ModelRequest, context: Any) -> Iterator[pb.ModelChunk]:
        header = pb.ModelHeader(
            round=request.round,
            cluster=request.cluster,
            model_hash=hashlib.sha256(PAYLOAD).digest(),
        )
        yield from iter_model(header, PAYLOAD)

    def UploadStage(self, request_iterator: Iterator[pb.UploadChunk], context: Any) -> Any:
        header, payload = receive_upload(request_iterator, max_total=len(UPLOAD))
        self.uploads.append((header, payload))
        return pb.StageAck(session=header.session, stage=header.stage)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[_Servicer, Connection]]:
    ca = init_ca("tiny-test", tmp_path / "ca")
    server_credentials = issue_server(ca, "localhost", tmp_path / "server")
    organization = issue_organization(ca, ORG, tmp_path / "org")
    servicer = _Servicer()
    bound = create_server(server_credentials, port=0, interceptors=[EnrollmentInterceptor({ORG})])
    pb_grpc.add_AggregatorServicer_to_server(servicer, bound.server)
    bound.start()
    connection = Connection(
        organization,
        bound.address,
        "localhost",
        retry=RetryPolicy(attempts=1),
        max_message_bytes=4 * 1024 * 1024,
    )
    try:
        yield servicer, connection
    finally:
        connection.close()
        bound.stop(None)


def _header() -> pb.StageHeader:
    session = pb.SessionRef(run_id="run", round=1, cluster=0, session_id=bytes(32))
    return pb.StageHeader(session=session, stage=pb.STAGE_MASKED_INPUT)


def test_multi_chunk_download_gives_the_exact_bytes(
    served: tuple[_Servicer, Connection],
) -> None:
    _, connection = served
    checked: list[int] = []
    header, data = connection.download(
        pb.ModelRequest(round=2, cluster=1),
        max_total=len(PAYLOAD),
        check_header=lambda header: checked.append(header.cluster),
        timeout=30,
    )
    assert data == PAYLOAD
    assert (header.round, header.cluster, checked) == (2, 1, [1])
    assert connection.bytes_down > len(PAYLOAD)


def test_download_above_the_cap_is_refused(served: tuple[_Servicer, Connection]) -> None:
    _, connection = served
    with pytest.raises(MessageTooLargeError, match="above the cap"):
        connection.download(
            pb.ModelRequest(round=1, cluster=0),
            max_total=len(PAYLOAD) - 1,
            check_header=lambda header: None,
            timeout=30,
        )


def test_multi_chunk_upload_gives_the_exact_bytes_and_counts_them(
    served: tuple[_Servicer, Connection],
) -> None:
    servicer, connection = served
    ack = connection.upload(_header(), UPLOAD, timeout=30)
    assert ack.stage == pb.STAGE_MASKED_INPUT
    assert servicer.uploads == [(_header(), UPLOAD)]
    sent = sum(message.ByteSize() for message in iter_upload(_header(), UPLOAD))
    assert connection.bytes_up == sent
