"""DP-SGD per record for a causal LM's frozen-A LoRA blocks, and scoring what it writes.

One record is one example (a prompt and its response). Its loss is the MEAN
cross-entropy over its response tokens (the end-of-sequence token included); the batch
loss is the mean of the records' losses. `CausalPrivateStep` runs one DP-SGD step
(Abadi et al. 2016) per Poisson batch with Opacus per-sample gradients of the tier's
``B`` blocks only: each record's gradient is clipped to ``max_grad_norm``, the clipped
gradients are summed, Gaussian noise of standard deviation ``noise_multiplier ·
max_grad_norm`` from the policy's sampler is added and the sum is divided by the
expected batch size, as `fedhft.sdk.privacy.PrivateStep` does for classification.

Evaluation (`evaluate_generation`): greedy generation of a batch of left-padded prompts
up to ``max_new_tokens`` (stopping at the end-of-sequence token), scored by ROUGE-L F1
and normalized exact match against the references, plus the mean response-token loss.
With ``zero_shot=True`` the same function scores the base model with the adapters
disabled, the baseline every organization compares against.

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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from opacus.grad_sample.utils import prepare_module
from opacus.validators import ModuleValidator
from torch.nn import functional as F

from fedhft.model import CausalAdapterModel

from ._instructions import (
    IGNORE_INDEX,
    EncodedInstruction,
    InstructionDataset,
    encode_instruction,
    exact_match,
    prompt_ids,
    rouge_l_f1,
)
from .errors import DataError
from .privacy._dp import dp_optimizer, release_per_sample_state
from .privacy._noise import NoiseSampler


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


def record_losses(model: CausalAdapterModel, batch: CausalBatch) -> torch.Tensor:
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


class CausalPrivateStep:
    """DP-SGD steps on a `CausalAdapterModel` whose tier is already applied.

    Use as a context manager (or call `close`): Opacus hooks are attached to the model's
    trainable ``B`` blocks and removed on exit, so the model can train again next round.
    A tier's row slice is honoured as `PrivateStep` does: per-sample gradients of frozen
    rows are zeroed before clipping and the noise on them after noising.
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
    ) -> None:
        if noise_multiplier < 0 or max_grad_norm <= 0 or expected_batch_size <= 0:
            raise ValueError(
                "noise_multiplier must be >= 0, max_grad_norm and expected_batch_size > 0"
            )
        if not model.trainable:
            raise ValueError("the model's tier trains no block; apply a tier first")
        self.model = model
        self._row_masks = [
            (model.parameter(b), torch.from_numpy(mask))
            for b, mask in model.row_masks.items()
            if not mask.all()
        ]
        module = model.peft_model
        module.train()
        ModuleValidator.validate(module, strict=True)
        self._hooks = prepare_module(
            module, "hooks", wrap_model=False, batch_first=True, loss_reduction="mean"
        )
        self.optimizer = dp_optimizer(
            self._hooks,
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            noise_sampler=noise_sampler,
            grad_sample_mode="hooks",
        )
        if self._row_masks:
            self.optimizer.attach_step_hook(self._drop_noise_on_frozen_rows)
        self._closed = False

    def step(self, batch: CausalBatch) -> float:
        """One DP-SGD step on one Poisson batch (possibly empty); returns its mean loss."""
        if self._closed:
            raise RuntimeError("this CausalPrivateStep is closed")
        self.model.peft_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if len(batch) == 0:
            for parameter in self.model.trainable_parameters():
                # The sum of no clipped gradients is zero; the step still gets its noise.
                setattr(  # noqa: B010 (Opacus reads per-sample gradients from it)
                    parameter, "grad_sample", torch.zeros((0, *parameter.shape))
                )
            self.optimizer.step()
            return float("nan")
        with warnings.catch_warnings():
            # Full backward hooks sit on modules whose inputs need no gradient (the
            # frozen-A LoRA path); per-sample gradients of B only need the output
            # gradients the hook still receives.
            warnings.filterwarnings(
                "ignore", message="Full backward hook is firing", category=UserWarning
            )
            loss = record_losses(self.model, batch).mean()
            loss.backward()
        for parameter, mask in self._row_masks:
            grad_sample = getattr(parameter, "grad_sample", None)
            if isinstance(grad_sample, torch.Tensor):
                grad_sample.mul_(mask.to(grad_sample.dtype).view(1, -1, 1))
        self.optimizer.step()
        return float(loss.item())

    def _drop_noise_on_frozen_rows(self, _optimizer: object) -> None:
        for parameter, mask in self._row_masks:
            if parameter.grad is not None:
                parameter.grad[~mask] = 0.0

    def close(self) -> None:
        """Remove the Opacus hooks and per-sample state from the model."""
        if self._closed:
            return
        release_per_sample_state(self._hooks, self.model.peft_model.parameters())
        self._closed = True

    def __enter__(self) -> CausalPrivateStep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class GenerationScores:
    """What a model writes for one data set, scored against the references."""

    rouge_l: float
    """Mean ROUGE-L F1 over the records."""
    exact_match: float
    """Fraction of records answered exactly (after normalization)."""
    loss: float
    """Mean cross-entropy over every response token of the data set."""
    records: int
    predictions: tuple[str, ...]


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of prompts padded on the LEFT (for generation)."""
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids[row, length - len(prompt) :] = torch.tensor(list(prompt))
            attention_mask[row, length - len(prompt) :] = 1
    return input_ids, attention_mask


def generate_responses(
    model: CausalAdapterModel,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy response tokens for each prompt, up to and without the end token."""
    eos, pad = _special_tokens(tokenizer)
    responses: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        input_ids, attention_mask = left_pad(prompts[start : start + batch_size], pad)
        generated = model.generate(
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        for row in generated.tolist():
            responses.append(row[: row.index(eos)] if eos in row else row)
    return responses


def _special_tokens(tokenizer: Any) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no end-of-sequence token; generation cannot stop")
    pad = tokenizer.pad_token_id
    return int(eos), int(eos if pad is None else pad)


@torch.no_grad()
def response_token_loss(
    model: CausalAdapterModel,
    tokenizer: Any,
    dataset: InstructionDataset,
    *,
    max_seq_length: int,
    batch_size: int = 16,
) -> float:
    """Mean cross-entropy over every response token of `dataset` (token-weighted)."""
    _, pad = _special_tokens(tokenizer)
    total, tokens = 0.0, 0
    was_training = model.peft_model.training
    model.peft_model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            records = [
                encode_instruction(tokenizer, example, max_seq_length)
                for example in dataset.examples[start : start + batch_size]
            ]
            batch = collate_records(records, pad)
            logits, targets, _ = model.response_logits(
                batch.input_ids, batch.attention_mask, batch.labels
            )
            total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
            tokens += int(targets.numel())
    finally:
        model.peft_model.train(was_training)
    return total / max(tokens, 1)


def evaluate_generation(
    model: CausalAdapterModel,
    tokenizer: Any,
    dataset: InstructionDataset,
    *,
    max_new_tokens: int,
    max_seq_length: int,
    batch_size: int = 16,
    zero_shot: bool = False,
) -> GenerationScores:
    """Score `model`'s greedy answers on `dataset`: ROUGE-L F1, exact match, response loss.

    Prompts longer than ``max_seq_length − max_new_tokens`` lose tokens from the left, as
    in training. With ``zero_shot=True`` the adapters are disabled: the base model's
    scores, the baseline.
    """
    room = max_seq_length - max_new_tokens
    if room < 1:
        raise DataError(
            f"max_new_tokens = {max_new_tokens} leaves no room for a prompt in "
            f"max_seq_length = {max_seq_length}; lower max_new_tokens"
        )
    if zero_shot:
        with model.adapters_disabled():
            return evaluate_generation(
                model,
                tokenizer,
                dataset,
                max_new_tokens=max_new_tokens,
                max_seq_length=max_seq_length,
                batch_size=batch_size,
            )
    prompts = [prompt_ids(tokenizer, example.prompt)[-room:] for example in dataset]
    responses = generate_responses(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    predictions = tuple(
        str(tokenizer.decode(tokens, skip_special_tokens=True)).strip() for tokens in responses
    )
    references = [example.response for example in dataset]
    rouge = [rouge_l_f1(p, r) for p, r in zip(predictions, references, strict=True)]
    exact = [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
    return GenerationScores(
        rouge_l=sum(rouge) / max(len(rouge), 1),
        exact_match=sum(exact) / max(len(exact), 1),
        loss=response_token_loss(
            model, tokenizer, dataset, max_seq_length=max_seq_length, batch_size=batch_size
        ),
        records=len(dataset),
        predictions=predictions,
    )
