"""An organization's side of federated rounds, independent of any transport.

A round, seen from the organization: receive the cluster adapters, train one accounted
DP-SGD round from the personalized mixture, and contribute ``π_j·m⊙Δ`` and ``π_j·m`` to
each cluster's secure sum. The gRPC client and the in-process simulation both drive this.

Notes:
    Training a round spends privacy, and the spend is committed to the ledger before the
    update exists. The trained update and the new personal state are then written to
    ``state_dir`` before anything is uploaded. If the round is interrupted (the server
    restarts it, the network fails, this process dies), the retry re-sends the *same*
    DP output instead of training again: re-sending an already-released output is
    post-processing, so the ledger shows each round's spend exactly once.
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

from fedhft.model import ClusterAdapters, safetensors_metadata
from fedhft.policies import Method
from fedhft.protocol.blocks import clip_packed

from ._causal import CausalRoundStats, CausalTrainer
from ._data import TextDataset
from ._generation import generation_scores
from ._instructions import InstructionDataset
from ._mixture import PersonalState, mixture_start
from ._round_files import RoundFiles
from ._trainer import LocalTrainer, RoundStats
from ._update import MaskedUpdate
from .errors import SdkError

FloatArray = npt.NDArray[np.float64]

_STATE_FILE = "personal-state.safetensors"
_PENDING_FILE = "pending-update.safetensors"
# Names of the kept one-shot DP releases (`RoundFiles.kept_release`).
_LABEL_PRIOR_RELEASE = "label-prior"
_SKETCH_RELEASE = "sketch"


def _encode_personal(personal: PersonalState, extra: Mapping[str, str]) -> bytes:
    arrays: dict[str, np.ndarray[Any, Any]] = {"membership": np.asarray(personal.membership)}
    for block_id, rows in personal.personal_rows.items():
        arrays[f"rows/{block_id}"] = np.asarray(rows, dtype=np.uint8)
        arrays[f"values/{block_id}"] = np.asarray(personal.values[block_id], dtype=np.float64)
    for block_id, delta in personal.last_delta.items():
        arrays[f"delta/{block_id}"] = np.asarray(delta, dtype=np.float64)
    return bytes(save_arrays(arrays, metadata=dict(extra)))


def _decode_personal(data: bytes) -> tuple[PersonalState, dict[str, str]]:
    arrays = load_arrays(data)
    rows = {k[5:]: v.astype(np.bool_) for k, v in arrays.items() if k.startswith("rows/")}
    values = {k[7:]: v for k, v in arrays.items() if k.startswith("values/")}
    deltas = {k[6:]: v for k, v in arrays.items() if k.startswith("delta/")}
    personal = PersonalState(
        membership=arrays["membership"], personal_rows=rows, values=values, last_delta=deltas
    )
    return personal, safetensors_metadata(data)


def _encode_update(update: MaskedUpdate) -> bytes:
    arrays = {
        f"{j}/{block_id}": np.asarray(vector)
        for j in range(update.clusters)
        for block_id, vector in update.vectors(j).items()
    }
    metadata = {
        "round": str(update.round),
        "clusters": str(update.clusters),
        "private": json.dumps(update.private),
        "blocks": json.dumps([[b, *update.shapes[b]] for b in update.block_ids]),
    }
    return bytes(save_arrays(arrays, metadata=metadata))


def _decode_update(data: bytes) -> MaskedUpdate:
    arrays = load_arrays(data)
    metadata = safetensors_metadata(data)
    blocks = json.loads(metadata["blocks"])
    vectors = tuple(
        {b: arrays[f"{j}/{b}"] for b, _, _ in blocks} for j in range(int(metadata["clusters"]))
    )
    return MaskedUpdate(
        round=int(metadata["round"]),
        block_ids=tuple(b for b, _, _ in blocks),
        shapes={b: (int(r), int(c)) for b, r, c in blocks},
        private=bool(json.loads(metadata["private"])),
        _vectors=vectors,
    )


class RoundParticipant:
    """Trains and contributes an organization's update, round after round.

    Args:
        trainer: the organization's local trainer (model, policy, ledger, audit).
        dataset: its training data.
        state_dir: where its personal state (π, personal rows, head) and the pending
            update of an unfinished round are kept between rounds and restarts.
    """

    def __init__(
        self,
        trainer: LocalTrainer | CausalTrainer,
        dataset: TextDataset | InstructionDataset,
        *,
        state_dir: str | Path,
    ):
        if isinstance(trainer, CausalTrainer) != isinstance(dataset, InstructionDataset):
            raise SdkError(
                "a causal-LM trainer trains on instruction records (`load_instructions`), "
                "a classification trainer on labelled texts (`load_dataset`); the data set "
                "given is of the other kind"
            )
        self.trainer = trainer
        self.dataset = dataset
        self.state_dir = Path(state_dir)
        self.organization = trainer.policy.organization
        self.personal: PersonalState | None = None
        self.completed_round = 0
        self.last_stats: RoundStats | CausalRoundStats | None = None
        self._local_model: ClusterAdapters | None = None
        self.files = RoundFiles(self.state_dir, state_name=_STATE_FILE, output_name=_PENDING_FILE)
        current = self.files.current_state()
        if current is not None:
            self.personal, metadata = _decode_personal(current)
            self.completed_round = int(metadata.get("completed_round", "0"))

    @property
    def method(self) -> Method:
        return self.trainer.consortium.method

    def pending_update(self, round_number: int) -> MaskedUpdate | None:
        """The update already trained for ``round_number`` and not yet completed."""
        staged = self.files.staged_output()
        if staged is None:
            return None
        update = _decode_update(staged)
        return update if update.round == round_number else None

    def prepare(self, round_number: int, clusters: ClusterAdapters) -> MaskedUpdate:
        """This round's masked update: trained now, or the one trained before a restart.

        Raises:
            BudgetExhaustedError: the round would exceed the privacy budget.
        """
        if round_number <= self.completed_round:
            raise SdkError(
                f"{self.organization} already completed round {self.completed_round}; "
                f"round {round_number} cannot be trained again"
            )
        pending = self.pending_update(round_number)
        if pending is not None:
            return pending
        self._promote_finished_pending(round_number)
        start_from = self._local_model if self.method is Method.LOCAL else clusters
        update, personal, self.last_stats = self._train(round_number, start_from)
        if self.method is Method.LOCAL:
            self._local_model = ClusterAdapters.initial(self.trainer.model.get_block_state())
        # The new personal state goes with the pending update; both become current only
        # when the round completes, so an aborted round leaves the old state in force.
        self.files.stage(
            _encode_update(update), _encode_personal(personal, {"round": str(round_number)})
        )
        return update

    def _train(
        self, round_number: int, start_from: ClusterAdapters | None
    ) -> tuple[MaskedUpdate, PersonalState, RoundStats | CausalRoundStats]:
        """One round of the trainer's task from ``start_from``."""
        if isinstance(self.trainer, CausalTrainer):
            assert isinstance(self.dataset, InstructionDataset)  # Checked on construction.
            return self.trainer.train_masked_round(
                self.dataset,
                start_from,
                round=round_number,
                personal=self.personal,
                sketch=self.sketch(round_number),
            )
        assert isinstance(self.dataset, TextDataset)  # Checked on construction.
        prior = self.label_prior(round_number)
        if prior is not None:
            self.trainer.use_label_prior(prior)
        return self.trainer.train_round(
            self.dataset,
            start_from,
            round=round_number,
            personal=self.personal,
            sketch=self.sketch(round_number),
        )

    # ------------------------------------------------------------------ releases

    def label_prior(self, round_number: int = 1) -> FloatArray | None:
        """This organization's released label counts (released at most once), or None
        when the consortium asks for no label prior.

        Raises:
            BudgetExhaustedError: the release would exceed the privacy budget.
        """
        trainer, dataset = self.trainer, self.dataset
        if not isinstance(trainer, LocalTrainer) or trainer.label_prior_record() is None:
            return None
        assert isinstance(dataset, TextDataset)  # Checked on construction.
        return self.files.kept_release(
            _LABEL_PRIOR_RELEASE,
            lambda: trainer.release_label_prior(dataset, round=round_number),
        )

    def sketch(self, round_number: int = 1) -> FloatArray | None:
        """This organization's released sketch (released at most once), or None when the
        consortium does not cluster on sketches.

        Raises:
            BudgetExhaustedError: the release would exceed the privacy budget.
        """
        trainer, dataset = self.trainer, self.dataset
        if trainer.sketch_record() is None:
            return None
        if isinstance(trainer, CausalTrainer):
            assert isinstance(dataset, InstructionDataset)  # Checked on construction.
            causal = trainer
            return self.files.kept_release(
                _SKETCH_RELEASE, lambda: causal.release_sketch(dataset, round=round_number)
            )
        assert isinstance(dataset, TextDataset)  # Checked on construction.
        return self.files.kept_release(
            _SKETCH_RELEASE, lambda: trainer.release_sketch(dataset, round=round_number)
        )

    def _promote_finished_pending(self, round_number: int) -> None:
        """Complete a pending round from before a restart that the server has finished.

        Rounds only advance once completed, so a pending update of an earlier round
        that this process never saw finish was applied: its personal state is current.
        """
        staged = self.files.staged_output()
        if staged is not None:
            earlier = _decode_update(staged).round
            if self.completed_round < earlier < round_number:
                self.complete(earlier)

    def contributions(
        self,
        update: MaskedUpdate,
        *,
        cluster: int,
        block_lengths: Mapping[str, int],
        clip: float,
    ) -> dict[str, FloatArray]:
        """The vectors this organization puts into one cluster's secure sum.

        Only blocks of the session are sent; each is clipped to the session's bound
        (`clip_packed`: ``|Δ| ≤ clip`` on the kept rows, weights in ``[0, 1]``), which is
        post-processing of the DP output and what the server checks the sum against.
        """
        vectors = update.vectors(cluster)
        return {
            block_id: clip_packed(vectors[block_id], *update.shapes[block_id], clip)
            for block_id in block_lengths
            if block_id in vectors
        }

    def complete(self, round_number: int) -> None:
        """Make the round's personal state current and forget its pending update."""
        staged = self.files.staged_state()
        if staged is not None:
            personal, metadata = _decode_personal(staged)
            if int(metadata.get("round", "-1")) == round_number:
                self.personal = personal
        self.completed_round = round_number
        self.files.complete(
            None
            if self.personal is None
            else _encode_personal(self.personal, {"completed_round": str(round_number)})
        )

    def personalized_state(self, clusters: ClusterAdapters) -> dict[str, FloatArray]:
        """The organization's personalized blocks: its mixture with its personal rows."""
        if self.method is Method.LOCAL and self._local_model is not None:
            clusters = self._local_model
        pi = (
            self.personal.membership
            if self.personal is not None and self.personal.membership.size == clusters.k
            else np.full(clusters.k, 1.0 / clusters.k)
        )
        return mixture_start(clusters, pi, self.personal)

    def evaluate(
        self,
        dataset: TextDataset | InstructionDataset,
        clusters: ClusterAdapters,
        *,
        zero_shot: bool = True,
    ) -> dict[str, float]:
        """Accuracy and macro-F1 of the personalized model on ``dataset`` (with its label
        prior, once released); for a causal LM, ROUGE-L F1, exact match and response loss
        of its greedy answers, and (unless ``zero_shot=False``) the zero-shot base
        model's as ``zero_shot_*``."""
        self.trainer.model.set_block_state(self.personalized_state(clusters))
        if isinstance(self.trainer, CausalTrainer):
            if not isinstance(dataset, InstructionDataset):
                raise SdkError("a causal LM is evaluated on instruction records")
            return generation_scores(self.trainer, dataset, zero_shot=zero_shot)
        if not isinstance(dataset, TextDataset):
            raise SdkError("a classifier is evaluated on labelled texts")
        prior = self.files.release(_LABEL_PRIOR_RELEASE)
        if prior is not None:
            self.trainer.use_label_prior(prior)
        return self.trainer.evaluate(dataset)
