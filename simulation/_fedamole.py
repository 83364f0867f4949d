"""A whole FedAMoLE federation in one process: the real coordinator, trainers and secure sum.

Every organization runs the real `MoLEParticipant` (DP affinity release, DP-SGD rounds,
ledger); the server's side is the real `MoLECoordinator` (reverse-selection assignment,
per-block averages over holders); each round's blocks are summed by the real
masking-mode secure aggregation. Only the network is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedhft.aggregator import MoLECoordinator, RoundError, RoundSummary
from fedhft.model import encode_release
from fedhft.policies import ConsortiumConfig
from fedhft.sdk import BudgetExhaustedError
from fedhft.sdk.participants import MoLEParticipant

from ._fedhft import OrganizationRun, RoundRecord, secure_sum

FloatArray = npt.NDArray[np.float64]


@dataclass
class MoLEFederationResult:
    """The outcome of an in-process FedAMoLE federation."""

    rounds: list[RoundRecord]
    metrics: dict[str, dict[str, Any]]
    coordinator: MoLECoordinator
    assignment: dict[str, tuple[int, ...]]
    affinities: dict[str, FloatArray]
    """The DP affinity releases the server received (what RSEA ran on)."""


def run_fedamole_in_process(
    consortium: ConsortiumConfig,
    coordinator: MoLECoordinator,
    organizations: Mapping[str, OrganizationRun[MoLEParticipant]],
    *,
    rounds: int | None = None,
    drop: Callable[[int], Mapping[str, Sequence[str]]] | None = None,
    on_round: Callable[[int, RoundRecord], None] | None = None,
    zero_shot: bool = True,
) -> MoLEFederationResult:
    """Run ``rounds`` FedAMoLE rounds (default: the consortium's); evaluate everyone.

    Round 1 first collects every organization's DP affinity release and assigns the
    experts; an organization whose budget refuses the release takes no part in the run.

    Args:
        drop: ``round → {stage: organizations that go silent}`` inside secure aggregation.
        on_round: called after each round (progress reporting).
        zero_shot: for a causal LM, also score the zero-shot base model (``zero_shot_*``);
            ``False`` when the caller scores it once for several methods.

    Raises:
        RoundError: fewer organizations than the minimum cohort released an affinity.
    """
    affinities: dict[str, FloatArray] = {}
    if coordinator.assignment is None:
        for org, run in organizations.items():
            try:
                affinities[org] = run.participant.affinity(1)
            except BudgetExhaustedError:
                run.refused.append(1)
                continue
            run.bytes_up += affinities[org].nbytes
        if len(affinities) < consortium.secure_aggregation.min_cohort:
            raise RoundError(
                f"only {len(affinities)} organizations released an affinity; the minimum "
                f"cohort is {consortium.secure_aggregation.min_cohort}"
            )
        coordinator.assign(affinities, {org: organizations[org].tier for org in affinities})
    assignment = dict(coordinator.assignment or {})
    members = [org for org in organizations if org in assignment]
    records: list[RoundRecord] = []
    total = rounds if rounds is not None else consortium.rounds
    for round_number in range(1, total + 1):
        started = time.perf_counter()
        uploads: dict[str, dict[str, FloatArray]] = {}
        refused: list[str] = []
        for org in members:
            run = organizations[org]
            release = coordinator.release_for(org, round_number)
            try:
                uploads[org] = run.participant.prepare(round_number, release)
            except BudgetExhaustedError:
                run.refused.append(round_number)
                refused.append(org)
                continue
            run.bytes_down += len(encode_release(release))
            run.rounds_joined += 1
        summary: RoundSummary | None = None
        if len(uploads) >= consortium.secure_aggregation.min_cohort:
            params, skipped = coordinator.session_params(
                round_number=round_number, attempt=1, participants=list(uploads)
            )
            inputs = {
                org: organizations[org].participant.contributions(
                    upload, block_lengths=params.block_lengths, clip=params.clip
                )
                for org, upload in uploads.items()
            }
            result = secure_sum(
                params, inputs, organizations, drop(round_number) if drop is not None else None
            )
            summary = coordinator.apply(
                round_number=round_number,
                participants=list(uploads),
                results={0: result},
                skipped={0: skipped},
            )
        for org in uploads:
            organizations[org].participant.complete(round_number)
        record = RoundRecord(summary, time.perf_counter() - started, tuple(refused))
        records.append(record)
        if on_round is not None:
            on_round(round_number, record)

    metrics: dict[str, dict[str, Any]] = {}
    for org, run in organizations.items():
        entry: dict[str, Any] = {**run.figures(), "experts": list(assignment.get(org, ()))}
        if org in assignment:
            # The personalized mixture is saved in the organization's state folder
            # (`PERSONALIZED_FILE`), then scored: accuracy and macro-F1, or for a causal
            # LM ROUGE-L, exact match, response loss and the zero-shot base model's.
            final = coordinator.release_for(org, total + 1)
            run.participant.personalize(final)
            entry.update(run.participant.evaluate(run.test, final, zero_shot=zero_shot))
        metrics[org] = entry
    return MoLEFederationResult(records, metrics, coordinator, assignment, affinities)
