"""Chunked upload throughput over gRPC: mutual TLS vs plaintext gRPC vs no network.

One payload (the size of a masked input) is uploaded through `UploadStage` as a stream
of chunks, reassembled and checked (size, order, SHA-256) by `receive_upload` on the
server, for several chunk sizes, over:

- ``mtls``: `create_server` / `create_channel` with the consortium's certificates and the
  enrollment interceptor, as fedhft runs;
- ``plaintext``: the same servicer on an insecure loopback port (baseline: the cost of
  gRPC and chunking without TLS; never use it outside a benchmark);
- ``in-process``: `iter_upload` straight into `receive_upload` (baseline: chunking and
  hashing alone, no network).

Reports the best wall-clock time of a few repetitions and the throughput in MiB/s.
Loopback only; on a shared machine the absolute numbers move, the ratios less so.

Usage: python benchmarks/transport.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from fedhft.protocol import (
    EnrollmentInterceptor,
    create_channel,
    create_server,
    fedhft_pb2,
    fedhft_pb2_grpc,
    init_ca,
    issue_organization,
    issue_server,
    iter_upload,
    receive_upload,
)

MIB = 1024 * 1024
LIMIT = 4 * MIB  # gRPC's default message limit, which chunks must stay under


class _Sink(fedhft_pb2_grpc.AggregatorServicer):  # type: ignore[misc]
    """Reassembles each upload and acknowledges it (no receipt, to time transport only)."""

    def UploadStage(self, request_iterator: Iterator[Any], context: Any) -> Any:
        header, _payload = receive_upload(request_iterator, max_total=1 << 31)
        return fedhft_pb2.StageAck(session=header.session, stage=header.stage)


def _header() -> Any:
    session = fedhft_pb2.SessionRef(run_id="bench", round=1, cluster=0, session_id=bytes(32))
    return fedhft_pb2.StageHeader(session=session, stage=fedhft_pb2.STAGE_MASKED_INPUT)


def _best(run: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _grpc_upload(stub: Any, payload: bytes, chunk: int) -> Callable[[], None]:
    def run() -> None:
        stub.UploadStage(iter_upload(_header(), payload, chunk), timeout=600)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 MiB, two repeats")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    size = (8 if args.quick else 64) * MIB
    repeats = 2 if args.quick else 3
    chunks = [256 * 1024, MIB, 3 * MIB]
    payload = hashlib.shake_256(b"masked input").digest(size)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        ca = init_ca("bench", root / "ca")
        server_credentials = issue_server(ca, "localhost", root / "server")
        organization = issue_organization(ca, "bench-org", root / "org")

        secure = create_server(
            server_credentials,
            port=0,
            max_message_bytes=LIMIT,
            interceptors=[EnrollmentInterceptor({"bench-org"})],
        )
        fedhft_pb2_grpc.add_AggregatorServicer_to_server(_Sink(), secure.server)
        plain = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        fedhft_pb2_grpc.add_AggregatorServicer_to_server(_Sink(), plain)
        plain_port = plain.add_insecure_port("127.0.0.1:0")
        secure.start()
        plain.start()
        try:
            with (
                create_channel(organization, secure.address, "localhost") as mtls_channel,
                grpc.insecure_channel(f"127.0.0.1:{plain_port}") as plain_channel,
            ):
                stubs = {
                    "mtls": fedhft_pb2_grpc.AggregatorStub(mtls_channel),
                    "plaintext": fedhft_pb2_grpc.AggregatorStub(plain_channel),
                }
                for chunk in chunks:
                    in_process = _best(
                        lambda c=chunk: receive_upload(
                            iter_upload(_header(), payload, c), max_total=1 << 31
                        ),
                        repeats,
                    )
                    timings = {"in-process": in_process}
                    for name, stub in stubs.items():
                        timings[name] = _best(_grpc_upload(stub, payload, chunk), repeats)
                    for name, seconds in timings.items():
                        rows.append(
                            {
                                "transport": name,
                                "chunk_bytes": chunk,
                                "payload_bytes": size,
                                "seconds": seconds,
                                "mib_per_s": size / MIB / seconds,
                                "vs_plaintext": seconds / timings["plaintext"],
                            }
                        )
        finally:
            secure.stop(None)
            plain.stop(None).wait()

    print(f"upload of {size // MIB} MiB, best of {repeats}, loopback")
    print(f"{'transport':<11} {'chunk':>9} {'seconds':>8} {'MiB/s':>8} {'× plaintext':>12}")
    for row in rows:
        print(
            f"{row['transport']:<11} {row['chunk_bytes'] // 1024:>6} KiB "
            f"{row['seconds']:>8.3f} {row['mib_per_s']:>8.1f} {row['vs_plaintext']:>12.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
