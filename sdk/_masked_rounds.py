"""FedHFT around the DP step, for any model made of frozen-A LoRA ``B`` blocks.

What a FedHFT round does before and after the organization's accounted DP-SGD steps is
the same whatever the model (ARCHITECTURE.md §2.2): start from the mixture
``Σ_j π_j G_j`` of the cluster adapters with the personal rows on top; after training,
take Δ against the values the model really held, keep the data mask's rows of each
uploaded block, and pack π and the masked Δ into a `MaskedUpdate`. The classification
trainer (`LocalTrainer`, `MaskedAdapterModel`) and the causal-LM trainer
(`CausalTrainer`, `CausalAdapterModel`) both inherit this from `MaskedRoundTrainer`;
they differ only in their data and their DP step.

Notes:
    Everything here is post-processing of DP outputs (the trained blocks, the last
    round's released aggregates) or of public values (tiers, π's temperature), so it
    spends no privacy of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedhft.accounting import MechanismRecord
from fedhft.model import Block, ClusterAdapters, tier_blocks
from fedhft.policies import Method, TierSpec

from ._mixture import (
    BoolArray,
    FloatArray,
    PersonalState,
    check_membership,
    data_mask,
    mixture_start,
    personal_after_round,
    sketch_membership,
    update_membership,
)
from ._update import MaskedUpdate
from .errors import SdkError
from .privacy._accounted_trainer import AccountedTrainer
from .privacy._releases import gaussian_record


class BlockModel(Protocol):
    """What a FedHFT round needs of a model: its blocks, their values and tier rows
    (`MaskedAdapterModel` and `CausalAdapterModel` both are one)."""

    blocks: tuple[Block, ...]
    row_masks: dict[str, BoolArray]

    @property
    def block_ids(self) -> tuple[str, ...]: ...

    def block(self, block_id: str) -> Block: ...

    def lora_a(self, block_id: str) -> FloatArray: ...

    def get_block_state(self, block_ids: Sequence[str] | None = None) -> dict[str, FloatArray]: ...

    def set_block_state(self, state: Mapping[str, npt.ArrayLike]) -> None: ...


class MaskedRoundTrainer(AccountedTrainer):
    """An accounted trainer whose rounds are FedHFT rounds over a `BlockModel`.

    Subclasses set `model`, `tier` and `trained_blocks` (the tier's blocks, applied to
    the model) in their constructor.
    """

    model: BlockModel
    tier: TierSpec
    trained_blocks: tuple[str, ...]

    @functools.cached_property
    def membership_blocks(self) -> frozenset[str]:
        """Adapter blocks every tier trains. Memberships compare only these, so that
        which blocks an organization's tier trains (public) does not decide its cluster
        (comparing all blocks split the learning benchmark's organizations by tier), nor
        does its label mix, which dominates a shared head's update."""
        tiers = self.consortium.tiers.values()
        return frozenset.intersection(
            *(frozenset(tier_blocks(self.model.blocks, tier, head=False)) for tier in tiers)
        )

    @functools.cached_property
    def uploaded_blocks(self) -> tuple[str, ...]:
        """Trained blocks whose update goes into the secure sums: all of them, less the
        head when heads are personal (`ConsortiumConfig.shares_head`)."""
        return tier_blocks(self.model.blocks, self.tier, head=self.consortium.shares_head)

    @property
    def keep_ratio(self) -> float:
        """Share of trained rows uploaded: the tier's, or all of them for FedAvg."""
        return 1.0 if self.consortium.method is Method.FEDAVG else self.tier.keep_ratio

    def sketch_record(self, round: int = 1) -> MechanismRecord | None:
        """The Gaussian record of the sketch release, if the consortium clusters on
        sketches (`clustering.signal: sketch`)."""
        clustering = self.consortium.clustering
        if clustering.signal != "sketch":
            return None
        return self._sum_release_record(clustering.sketch_noise_multiplier, round)

    def reserved_records(self) -> tuple[MechanismRecord, ...]:
        """``auto`` σ leaves budget for the sketch release, if the consortium asks for
        one, so that it and every planned round fit together."""
        sketch = self.sketch_record()
        return () if sketch is None else (sketch,)

    def _sum_release_record(self, noise_multiplier: float, round: int) -> MechanismRecord:
        """A one-shot Gaussian release of a sum to which each record adds at most 1 (L2)."""
        return gaussian_record(
            round_number=round,
            noise_multiplier=noise_multiplier,
            sensitivity=1.0,
            noise_source=self.policy.privacy.noise_source,
        )

    def _round_start(
        self,
        clusters: ClusterAdapters | None,
        personal: PersonalState | None,
        sketch: npt.ArrayLike | None,
    ) -> tuple[FloatArray, dict[str, FloatArray]]:
        """This round's membership π and the blocks to start from (the mixture of the
        cluster adapters under π with the personal rows on top). Changes nothing yet."""
        k = clusters.k if clusters is not None else 1
        if self.consortium.method in (Method.FEDAVG, Method.LOCAL) and k != 1:
            raise SdkError(f"method {self.consortium.method.value} uses one cluster, got {k}")
        previous_pi = (
            check_membership(personal.membership, k)
            if personal is not None and personal.membership.size == k
            else np.full(k, 1.0 / k)
        )
        # π for this round: the organization's last Δ against the clusters' aggregates
        # of that same round (the `last_updates` released now), so that the drift every
        # update shares between rounds does not decide membership. Post-processing of
        # DP outputs only.
        if clusters is not None and clusters.centroids and sketch is not None:
            previous_pi = sketch_membership(
                sketch,
                clusters,
                temperature=self.consortium.clustering.temperature,
                hard=self.consortium.clustering.membership == "hard",
            )
        elif clusters is not None and personal is not None and personal.last_delta:
            previous_pi = update_membership(
                {b: v for b, v in personal.last_delta.items() if b in self.membership_blocks},
                clusters,
                temperature=self.consortium.clustering.temperature,
                hard=self.consortium.clustering.membership == "hard",
                previous=previous_pi,
            )
        if clusters is not None:
            if set(clusters.block_ids) != set(self.model.block_ids):
                raise SdkError(
                    "the cluster adapters do not carry exactly this model's blocks; the "
                    "server and this organization disagree on the model or adapter spec"
                )
            start = mixture_start(clusters, previous_pi, personal)
        else:
            start = mixture_start(
                ClusterAdapters.initial(self.model.get_block_state()), [1.0], personal
            )
        return previous_pi, start

    def _masked_update(
        self,
        *,
        round: int,
        start: Mapping[str, FloatArray],
        membership: FloatArray,
        personal: PersonalState | None,
    ) -> tuple[MaskedUpdate, PersonalState]:
        """The round's `MaskedUpdate` and new personal state, from the trained model and
        the block values it started the round from (``start``, as the model held them)."""
        trained = self.trained_blocks
        uploaded = self.uploaded_blocks
        end = self.model.get_block_state(trained)
        delta = {b: end[b] - start[b] for b in trained}
        keep = {b: self._shared_rows(b, delta[b], uploaded) for b in trained}
        pi = membership
        if self.consortium.clustering.membership == "hard":
            # Before there is anything to compare with, a hard member joins cluster 0.
            pi = np.eye(pi.size)[int(np.argmax(pi))]
        update = MaskedUpdate.build(
            round=round,
            delta={b: delta[b] for b in uploaded},
            keep={b: keep[b] for b in uploaded},
            membership=pi,
            private=self.private,
            block_order=uploaded,
        )
        new_personal = personal_after_round(
            membership=pi,
            end_state=end,
            trainable_rows=self.model.row_masks,
            keep=keep,
            previous=personal,
            delta=delta,
        )
        return update, new_personal

    def _shared_rows(
        self, block_id: str, delta: FloatArray, uploaded: tuple[str, ...]
    ) -> BoolArray:
        """Rows of a trained block that go into the secure sum: none of a block that is
        not uploaded (a personal head), every row of a shared head, and the data mask's
        choice among an adapter block's trainable rows."""
        rows = self.model.row_masks[block_id]
        if block_id not in uploaded:
            return np.zeros(delta.shape[0], dtype=np.bool_)
        if self.model.block(block_id).layer is None:
            return rows.copy()
        return data_mask(
            delta,
            keep_ratio=self.keep_ratio,
            trainable_rows=rows,
            lora_a=self.model.lora_a(block_id),
        )
