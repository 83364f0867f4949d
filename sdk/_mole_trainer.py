"""Local training of one FedAMoLE organization: affinity release, then accounted rounds.

`MoLETrainer` is FedAMoLE's counterpart of `LocalTrainer` (DESIGN §2.3, §3; issue 7):

1. **Affinity (round 1, before any training).** The organization's per-expert affinity
   over the whole pool is released once through the Gaussian mechanism of
   `fedhft.sdk._affinity` (record mechanism ``gaussian``). The release is admitted
   against the ledger first — a refusal raises `BudgetExhaustedError` and writes a
   "refusal" audit event — and its spend is committed and audited ("privacy_spend")
   before the noisy statistic exists.
2. **Architecture.** The server's assignment (public: it decides secure-sum supports)
   names the experts this organization holds; `set_experts` builds the `MoLEModel`.
3. **Rounds.** Each round is admitted against the ledger before any step, trained with
   `MoLEPrivateStep` (Poisson batches, noise from the policy's source, σ from the policy
   or ``auto`` solved with the affinity release *reserved*, so the budget lasts the
   planned rounds *and* the release), and committed and audited before its output is
   read.

A non-private mode exists for baselines only (``non_private_baseline=True``): it warns
with a `SecurityWarning`, spends nothing, and releases the affinity without noise.

Notes:
    Everything this trainer returns for upload (block values, the released affinity) is
    post-processing of DP outputs whose spend is already in the ledger, so a crash can
    over-count spend but never forget a release.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedhft.errors import SecurityWarning
from fedhft.policies import ConsortiumConfig, OrganizationPolicy, TierSpec, require_compatible

from ._adapters import HEAD_BIAS, HEAD_WEIGHT
from ._affinity import AFFINITY_CLIP, AffinityRelease, record_affinities, release_affinity
from ._data import TextDataset
from ._dp import poisson_batch
from ._ledger import PrivacyLedger
from ._models import build_base_model, load_tokenizer
from ._mole import MoLEModel, MoLEPrivateStep
from ._noise import noise_sampler
from ._privacy import MechanismRecord, auto_noise_multiplier
from ._trainer import AuditSink, RoundStats, macro_f1
from .errors import BudgetExhaustedError, DataError, SdkError

FloatArray = npt.NDArray[np.float64]

_EVAL_BATCH = 64
_HEAD_BLOCKS = (HEAD_WEIGHT, HEAD_BIAS)


@dataclass(frozen=True)
class BaselineAffinity:
    """The NON-PRIVATE baseline's affinity: the plain record sum, never to leave an
    organization outside a benchmark."""

    round: int
    plain_sum: tuple[float, ...]

    @property
    def affinity(self) -> FloatArray:
        """The sum normalized to total 1, as `AffinityRelease.affinity` normalizes."""
        array = np.maximum(np.asarray(self.plain_sum, dtype=np.float64), 0.0)
        total = float(array.sum())
        if total <= 0.0:
            return np.full(array.shape, 1.0 / array.size)
        result: FloatArray = array / total
        return result


@dataclass(frozen=True)
class _Encoded:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def upload_blocks(block_ids: Sequence[str], consortium: ConsortiumConfig) -> tuple[str, ...]:
    """The held blocks an organization puts into the secure sum: all but a personal head."""
    if consortium.shares_head:
        return tuple(block_ids)
    return tuple(b for b in block_ids if b not in _HEAD_BLOCKS)


class MoLETrainer:
    """Trains an organization's mixture of LoRA experts, one accounted round at a time.

    Args:
        policy: the organization's policy (budget, tier, batch size, local steps).
        consortium: the consortium configuration (method ``fedamole``, its pool).
        base_factory: builds a fresh base model (MoLE is installed into it in place);
            default: the consortium's model, built offline.
        ledger: the privacy ledger; by default the policy's ``privacy.ledger_path``.
        audit: where "privacy_spend" and "refusal" events go (the signed audit log).
        tokenizer: defaults to MiniLM's local tokenizer.
        non_private_baseline: train WITHOUT differential privacy, for baselines only.
        balance_weight: weight of the router's load-balancing loss.
        seed: seeds the shuffling of the non-private baseline.

    Raises:
        IncompatiblePolicyError: the policy forbids this consortium.
        SdkError: the ledger belongs to another organization or setting, or the
            organization's tier has no expert bounds.
    """

    def __init__(
        self,
        policy: OrganizationPolicy,
        consortium: ConsortiumConfig,
        *,
        base_factory: Callable[[], PreTrainedModel] | None = None,
        ledger: PrivacyLedger | None = None,
        audit: AuditSink | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        non_private_baseline: bool = False,
        balance_weight: float = 0.01,
        seed: int | None = None,
    ) -> None:
        require_compatible(policy, consortium)
        self.policy = policy
        self.consortium = consortium
        self.tier: TierSpec = consortium.tiers[policy.training.tier]
        if self.tier.min_experts is None or self.tier.max_experts is None:
            raise SdkError(f"tier {policy.training.tier!r} needs min_experts and max_experts")
        self._base_factory = base_factory or (lambda: build_base_model(consortium.model))
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        self.audit = audit
        self.balance_weight = balance_weight
        self.private = not non_private_baseline
        self.model: MoLEModel | None = None
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()
        self.ledger: PrivacyLedger | None = None
        if not self.private:
            warnings.warn(
                "MoLETrainer runs the NON-PRIVATE baseline: no DP-SGD, no privacy "
                "accounting, a plain affinity; nothing it produces may leave the organization",
                SecurityWarning,
                stacklevel=2,
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

    @property
    def num_experts(self) -> int:
        """Size ``E`` of the consortium's expert pool."""
        return self.consortium.fedamole.num_experts

    def affinity_record(self, round: int = 1) -> MechanismRecord:
        """The Gaussian record of the one affinity release (``q = 1``, one step)."""
        return MechanismRecord(
            round=round,
            mechanism="gaussian",
            noise_multiplier=self.consortium.fedamole.affinity_noise_multiplier,
            sample_rate=1.0,
            steps=1,
            max_grad_norm=AFFINITY_CLIP,
            noise_source=self.policy.privacy.noise_source,
        )

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

        ``auto`` σ spreads the budget over the planned rounds with the affinity release
        reserved, so the release and every planned round fit together.
        """
        privacy = self.policy.privacy
        q = self.sample_rate(num_records)
        steps = self.steps_per_round(num_records)
        sigma = (
            auto_noise_multiplier(
                self.policy,
                sample_rate=q,
                steps_per_round=steps,
                reserved=(self.affinity_record(),),
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

    # ------------------------------------------------------------------ affinity

    def release_affinity(
        self, dataset: TextDataset, *, round: int = 1
    ) -> AffinityRelease | BaselineAffinity:
        """Release this organization's per-expert affinity (once, before training).

        The statistic is computed with the consortium's initial router (every
        organization's ``P`` starts from the public seed) and the pool's public ``A``.

        Raises:
            BudgetExhaustedError: the release would exceed the budget (nothing was
                released; a "refusal" event was audited).
            DataError: the data set is empty or too small for the policy's δ.
        """
        encoded = self._encode(dataset)
        probe = MoLEModel(self._base_factory(), self.consortium.adapter, expert_ids=[0])
        if not self.private:
            sums = record_affinities(
                probe, encoded.input_ids, encoded.attention_mask, num_experts=self.num_experts
            ).sum(dim=0)
            return BaselineAffinity(round=round, plain_sum=tuple(float(v) for v in sums))
        record = self._admit(self.affinity_record(round), len(dataset))
        ledger = self._ledger()
        release = release_affinity(
            probe,
            encoded.input_ids,
            encoded.attention_mask,
            num_experts=self.num_experts,
            noise_multiplier=record.noise_multiplier,
            ledger=ledger,
            round_number=round,
            noise_source=record.noise_source,
        )
        self._audit_spend(release.record, release.epsilon_after)
        return release

    # ------------------------------------------------------------------ architecture

    def set_experts(self, expert_ids: Sequence[int]) -> MoLEModel:
        """Build the model holding ``expert_ids`` (the server's assignment).

        Raises:
            SdkError: the ids are not distinct pool experts, or their number is outside
                the tier's bounds.
        """
        experts = tuple(sorted(int(e) for e in expert_ids))
        low, high = self.tier.min_experts or 1, self.tier.max_experts or self.num_experts
        if (
            len(set(experts)) != len(experts)
            or any(not 0 <= e < self.num_experts for e in experts)
            or not low <= len(experts) <= high
        ):
            raise SdkError(
                f"the assignment gives {self.policy.organization} experts {list(experts)}; "
                f"tier {self.policy.training.tier!r} holds {low}..{high} distinct experts "
                f"of 0..{self.num_experts - 1}"
            )
        if self.model is None or self.model.expert_ids != experts:
            self.model = MoLEModel(
                self._base_factory(),
                self.consortium.adapter,
                expert_ids=experts,
                top_k=self.consortium.fedamole.top_k,
            )
        return self.model

    def _mole(self) -> MoLEModel:
        if self.model is None:
            raise SdkError("no experts assigned yet: call set_experts with the assignment")
        return self.model

    # ------------------------------------------------------------------ training

    def train_round(
        self, dataset: TextDataset, start: Mapping[str, npt.ArrayLike], *, round: int
    ) -> tuple[dict[str, FloatArray], RoundStats]:
        """Train one round from ``start`` (every held block's value); return the values
        of every held block after the round, and local statistics.

        Raises:
            BudgetExhaustedError: the round would exceed the privacy budget (nothing was
                trained or spent; a "refusal" event was audited).
            DataError: the data set is empty, has more labels than the model, or is too
                small for the policy's δ.
            SdkError: ``start`` does not carry exactly the held blocks.
        """
        started = time.perf_counter()
        model = self._mole()
        if set(start) != set(model.block_ids):
            raise SdkError(
                "the round's start state must carry exactly the held blocks; the server "
                "and this organization disagree on the assignment or the model"
            )
        encoded = self._encode(dataset)
        record: MechanismRecord | None = None
        if self.private:
            record = self._admit(self.mechanism_record(round, len(dataset)), len(dataset))
        # Only now, with the round admitted, does the model change.
        model.set_state(start)
        epsilon: float | None = None
        if record is not None:
            try:
                mean_loss = self._train_private(model, encoded, record)
            except BaseException:
                # Noisy steps may already have run: charge the interrupted round in full.
                self._commit(record)
                raise
            epsilon = self._commit(record)
        else:
            mean_loss = self._train_non_private(model, encoded)
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
            trainable_parameters=sum(p.numel() for p in model.trainable_parameters()),
            grad_sample_mode="hooks" if self.private else None,
            seconds=time.perf_counter() - started,
        )
        return model.get_state(), stats

    def _admit(self, record: MechanismRecord, num_records: int) -> MechanismRecord:
        ledger = self._ledger()
        try:
            self.policy.privacy.check_delta_for(num_records)
        except ValueError as error:
            raise DataError(str(error)) from None
        try:
            ledger.check(record)
        except BudgetExhaustedError as refusal:
            if self.audit is not None:
                self.audit.append(
                    "refusal",
                    {
                        "round": record.round,
                        "reason": "privacy budget exhausted",
                        "mechanism": record.mechanism,
                        "spent": refusal.spent,
                        "requested": refusal.requested,
                        "budget": refusal.budget,
                    },
                )
            raise
        return record

    def _commit(self, record: MechanismRecord) -> float:
        epsilon = self._ledger().commit(record)
        self._audit_spend(record, epsilon)
        return epsilon

    def _audit_spend(self, record: MechanismRecord, epsilon_after: float) -> None:
        if self.audit is None:
            return
        ledger = self._ledger()
        self.audit.append(
            "privacy_spend",
            {
                "round": record.round,
                "mechanism": record.mechanism,
                "accountant": ledger.accountant.value,
                "noise_multiplier": record.noise_multiplier,
                "sample_rate": record.sample_rate,
                "steps": record.steps,
                "max_grad_norm": record.max_grad_norm,
                "epsilon_after": epsilon_after,
                "delta": ledger.delta,
                "noise_source": record.noise_source.value,
            },
        )

    def _ledger(self) -> PrivacyLedger:
        if self.ledger is None:
            raise SdkError("a private trainer needs a privacy ledger")
        return self.ledger

    def _optimizer(self, model: MoLEModel) -> torch.optim.Optimizer:
        training = self.consortium.training
        parameters = model.trainable_parameters()
        head, adapters = parameters[-2:], parameters[:-2]
        return torch.optim.Adam(
            [
                {"params": adapters, "lr": training.learning_rate},
                {"params": head, "lr": training.head_learning_rate or training.learning_rate},
            ]
        )

    def _train_private(self, model: MoLEModel, encoded: _Encoded, record: MechanismRecord) -> float:
        num_records = int(encoded.labels.shape[0])
        losses: list[float] = []
        with MoLEPrivateStep(
            model,
            self._optimizer(model),
            noise_multiplier=record.noise_multiplier,
            max_grad_norm=float(record.max_grad_norm or self.policy.privacy.max_grad_norm),
            expected_batch_size=record.sample_rate * num_records,
            noise_sampler=noise_sampler(record.noise_source),
            balance_weight=self.balance_weight,
        ) as private:
            for _ in range(record.steps):
                indices = torch.from_numpy(poisson_batch(num_records, record.sample_rate))
                loss = private.step(*_batch(encoded, indices))
                if not math.isnan(loss):
                    losses.append(loss)
        nn.Module.eval(model.model)
        return float(np.mean(losses)) if losses else float("nan")

    def _train_non_private(self, model: MoLEModel, encoded: _Encoded) -> float:
        num_records = int(encoded.labels.shape[0])
        batch_size = min(self.policy.training.batch_size, num_records)
        optimizer = self._optimizer(model)
        losses: list[float] = []
        order = torch.randperm(num_records, generator=self._generator)
        position = 0
        model.model.train()
        for _ in range(self.steps_per_round(num_records)):
            if position + batch_size > num_records:
                order = torch.randperm(num_records, generator=self._generator)
                position = 0
            indices = order[position : position + batch_size]
            position += batch_size
            ids, mask, labels = _batch(encoded, indices)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model.logits(ids, mask), labels)
            loss = loss + self.balance_weight * model.balance_loss().mean()
            torch.autograd.backward(loss)
            optimizer.step()
            losses.append(float(loss.item()))
        nn.Module.eval(model.model)
        return float(np.mean(losses))

    # ------------------------------------------------------------------ data

    def _encode(self, dataset: TextDataset) -> _Encoded:
        if len(dataset) == 0:
            raise DataError("cannot train or evaluate on an empty data set")
        num_labels = self.consortium.model.num_labels
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
        return _Encoded(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            labels=torch.tensor(dataset.labels, dtype=torch.long),
        )

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, dataset: TextDataset) -> dict[str, float]:
        """Accuracy and macro-F1 of the current (personalized) model on ``dataset``."""
        model = self._mole()
        encoded = self._encode(dataset)
        count = int(encoded.labels.shape[0])
        predictions: list[torch.Tensor] = []
        nn.Module.eval(model.model)
        with torch.no_grad():
            for start in range(0, count, _EVAL_BATCH):
                indices = torch.arange(start, min(start + _EVAL_BATCH, count))
                ids, mask, _ = _batch(encoded, indices)
                predictions.append(model.logits(ids, mask).argmax(dim=-1))
        predicted = torch.cat(predictions).numpy()
        labels = encoded.labels.numpy()
        return {
            "accuracy": float(np.mean(predicted == labels)),
            "macro_f1": macro_f1(labels, predicted),
        }


def _batch(
    encoded: _Encoded, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = encoded.input_ids[indices]
    mask = encoded.attention_mask[indices]
    # Trim the padding every row of this batch shares: same result, less compute.
    length = max(1, int(mask.sum(dim=1).max().item())) if len(indices) else 1
    return ids[:, :length], mask[:, :length], encoded.labels[indices]
