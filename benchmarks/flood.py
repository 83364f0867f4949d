"""One organization floods the aggregation server; how long does another's `Hello` take?

A real `AggregatorServer` (tiny model, loopback mutual TLS on 127.0.0.1) with its default
`ServerOptions`. One enrolled organization opens ``--calls`` calls that hold a worker
each and a second organization times its `Hello` (the slowest of ``--repeats`` in a row: the first
one waits for a worker, the next ones may find those the first freed), for:

- ``idle``: no flood (baseline);
- ``silent-uploads``: `UploadStage` streams that send nothing;
- ``long-polls``: `AwaitRound` long polls for a round that never comes.

A `Hello` that does not answer within ``--deadline`` seconds is reported as timed out.
The flooder's calls that the server refused (RESOURCE_EXHAUSTED) are counted. Between
scenarios the flood is cancelled and the server given a moment to free its workers.

Usage: python benchmarks/flood.py [--calls 70] [--deadline 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

from fedhft.aggregator import AggregatorServer, ServerOptions
from fedhft.policies import ConsortiumConfig
from fedhft.protocol import (
    PROTOCOL_VERSION,
    create_channel,
    init_ca,
    issue_organization,
    issue_server,
    load_credentials,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc

ORGS = {"clin-a": "full", "clin-b": "edge", "bank-a": "full", "bank-b": "edge"}
FLOODER, PEER = "bank-a", "clin-a"


def _consortium() -> ConsortiumConfig:
    return ConsortiumConfig.model_validate(
        {
            "consortium": "flood-bench",
            "model": {"source": "tiny", "num_labels": 4},
            "adapter": {"target_modules": ["query", "value"], "rank": 4, "alpha": 8, "a_seed": 3},
            "tiers": {
                "edge": {"layers": [-1], "modules": ["value"], "keep_ratio": 0.5},
                "full": {"layers": "all", "keep_ratio": 0.5},
            },
            "rounds": 1,
            "enrollment": [{"organization": org} for org in ORGS],
        }
    )


def _silent(release: threading.Event) -> Iterator[pb.UploadChunk]:
    release.wait()
    yield from ()


def _flood(stub: Any, kind: str, calls: int, release: threading.Event) -> list[Any]:
    if kind == "silent-uploads":
        return [stub.UploadStage.future(_silent(release), timeout=600) for _ in range(calls)]
    request = pb.RoundRequest(after_round=1_000_000, wait_ms=600_000)
    return [stub.AwaitRound.future(request, timeout=600) for _ in range(calls)]


def _timed(call: Callable[[], object], deadline: float) -> float | None:
    started = time.perf_counter()
    try:
        call()
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise
        return None
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=70, help="calls the flooder holds")
    parser.add_argument("--deadline", type=float, default=30.0, help="Hello's gRPC deadline")
    parser.add_argument("--repeats", type=int, default=5, help="Hellos timed per scenario")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        ca = init_ca("flood-bench", root / "ca")
        issue_server(ca, "localhost", root / "server")
        for org in ORGS:
            issue_organization(ca, org, root / org)
        options = ServerOptions(join_timeout_s=3600)
        server = AggregatorServer(
            _consortium(),
            credentials=root / "server",
            state_dir=root / "state",
            options=options,
            new_run=True,
        ).start()
        peer_credentials = load_credentials(root / PEER)
        hello = pb.HelloRequest(
            protocol=PROTOCOL_VERSION,
            consortium_config_hash=server.config_hash,
            identity_certificate=peer_credentials.identity_certificate.public_bytes(
                serialization.Encoding.DER
            ),
            sealing_certificate=peer_credentials.sealing_certificate.public_bytes(
                serialization.Encoding.DER
            ),
        )
        flooder_channel = create_channel(
            load_credentials(root / FLOODER), server.address, "localhost"
        )
        peer_channel = create_channel(peer_credentials, server.address, "localhost")
        flooder = pb_grpc.AggregatorStub(flooder_channel)
        peer = pb_grpc.AggregatorStub(peer_channel)
        results: list[dict[str, Any]] = []
        try:
            peer.Hello(hello, timeout=args.deadline)  # Warm the channel and the servicer.
            for kind in ("idle", "silent-uploads", "long-polls"):
                release = threading.Event()
                futures = [] if kind == "idle" else _flood(flooder, kind, args.calls, release)
                time.sleep(2.0)  # Let the flood reach the server and settle.
                latencies = []
                for _ in range(args.repeats):
                    latency = _timed(
                        lambda: peer.Hello(hello, timeout=args.deadline), args.deadline
                    )
                    latencies.append(latency)
                    if latency is None:
                        break  # One timeout says it; do not wait the deadline again.
                refused = sum(
                    1
                    for f in futures
                    if f.done()
                    and f.exception() is not None
                    and f.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                )
                for future in futures:
                    future.cancel()
                release.set()
                timed = [x for x in latencies if x is not None]
                row = {
                    "scenario": kind,
                    "flood_calls": len(futures),
                    "flood_refused": refused,
                    "hello_slowest_s": max(timed) if timed else None,
                    "hello_median_s": statistics.median(timed) if timed else None,
                    "hello_timed_out": any(x is None for x in latencies),
                    "deadline_s": args.deadline,
                }
                results.append(row)
                shown = (
                    f"timed out after {args.deadline:.0f} s"
                    if row["hello_timed_out"]
                    else f"slowest {max(timed) * 1e3:.1f} ms, "
                    f"median {statistics.median(timed) * 1e3:.1f} ms"
                )
                print(
                    f"{kind:15s} flood {len(futures):3d} calls, {refused:3d} refused; "
                    f"peer Hello: {shown}",
                    flush=True,
                )
                time.sleep(1.5)  # Cancelled long polls give their worker back within 1 s.
        finally:
            flooder_channel.close()
            peer_channel.close()
            server.stop(grace=0.5)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
