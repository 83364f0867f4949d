"""Peak memory of a large adapter on the wire: download and upload over mutual TLS.

An LLM adapter (rank-16 LoRA B blocks on the seven projections of the 32 layers of an
8B-shaped Llama: about 40 M parameters) crosses the wire twice a round:

- download: the server streams a released cluster part (safetensors, float64 as the
  release format is) with `DownloadModel`; the client reassembles it, checks its hash and
  decodes it with `decode_clusters`;
- upload: the client streams a masked input (int32 words) with `UploadStage`; the server
  reassembles it and hashes it, as the aggregator does before accepting it.

Both payloads are ``4 × params`` bytes (160 MB at the default 40 M parameters; the
download carries ``params / 2`` float64 values). The server runs in its own process with a
servicer that calls the same chunk functions as `fedhft.aggregator`'s (`iter_model` on the
cached payload, `receive_upload`); the client is the SDK's `Connection`, over
`create_server` / `create_channel` on 127.0.0.1 with the consortium's certificates.

Each phase runs between a fresh server process and a fresh client process (so no memory
a previous phase freed to the allocator hides its peak) that have already made one call
(TLS handshake, gRPC threads). Each process's peak RSS is then reset to its current RSS
(``echo 5 > /proc/self/clear_refs``), the phase runs, and the peak (``VmHWM``) above that
idle RSS is reported against the payload size. What a phase starts with (the server's
cached release, the client's payload to upload) is part of idle: the figures are what the
transfer adds. The download phase includes decoding the model (`decode_clusters`).

Usage: python benchmarks/wire_memory.py [--params N]   (e.g. --params 4000000 for a
quick run)
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import numpy as np

from fedhft.model import ClusterAdapters, decode_clusters, encode_clusters
from fedhft.protocol import (
    EnrollmentInterceptor,
    create_server,
    fedhft_pb2,
    fedhft_pb2_grpc,
    init_ca,
    issue_organization,
    issue_server,
    iter_model,
    load_credentials,
    receive_upload,
)
from fedhft.protocol.session_codec import MODEL_FORMAT
from fedhft.sdk.connection import Connection, RetryPolicy

MB = 1_000_000
LLAMA_8B_HIDDEN = 4096
LLAMA_8B_LAYERS = 32
LIMIT = 4 * 1024 * 1024
ORG = "bench-org"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset this process's peak RSS to its current RSS; return it in bytes."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak() -> int:
    """This process's peak RSS since the last reset, in bytes."""
    return _status_kib("VmHWM") * 1024


def synthetic_adapter(params: int) -> ClusterAdapters:
    """One cluster's state: rank-16 B blocks (``rows × 16``) shaped like an 8B Llama's
    seven projections, scaled to ``params`` float64 values in all."""
    rng = np.random.default_rng(0)
    # q, k, v, o, gate, up, down outputs of Llama-3-8B (grouped-query k/v: 1024).
    heights = [4096, 1024, 1024, 4096, 14336, 14336, 4096]
    state: dict[str, np.ndarray[Any, Any]] = {}
    left = params
    for layer in range(params):
        for projection, height in enumerate(heights):
            rows = min(height, -(-left // 16))
            if rows <= 0:
                break
            block = rng.standard_normal((rows, 16), dtype=np.float32).astype(np.float64)
            state[f"layer{layer}.proj{projection}"] = block
            left -= block.size
        if left <= 0:
            break
    return ClusterAdapters(states=(state,), last_updates=(None,), centroids=())


class _Servicer(fedhft_pb2_grpc.AggregatorServicer):  # type: ignore[misc]
    """`DownloadModel` and `UploadStage` as the aggregator serves them, minus the rounds."""

    def __init__(self, release: bytes) -> None:
        self.release = release
        self.model_hash = hashlib.sha256(release).digest()

    def DownloadModel(self, request: Any, context: Any) -> Iterator[Any]:
        header = fedhft_pb2.ModelHeader(
            round=request.round,
            cluster=request.cluster,
            format=MODEL_FORMAT,
            model_hash=self.model_hash,
        )
        yield from iter_model(header, self.release)

    def Hello(self, request: Any, context: Any) -> Any:
        return fedhft_pb2.HelloResponse()

    def UploadStage(self, request_iterator: Iterator[Any], context: Any) -> Any:
        header, payload = receive_upload(request_iterator, max_total=1 << 31)
        hashlib.sha256(payload).hexdigest()
        del payload
        return fedhft_pb2.StageAck(session=header.session, stage=header.stage)


def _serve(root: str, params: int, pipe: Pipe) -> None:
    release = encode_clusters(synthetic_adapter(params // 2))
    bound = create_server(
        load_credentials(Path(root) / "server"),
        port=0,
        max_message_bytes=LIMIT,
        interceptors=[EnrollmentInterceptor({ORG})],
    )
    fedhft_pb2_grpc.add_AggregatorServicer_to_server(_Servicer(release), bound.server)
    bound.start()
    pipe.send((bound.address, len(release)))
    try:
        while (command := pipe.recv()) != "stop":
            pipe.send(reset_peak() if command == "reset" else peak())
    finally:
        bound.stop(None)


def _header() -> Any:
    session = fedhft_pb2.SessionRef(run_id="bench", round=1, cluster=0, session_id=bytes(32))
    return fedhft_pb2.StageHeader(session=session, stage=fedhft_pb2.STAGE_MASKED_INPUT)


def _client(root: str, address: str, params: int, phase: str, pipe: Pipe) -> None:
    """One phase as an organization: connect (first call made), report ready, run on
    "go", report ``(idle, peak, milliseconds)``."""
    connection = Connection(
        load_credentials(Path(root) / "org"),
        address,
        "localhost",
        retry=RetryPolicy(attempts=1),
        max_message_bytes=LIMIT,
    )
    connection.unary("Hello", fedhft_pb2.HelloRequest(), timeout=60)
    payload = b""
    if phase == "upload":
        rng = np.random.default_rng(1)
        payload = rng.integers(-(2**31), 2**31, size=params, dtype=np.int32).tobytes()
    pipe.send(len(payload))
    pipe.recv()
    idle = reset_peak()
    started = time.perf_counter()
    if phase == "upload":
        connection.upload(_header(), payload, timeout=600)
    else:
        header, data = connection.download(
            fedhft_pb2.ModelRequest(round=1, cluster=0),
            max_total=1 << 31,
            check_header=lambda header: None,
            timeout=600,
        )
        assert hashlib.sha256(data).digest() == header.model_hash
        adapters = decode_clusters(data)
        del data
        assert adapters.states[0]
    milliseconds = int((time.perf_counter() - started) * 1000)
    pipe.send((idle, peak(), milliseconds))
    connection.close()


def _phase(scratch: str, params: int, phase: str) -> list[tuple[str, str, int, int, int]]:
    """Run ``phase`` between a fresh server process and a fresh client process."""
    spawn = multiprocessing.get_context("spawn")
    to_server, server_end = spawn.Pipe()
    server = spawn.Process(target=_serve, args=(scratch, params, server_end))
    server.start()
    address, release_bytes = to_server.recv()
    to_client, client_end = spawn.Pipe()
    client = spawn.Process(target=_client, args=(scratch, address, params, phase, client_end))
    client.start()
    try:
        payload_bytes = to_client.recv() or release_bytes
        to_server.send("reset")
        server_idle = to_server.recv()
        to_client.send("go")
        client_idle, client_peak, milliseconds = to_client.recv()
        to_server.send("peak")
        server_peak = to_server.recv()
    finally:
        client.join(60)
        to_server.send("stop")
        server.join(60)
    return [
        ("client", phase, payload_bytes, client_peak - client_idle, milliseconds),
        ("server", phase, payload_bytes, server_peak - server_idle, milliseconds),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", type=int, default=40_000_000, help="adapter parameters (default 40 M)"
    )
    args = parser.parse_args()
    rows: list[tuple[str, str, int, int, int]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        ca = init_ca("bench", root / "ca")
        issue_server(ca, "localhost", root / "server")
        issue_organization(ca, ORG, root / "org")
        for phase in ("download", "upload"):
            rows += _phase(scratch, args.params, phase)

    print(f"adapter: {args.params:,} parameters; peak RSS above idle, per process and phase")
    columns = ("payload MB", "peak MB", "× payload", "ms")
    print(f"{'process':8} {'phase':10} " + " ".join(f"{c:>10}" for c in columns))
    for process, name, payload_bytes, extra, ms in rows:
        print(
            f"{process:8} {name:10} {payload_bytes / MB:10.1f} {extra / MB:10.1f} "
            f"{extra / payload_bytes:10.2f} {ms:10d}"
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
