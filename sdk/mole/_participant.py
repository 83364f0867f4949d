"""A FedAMoLE organization's side of federated rounds, independent of any transport.

Seen from the organization (ARCHITECTURE.md §2.3): in round 1, release the per-expert affinity
once (accounted Gaussian mechanism); receive the public assignment and build the model
holding those experts; then every round, receive the global values of the held blocks
(`MoLERelease`), train one accounted DP-SGD round, and put each held block's values into
that block's secure sum over its holders. The gRPC client and the in-process simulation
both drive this.

Personalization: the organization keeps the values of every block it holds after each
round (router ``P``, its experts, the shared expert, the head). A block the server did
not aggregate last round (a personal head, or an expert below the minimum cohort) starts
the next round from the organization's own value, every other block from the global one.

Notes:
    Crash safety follows `RoundParticipant` through the same `RoundFiles`: the round's
    output and next personal state are staged on disk before upload, and a retry re-sends
    them. The affinity release is kept on disk as soon as it exists, so a retry re-sends
    the same noisy statistic instead of releasing (and spending) again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedhft.files import atomic_write
from fedhft.model import (
    MoLERelease,
    safetensors_metadata,
    upload_blocks,
)
from fedhft.protocol.blocks import pack_block

from .._round_files import RoundFiles
from .._trainer import RoundStats
from ..errors import SdkError
from ._trainer import MoLEData, MoLETrainer

FloatArray = npt.NDArray[np.float64]

_STATE_FILE = "mole-state.safetensors"
_PENDING_FILE = "mole-pending-upload.safetensors"
_AFFINITY_FILE = "mole-affinity.safetensors"
PERSONALIZED_FILE = "mole-personalized.safetensors"
"""The organization's personalized mixture after the run, in its state folder, as
`MoLEModel.save` / `CausalMoLEModel.save` write it (load it with the class's `load`)."""


def _encode_blocks(blocks: Mapping[str, FloatArray], metadata: Mapping[str, str]) -> bytes:
    arrays: dict[str, np.ndarray[Any, Any]] = {
        block_id: np.ascontiguousarray(values, dtype=np.float64)
        for block_id, values in blocks.items()
    }
    return bytes(save_arrays(arrays, metadata=dict(metadata)))


def _decode_blocks(data: bytes) -> tuple[dict[str, FloatArray], dict[str, str]]:
    arrays = load_arrays(data)
    return {b: v.astype(np.float64) for b, v in arrays.items()}, safetensors_metadata(data)


class MoLEParticipant:
    """Releases an organization's affinity, then trains and contributes its rounds.

    Args:
        trainer: the organization's `MoLETrainer` (model, policy, ledger, audit).
        dataset: its training data (instruction records for ``model.task: causal-lm``).
        state_dir: where the affinity release, the personal state and the staged output
            of an unfinished round are kept between rounds and restarts.
    """

    def __init__(self, trainer: MoLETrainer, dataset: MoLEData, *, state_dir: str | Path):
        self.trainer = trainer
        self.dataset = dataset
        self.state_dir = Path(state_dir)
        self.organization = trainer.policy.organization
        self.files = RoundFiles(self.state_dir, state_name=_STATE_FILE, output_name=_PENDING_FILE)
        self.personal: dict[str, FloatArray] = {}
        self.experts: tuple[int, ...] | None = None
        self.completed_round = 0
        self.last_stats: RoundStats | None = None
        current = self.files.current_state()
        if current is not None:
            self.personal, metadata = _decode_blocks(current)
            self.completed_round = int(metadata.get("completed_round", "0"))
            self.experts = tuple(json.loads(metadata.get("experts", "[]"))) or None

    # ------------------------------------------------------------------ affinity

    def affinity_released(self) -> bool:
        """Whether the affinity was released (and kept) already."""
        return (self.state_dir / _AFFINITY_FILE).exists()

    def affinity(self, round_number: int = 1) -> FloatArray:
        """The organization's released affinity over the pool (released at most once).

        Raises:
            BudgetExhaustedError: the release would exceed the privacy budget.
        """
        path = self.state_dir / _AFFINITY_FILE
        if path.exists():
            arrays, _ = _decode_blocks(path.read_bytes())
            return arrays["affinity"].reshape(-1)
        release = self.trainer.release_affinity(self.dataset, round=round_number)
        affinity = np.asarray(release.affinity, dtype=np.float64)
        atomic_write(
            path,
            _encode_blocks(
                {"affinity": affinity.reshape(1, -1)},
                {"round": str(round_number), "private": json.dumps(self.trainer.private)},
            ),
        )
        return affinity

    # ------------------------------------------------------------------ rounds

    def pending_upload(self, round_number: int) -> dict[str, FloatArray] | None:
        """The values already trained for ``round_number`` and not yet completed."""
        staged = self.files.staged_output()
        if staged is None:
            return None
        blocks, metadata = _decode_blocks(staged)
        return blocks if int(metadata.get("round", "-1")) == round_number else None

    def start_state(self, release: MoLERelease) -> dict[str, FloatArray]:
        """Each held block's start: the organization's own value for blocks the server
        did not aggregate last round, the global value otherwise."""
        return {
            block_id: (
                self.personal[block_id]
                if block_id in self.personal and block_id not in release.aggregated
                # A writable copy: released states may be read-only arrays.
                else np.array(values, dtype=np.float64)
            )
            for block_id, values in release.states.items()
        }

    def prepare(self, round_number: int, release: MoLERelease) -> dict[str, FloatArray]:
        """This round's upload (held block values): trained now, or before a restart.

        Raises:
            BudgetExhaustedError: the round would exceed the privacy budget.
            SdkError: the round was completed already, or the release is for another round
                or changes this organization's experts.
        """
        if round_number <= self.completed_round:
            raise SdkError(
                f"{self.organization} already completed round {self.completed_round}; "
                f"round {round_number} cannot be trained again"
            )
        if release.round != round_number:
            raise SdkError(f"the release is for round {release.round}, not {round_number}")
        if self.experts is not None and tuple(sorted(release.experts)) != self.experts:
            raise SdkError(
                f"the server assigns {self.organization} experts {list(release.experts)}, "
                f"it holds {list(self.experts)}; the assignment is fixed after round 1"
            )
        pending = self.pending_upload(round_number)
        if pending is not None:
            return pending
        self._promote_finished_pending(round_number)
        model = self.trainer.set_experts(release.experts)
        self.experts = model.expert_ids
        end, stats = self.trainer.train_round(
            self.dataset, self.start_state(release), round=round_number
        )
        self.last_stats = stats
        upload = {b: end[b] for b in upload_blocks(model.block_ids, self.trainer.consortium)}
        # The next personal state goes with the staged upload; both become current only
        # when the round completes, so an aborted round leaves the old state in force.
        self.files.stage(
            _encode_blocks(upload, {"round": str(round_number)}),
            _encode_blocks(
                end, {"round": str(round_number), "experts": json.dumps(list(model.expert_ids))}
            ),
        )
        return upload

    def _promote_finished_pending(self, round_number: int) -> None:
        """Complete a staged earlier round the server finished before this restart."""
        staged = self.files.staged_output()
        if staged is not None:
            earlier = int(_decode_blocks(staged)[1].get("round", "-1"))
            if self.completed_round < earlier < round_number:
                self.complete(earlier)

    def contributions(
        self, upload: Mapping[str, FloatArray], *, block_lengths: Mapping[str, int], clip: float
    ) -> dict[str, FloatArray]:
        """The packed vectors this organization puts into the round's secure sum.

        Only the session's blocks are sent; values are clipped to the session's bound
        (post-processing of the DP output), each row with weight 1.
        """
        vectors: dict[str, FloatArray] = {}
        for block_id, length in block_lengths.items():
            if block_id not in upload:
                continue
            values = np.clip(np.asarray(upload[block_id], dtype=np.float64), -clip, clip)
            packed = pack_block(values, np.ones(values.shape[0]))
            if packed.shape != (length,):
                raise SdkError(
                    f"block {block_id!r} packs to {packed.size} values, the session expects "
                    f"{length}; the server and this organization disagree on the model"
                )
            vectors[block_id] = packed
        return vectors

    def complete(self, round_number: int) -> None:
        """Make the round's personal state current and forget its staged upload."""
        staged = self.files.staged_state()
        experts = self.experts
        if staged is not None:
            personal, metadata = _decode_blocks(staged)
            if int(metadata.get("round", "-1")) == round_number:
                self.personal = personal
                experts = tuple(json.loads(metadata["experts"]))
        self.completed_round = round_number
        self.experts = experts
        state = (
            _encode_blocks(
                self.personal,
                {
                    "completed_round": str(round_number),
                    "experts": json.dumps(list(experts or ())),
                },
            )
            if self.personal
            else None
        )
        self.files.complete(state)

    # ------------------------------------------------------------------ use

    def personalized_state(self, release: MoLERelease) -> dict[str, FloatArray]:
        """The organization's model: global values of aggregated blocks, its own else."""
        return self.start_state(release)

    def personalize(self, release: MoLERelease) -> Path:
        """Set the trainer's model to the personalized state under ``release`` (the run's
        final one) and save it to ``<state_dir>/mole-personalized.safetensors``; its path.

        The file is post-processing of DP outputs; it stays with the organization.
        """
        model = self.trainer.set_experts(release.experts)
        model.set_state(self.personalized_state(release))
        path = self.state_dir / PERSONALIZED_FILE
        model.save(path)
        return path

    def evaluate(
        self, dataset: MoLEData, release: MoLERelease, *, zero_shot: bool = True
    ) -> dict[str, float]:
        """The personalized model's scores on ``dataset`` (`MoLETrainer.evaluate`: accuracy
        and macro-F1, or for a causal LM rouge_l, exact_match, loss and, unless
        ``zero_shot=False``, zero_shot_*)."""
        model = self.trainer.set_experts(release.experts)
        model.set_state(self.personalized_state(release))
        return self.trainer.evaluate(dataset, zero_shot=zero_shot)
