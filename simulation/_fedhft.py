"""A whole federation in one process: the real coordinator, clients and secure sums.

Every organization runs the real `LocalTrainer` (DP-SGD, ledger) through a
`RoundParticipant`; every cluster of every round is summed by the real masking-mode
secure aggregation, with each message encoded and decoded as on the wire. Only the
network is missing: the gRPC server drives the same coordinator and participants.
Used by the learning benchmark and by tests that need many rounds quickly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhft.aggregator import RoundCoordinator, RoundSummary
from fedhft.model import encode_clusters
from fedhft.policies import ConsortiumConfig, Method
from fedhft.protocol import AggregateResult, SessionParams, SessionStats, run_secagg_in_process
from fedhft.sdk import BudgetExhaustedError, InstructionDataset, TextDataset
from fedhft.sdk.participants import RoundParticipant
from fedhft.sdk.privacy import AccountedTrainer


class _Participant(Protocol):
    @property
    def trainer(self) -> AccountedTrainer: ...


P = TypeVar("P", bound=_Participant)


@dataclass
class OrganizationRun(Generic[P]):
    """One organization of an in-process federation (its participant: a
    `RoundParticipant`, or a `MoLEParticipant` for FedAMoLE)."""

    participant: P
    tier: str
    test: TextDataset | InstructionDataset
    domain: str = ""
    identity: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    bytes_up: int = 0
    bytes_down: int = 0
    rounds_joined: int = 0
    refused: list[int] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        """Its tier, domain, ε spent of its budget, bytes and rounds so far."""
        trainer = self.participant.trainer
        return {
            "tier": self.tier,
            "domain": self.domain,
            "epsilon": trainer.ledger.spent() if trainer.ledger is not None else None,
            "epsilon_budget": trainer.policy.privacy.epsilon,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "rounds_joined": self.rounds_joined,
            "refused_rounds": list(self.refused),
        }


def secure_sum(
    params: SessionParams,
    inputs: Mapping[str, Any],
    organizations: Mapping[str, OrganizationRun[Any]],
    drop: Mapping[str, Sequence[str]] | None,
) -> AggregateResult:
    """One masking-mode session over ``inputs``, its bytes added to each sender's run."""
    stats = SessionStats()
    result = run_secagg_in_process(
        params,
        inputs,
        {org: organizations[org].identity for org in inputs},
        drop=drop,
        stats=stats,
    )
    for org in inputs:
        organizations[org].bytes_up += stats.bytes_up.get(org, 0)
        organizations[org].bytes_down += stats.bytes_down.get(org, 0)
    return result


@dataclass
class RoundRecord:
    """What one in-process round did and cost."""

    summary: RoundSummary | None
    seconds: float
    refused: tuple[str, ...]


@dataclass
class FederationResult:
    """The outcome of an in-process federation."""

    rounds: list[RoundRecord]
    metrics: dict[str, dict[str, Any]]
    coordinator: RoundCoordinator


def run_federation_in_process(
    consortium: ConsortiumConfig,
    coordinator: RoundCoordinator,
    organizations: Mapping[str, OrganizationRun[RoundParticipant]],
    *,
    rounds: int | None = None,
    drop: Callable[[int, int], Mapping[str, Sequence[str]]] | None = None,
    on_round: Callable[[int, RoundRecord], None] | None = None,
    zero_shot: bool = True,
) -> FederationResult:
    """Run ``rounds`` rounds (default: the consortium's) and evaluate every organization.

    Args:
        drop: ``(round, cluster) → {stage: organizations that go silent}``, to simulate
            dropouts inside secure aggregation.
        on_round: called after each round (progress reporting).
        zero_shot: for a causal LM, also score the zero-shot base model (``zero_shot_*``);
            ``False`` when the caller scores it once for several methods.
    """
    records: list[RoundRecord] = []
    total = rounds if rounds is not None else consortium.rounds
    for round_number in range(1, total + 1):
        started = time.perf_counter()
        clusters = coordinator.model_for_round(round_number)
        download = len(encode_clusters(clusters))
        updates = {}
        refused: list[str] = []
        for org, run in organizations.items():
            try:
                updates[org] = run.participant.prepare(round_number, clusters)
            except BudgetExhaustedError:
                run.refused.append(round_number)
                refused.append(org)
                continue
            run.bytes_down += download
            run.rounds_joined += 1
            if consortium.takes_sketches(round_number):
                sketch = run.participant.sketch(round_number)
                if sketch is not None:
                    coordinator.sketches[org] = sketch
        summary: RoundSummary | None = None
        if consortium.method is not Method.LOCAL:
            participants = {org: organizations[org].tier for org in updates}
            results: dict[int, AggregateResult] = {}
            skipped: dict[int, dict[str, int]] = {}
            for cluster in range(clusters.k):
                params, skipped[cluster] = coordinator.session_params(
                    round_number=round_number,
                    attempt=1,
                    cluster=cluster,
                    participants=participants,
                )
                inputs = {
                    org: organizations[org].participant.contributions(
                        update,
                        cluster=cluster,
                        block_lengths=params.block_lengths,
                        clip=params.clip,
                    )
                    for org, update in updates.items()
                }
                results[cluster] = secure_sum(
                    params,
                    inputs,
                    organizations,
                    drop(round_number, cluster) if drop is not None else None,
                )
            summary = coordinator.apply(
                round_number=round_number,
                participants=list(updates),
                results=results,
                skipped=skipped,
            )
        for org in updates:
            organizations[org].participant.complete(round_number)
        record = RoundRecord(summary, time.perf_counter() - started, tuple(refused))
        records.append(record)
        if on_round is not None:
            on_round(round_number, record)

    final = coordinator.clusters
    metrics: dict[str, dict[str, Any]] = {}
    for org, run in organizations.items():
        personal = run.participant.personal
        metrics[org] = {
            **run.participant.evaluate(run.test, final, zero_shot=zero_shot),
            **run.figures(),
            "membership": [] if personal is None else [float(p) for p in personal.membership],
        }
    return FederationResult(records, metrics, coordinator)
