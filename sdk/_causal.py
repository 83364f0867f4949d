"""DP-SGD per record for a causal LM's frozen-A LoRA blocks, and scoring what it writes.

One record is one example (a prompt and its response). Its loss is the MEAN
cross-entropy over its response tokens (the end-of-sequence token included); the batch
loss is the mean of the records' losses. `CausalPrivateStep` runs one DP-SGD step
(Abadi et al. 2016) per Poisson batch with Opacus per-sample gradients of the tier's
``B`` blocks only: each record's gradient is clipped to ``max_grad_norm``, the clipped
gradients are summed, Gaussian noise of standard deviation ``noise_multiplier ·
max_grad_norm`` from the policy's sampler is added and the sum is divided by the
expected batch size, as `fedhft.sdk.privacy.PrivateStep` does for classification (both
are `RecordLossStep`s; only the per-record loss differs, so the grad-sample mode, ghost
clipping included, is chosen the same way).

`CausalTrainer` runs accounted rounds of these steps on an organization's instruction
records: the same ledger admission, durable commit and audit events as `LocalTrainer`
(through `fedhft.sdk.privacy.AccountedTrainer`). What the model writes is scored in
`fedhft.sdk._generation`.

Notes:
    Mean, not sum, over a record's response tokens. The privacy guarantee does not
    depend on the choice: clipping bounds each record's whole gradient by
    ``max_grad_norm`` however its loss is built. With a sum, the gradient of a record
    grows with its response length, so long answers would hit the clip and short ones
    would not, and the clipping bias would fall on long answers; the mean gives every
    record the same scale, so ``max_grad_norm`` is one number that fits them all.

    Padding contributes nothing to any term: padded positions carry ``IGNORE_INDEX``
    labels, so no logit is computed there, a right-padded position is never attended to
    by a real one, and positions come from the attention mask. A record's clipped
    gradient therefore depends on that record alone, whatever its batch-mates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

from fedhft.accounting import MechanismRecord
from fedhft.model import CausalAdapterModel, ClusterAdapters
from fedhft.policies import ConsortiumConfig, OrganizationPolicy, TierSpec

from ._instructions import (
    IGNORE_INDEX,
    EncodedInstruction,
    InstructionDataset,
    encode_instruction,
)
from ._masked_rounds import MaskedRoundTrainer
from ._mixture import PersonalState
from ._update import MaskedUpdate
from .errors import DataError, SdkError
from .privacy import AuditSink, PrivacyLedger, noise_sampler, poisson_batch
from .privacy._dp import (
    DEFAULT_GRAD_SAMPLE_MODE,
    FrozenRows,
    GradSampleMode,
    RecordLossStep,
    check_grad_sample_mode,
)
from .privacy._noise import NoiseSampler
from .privacy._releases import unit_sketch

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class CausalBatch:
    """Right-padded token ids, attention mask and response-only labels of some records."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def collate_records(records: Sequence[EncodedInstruction], pad_token_id: int) -> CausalBatch:
    """Pad encoded records on the right: padding gets mask 0 and label `IGNORE_INDEX`."""
    length = max((len(r.input_ids) for r in records), default=0)
    input_ids = torch.full((len(records), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(records), length), dtype=torch.long)
    labels = torch.full((len(records), length), IGNORE_INDEX, dtype=torch.long)
    for row, record in enumerate(records):
        n = len(record.input_ids)
        input_ids[row, :n] = torch.tensor(record.input_ids)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(record.labels)
    return CausalBatch(input_ids, attention_mask, labels)


class CausalLanguageModel(Protocol):
    """What training and scoring need of a causal LM with adapters: `CausalAdapterModel`
    (FedHFT's LoRA blocks) and `CausalMoLEModel` (FedAMoLE's mixture) both are one."""

    @property
    def network(self) -> nn.Module:
        """The module whose forward pass runs the model (train/eval mode is set on it)."""
        ...

    def response_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at the response positions, their targets and their records."""
        ...

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
    ) -> torch.Tensor:
        """Greedy continuations of a left-padded batch of prompts."""
        ...

    def adapters_disabled(self) -> AbstractContextManager[None]:
        """The base model alone (zero-shot) for the duration of the block."""
        ...


def record_losses(model: CausalLanguageModel, batch: CausalBatch) -> torch.Tensor:
    """Each record's mean cross-entropy over its response tokens (one value per record)."""
    logits, targets, record = model.response_logits(
        batch.input_ids, batch.attention_mask, batch.labels
    )
    token_losses = F.cross_entropy(logits.float(), targets, reduction="none")
    totals = torch.zeros(len(batch), dtype=token_losses.dtype).index_add(0, record, token_losses)
    counts = torch.zeros(len(batch), dtype=token_losses.dtype).index_add(
        0, record, torch.ones_like(token_losses)
    )
    return totals / counts.clamp_min(1.0)


class CausalPrivateStep(RecordLossStep):
    """DP-SGD steps on a `CausalAdapterModel` whose tier is already applied; a record's
    loss is its mean response-token cross-entropy (`record_losses`).

    Use as a context manager (or call `close`): Opacus hooks are attached to the model's
    trainable ``B`` blocks and removed on exit, so the model can train again next round.
    Everything but the loss is `RecordLossStep`'s, as for `PrivateStep`: the grad-sample
    mode (ghost clipping included), a tier's row slice (per-sample gradients of frozen
    rows zeroed before clipping, the noise on them after noising) and the empty batch.
    """

    def __init__(
        self,
        model: CausalAdapterModel,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        noise_sampler: NoiseSampler,
        grad_sample_mode: GradSampleMode = DEFAULT_GRAD_SAMPLE_MODE,
    ) -> None:
        self.model = model
        super().__init__(
            model.peft_model,
            model.trainable_parameters(),
            FrozenRows((model.parameter(b), mask) for b, mask in model.row_masks.items()),
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            noise_sampler=noise_sampler,
            grad_sample_mode=grad_sample_mode,
        )

    def step(self, batch: CausalBatch) -> float:
        """One DP-SGD step on one Poisson batch (possibly empty); returns its mean loss."""
        return self.step_on(lambda: record_losses(self.model, batch), len(batch))


# ---------------------------------------------------------------------------- trainer


@dataclass(frozen=True)
class CausalRoundStats:
    """What one local round of a causal LM did."""

    round: int
    steps: int
    mean_loss: float
    epsilon_spent: float | None
    """ε after the round (None for the non-private baseline)."""
    seconds: float


class CausalTrainer(MaskedRoundTrainer):
    """Trains an organization's causal-LM ``B`` blocks, one accounted round at a time.

    The round's DP-SGD record (Poisson rate ``q = batch_size / n``, the policy's local
    steps, σ) is admitted against the ledger before any step and committed durably, with
    its "privacy_spend" audit event, before the round's output exists, as in
    `LocalTrainer`.

    Args:
        model: the organization's `CausalAdapterModel`, built with the consortium's
            adapter spec; its tier is set to the policy's (in place).
        policy: the organization's policy (budget, tier, batch size, local steps,
            ``max_seq_length``).
        consortium: the consortium configuration (adapters, tiers, learning rate).
        tokenizer: the base model's own tokenizer (it has no default here).
        ledger, audit, non_private_baseline, seed: as for `AccountedTrainer`.
        grad_sample_mode: how Opacus clips per record, as for `LocalTrainer`: ``hooks``
            (per-sample gradients, the default), ``functorch`` or ``ghost`` (norms only,
            two backward passes; not with a tier's row slice). benchmarks/causal_memory.py
            measures what each costs.

    Raises:
        SdkError: the model's adapter spec is not the consortium's.
        AdapterError: ghost clipping with a tier's row slice, or an unknown mode.
    """

    def __init__(
        self,
        model: CausalAdapterModel,
        policy: OrganizationPolicy,
        consortium: ConsortiumConfig,
        *,
        tokenizer: PreTrainedTokenizerBase,
        ledger: PrivacyLedger | None = None,
        audit: AuditSink | None = None,
        non_private_baseline: bool = False,
        grad_sample_mode: GradSampleMode = DEFAULT_GRAD_SAMPLE_MODE,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            policy,
            consortium,
            ledger=ledger,
            audit=audit,
            tokenizer=tokenizer,
            non_private_baseline=non_private_baseline,
            seed=seed,
        )
        if model.adapter != consortium.adapter:
            raise SdkError(
                "the model's adapter spec differs from the consortium's `adapter` section; "
                "wrap the base model with the consortium's adapters"
            )
        self.model: CausalAdapterModel = model
        self.tier: TierSpec = consortium.tiers[policy.training.tier]
        self.trained_blocks = model.apply_tier(self.tier)
        # Refused here, before any round is admitted against the ledger.
        self.grad_sample_mode = check_grad_sample_mode(
            grad_sample_mode, row_slice=not all(m.all() for m in model.row_masks.values())
        )
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has neither a padding nor an end token to pad with")

    def encode(self, dataset: InstructionDataset) -> list[EncodedInstruction]:
        """Every record with response-only labels, cut to the policy's ``max_seq_length``.

        Raises:
            DataError: an empty data set, or a record whose response cannot fit.
        """
        if len(dataset) == 0:
            raise DataError("cannot train on an empty instruction data set")
        length = self.policy.training.max_seq_length
        return [encode_instruction(self.tokenizer, example, length) for example in dataset]

    def train_round(
        self,
        dataset: InstructionDataset,
        *,
        round: int,
        start: Mapping[str, FloatArray] | None = None,
    ) -> tuple[dict[str, FloatArray], CausalRoundStats]:
        """Train one round on ``dataset``; return Δ of every trained block and statistics.

        With ``start``, the model's blocks are set to it once the round is admitted (and
        not before: a refused round leaves the model as it was).

        Raises:
            BudgetExhaustedError: the round would exceed the privacy budget (nothing was
                trained or spent; a "refusal" event was audited).
            DataError: the data set is empty, a record cannot fit, or δ is too large for
                the data size.
        """
        _, delta, stats = self._train_from(dataset, round=round, start=start)
        return delta, stats

    def _train_from(
        self,
        dataset: InstructionDataset,
        *,
        round: int,
        start: Mapping[str, FloatArray] | None,
    ) -> tuple[dict[str, FloatArray], dict[str, FloatArray], CausalRoundStats]:
        """`train_round`, also returning the trained blocks' values before training."""
        started = time.perf_counter()
        records = self.encode(dataset)
        record: MechanismRecord | None = None
        if self.private:
            record = self._admit(round, len(records))
        if start is not None:
            self.model.set_block_state(start)
        # Δ is taken against the values the model really holds (its own dtype), so rows
        # nothing trained have Δ = 0.
        before = self.model.get_block_state(self.trained_blocks)
        epsilon: float | None = None
        if record is not None:
            try:
                mean_loss, steps = self._train_private(records, record)
            except BaseException:
                # Noisy steps may already have run and their output sits in the model:
                # an interrupted round is charged in full rather than forgotten.
                self._commit(record)
                raise
            epsilon = self._commit(record)
        else:
            mean_loss, steps = self._train_non_private(records)
        end = self.model.get_block_state(self.trained_blocks)
        delta = {b: end[b] - before[b] for b in self.trained_blocks}
        stats = CausalRoundStats(
            round=round,
            steps=steps,
            mean_loss=mean_loss,
            epsilon_spent=epsilon,
            seconds=time.perf_counter() - started,
        )
        return before, delta, stats

    def train_masked_round(
        self,
        dataset: InstructionDataset,
        clusters: ClusterAdapters | None,
        *,
        round: int,
        personal: PersonalState | None = None,
        sketch: npt.ArrayLike | None = None,
    ) -> tuple[MaskedUpdate, PersonalState, CausalRoundStats]:
        """One FedHFT round, as `LocalTrainer.train_round`: start from the mixture of the
        cluster adapters under π with the personal rows on top, train one accounted round
        (`train_round`), and return the masked update, the new personal state and
        statistics.

        Raises:
            BudgetExhaustedError, DataError: as `train_round`.
            SdkError: the cluster adapters do not carry this model's blocks.
        """
        membership, start = self._round_start(clusters, personal, sketch)
        before, _, stats = self._train_from(dataset, round=round, start=start)
        update, new_personal = self._masked_update(
            round=round, start=before, membership=membership, personal=personal
        )
        return update, new_personal, stats

    def label_prior_record(self, round: int = 1) -> None:
        """A causal LM releases no label prior (the consortium refuses one)."""
        return None

    def release_sketch(self, dataset: InstructionDataset, *, round: int = 1) -> FloatArray:
        """The sum of this organization's prompt embeddings under the public initial model
        (`CausalAdapterModel.prompt_embedding_sum`; each prompt as training reads it, cut
        from the left to fit ``max_seq_length`` with its response), released through the
        Gaussian mechanism and scaled to unit norm (exact in the non-private baseline).
        Release it once and keep it.

        Raises:
            SdkError: the consortium does not cluster on sketches.
            BudgetExhaustedError: the release does not fit the budget.
            DataError: an empty data set, or a record whose response cannot fit (refused
                before anything is released, as training would refuse it).
        """
        record = self.sketch_record(round)
        if record is None:
            raise SdkError("the consortium does not cluster on sketches (clustering.signal)")
        prompts = [r.input_ids[: r.prompt_length] for r in self.encode(dataset)]
        total = self.model.prompt_embedding_sum(prompts, pad_token_id=self._pad_token_id())
        return unit_sketch(self._release(total, record, num_records=len(dataset)))

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.model.trainable_parameters(), lr=self.consortium.training.learning_rate
        )

    def _pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(self.tokenizer.eos_token_id if pad is None else pad)

    def _train_private(
        self, records: Sequence[EncodedInstruction], record: MechanismRecord
    ) -> tuple[float, int]:
        num_records = len(records)
        losses: list[float] = []
        steps = 0
        with CausalPrivateStep(
            self.model,
            self._optimizer(),
            noise_multiplier=record.noise_multiplier,
            max_grad_norm=float(record.max_grad_norm or self.policy.privacy.max_grad_norm),
            expected_batch_size=record.sample_rate * num_records,
            noise_sampler=noise_sampler(record.noise_source),
            grad_sample_mode=self.grad_sample_mode,
        ) as private:
            for _ in range(record.steps):
                indices = poisson_batch(num_records, record.sample_rate)
                batch = collate_records([records[i] for i in indices], self._pad_token_id())
                loss = private.step(batch)
                steps += 1
                if not math.isnan(loss):
                    losses.append(loss)
        self.model.peft_model.eval()
        return (float(np.mean(losses)) if losses else float("nan")), steps

    def _train_non_private(self, records: Sequence[EncodedInstruction]) -> tuple[float, int]:
        optimizer = self._optimizer()
        num_records = len(records)
        batch_size = min(self.policy.training.batch_size, num_records)
        losses: list[float] = []
        self.model.peft_model.train()
        order = torch.randperm(num_records, generator=self._generator)
        position = 0
        for _ in range(self.steps_per_round(num_records)):
            if position + batch_size > num_records:
                order = torch.randperm(num_records, generator=self._generator)
                position = 0
            chosen = order[position : position + batch_size].tolist()
            position += batch_size
            batch = collate_records([records[i] for i in chosen], self._pad_token_id())
            optimizer.zero_grad(set_to_none=True)
            loss = record_losses(self.model, batch).mean()
            torch.autograd.backward(loss)
            for block_id, rows in self.model.row_masks.items():
                grad = self.model.parameter(block_id).grad
                if grad is not None and not rows.all():
                    grad[torch.from_numpy(~rows)] = 0.0
            optimizer.step()
            losses.append(float(loss.item()))
        self.model.peft_model.eval()
        return float(np.mean(losses)), len(losses)
