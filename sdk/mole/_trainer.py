"""Local training of one FedAMoLE organization: affinity release, then accounted rounds.

`MoLETrainer` is FedAMoLE's counterpart of `LocalTrainer` (ARCHITECTURE.md §2.3, §3; issue 7):

1. **Affinity (round 1, before any training).** The organization's per-expert affinity
   over the whole pool is released once through the Gaussian mechanism of
   `fedhft.sdk.mole._affinity` (record mechanism ``gaussian``). The release is admitted
   against the ledger first — a refusal raises `BudgetExhaustedError` and writes a
   "refusal" audit event — and its spend is committed and audited ("privacy_spend")
   before the noisy statistic exists.
2. **Architecture.** The server's assignment (public: it decides secure-sum supports)
   names the experts this organization holds; `set_experts` builds the `MoLEModel` (a
   classification consortium) or the `CausalMoLEModel` (``model.task: causal-lm``).
3. **Rounds.** Each round is admitted against the ledger before any step, trained with
   `MoLEPrivateStep` (Poisson batches, noise from the policy's source, σ from the policy
   or ``auto`` solved with the affinity release *reserved*, so the budget lasts the
   planned rounds *and* the release), and committed and audited before its output is
   read.

For a causal LM the data are instruction records (`InstructionDataset`), encoded with
response-only labels at the policy's ``max_seq_length``; a record's loss is its mean
response-token cross-entropy plus its own balancing loss (`mole_record_losses`), and
`evaluate` scores what the model writes (`fedhft.sdk._generation`).

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedhft.accounting import MechanismRecord
from fedhft.model import CausalMoLEModel, MoLEBase, MoLEModel, build_base_model
from fedhft.policies import ConsortiumConfig, OrganizationPolicy, TierSpec

from .._causal import collate_records
from .._data import TextDataset
from .._generation import model_generation_scores
from .._instructions import InstructionDataset, encode_instruction
from .._trainer import RoundStats
from ..errors import DataError, SdkError
from ..privacy._accounted_trainer import AccountedTrainer, AuditSink, Encoded
from ..privacy._dp import poisson_batch
from ..privacy._ledger import PrivacyLedger
from ..privacy._noise import noise_sampler
from ..privacy._releases import gaussian_record
from ._affinity import AFFINITY_CLIP, AffinityRelease, record_affinities, release_affinity
from ._private_step import MoLEPrivateStep, mole_record_losses

FloatArray = npt.NDArray[np.float64]
MoLEData = TextDataset | InstructionDataset
"""An organization's records: labelled texts (classification) or instruction records
(``model.task: causal-lm``)."""


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


class MoLETrainer(AccountedTrainer):
    """Trains an organization's mixture of LoRA experts, one accounted round at a time.

    Args:
        policy: the organization's policy (budget, tier, batch size, local steps).
        consortium: the consortium configuration (method ``fedamole``, its pool).
        base_factory: builds a fresh base model (MoLE is installed into it in place);
            default: the consortium's model, built offline.
        ledger: the privacy ledger; by default the policy's ``privacy.ledger_path``.
        audit: where "privacy_spend" and "refusal" events go (the signed audit log).
        tokenizer: defaults to the consortium model's own tokenizer.
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
        super().__init__(
            policy,
            consortium,
            ledger=ledger,
            audit=audit,
            tokenizer=tokenizer,
            non_private_baseline=non_private_baseline,
            seed=seed,
        )
        if self.device.type != "cpu":
            # The mixture-of-experts layers and the affinity release compute on the CPU.
            if policy.training.device != "auto":
                raise SdkError(
                    f"FedAMoLE trains on the CPU; `training.device` is "
                    f"{policy.training.device!r}: set it to `cpu` or `auto`"
                )
            self.device, self.autocast = torch.device("cpu"), None
        self.tier: TierSpec = consortium.tiers[policy.training.tier]
        if self.tier.min_experts is None or self.tier.max_experts is None:
            raise SdkError(f"tier {policy.training.tier!r} needs min_experts and max_experts")
        self._base_factory = base_factory or (lambda: build_base_model(consortium.model))
        self.balance_weight = balance_weight
        self._model_class: type[MoLEBase] = (
            CausalMoLEModel if consortium.model.task == "causal-lm" else MoLEModel
        )
        self.model: MoLEBase | None = None

    # ------------------------------------------------------------------ planning

    @property
    def num_experts(self) -> int:
        """Size ``E`` of the consortium's expert pool."""
        return self.consortium.fedamole.num_experts

    def affinity_record(self, round: int = 1) -> MechanismRecord:
        """The Gaussian record of the one affinity release (``q = 1``, one step)."""
        return gaussian_record(
            round_number=round,
            noise_multiplier=self.consortium.fedamole.affinity_noise_multiplier,
            sensitivity=AFFINITY_CLIP,
            noise_source=self.policy.privacy.noise_source,
        )

    def reserved_records(self) -> tuple[MechanismRecord, ...]:
        """``auto`` σ leaves budget for the affinity release, so that the release and
        every planned round fit together."""
        return (self.affinity_record(),)

    # ------------------------------------------------------------------ affinity

    def release_affinity(
        self, dataset: MoLEData, *, round: int = 1
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
        probe = self._model_class(
            self._base_factory(),
            self.consortium.adapter,
            expert_ids=[0],
            layers=self.consortium.fedamole.layers,
        )
        if not self.private:
            sums = record_affinities(
                probe, encoded.input_ids, encoded.attention_mask, num_experts=self.num_experts
            ).sum(dim=0)
            return BaselineAffinity(round=round, plain_sum=tuple(float(v) for v in sums))
        record = self._admit(round, len(dataset), self.affinity_record(round))
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

    def set_experts(self, expert_ids: Sequence[int]) -> MoLEBase:
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
            self.model = self._model_class(
                self._base_factory(),
                self.consortium.adapter,
                expert_ids=experts,
                top_k=self.consortium.fedamole.top_k,
                layers=self.consortium.fedamole.layers,
            )
        return self.model

    def assigned_model(self) -> MoLEBase:
        """The model holding the experts of the last `set_experts` call.

        Raises:
            SdkError: no experts assigned yet.
        """
        if self.model is None:
            raise SdkError("no experts assigned yet: call set_experts with the assignment")
        return self.model

    # ------------------------------------------------------------------ training

    def train_round(
        self, dataset: MoLEData, start: Mapping[str, npt.ArrayLike], *, round: int
    ) -> tuple[dict[str, FloatArray], RoundStats]:
        """Train one round from ``start`` (every held block's value); return the values
        of every held block after the round, and local statistics.

        Raises:
            BudgetExhaustedError: the round would exceed the privacy budget (nothing was
                trained or spent; a "refusal" event was audited).
            DataError: the data set is empty, has more labels than the model, a record
                cannot fit ``max_seq_length``, the records are not the consortium task's,
                or the data set is too small for the policy's δ.
            SdkError: ``start`` does not carry exactly the held blocks.
        """
        started = time.perf_counter()
        model = self.assigned_model()
        if set(start) != set(model.block_ids):
            raise SdkError(
                "the round's start state must carry exactly the held blocks; the server "
                "and this organization disagree on the assignment or the model"
            )
        encoded = self._encode(dataset)
        record: MechanismRecord | None = None
        if self.private:
            record = self._admit(round, len(dataset))
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

    def _encode(self, dataset: TextDataset | InstructionDataset) -> Encoded:
        """The records as tensors: labelled texts as `AccountedTrainer` encodes them, or
        instruction records with response-only token labels, padded on the right.

        Raises:
            DataError: an empty data set, records of the other task, or a record whose
                response cannot fit the policy's ``max_seq_length``.
        """
        causal = self.consortium.model.task == "causal-lm"
        if causal != isinstance(dataset, InstructionDataset):
            raise DataError(
                f"the consortium's `model.task` is {self.consortium.model.task!r}: FedAMoLE "
                f"trains on {'instruction records' if causal else 'labelled texts'}, got "
                f"{type(dataset).__name__}"
            )
        if not isinstance(dataset, InstructionDataset):
            return super()._encode(dataset)
        if len(dataset) == 0:
            raise DataError("cannot train or evaluate on an empty instruction data set")
        length = self.policy.training.max_seq_length
        records = [encode_instruction(self.tokenizer, example, length) for example in dataset]
        pad = self.tokenizer.pad_token_id
        batch = collate_records(records, int(self.tokenizer.eos_token_id if pad is None else pad))
        return Encoded(batch.input_ids, batch.attention_mask, batch.labels)

    def _optimizer(self, model: MoLEBase) -> torch.optim.Optimizer:
        training = self.consortium.training
        groups: list[dict[str, object]] = [
            {"params": model.mixture_parameters(), "lr": training.learning_rate}
        ]
        if model.head_parameters():
            groups.append(
                {
                    "params": model.head_parameters(),
                    "lr": training.head_learning_rate or training.learning_rate,
                }
            )
        return torch.optim.Adam(groups)

    def _train_private(self, model: MoLEBase, encoded: Encoded, record: MechanismRecord) -> float:
        num_records = len(encoded)
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
                loss = private.step(*encoded.batch(indices))
                if not math.isnan(loss):
                    losses.append(loss)
        nn.Module.eval(model.model)
        return float(np.mean(losses)) if losses else float("nan")

    def _train_non_private(self, model: MoLEBase, encoded: Encoded) -> float:
        optimizer = self._optimizer(model)
        losses: list[float] = []
        model.model.train()
        for indices in self._shuffled_batches(encoded):
            ids, mask, labels = encoded.batch(indices)
            optimizer.zero_grad(set_to_none=True)
            loss = mole_record_losses(
                model, ids, mask, labels, balance_weight=self.balance_weight
            ).mean()
            torch.autograd.backward(loss)
            optimizer.step()
            losses.append(float(loss.item()))
        nn.Module.eval(model.model)
        return float(np.mean(losses))

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, dataset: MoLEData, *, zero_shot: bool = True) -> dict[str, float]:
        """Scores of the current (personalized) model on ``dataset``: accuracy and
        macro-F1 for a classifier; for a causal LM ROUGE-L, exact match and response loss
        of its greedy answers and (unless ``zero_shot=False``) of the zero-shot base
        model's (``zero_shot_*``), the keys of `fedhft.sdk.generation_scores`."""
        model = self.assigned_model()
        if isinstance(model, CausalMoLEModel):
            if not isinstance(dataset, InstructionDataset):
                raise DataError(
                    f"a causal-lm consortium evaluates instruction records, got "
                    f"{type(dataset).__name__}"
                )
            return model_generation_scores(
                model,
                self.tokenizer,
                dataset,
                max_seq_length=self.policy.training.max_seq_length,
                max_new_tokens=self.consortium.evaluation.max_new_tokens,
                zero_shot=zero_shot,
            )
        if not isinstance(model, MoLEModel) or not isinstance(dataset, TextDataset):
            raise DataError(
                f"a classification consortium evaluates labelled texts, got "
                f"{type(dataset).__name__}"
            )
        return self._scores(model, model.model, dataset)
