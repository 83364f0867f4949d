"""FedAMoLE aggregation: each MoLE block averaged over its holders in one secure sum.

Every organization contributes, for each MoLE block it holds (shared ``B``, router ``P``,
its experts' ``B``, the head; ids from `fedhft.model.MoLEModel`), the block's values with
one weight per row, packed as in `fedhft.protocol.blocks`. A single masking-mode session
(`run_secagg_in_process`) sums every block over its *supports* (the holders; the
assignment is known to the server, so supports are public), and the server divides by
the summed weights. A block with fewer holders than the consortium's minimum cohort is
left out of the session and reported: it stays personal to its holders this round
(ARCHITECTURE.md §2.3). The secure-aggregation server also refuses, and reports, blocks whose
surviving contributors fall below the cohort after dropouts.

Notes:
    Values, not deltas, are averaged: every ``A`` is frozen and shared, so averaging
    ``B`` is exact. Clients clip every value to ``secure_aggregation.clip`` (the fixed
    point range), as for FedHFT blocks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhft.policies import ConsortiumConfig
from fedhft.protocol import run_secagg_in_process
from fedhft.protocol.blocks import pack_block, row_average
from fedhft.protocol.errors import CohortTooSmallError

from ._federation import cohort_session
from .errors import RoundError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ExpertAggregate:
    """The outcome of one FedAMoLE aggregation."""

    averaged: dict[str, FloatArray]
    """Block id → its average over the holders whose input was summed."""
    skipped: dict[str, int]
    """Block id → holder count, for blocks not aggregated (below the minimum cohort)."""
    survivors: tuple[str, ...]


def aggregate_mole_blocks(
    consortium: ConsortiumConfig,
    states: Mapping[str, Mapping[str, npt.ArrayLike]],
    identities: Mapping[str, Ed25519PrivateKey],
    *,
    run_id: str,
    round_number: int,
    config_hash: bytes,
    model_hash: bytes,
    drop: Mapping[str, Collection[str]] | None = None,
) -> ExpertAggregate:
    """Average every MoLE block over its holders through one secure sum.

    ``states`` maps each organization to its held blocks' values (2-D arrays).

    Raises:
        RoundError: fewer organizations than the minimum cohort, or no block held by
            enough of them, or holders disagree on a block's shape.
    """
    spec = consortium.secure_aggregation
    roster = sorted(states)
    supports: dict[str, set[str]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for org, blocks in states.items():
        for block_id, values in blocks.items():
            rows, cols = np.asarray(values).shape
            if shapes.setdefault(block_id, (rows, cols)) != (rows, cols):
                raise RoundError(f"holders of block {block_id!r} disagree on its shape")
            supports.setdefault(block_id, set()).add(org)
    try:
        params, skipped = cohort_session(
            consortium,
            run_id=run_id,
            round_number=round_number,
            cluster=0,
            roster=roster,
            config_hash=config_hash,
            model_hash=model_hash,
            shapes=shapes,
            supports=supports,
        )
    except CohortTooSmallError as error:
        # The threshold, the cohort checks and the kept blocks are `cohort_session`'s,
        # as for the server's FedAMoLE rounds; this function's callers expect RoundError.
        raise RoundError(f"FedAMoLE: {error}") from error
    kept = params.block_supports
    inputs = {
        org: {
            block_id: pack_block(
                np.clip(np.asarray(values, dtype=np.float64), -spec.clip, spec.clip),
                np.ones(shapes[block_id][0]),
            )
            for block_id, values in blocks.items()
            if block_id in kept
        }
        for org, blocks in states.items()
    }
    result = run_secagg_in_process(params, inputs, identities, drop=drop)
    averaged: dict[str, FloatArray] = {}
    for block_id, block_sum in result.blocks.items():
        average, _ = row_average(block_sum.sum, *shapes[block_id])
        averaged[block_id] = average
    skipped.update(result.skipped)
    return ExpertAggregate(averaged, skipped, result.survivors)
