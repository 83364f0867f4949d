"""Secure-aggregation cost per round: plaintext vs masking vs CKKS vs Flower's SecAgg+.

For N clients, L parameters (blocks of 4096 values, every client holding every block)
and a fraction of clients dropping out after sharing keys (masking, Flower) or before
uploading (plaintext, CKKS), one round of each method runs in process on the same
inputs (uniform in ±1, seeded per client) and reports:

- client seconds: mean CPU time of one surviving client's stage methods and codecs;
- server seconds: CPU time of the server's stage methods and codecs;
- bytes up per client, and their ratio to the plaintext payload (4 bytes per value:
  int32 for masking, float32 for CKKS and plaintext);
- the mask floor: CPU time to generate one client's masks alone (one ChaCha20 keystream
  per neighbour and one for the self mask, over all blocks), the least any masking
  client can spend; and, as its server seconds, the keystreams the server must
  regenerate to unmask (each survivor's self mask, and each dropped client's pairwise
  mask with each surviving neighbour, per block), the least the server can spend.

Times are process CPU seconds (``time.process_time``), so other load on the machine does
not inflate them. Flower lives in its own environment (`benchmarks/requirements-flower.txt`
says why and how): ``--flower-python`` or ``$FEDHFT_FLOWER_PYTHON``, else
``.venv-flower/bin/python``, else this interpreter if it has ``flwr``; its round runs in
a subprocess (`benchmarks/_flower_secaggplus.py`).

SecAgg+ graph: both masking implementations use the same neighbour degree k, the
smallest even k for which 30% dropouts (the grid's worst case) are recovered with
probability ≥ 99% (union bound over clients, hypergeometric neighbourhoods), or the
complete graph when none is smaller; the threshold t is a strict majority of the k + 1
share holders. Quantization: clip 1, step 2^-20, modulus 2^32, for both.

Targets (issue 23), checked on every cell they apply to and printed as a ratio table:
the server's time with 30% dropouts ≤ 3× its no-dropout time (N = 50 and 100), a
masking client ≤ 1.5× the mask floor (L = 10^6), masking total CPU ≥ 4× below Flower's
SecAgg+ (N = 50 and 100, with and without dropouts, equal k and t).

Run: ``python benchmarks/secagg.py [--quick] [--large] [--json PATH]``; ``--large`` adds
N = 200 and 500 (SecAgg+, masking and its floor, L = 10^5 and 10^6, 0% and 30% dropouts,
in process; about ten CPU minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from rich.console import Console
from rich.table import Table

from fedhft.protocol import (
    CKKSAggregator,
    CKKSCeremony,
    CKKSClient,
    CKKSKeyring,
    CKKSParameters,
    CKKSServerContext,
    CKKSSession,
    SessionParams,
    SessionStats,
    _crypto,
    default_threshold,
    run_secagg_in_process,
)
from fedhft.protocol.errors import ThresholdError
from fedhft.protocol.secagg.graph import effective_degree

BLOCK_SIZE = 4096
CLIP = 1.0
SCALE = 2.0**20
WORST_DROPOUT = 0.3
FLOWER_DRIVER = Path(__file__).with_name("_flower_secaggplus.py")
clock = time.process_time


@dataclass(frozen=True)
class Setting:
    """One cell of the grid."""

    clients: int
    length: int
    dropout: float
    seed: int
    tiers: bool = False
    """Mixed tiers: the lower third of the blocks is held by every client, the middle
    third by two thirds of them, the upper third by one third (seeded choice)."""

    @property
    def blocks(self) -> list[int]:
        full, rest = divmod(self.length, BLOCK_SIZE)
        return [BLOCK_SIZE] * full + ([rest] if rest else [])

    @property
    def roster(self) -> list[str]:
        return [f"org-{i:03d}" for i in range(self.clients)]

    def holders(self, block: int) -> frozenset[int]:
        """Indices of the clients holding block number ``block``."""
        count = len(self.blocks)
        if not self.tiers or 3 * block < count:
            return frozenset(range(self.clients))
        order = random.Random(self.seed * 104729 + self.clients).sample(
            range(self.clients), self.clients
        )
        share = 2 / 3 if 3 * block < 2 * count else 1 / 3
        return frozenset(order[: max(3, round(share * self.clients))])

    @property
    def dropped(self) -> list[int]:
        """Indices of the clients that drop out (the same ones for every method)."""
        count = round(self.dropout * self.clients)
        return sorted(
            random.Random(self.seed * 7919 + self.clients).sample(range(self.clients), count)
        )


@dataclass
class Row:
    """One method's cost in one setting."""

    method: str
    clients: int
    length: int
    dropout: float
    client_seconds: float | None = None
    server_seconds: float | None = None
    total_cpu_seconds: float | None = None
    bytes_up: float | None = None
    bytes_ratio: float | None = None
    max_error: float | None = None
    note: str = ""

    @classmethod
    def of(cls, method: str, setting: Setting, **measured: float | str | None) -> Row:
        """A row for ``setting``; ``bytes_ratio`` follows from ``bytes_up``."""
        bytes_up = measured.get("bytes_up")
        if isinstance(bytes_up, float | int):
            measured["bytes_ratio"] = bytes_up / (4 * setting.length)
        return cls(method, setting.clients, setting.length, setting.dropout, **measured)  # type: ignore[arg-type]


def client_inputs(seed: int, client: int, blocks: list[int]) -> list[npt.NDArray[np.float64]]:
    """Client ``client``'s blocks; `_flower_secaggplus.client_inputs` must match this."""
    rng = np.random.default_rng([seed, client])
    return [rng.uniform(-1.0, 1.0, n) for n in blocks]


def block_ids(setting: Setting) -> list[str]:
    return [f"layer.{i:04d}.lora_B" for i in range(len(setting.blocks))]


class LazyInputs(Mapping[str, Mapping[str, npt.NDArray[np.float64]]]):
    """Organization → block → vector, generated on access so N·L floats never coexist."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.index = {org: i for i, org in enumerate(setting.roster)}

    def __getitem__(self, org: str) -> Mapping[str, npt.NDArray[np.float64]]:
        client = self.index[org]
        arrays = client_inputs(self.setting.seed, client, self.setting.blocks)
        return {
            block: array
            for i, (block, array) in enumerate(zip(block_ids(self.setting), arrays, strict=True))
            if client in self.setting.holders(i)
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self.setting.roster)

    def __len__(self) -> int:
        return self.setting.clients


def plain_sums(setting: Setting) -> list[npt.NDArray[np.float64]]:
    """Exact per-block sums over the surviving clients."""
    dropped = set(setting.dropped)
    totals = [np.zeros(n) for n in setting.blocks]
    for client in range(setting.clients):
        if client not in dropped:
            arrays = client_inputs(setting.seed, client, setting.blocks)
            for i, (total, block) in enumerate(zip(totals, arrays, strict=True)):
                if client in setting.holders(i):
                    total += block
    return totals


def _hypergeometric_at_least(population: int, successes: int, draws: int, at_least: int) -> float:
    total = math.comb(population, draws)
    return (
        sum(
            math.comb(successes, j) * math.comb(population - successes, draws - j)
            for j in range(max(at_least, 0), draws + 1)
        )
        / total
    )


def neighbour_degree(clients: int) -> int | None:
    """Smallest even k recovering 30% dropouts w.p. ≥ 99%; None for the complete graph."""
    dropped = round(WORST_DROPOUT * clients)
    for k in range(4, clients - 1, 2):
        t = (k + 1) // 2 + 1
        # A dropped client's key needs t alive neighbours; a survivor's seed t − 1 more.
        fail_dropped = 1 - _hypergeometric_at_least(clients - 1, clients - dropped, k, t)
        fail_alive = 1 - _hypergeometric_at_least(clients - 1, clients - dropped - 1, k, t - 1)
        if dropped * fail_dropped + (clients - dropped) * fail_alive <= 0.01:
            return k
    return None


def session_params(setting: Setting) -> SessionParams:
    k = neighbour_degree(setting.clients)
    ids = block_ids(setting)
    return SessionParams(
        run_id="bench",
        round=1,
        cluster=0,
        roster=setting.roster,
        config_hash=hashlib.sha256(b"bench-config").digest(),
        model_hash=hashlib.sha256(b"bench-model").digest(),
        threshold=default_threshold(setting.clients, k),
        min_cohort=3,
        block_lengths=dict(zip(ids, setting.blocks, strict=True)),
        block_supports={
            block: frozenset(setting.roster[c] for c in setting.holders(i))
            for i, block in enumerate(ids)
        },
        clip=CLIP,
        scale=SCALE,
        neighbours=k,
    )


# --------------------------------------------------------------------------- methods


def max_error(sums: list[npt.NDArray[np.float64]], setting: Setting) -> float:
    """Largest coordinate error of per-block sums against the exact plain sums."""
    pairs = zip(sums, plain_sums(setting), strict=True)
    return max(float(np.max(np.abs(a - b))) for a, b in pairs)


def bench_plaintext(setting: Setting) -> Row:
    """Baseline: each client sends float32 values, the server adds them."""
    dropped = set(setting.dropped)
    totals = [np.zeros(n) for n in setting.blocks]
    client_cpu, server_cpu, sent = 0.0, 0.0, 0
    for client in range(setting.clients):
        if client in dropped:
            continue
        arrays = client_inputs(setting.seed, client, setting.blocks)
        started = clock()
        payload = np.concatenate(arrays).astype("<f4").tobytes()
        client_cpu += clock() - started
        sent = len(payload)
        started = clock()
        values = np.frombuffer(payload, dtype="<f4")
        offset = 0
        for total in totals:
            total += values[offset : offset + total.size]
            offset += total.size
        server_cpu += clock() - started
    survivors = setting.clients - len(dropped)
    return Row.of(
        "plaintext",
        setting,
        client_seconds=client_cpu / survivors,
        server_seconds=server_cpu,
        total_cpu_seconds=client_cpu + server_cpu,
        bytes_up=sent,
        max_error=max_error(totals, setting),
    )


def bench_masking(setting: Setting) -> Row:
    """fedhft masking mode (SecAgg/SecAgg+), through its in-process driver."""
    params = session_params(setting)
    identities = {org: Ed25519PrivateKey.generate() for org in setting.roster}
    dropped = {setting.roster[i] for i in setting.dropped}
    stats = SessionStats(clock=clock)
    try:
        result = run_secagg_in_process(
            params,
            LazyInputs(setting),
            identities,
            drop={"masked_input": dropped} if dropped else None,
            stats=stats,
        )
    except ThresholdError as aborted:
        return Row.of("masking", setting, note=f"aborted: {aborted}")
    survivors = [org for org in setting.roster if org not in dropped]
    degree = effective_degree(setting.clients, params.neighbours)
    # A block's masks come from its holders' graph; a client's shares go to the union of
    # its graphs, which is larger than k when it holds blocks of several holder sets.
    shares_to = max(len(params.graph[org]) for org in setting.roster)
    spread = f", shares to ≤ {shares_to}" if shares_to != degree else ""
    return Row.of(
        "masking",
        setting,
        client_seconds=float(np.mean([stats.client_seconds[o] for o in survivors])),
        server_seconds=stats.server_seconds,
        total_cpu_seconds=sum(stats.client_seconds.values()) + stats.server_seconds,
        bytes_up=float(np.mean([stats.bytes_up[o] for o in survivors])),
        max_error=max_error([result.blocks[b].sum for b in block_ids(setting)], setting),
        note=f"k={degree}, t={params.threshold}{spread}",
    )


def server_masks(setting: Setting, params: SessionParams) -> list[int]:
    """Per block, how many masks the server must regenerate when ``setting.dropped`` send
    no masked input: each surviving holder's self mask and, for each dropped holder, the
    pairwise mask with each of its surviving neighbours in the block's graph."""
    dropped = {setting.roster[i] for i in setting.dropped}
    counts = []
    for block in block_ids(setting):
        support = params.block_supports[block]
        graph = params.block_graph(block)
        pairs = sum(len(graph[gone] - dropped) for gone in dropped & support)
        counts.append(len(support - dropped) + pairs)
    return counts


def bench_mask_floor(setting: Setting) -> Row:
    """The masks alone, a ChaCha20 keystream each per block: one client's (one per
    neighbour and its self mask) and the server's (those :func:`server_masks` counts)."""
    params = session_params(setting)
    degree = len(params.graph[setting.roster[0]])
    keys = [os.urandom(32) for _ in range(degree + 1)]
    best = math.inf
    for _ in range(1 if setting.length >= 10**6 else 3):
        started = clock()
        for key in keys:
            for n in setting.blocks:
                _crypto.mask_words(key, n, params.fixed_point.bits)
        best = min(best, clock() - started)
    counts = server_masks(setting, params)
    key = os.urandom(32)
    started = clock()
    for n, count in zip(setting.blocks, counts, strict=True):
        for _ in range(count):
            _crypto.mask_words(key, n, params.fixed_point.bits)
    server = clock() - started
    return Row.of(
        "mask floor",
        setting,
        client_seconds=best,
        server_seconds=server,
        note=f"{degree + 1} keystreams; server {sum(counts):,}",
    )


_CEREMONIES: dict[int, tuple[CKKSCeremony, dict[str, CKKSKeyring]]] = {}


def _ceremony(clients: int, roster: list[str]) -> tuple[CKKSCeremony, dict[str, CKKSKeyring]]:
    if clients not in _CEREMONIES:
        sealing = {org: X25519PrivateKey.generate() for org in roster}
        ceremony = CKKSCeremony.create(
            consortium="bench",
            sealing_keys={org: key.public_key() for org, key in sealing.items()},
            parameters=CKKSParameters.choose(max_clients=clients, value_bound=CLIP),
        )
        keyrings = {
            org: CKKSKeyring.open(
                ceremony.sealed_keys[org], private_key=key, consortium="bench", organization=org
            )
            for org, key in sealing.items()
        }
        _CEREMONIES[clients] = (ceremony, keyrings)
    return _CEREMONIES[clients]


def bench_ckks(setting: Setting) -> Row:
    """fedhft CKKS mode: survivors encrypt, the server adds, every survivor decrypts.

    Every survivor's decryption costs the same, so one is timed and counted for all.
    """
    ceremony, keyrings = _ceremony(setting.clients, setting.roster)
    ids = block_ids(setting)
    session = CKKSSession(
        run_id="bench",
        round=1,
        cluster=0,
        roster=tuple(setting.roster),
        key_id=ceremony.key_id,
        min_cohort=3,
        block_lengths=dict(zip(ids, setting.blocks, strict=True)),
        block_supports={block: frozenset(setting.roster) for block in ids},
    )
    dropped = set(setting.dropped)
    inputs = LazyInputs(setting)
    started = clock()
    server = CKKSAggregator(session, CKKSServerContext.from_bytes(ceremony.public_context))
    server_cpu = clock() - started
    encrypt_cpu, sizes = [], []
    for index, org in enumerate(setting.roster):
        if index in dropped:
            continue
        blocks = inputs[org]
        started = clock()
        upload = CKKSClient(session, keyrings[org]).encrypt(blocks)
        encrypt_cpu.append(clock() - started)
        sizes.append(len(upload))
        started = clock()
        server.receive(org, upload)
        server_cpu += clock() - started
    started = clock()
    released = server.result().encode()
    server_cpu += clock() - started
    survivor = next(org for i, org in enumerate(setting.roster) if i not in dropped)
    started = clock()
    aggregate = CKKSClient(session, keyrings[survivor]).decrypt(released)
    decrypt_cpu = clock() - started
    parameters = ceremony.parameters
    return Row.of(
        "ckks",
        setting,
        client_seconds=float(np.mean(encrypt_cpu)) + decrypt_cpu,
        server_seconds=server_cpu,
        total_cpu_seconds=sum(encrypt_cpu) + decrypt_cpu * len(encrypt_cpu) + server_cpu,
        bytes_up=float(np.mean(sizes)),
        max_error=max_error([aggregate.sums[b] for b in ids], setting),
        note=f"N={parameters.poly_modulus_degree}, q: {parameters.data_prime_bits} bits, "
        f"Δ=2^{parameters.scale_bits}",
    )


def flower_python(requested: str | None) -> str | None:
    """The interpreter that has `flwr`, or None."""
    local = Path(__file__).resolve().parents[1] / ".venv-flower" / "bin" / "python"
    candidates = [requested, os.environ.get("FEDHFT_FLOWER_PYTHON"), str(local), sys.executable]
    for candidate in candidates:
        if candidate and shutil.which(candidate):
            probe = subprocess.run(
                [candidate, "-c", "import flwr"], capture_output=True, check=False
            )
            if probe.returncode == 0:
                return candidate
    return None


def bench_flower(setting: Setting, python: str) -> Row:
    """Flower's SecAgg+ (workflow + client mod) in a subprocess, same inputs and graph."""
    params = session_params(setting)
    degree = len(params.graph[setting.roster[0]])
    config = {
        "clients": setting.clients,
        "seed": setting.seed,
        "blocks": setting.blocks,
        "drop": setting.dropped,
        "num_shares": degree + 1,
        "threshold": params.threshold,
        "clip": CLIP,
        "quantization_range": int(2 * CLIP * SCALE),
    }
    command = [python, str(FLOWER_DRIVER), json.dumps(config)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return Row.of("flower secagg+", setting, note=f"failed: {done.stderr.strip()[-200:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if not out["completed"]:
        return Row.of("flower secagg+", setting, note="aborted (below threshold)")
    survivors = setting.clients - len(setting.dropped)
    return Row.of(
        "flower secagg+",
        setting,
        client_seconds=out["client_seconds"],
        server_seconds=out["server_seconds"],
        total_cpu_seconds=out["client_total_seconds"] + out["server_seconds"],
        bytes_up=out["bytes_up"],
        # Flower releases the average; scale its error to the sum's for comparison.
        max_error=out["max_error_of_average"] * survivors,
        note=f"k={degree}, t={params.threshold}",
    )


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def render(rows: list[Row], console: Console) -> None:
    table = Table(title="Secure aggregation, one round (CPU seconds; bytes up per client)")
    headers = "N;L;drop;method;client s;server s;total CPU s;bytes up;× 4L;max |err| of sum;notes"
    for header in headers.split(";"):
        table.add_column(header, justify="left" if header in ("method", "notes") else "right")
    previous = None
    for row in rows:
        key = (row.clients, row.length, row.dropout)
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        table.add_row(
            str(row.clients),
            f"{row.length:.0e}",
            f"{row.dropout:.0%}",
            row.method,
            _fmt(row.client_seconds, ".4f"),
            _fmt(row.server_seconds, ".3f"),
            _fmt(row.total_cpu_seconds, ".2f"),
            _fmt(row.bytes_up, ",.0f"),
            _fmt(row.bytes_ratio, ".3f"),
            _fmt(row.max_error, ".1e"),
            row.note,
        )
    console.print(table)


def _cells(rows: list[Row]) -> dict[tuple[int, int, float], dict[str, Row]]:
    by_cell: dict[tuple[int, int, float], dict[str, Row]] = {}
    for row in rows:
        by_cell.setdefault((row.clients, row.length, row.dropout), {})[row.method] = row
    return by_cell


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _over(cell: dict[str, Row], numerator: str, denominator: str, field: str) -> float | None:
    """``field`` of method ``numerator`` over that of ``denominator`` in one cell."""
    top, bottom = cell.get(numerator), cell.get(denominator)
    if top is None or bottom is None:
        return None
    return _ratio(getattr(top, field), getattr(bottom, field))


def ratios(rows: list[Row]) -> list[dict[str, object]]:
    """Per (N, L), the targets' ratios: the server's time at the largest dropout fraction
    over its no-dropout time; client time over the mask floor and Flower's total CPU over
    masking's, each at 0% and at the largest dropout fraction."""
    by_cell = _cells(rows)
    out: list[dict[str, object]] = []
    for n, length in sorted({(n, length) for n, length, _ in by_cell}):
        worst = max(d for m, ln, d in by_cell if (m, ln) == (n, length))
        none, dropped = by_cell.get((n, length, 0.0), {}), by_cell[n, length, worst]
        server_none = none.get("masking")
        server_dropped = dropped.get("masking")
        out.append(
            {
                "clients": n,
                "length": length,
                "worst_dropout": worst,
                "server_dropout_over_none": _ratio(
                    server_dropped.server_seconds if server_dropped and worst else None,
                    server_none.server_seconds if server_none else None,
                ),
                "server_over_floor_dropout": _over(
                    dropped, "masking", "mask floor", "server_seconds"
                ),
                "client_over_floor": _over(none, "masking", "mask floor", "client_seconds"),
                "client_over_floor_dropout": _over(
                    dropped, "masking", "mask floor", "client_seconds"
                )
                if worst
                else None,
                "flower_over_ours": _over(none, "flower secagg+", "masking", "total_cpu_seconds"),
                "flower_over_ours_dropout": _over(
                    dropped, "flower secagg+", "masking", "total_cpu_seconds"
                )
                if worst
                else None,
            }
        )
    return out


def _times(value: object) -> str:
    return "—" if not isinstance(value, float) else f"{value:.2f}×"


def render_ratios(table_rows: list[dict[str, object]], console: Console) -> None:
    table = Table(
        title="Targets: server drop/0% ≤ 3 (N = 50, 100); client/floor ≤ 1.5 (L = 1e6); "
        "Flower/ours ≥ 4 (N = 50, 100)"
    )
    headers = "N;L;drop;server drop/0%;server/floor drop;client/floor 0%;client/floor drop;"
    headers += "Flower/ours 0%;Flower/ours drop"
    for header in headers.split(";"):
        table.add_column(header, justify="right")
    for entry in table_rows:
        table.add_row(
            str(entry["clients"]),
            f"{entry['length']:.0e}",
            f"{entry['worst_dropout']:.0%}",
            *(
                _times(entry[key])
                for key in (
                    "server_dropout_over_none",
                    "server_over_floor_dropout",
                    "client_over_floor",
                    "client_over_floor_dropout",
                    "flower_over_ours",
                    "flower_over_ours_dropout",
                )
            ),
        )
    console.print(table)


def targets(rows: list[Row]) -> list[dict[str, object]]:
    """Check the issue's targets on every cell they apply to (others are reported as info)."""
    by_cell = _cells(rows)
    checks: list[dict[str, object]] = []

    def check(target: str, cell: str, value: float, limit: float | None, at_most: bool) -> None:
        met = None if limit is None else (value <= limit if at_most else value >= limit)
        checks.append({"target": target, "cell": cell, "value": round(value, 3), "met": met})

    for (n, length, dropout), methods in sorted(by_cell.items()):
        cell = f"N={n}, L={length:.0e}, drop={dropout:.0%}"
        masking, floor = methods.get("masking"), methods.get("mask floor")
        ckks, flower = methods.get("ckks"), methods.get("flower secagg+")
        headline = n in (50, 100)
        if masking and masking.bytes_ratio is not None:
            check("masking bytes up ≤ 1.1× int32 payload", cell, masking.bytes_ratio, 1.1, True)
        if masking and masking.client_seconds and floor and floor.client_seconds:
            ratio = masking.client_seconds / floor.client_seconds
            limit = 1.5 if length >= 10**6 else None
            check("masking client time ≤ 1.5× mask floor", cell, ratio, limit, True)
        none = by_cell.get((n, length, 0.0), {}).get("masking")
        if dropout > 0 and masking and masking.server_seconds and none and none.server_seconds:
            ratio = masking.server_seconds / none.server_seconds
            limit = 3.0 if headline and dropout <= WORST_DROPOUT else None
            check("masking server time with dropouts ≤ 3× without", cell, ratio, limit, True)
        if ckks and ckks.bytes_ratio is not None:
            check("CKKS bytes up ≤ 8.5× float32 payload", cell, ckks.bytes_ratio, 8.5, True)
        if masking and masking.total_cpu_seconds and flower and flower.total_cpu_seconds:
            speedup = flower.total_cpu_seconds / masking.total_cpu_seconds
            target = "masking total CPU ≥ 4× below Flower SecAgg+"
            check(target, cell, speedup, 4.0 if headline else None, False)
    return checks


METHODS = frozenset({"plaintext", "mask floor", "masking", "ckks", "flower"})
LARGE_CLIENTS = (200, 500)
LARGE_LENGTHS = (10**5, 10**6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid, well under a minute")
    parser.add_argument(
        "--large",
        action="store_true",
        help="also N = 200 and 500 (SecAgg+; masking and mask floor; L = 1e5 and 1e6; "
        "0%% and 30%% dropouts)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows and checks here")
    parser.add_argument("--flower-python", help="interpreter with flwr (its own environment)")
    parser.add_argument(
        "--flower-grid",
        choices=["default", "full", "none"],
        default="default",
        help="default skips Flower at N=100, L=1e6 (several minutes)",
    )
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--clients", type=int, nargs="+", help="override the grid's N values")
    parser.add_argument("--lengths", type=int, nargs="+", help="override the grid's L values")
    parser.add_argument(
        "--dropouts", type=float, nargs="+", help="override the grid's dropout fractions"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(METHODS),
        default=sorted(METHODS),
        help="which methods to run (default: all)",
    )
    parser.add_argument(
        "--tiers",
        action="store_true",
        help="mixed tiers: a third of the blocks held by all, a third by 2/3 of the clients, "
        "a third by 1/3 (masking and mask floor only)",
    )
    args = parser.parse_args(argv)

    clients: tuple[int, ...]
    lengths: tuple[int, ...]
    dropouts: tuple[float, ...]
    if args.quick:
        clients, lengths, dropouts = (5, 10), (20_000,), (0.0, 0.3)
    else:
        clients, lengths, dropouts = (10, 50, 100), (10**5, 10**6), (0.0, 0.1, 0.3)
    clients = tuple(args.clients or clients)
    lengths = tuple(args.lengths or lengths)
    dropouts = tuple(args.dropouts if args.dropouts is not None else dropouts)
    methods = set(args.methods)
    if args.tiers:
        methods &= {"masking", "mask floor"}
    python = None if args.flower_grid == "none" else flower_python(args.flower_python)
    console = Console(width=max(170, shutil.get_terminal_size().columns))
    if python is None and args.flower_grid != "none":
        console.print(
            "[yellow]flwr not found (see benchmarks/requirements-flower.txt) or pass "
            "--flower-python; Flower rows are skipped[/yellow]"
        )
    grid = [
        (n, length, dropout, methods) for length in lengths for n in clients for dropout in dropouts
    ]
    if args.large:
        large = methods & {"masking", "mask floor"}
        grid += [
            (n, length, dropout, large)
            for length in LARGE_LENGTHS
            for n in LARGE_CLIENTS
            for dropout in (0.0, WORST_DROPOUT)
        ]
    rows: list[Row] = []
    started = time.perf_counter()
    for n, length, dropout, cell_methods in grid:
        setting = Setting(n, length, dropout, args.seed, tiers=args.tiers)
        if "plaintext" in cell_methods:
            rows.append(bench_plaintext(setting))
        if "mask floor" in cell_methods:
            rows.append(bench_mask_floor(setting))
        if "masking" in cell_methods:
            rows.append(bench_masking(setting))
        if "ckks" in cell_methods:
            rows.append(bench_ckks(setting))
        skip = args.flower_grid == "default" and (n, length) == (100, 10**6)
        if python is not None and not skip and "flower" in cell_methods:
            rows.append(bench_flower(setting, python))
        console.log(
            f"N={n} L={length:.0e} drop={dropout:.0%} done ({time.perf_counter() - started:.0f} s)"
        )
    render(rows, console)
    table_ratios = ratios(rows)
    render_ratios(table_ratios, console)
    checks = targets(rows)
    for check in checks:
        mark = {True: "[green]met[/green]", False: "[red]MISSED[/red]", None: "info"}[
            check["met"]  # type: ignore[index]
        ]
        console.print(f"{mark}  {check['target']}  ({check['cell']}): {check['value']}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join(
                        ["python", "benchmarks/secagg.py", *(argv or sys.argv[1:])]
                    ),
                    "machine": {
                        "platform": platform.platform(),
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                    },
                    "clock": "process CPU seconds",
                    "wall_seconds": time.perf_counter() - started,
                    "rows": [asdict(row) for row in rows],
                    "ratios": table_ratios,
                    "checks": checks,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
