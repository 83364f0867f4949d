"""Cost of fedhft's signed audit log: writing records, and verifying a whole log.

Two tables, each with a baseline measured in the same run:

- **append**: `AuditLog.append` (payload checks, RFC 8785 encoding, Ed25519 signature,
  one line written and fsync-ed) against a plain JSON-lines writer that neither signs
  nor fsyncs — what durability and tamper evidence cost per record;
- **verify**: `verify_log` of a FedAMoLE-like log (per round: join, a DP-SGD spend, a
  Gaussian release, a committed upload and its receipt) with ε recomputed after every
  spend or only the last, per accountant, against checking the chain and signatures
  alone.

Usage: python benchmarks/audit_log.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from fedhft.audit import (
    GENESIS_PREV,
    AuditLog,
    EventType,
    MechanismUse,
    check_chain,
    prepare_payload,
    recompute_epsilon,
    round_joined_payload,
    sha256_hex,
    sign_receipt,
    sign_record,
    update_committed_payload,
    verify_log,
)

ORG = "st-mary-hospital"


def _spend(round_number: int, mechanism: str, sigma: float, rate: float, steps: int,
           epsilon: float, accountant: str) -> dict[str, Any]:  # fmt: skip
    return {
        "round": round_number,
        "mechanism": mechanism,
        "accountant": accountant,
        "noise_multiplier": sigma,
        "sample_rate": rate,
        "steps": steps,
        "max_grad_norm": 1.0 if mechanism == "dp-sgd" else None,
        "epsilon_after": epsilon,
        "delta": 1e-5,
        "noise_source": "secure",
    }


def bench_append(folder: Path, records: int) -> list[dict[str, Any]]:
    """Seconds per record: AuditLog.append versus an unsigned, unsynced JSON writer."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    payload = _spend(0, "dp-sgd", 1.0, 0.02, 40, 1.5, "rdp")
    started = time.perf_counter()
    with AuditLog.open(folder / "signed.jsonl", party_id=ORG, signing_key=key) as log:
        for _ in range(records):
            log.append(EventType.PRIVACY_SPEND, payload)
    signed = (time.perf_counter() - started) / records
    started = time.perf_counter()
    prev = GENESIS_PREV
    for seq in range(1, records + 1):
        record = sign_record(
            signing_key=key,
            seq=seq,
            time="2025-03-01T09:00:00.000000Z",
            party=ORG,
            event="privacy_spend",
            payload=prepare_payload("privacy_spend", payload),
            prev=prev,
        )
        prev = sha256_hex(record.canonical_bytes())
    in_memory = (time.perf_counter() - started) / records
    started = time.perf_counter()
    with (folder / "plain.jsonl").open("w", encoding="utf-8") as plain:
        for seq in range(records):
            plain.write(json.dumps({"seq": seq, "payload": payload}, sort_keys=True) + "\n")
            plain.flush()
    baseline = (time.perf_counter() - started) / records
    return [
        {"writer": "AuditLog.append (sign + fsync)", "us_per_record": signed * 1e6,
         "records_per_s": 1 / signed, "vs_baseline": signed / baseline},
        {"writer": "check + encode + sign + hash, no write", "us_per_record": in_memory * 1e6,
         "records_per_s": 1 / in_memory, "vs_baseline": in_memory / baseline},
        {"writer": "baseline: json.dumps + flush", "us_per_record": baseline * 1e6,
         "records_per_s": 1 / baseline, "vs_baseline": 1.0},
    ]  # fmt: skip


def write_fedamole_log(path: Path, rounds: int, accountant: str) -> None:
    """An honest log of ``rounds`` rounds with a DP-SGD spend and a Gaussian release each."""
    client = Ed25519PrivateKey.from_private_bytes(bytes(32))
    server = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    uses: list[MechanismUse] = []
    with AuditLog.open(path, party_id=ORG, signing_key=client) as log:
        for r in range(rounds):
            log.append(EventType.ROUND_JOINED, round_joined_payload(r, [0]))
            for mechanism, sigma, rate, steps in (("dp-sgd", 1.0, 0.02, 40),
                                                  ("gaussian", 6.0, 1.0, 1)):  # fmt: skip
                uses.append(MechanismUse(sigma, rate, steps))
                epsilon = recompute_epsilon(uses, accountant=accountant, delta=1e-5)
                log.append(
                    EventType.PRIVACY_SPEND,
                    _spend(r, mechanism, sigma, rate, steps, epsilon, accountant),
                )
            upload = hashlib.sha256(f"{r}".encode()).hexdigest()
            log.append(EventType.UPDATE_COMMITTED, update_committed_payload(r, 0, upload))
            receipt = sign_receipt(
                server, round=r, cluster=0, organization=ORG, upload_sha256=upload
            )
            log.append(EventType.AGGREGATION_RECEIPT, receipt.to_payload())


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_verify(folder: Path, rounds: int, accountants: list[str]) -> list[dict[str, Any]]:
    """Seconds to verify a log: chain and signatures alone, then with ε recomputed."""
    public_key = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    rows: list[dict[str, Any]] = []
    for accountant in accountants:
        path = folder / f"fedamole-{accountant}.jsonl"
        write_fedamole_log(path, rounds, accountant)
        records = len(path.read_bytes().splitlines())
        baseline = _timed(
            lambda path=path: check_chain(path.read_bytes(), public_key=public_key, source="b")
        )
        for check in ("every", "last"):
            seconds = _timed(
                lambda path=path, check=check: verify_log(
                    path, public_key=public_key, epsilon_check=check
                ).raise_if_failed()
            )
            rows.append({"accountant": accountant, "rounds": rounds, "records": records,
                         "epsilon_check": check, "seconds": seconds,
                         "baseline_chain_only_s": baseline})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (well under a minute)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    records = 200 if args.quick else 2000
    rounds = 10 if args.quick else 50
    accountants = ["rdp", "gdp", "prv"]

    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Warm the Opacus import so it is not charged to the first measurement.
        recompute_epsilon([MechanismUse(1.0, 0.1, 1)], accountant="rdp", delta=1e-5)
        append_rows = bench_append(folder, records)
        verify_rows = bench_verify(folder, rounds, accountants)

    table = Table(title=f"append ({records} records, fsync each; {os.cpu_count()} CPUs)")
    for column in ("writer", "µs / record", "records / s", "× baseline"):
        table.add_column(column, justify="left" if column == "writer" else "right")
    for row in append_rows:
        table.add_row(row["writer"], f"{row['us_per_record']:.0f}",
                      f"{row['records_per_s']:.0f}", f"{row['vs_baseline']:.1f}")  # fmt: skip
    console.print(table)

    table = Table(title=f"verify a FedAMoLE-like log ({rounds} rounds, 2 spends per round)")
    for column in ("accountant", "records", "ε recomputed", "seconds", "chain-only s", "×"):
        table.add_column(column, justify="left" if column == "accountant" else "right")
    for row in verify_rows:
        table.add_row(row["accountant"], str(row["records"]), f"after {row['epsilon_check']}",
                      f"{row['seconds']:.2f}", f"{row['baseline_chain_only_s']:.3f}",
                      f"{row['seconds'] / row['baseline_chain_only_s']:.0f}")  # fmt: skip
    console.print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"append": append_rows, "verify": verify_rows}, indent=2) + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
