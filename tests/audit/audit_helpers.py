"""Helpers shared by the audit tests: fixed keys, a fixed clock, honest federation logs.

`write_federation` writes the two logs an honest run produces: per round, the client
joins, records its DP-SGD spend (ε from an Opacus accountant stepped as the trainer
steps it), commits the hash of its masked upload; the server accepts it and signs a
receipt binding the client's log head (that commitment) and the round's spend record,
which the client logs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import RDPAccountant

from fedhft.audit import (
    AuditLog,
    EventType,
    policy_loaded_payload,
    round_joined_payload,
    sign_receipt,
    update_committed_payload,
    upload_accepted_payload,
)
from fedhft.audit._record import GENESIS_PREV, sign_record
from fedhft.policies import OrganizationPolicy

ORG = "st-mary-hospital"
SERVER = "aggregator"

SpendPlan = list[tuple[float, float, int]]
"""(σ, q, steps) of each round's DP-SGD."""

DEFAULT_PLAN: SpendPlan = [(1.1, 0.01, 20), (1.1, 0.01, 20), (1.1, 0.02, 20)]
"""The policy's σ and local steps every round (`make_policy`); the data grew in round 2."""


def fixed_key(label: str) -> Ed25519PrivateKey:
    """An Ed25519 key from a fixed 32-byte seed, SHA-256 of a label (tests only)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


class FixedClock:
    """A clock that starts at 2025-03-01T09:00:00Z and advances one second per call."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 3, 1, 9, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        current = self.now
        self.now += timedelta(seconds=1)
        return current


def make_policy(**privacy: Any) -> OrganizationPolicy:
    """St Mary's policy with an RDP budget of ε = 4 at δ = 1e-5, overridable."""
    return OrganizationPolicy.model_validate(
        {
            "organization": ORG,
            "consortium": "northern-health-finance",
            "privacy": {
                "epsilon": 4.0,
                "delta": 1e-5,
                "accountant": "rdp",
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.1,
                "planned_rounds": 5,
                **privacy,
            },
            "training": {"tier": "full", "batch_size": 32, "local_steps": 20},
        }
    )


@dataclass
class Federation:
    """Paths of an honest run's logs, and what was logged."""

    client_log: Path
    server_log: Path
    epsilons: list[float]
    uploads: list[str]


def write_federation(
    folder: Path,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
    plan: SpendPlan = DEFAULT_PLAN,
    *,
    noise_source: str = "secure",
    start: datetime | None = None,
    server_party: str = SERVER,
    receipt_lost_in_rounds: Collection[int] = (),
    head_withheld_in_rounds: Collection[int] = (),
) -> Federation:
    """Write an honest client log and server log for ``plan``; ε from Opacus' RDP.

    In ``receipt_lost_in_rounds`` the server accepts the upload but the client never
    logs the receipt (it crashed before the receipt arrived) and goes on. In
    ``head_withheld_in_rounds`` the client sends no log head or spend with its upload.
    """
    client_path, server_path = folder / "client.jsonl", folder / "server.jsonl"
    opacus_accountant = RDPAccountant()
    epsilons: list[float] = []
    uploads: list[str] = []
    clock = FixedClock(start)
    delta = policy.privacy.delta
    with (
        AuditLog.open(client_path, party_id=ORG, signing_key=client_key, clock=clock) as client,
        AuditLog.open(
            server_path, party_id=server_party, signing_key=server_key, clock=clock
        ) as server,
    ):
        client.append(EventType.POLICY_LOADED, policy_loaded_payload(policy))
        for round_number, (sigma, rate, steps) in enumerate(plan):
            client.append(EventType.ROUND_JOINED, round_joined_payload(round_number, [0]))
            for _ in range(steps):
                opacus_accountant.step(noise_multiplier=sigma, sample_rate=rate)
            epsilon = opacus_accountant.get_epsilon(delta=delta)
            epsilons.append(epsilon)
            spend = client.append(
                EventType.PRIVACY_SPEND,
                {
                    "round": round_number,
                    "mechanism": "dp-sgd",
                    "accountant": "rdp",
                    "noise_multiplier": sigma,
                    "sample_rate": rate,
                    "steps": steps,
                    "max_grad_norm": policy.privacy.max_grad_norm,
                    "epsilon_after": epsilon,
                    "delta": delta,
                    "noise_source": noise_source,
                },
            )
            upload = hashlib.sha256(f"masked upload {round_number}".encode()).hexdigest()
            uploads.append(upload)
            committed = client.append(
                EventType.UPDATE_COMMITTED, update_committed_payload(round_number, 0, upload)
            )
            receipt = sign_receipt(
                server_key,
                round=round_number,
                cluster=0,
                organization=ORG,
                upload_sha256=upload,
                audit_head_sha256=None
                if round_number in head_withheld_in_rounds
                else committed.digest(),
                spend_sha256=None if round_number in head_withheld_in_rounds else spend.digest(),
            )
            server.append(EventType.UPLOAD_ACCEPTED, upload_accepted_payload(receipt))
            if round_number not in receipt_lost_in_rounds:
                client.append(EventType.AGGREGATION_RECEIPT, receipt.to_payload())
            server.append(EventType.ROUND_AGGREGATED, {"round": round_number, "cluster": 0})
    return Federation(client_path, server_path, epsilons, uploads)


Document = dict[str, Any]


def rewrite_log(path: Path, key: Ed25519PrivateKey, edit: Callable[[list[Document]], None]) -> None:
    """Edit a log's records and re-sign and re-chain all of them with ``key``.

    This is what a party rewriting its own history can do: the result has a valid chain
    and valid signatures, so only cross-checks (ε recomputation, receipts) catch it.
    """
    documents: list[Document] = [json.loads(line) for line in path.read_bytes().splitlines()]
    edit(documents)
    prev = GENESIS_PREV
    lines: list[bytes] = []
    for seq, document in enumerate(documents, start=1):
        record = sign_record(
            signing_key=key,
            seq=seq,
            time=str(document["time"]),
            party=str(document["party"]),
            event=str(document["event"]),
            payload=document["payload"],
            prev=prev,
        )
        prev = record.digest()
        lines.append(record.canonical_bytes() + b"\n")
    path.write_bytes(b"".join(lines))


def lines_of(path: Path) -> list[bytes]:
    """The log's lines without their newlines."""
    return path.read_bytes().splitlines()


def write_lines(path: Path, lines: list[bytes]) -> None:
    """Write lines back, each with its newline."""
    path.write_bytes(b"".join(line + b"\n" for line in lines))
