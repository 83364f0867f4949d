"""What every organization-side trainer shares: the ledger, the audit events, the data.

`LocalTrainer` (FedHFT, FedAvg-LoRA, local-only) and `MoLETrainer` (FedAMoLE) differ in
their model and in what a round produces; everything that makes a round *accounted* is
here, once:

- the DP-SGD record of a round (Poisson rate ``q = batch_size / n``, the local steps, σ
  from the policy or ``auto``, with any records the trainer reserves budget for);
- admission against the ledger before any step (`BudgetExhaustedError` and a "refusal"
  audit event) and the durable commit with its "privacy_spend" event before the output
  exists;
- tokenization with clear errors, the batches of the non-private baseline, evaluation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedhft.accounting import MechanismRecord, auto_noise_multiplier
from fedhft.audit import EventType, privacy_spend_payload, refusal_payload
from fedhft.errors import SecurityWarning
from fedhft.model import check_tokenizer, load_tokenizer
from fedhft.policies import ConsortiumConfig, OrganizationPolicy, require_compatible

from .._data import TextDataset
from ..errors import BudgetExhaustedError, DataError, SdkError
from ._dp import autocast_dtype, training_device
from ._ledger import PrivacyLedger
from ._releases import FloatArray, gaussian_release

_EVAL_BATCH = 64


class AuditSink(Protocol):
    """Where the trainer records its privacy events (the signed audit log)."""

    def append(self, event_type: str, payload: Mapping[str, object]) -> object:
        """Append one event; the return value is ignored."""
        ...


class Classifier(Protocol):
    """A model the trainer evaluates: the class logits of a batch."""

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits of the batch."""
        ...


@dataclass(frozen=True)
class Encoded:
    """A tokenized data set: class labels (``records``), or for a causal LM its records
    padded on the right with token labels (``records × tokens``, `IGNORE_INDEX` outside
    the responses)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> Encoded:
        """The same data set on ``device`` (itself when it is already there)."""
        if self.input_ids.device == device:
            return self
        return Encoded(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows at ``indices``, trimmed of the padding every one of them shares (same
        result, less compute).

        The trimmed length depends on the longest record of the batch, so every model
        trained on these batches must give padding no weight in any loss term (attention
        mask, masked pooling, MoLE's per-record balancing loss): otherwise a record's
        per-sample gradient would depend on its batch-mates and clipping would no longer
        bound one record's influence.
        """
        indices = indices.to(self.input_ids.device)
        ids = self.input_ids[indices]
        mask = self.attention_mask[indices]
        length = max(1, int(mask.sum(dim=1).max().item())) if len(indices) else 1
        labels = self.labels[indices]
        if labels.dim() == 2:
            # Token labels (a causal LM's records, padded on the right): trimmed alike.
            labels = labels[:, :length]
        return ids[:, :length], mask[:, :length], labels


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Macro-averaged F1 over the labels present in ``labels`` or ``predictions``."""
    classes = np.union1d(labels, predictions)
    scores = []
    for label in classes:
        true_positive = float(np.sum((predictions == label) & (labels == label)))
        predicted = float(np.sum(predictions == label))
        actual = float(np.sum(labels == label))
        denominator = predicted + actual
        scores.append(2.0 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else 0.0


class AccountedTrainer:
    """Policy, ledger, audit and data handling shared by the organization's trainers.

    Args:
        policy: the organization's policy (budget, tier, batch size, local steps).
        consortium: the consortium configuration.
        ledger: the privacy ledger; by default the policy's ``privacy.ledger_path``.
        audit: where "privacy_spend" and "refusal" events go (the signed audit log).
        tokenizer: defaults to the consortium model's own tokenizer (`load_tokenizer`);
            one given must have the fingerprint the consortium pins.
        non_private_baseline: train WITHOUT differential privacy, for baselines only
            (warns with a `SecurityWarning`; nothing is spent or recorded).
        seed: seeds the shuffling of the non-private baseline.

    Raises:
        IncompatiblePolicyError: the policy forbids this consortium.
        SdkError: the ledger belongs to another organization or setting.
        TokenizerMismatchError: the tokenizer is not the one the consortium pins.
    """

    def __init__(
        self,
        policy: OrganizationPolicy,
        consortium: ConsortiumConfig,
        *,
        ledger: PrivacyLedger | None,
        audit: AuditSink | None,
        tokenizer: PreTrainedTokenizerBase | None,
        non_private_baseline: bool,
        seed: int | None,
    ) -> None:
        require_compatible(policy, consortium)
        self.policy = policy
        self.consortium = consortium
        if tokenizer is None:
            tokenizer = load_tokenizer(consortium.model)
        else:
            check_tokenizer(consortium.model, tokenizer)
        self.tokenizer = tokenizer
        self.audit = audit
        self.private = not non_private_baseline
        try:
            self.device = training_device(policy.training.device)
        except ValueError as error:
            raise SdkError(str(error)) from error
        self.autocast = autocast_dtype(self.device, policy.training.precision)
        if policy.training.precision == "bf16" and self.autocast is None:
            warnings.warn(
                "`training.precision: bf16` needs a CUDA device; training on the CPU in "
                "float32 instead",
                RuntimeWarning,
                stacklevel=3,
            )
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()
        self.ledger: PrivacyLedger | None = None
        if not self.private:
            warnings.warn(
                f"{type(self).__name__} runs the NON-PRIVATE baseline: no DP-SGD, no privacy "
                "accounting; nothing it produces may leave the organization",
                SecurityWarning,
                stacklevel=3,
            )
            return
        privacy = policy.privacy
        if ledger is None:
            ledger = PrivacyLedger.open(
                privacy.ledger_path,
                organization=policy.organization,
                accountant=privacy.accountant,
                delta=privacy.delta,
                epsilon_budget=privacy.epsilon,
            )
        expected = (policy.organization, privacy.accountant, privacy.delta, privacy.epsilon)
        found = (ledger.organization, ledger.accountant, ledger.delta, ledger.epsilon_budget)
        if found != expected:
            raise SdkError(
                f"privacy ledger {ledger.path} is for (organization, accountant, δ, ε budget) "
                f"= {found}, the policy says {expected}; open the policy's own ledger"
            )
        self.ledger = ledger

    # ------------------------------------------------------------------ planning

    def reserved_records(self) -> tuple[MechanismRecord, ...]:
        """Releases besides DP-SGD rounds that ``auto`` σ must leave budget for."""
        return ()

    def sample_rate(self, num_records: int) -> float:
        """Poisson rate ``q = batch_size / n`` (at most 1)."""
        return min(1.0, self.policy.training.batch_size / num_records)

    def steps_per_round(self, num_records: int) -> int:
        """Local steps: the policy's, or ``ceil(epochs / q)`` for an epoch budget."""
        training = self.policy.training
        if training.local_steps is not None:
            return training.local_steps
        epochs = float(training.local_epochs or 1.0)
        return max(1, math.ceil(epochs / self.sample_rate(num_records) - 1e-9))

    def mechanism_record(self, round: int, num_records: int) -> MechanismRecord:
        """The DP-SGD record a round on ``num_records`` records would add to the ledger.

        ``auto`` σ spreads the budget over the planned rounds, with the
        `reserved_records` fitting too.
        """
        privacy = self.policy.privacy
        q = self.sample_rate(num_records)
        steps = self.steps_per_round(num_records)
        sigma = (
            auto_noise_multiplier(
                self.policy,
                sample_rate=q,
                steps_per_round=steps,
                reserved=self.reserved_records(),
            )
            if privacy.noise_multiplier == "auto"
            else float(privacy.noise_multiplier)
        )
        return MechanismRecord(
            round=round,
            mechanism="dp-sgd",
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            max_grad_norm=privacy.max_grad_norm,
            noise_source=privacy.noise_source,
        )

    # ------------------------------------------------------------------ ledger

    def _ledger(self) -> PrivacyLedger:
        if self.ledger is None:
            raise SdkError("a private trainer needs a privacy ledger")
        return self.ledger

    def _admit(
        self, round: int, num_records: int, record: MechanismRecord | None = None
    ) -> MechanismRecord:
        """Check δ against the data size and the round's record (by default the
        DP-SGD `mechanism_record`) against the budget; return the record.

        Raises:
            DataError: δ is not below 1/n.
            BudgetExhaustedError: the record does not fit (a "refusal" was audited).
        """
        ledger = self._ledger()
        try:
            self.policy.privacy.check_delta_for(num_records)
        except ValueError as error:
            raise DataError(str(error)) from None
        try:
            # `auto` σ itself refuses when not even one more round fits.
            record = record or self.mechanism_record(round, num_records)
            ledger.check(record)
        except BudgetExhaustedError as refusal:
            if self.audit is not None:
                self.audit.append(
                    EventType.REFUSAL,
                    refusal_payload(
                        round,
                        "privacy budget exhausted",
                        mechanism=record.mechanism if record is not None else "dp-sgd",
                        spent=refusal.spent,
                        requested=refusal.requested,
                        budget=refusal.budget,
                    ),
                )
            raise
        return record

    def _release(
        self, statistic: torch.Tensor, record: MechanismRecord, *, num_records: int
    ) -> FloatArray:
        """Admit ``record``, release ``statistic`` through the Gaussian mechanism and audit
        the spend; the noisy values. The non-private baseline gets the exact statistic.

        Raises:
            BudgetExhaustedError: the release does not fit (nothing was released; a
                "refusal" was audited).
        """
        if not self.private:
            exact: FloatArray = statistic.detach().cpu().to(torch.float64).reshape(-1).numpy()
            return exact
        admitted = self._admit(record.round, num_records, record)
        release = gaussian_release(statistic, admitted, ledger=self._ledger())
        self._audit_spend(release.record, release.epsilon_after)
        return release.array()

    def _commit(self, record: MechanismRecord) -> float:
        """Commit ``record`` durably and audit the spend; returns ε after it."""
        epsilon = self._ledger().commit(record)
        self._audit_spend(record, epsilon)
        return epsilon

    def _audit_spend(self, record: MechanismRecord, epsilon_after: float) -> None:
        if self.audit is None:
            return
        ledger = self._ledger()
        self.audit.append(
            EventType.PRIVACY_SPEND,
            privacy_spend_payload(
                record,
                accountant=ledger.accountant.value,
                epsilon_after=epsilon_after,
                delta=ledger.delta,
            ),
        )

    # ------------------------------------------------------------------ data

    def _encode(self, dataset: TextDataset) -> Encoded:
        if len(dataset) == 0:
            raise DataError("cannot train or evaluate on an empty data set")
        num_labels = self.consortium.model.labels
        if len(dataset.label_names) > num_labels:
            raise DataError(
                f"the data set has {len(dataset.label_names)} labels, the consortium model "
                f"`model.num_labels` is {num_labels}"
            )
        tokens = self.tokenizer(
            list(dataset.texts),
            padding="max_length",
            truncation=True,
            max_length=self.policy.training.max_seq_length,
            return_tensors="pt",
        )
        # The whole tokenized data set moves to the training device once; batches are
        # then cut there and never travel back.
        return Encoded(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            labels=torch.tensor(dataset.labels, dtype=torch.long),
        ).to(self.device)

    def _shuffled_batches(self, encoded: Encoded) -> Iterator[torch.Tensor]:
        """Indices of the non-private baseline's batches: one round's steps, reshuffled
        each epoch."""
        num_records = len(encoded)
        batch_size = min(self.policy.training.batch_size, num_records)
        order = torch.randperm(num_records, generator=self._generator)
        position = 0
        for _ in range(self.steps_per_round(num_records)):
            if position + batch_size > num_records:
                order = torch.randperm(num_records, generator=self._generator)
                position = 0
            yield order[position : position + batch_size]
            position += batch_size

    # ------------------------------------------------------------------ evaluation

    def _scores(
        self, model: Classifier, module: nn.Module, dataset: TextDataset
    ) -> dict[str, float]:
        """Accuracy and macro-F1 of ``model`` on ``dataset`` (``module`` in eval mode)."""
        encoded = self._encode(dataset)
        predictions: list[torch.Tensor] = []
        nn.Module.eval(module)
        with torch.no_grad():
            for start in range(0, len(encoded), _EVAL_BATCH):
                indices = torch.arange(start, min(start + _EVAL_BATCH, len(encoded)))
                ids, mask, _ = encoded.batch(indices)
                predictions.append(model.logits(ids, mask).argmax(dim=-1))
        predicted = torch.cat(predictions).cpu().numpy()
        labels = encoded.labels.cpu().numpy()
        return {
            "accuracy": float(np.mean(predicted == labels)),
            "macro_f1": macro_f1(labels, predicted),
        }
