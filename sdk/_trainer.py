"""Local training of one organization: one privacy-accounted, masked update per round.

`LocalTrainer.train_round` runs one round of FedHFT on the organization (ARCHITECTURE.md §2.2,
§3), usable without any server:

1. start from the mixture ``Σ_j π_j G_j`` of the cluster adapters, personal rows on top;
2. build the round's DP mechanism record (σ from the policy or ``auto``, Poisson rate
   ``q = batch_size / n``, the local steps) and ask the privacy ledger whether it fits
   the budget — if not, refuse with `BudgetExhaustedError` and a "refusal" audit event
   before any training step;
3. train the tier's ``B`` blocks and the head with Opacus DP-SGD (`_dp.PrivateStep`),
   noise from the policy's noise source;
4. commit the record to the ledger (durably) and emit a "privacy_spend" audit event,
   both before the update exists;
5. compute Δ, the data mask, the new membership π, and pack the `MaskedUpdate`.

A non-private mode exists for baselines only (``non_private_baseline=True``): it warns
with a `SecurityWarning`, spends nothing, and marks its update ``private=False``.

Notes:
    The update is a post-processing of the DP-SGD output (the trained adapter), and the
    round's spend is in the ledger before the update is built, so a crash after an
    upload can never forget spend. Losses and metrics stay in `RoundStats`, which is
    local: nothing here sends them anywhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedhft.accounting import MechanismRecord
from fedhft.model import ClusterAdapters, MaskedAdapterModel
from fedhft.policies import ConsortiumConfig, OrganizationPolicy, TierSpec

from ._data import TextDataset
from ._masked_rounds import MaskedRoundTrainer
from ._mixture import (
    FloatArray,
    PersonalState,
)
from ._update import MaskedUpdate
from .errors import SdkError
from .privacy._accounted_trainer import AuditSink, Encoded
from .privacy._dp import (
    DEFAULT_GRAD_SAMPLE_MODE,
    GradSampleMode,
    PrivateStep,
    check_grad_sample_mode,
    forward_precision,
    poisson_batch,
)
from .privacy._ledger import PrivacyLedger
from .privacy._noise import noise_sampler
from .privacy._releases import label_counts, log_label_prior, unit_sketch


@dataclass(frozen=True)
class RoundStats:
    """What happened in one local round (kept locally; never uploaded)."""

    round: int
    private: bool
    steps: int
    sample_rate: float
    noise_multiplier: float | None
    epsilon_spent: float | None  # Ledger total after this round; None when non-private.
    delta: float | None
    mean_loss: float
    examples: int
    trainable_parameters: int
    grad_sample_mode: str | None
    seconds: float


class LocalTrainer(MaskedRoundTrainer):
    """Trains an organization's masked adapters, one accounted round at a time.

    Args:
        model_or_base: a `MaskedAdapterModel`, or a Hugging Face sequence-classification
            model to wrap with the consortium's adapters. Its tier mask is set to the
            policy's tier (in place).
        policy: the organization's policy (budget, tier, batch size, local steps).
        consortium: the consortium configuration (adapters, tiers, method, clusters).
        ledger: the privacy ledger; by default the policy's ``privacy.ledger_path``.
        audit: where "privacy_spend" and "refusal" events go (the signed audit log).
        tokenizer: defaults to the consortium model's own tokenizer.
        non_private_baseline: train WITHOUT differential privacy, for baselines only.
        grad_sample_mode: how Opacus computes per-sample gradients (hooks is fastest
            with PEFT LoRA; see benchmarks/dp_step.py). Ghost clipping is refused here
            with a tier's row slice or bf16 autocast.
        seed: seeds the shuffling of the non-private baseline.

    Raises:
        IncompatiblePolicyError: the policy forbids this consortium.
        LedgerError: the ledger belongs to another organization or setting.
        AdapterError: a grad-sample mode this tier or precision cannot use.
    """

    def __init__(
        self,
        model_or_base: MaskedAdapterModel | PreTrainedModel,
        policy: OrganizationPolicy,
        consortium: ConsortiumConfig,
        *,
        ledger: PrivacyLedger | None = None,
        audit: AuditSink | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
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
        self.model: MaskedAdapterModel = (
            model_or_base
            if isinstance(model_or_base, MaskedAdapterModel)
            else MaskedAdapterModel(model_or_base, consortium.adapter)
        )
        if self.model.adapter != consortium.adapter:
            raise SdkError(
                "the model's adapter spec differs from the consortium's `adapter` section; "
                "wrap the base model with the consortium's adapters"
            )
        # Moved once, before any optimizer or Opacus hook holds its parameters; `to`
        # keeps each parameter object, so the block table stays valid.
        self.model.peft_model.to(self.device)
        self.tier: TierSpec = consortium.tiers[policy.training.tier]
        self.trained_blocks = self.model.apply_tier(self.tier)
        # Refused here, before any round is admitted against the ledger.
        self.grad_sample_mode = check_grad_sample_mode(
            grad_sample_mode,
            row_slice=not all(m.all() for m in self.model.row_masks.values()),
            autocast=self.autocast,
        )

    # ------------------------------------------------------------------ releases

    def label_prior_record(self, round: int = 1) -> MechanismRecord | None:
        """The Gaussian record of the label-count release, if the consortium asks for one
        (`personalization.label_prior: dp`)."""
        spec = self.consortium.personalization
        if spec.label_prior != "dp":
            return None
        return self._sum_release_record(spec.label_prior_noise_multiplier, round)

    def reserved_records(self) -> tuple[MechanismRecord, ...]:
        """``auto`` σ leaves budget for the one-shot releases the consortium asks for, so
        that they and every planned round fit together."""
        planned = (self.label_prior_record(), self.sketch_record())
        return tuple(record for record in planned if record is not None)

    def release_label_prior(self, dataset: TextDataset, *, round: int = 1) -> FloatArray:
        """This organization's count of each label, released through the Gaussian
        mechanism (exact in the non-private baseline). Release it once and keep it.

        Raises:
            SdkError: the consortium asks for no label prior.
            BudgetExhaustedError: the release does not fit the budget.
        """
        record = self.label_prior_record(round)
        if record is None:
            raise SdkError("the consortium asks for no label prior (personalization.label_prior)")
        counts = label_counts(self._encode(dataset).labels, self.consortium.model.labels)
        return self._release(counts, record, num_records=len(dataset))

    def release_sketch(self, dataset: TextDataset, *, round: int = 1) -> FloatArray:
        """The sum of this organization's sentence embeddings (`MaskedAdapterModel.
        sentence_embedding_sum`), released through the Gaussian mechanism and scaled to
        unit norm (exact in the non-private baseline). Release it once and keep it.

        Raises:
            SdkError: the consortium does not cluster on sketches.
            BudgetExhaustedError: the release does not fit the budget.
        """
        record = self.sketch_record(round)
        if record is None:
            raise SdkError("the consortium does not cluster on sketches (clustering.signal)")
        encoded = self._encode(dataset)
        total = self.model.sentence_embedding_sum(encoded.input_ids, encoded.attention_mask)
        return unit_sketch(self._release(total, record, num_records=len(dataset)))

    def use_label_prior(self, counts: npt.ArrayLike) -> None:
        """Train and predict with logit adjustment by the log prior of (released) counts."""
        self.model.set_label_prior(log_label_prior(counts))

    # ------------------------------------------------------------------ training

    def train_round(
        self,
        dataset: TextDataset,
        clusters: ClusterAdapters | None,
        *,
        round: int,
        personal: PersonalState | None = None,
        sketch: npt.ArrayLike | None = None,
    ) -> tuple[MaskedUpdate, PersonalState, RoundStats]:
        """Train one round on ``dataset``; return the masked update, the new personal
        state and local statistics. With cluster centroids (``clustering.signal:
        sketch``), π compares ``sketch``, this organization's released sketch, with them.

        Raises:
            BudgetExhaustedError: the round would exceed the privacy budget (nothing
                was trained or spent; a "refusal" event was audited).
            DataError: the data set is empty, has more labels than the model, or is too
                small for the policy's δ.
        """
        started = time.perf_counter()
        encoded = self._encode(dataset)
        previous_pi, start = self._round_start(clusters, personal, sketch)
        record: MechanismRecord | None = None
        if self.private:
            record = self._admit(round, len(dataset))
        # Only now, with the round admitted, does the model change. Δ is taken against
        # the values the model really holds (float32), so untouched rows have Δ = 0.
        self.model.set_block_state(start)
        start = self.model.get_block_state()
        if record is not None:
            try:
                mean_loss = self._train_private(encoded, record)
            except BaseException:
                # Noisy steps may already have run and their output sits in the model:
                # an interrupted round is charged in full rather than forgotten.
                self._commit(record)
                raise
            epsilon = self._commit(record)
        else:
            mean_loss = self._train_non_private(encoded)
            epsilon = None

        update, new_personal = self._masked_update(
            round=round, start=start, membership=previous_pi, personal=personal
        )
        stats = RoundStats(
            round=round,
            private=self.private,
            steps=self.steps_per_round(len(dataset)),
            sample_rate=self.sample_rate(len(dataset)),
            noise_multiplier=record.noise_multiplier if record is not None else None,
            epsilon_spent=epsilon,
            delta=self.policy.privacy.delta if self.private else None,
            mean_loss=mean_loss,
            examples=len(dataset),
            trainable_parameters=self.model.num_trainable(),
            grad_sample_mode=self.grad_sample_mode if self.private else None,
            seconds=time.perf_counter() - started,
        )
        return update, new_personal, stats

    def _optimizer(self) -> torch.optim.Optimizer:
        training = self.consortium.training
        head = [self.model.parameter(b) for b in self.trained_blocks if b.startswith("head.")]
        adapters = [
            self.model.parameter(b) for b in self.trained_blocks if not b.startswith("head.")
        ]
        groups: list[dict[str, object]] = [{"params": adapters, "lr": training.learning_rate}]
        groups.append({"params": head, "lr": training.head_learning_rate or training.learning_rate})
        return torch.optim.Adam([g for g in groups if g["params"]])

    def _train_private(self, encoded: Encoded, record: MechanismRecord) -> float:
        num_records = len(encoded)
        losses: list[float] = []
        sampler = noise_sampler(record.noise_source)
        with PrivateStep(
            self.model,
            self._optimizer(),
            noise_multiplier=record.noise_multiplier,
            max_grad_norm=float(record.max_grad_norm or self.policy.privacy.max_grad_norm),
            expected_batch_size=record.sample_rate * num_records,
            noise_sampler=sampler,
            grad_sample_mode=self.grad_sample_mode,
            autocast=self.autocast,
        ) as private:
            for _ in range(record.steps):
                indices = torch.from_numpy(poisson_batch(num_records, record.sample_rate))
                loss = private.step(*encoded.batch(indices))
                if not math.isnan(loss):
                    losses.append(loss)
        self.model.peft_model.eval()
        return float(np.mean(losses)) if losses else float("nan")

    def _train_non_private(self, encoded: Encoded) -> float:
        optimizer = self._optimizer()
        row_masks = [
            (self.model.parameter(b), torch.from_numpy(m).to(self.device))
            for b, m in self.model.row_masks.items()
            if not m.all()
        ]
        losses: list[float] = []
        self.model.peft_model.train()
        for indices in self._shuffled_batches(encoded):
            ids, mask, labels = encoded.batch(indices)
            optimizer.zero_grad(set_to_none=True)
            with forward_precision(self.device, self.autocast):
                logits = self.model.logits(ids, mask)
            loss = nn.functional.cross_entropy(logits.float(), labels)
            torch.autograd.backward(loss)
            for parameter, rows in row_masks:
                if parameter.grad is not None:
                    parameter.grad[~rows] = 0.0
            optimizer.step()
            losses.append(float(loss.item()))
        self.model.peft_model.eval()
        return float(np.mean(losses))

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, dataset: TextDataset) -> dict[str, float]:
        """Accuracy and macro-F1 of the current (personalized) model on ``dataset``."""
        return self._scores(self.model, self.model.peft_model, dataset)
