"""What a causal LM writes, scored: batched greedy generation, ROUGE-L, exact match, loss.

`evaluate_generation` generates greedily for a batch of LEFT-padded prompts up to
``max_new_tokens`` (a row stops at the end-of-sequence token) and scores the answers
against the references with ROUGE-L F1 (the `rouge-score` package, FedAMoLE's metric) and
exact match after SQuAD-style normalization (`fedhft.sdk._instructions`), plus the mean
cross-entropy over every response token. With ``zero_shot=True`` the same function
scores the base model with the adapters disabled: the baseline every organization
compares against. Every function takes any `CausalLanguageModel` (FedHFT's
`CausalAdapterModel`, FedAMoLE's `CausalMoLEModel`), so both methods are scored by the
same code.

Notes:
    Left padding with position ids from the attention mask (Hugging Face's `generate`
    derives them so, and `CausalAdapterModel.response_logits` does the same) gives each
    prompt the positions it has alone, so a batched answer equals the one-by-one answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from ._causal import CausalLanguageModel, CausalTrainer, collate_records
from ._instructions import (
    InstructionDataset,
    encode_instruction,
    exact_match,
    prompt_ids,
    rouge_l_f1,
)
from .errors import DataError


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
    model: CausalLanguageModel,
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
    model: CausalLanguageModel,
    tokenizer: Any,
    dataset: InstructionDataset,
    *,
    max_seq_length: int,
    batch_size: int = 16,
) -> float:
    """Mean cross-entropy over every response token of `dataset` (token-weighted)."""
    _, pad = _special_tokens(tokenizer)
    total, tokens = 0.0, 0
    was_training = model.network.training
    model.network.eval()
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
        model.network.train(was_training)
    return total / max(tokens, 1)


def evaluate_generation(
    model: CausalLanguageModel,
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

    Raises:
        DataError: an empty data set, no room for a prompt, a record whose response cannot
            fit ``max_seq_length`` (for the loss), or a tokenizer without an end token.
    """
    if len(dataset) == 0:
        raise DataError("cannot evaluate on an empty instruction data set")
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


def generation_scores(
    trainer: CausalTrainer,
    dataset: InstructionDataset,
    *,
    max_new_tokens: int | None = None,
    zero_shot: bool = True,
) -> dict[str, float]:
    """ROUGE-L F1, exact match and response loss of the trainer's current model on
    ``dataset``, and (unless ``zero_shot=False``) the same of the zero-shot base model as
    ``zero_shot_*``: what an organization reports of its personalized model, against the
    baseline. Answers are at most ``max_new_tokens`` long, by default the consortium's
    ``evaluation.max_new_tokens``. The baseline does not depend on training: a caller
    comparing several methods on the same data scores it once with `zero_shot_scores`."""
    if max_new_tokens is None:
        max_new_tokens = trainer.consortium.evaluation.max_new_tokens
    return model_generation_scores(
        trainer.model,
        trainer.tokenizer,
        dataset,
        max_seq_length=trainer.policy.training.max_seq_length,
        max_new_tokens=max_new_tokens,
        zero_shot=zero_shot,
    )


def model_generation_scores(
    model: CausalLanguageModel,
    tokenizer: Any,
    dataset: InstructionDataset,
    *,
    max_seq_length: int,
    max_new_tokens: int,
    zero_shot: bool = True,
) -> dict[str, float]:
    """`generation_scores` of any causal model (FedHFT's or FedAMoLE's): its ROUGE-L F1,
    exact match and response loss, and the zero-shot base model's as ``zero_shot_*``."""
    result = evaluate_generation(
        model,
        tokenizer,
        dataset,
        max_new_tokens=max_new_tokens,
        max_seq_length=max_seq_length,
    )
    scores = _scores(result)
    if zero_shot:
        baseline = zero_shot_scores(
            model,
            tokenizer,
            dataset,
            max_new_tokens=max_new_tokens,
            max_seq_length=max_seq_length,
        )
        scores.update({f"zero_shot_{name}": value for name, value in baseline.items()})
    return scores


def zero_shot_scores(
    model: CausalLanguageModel,
    tokenizer: Any,
    dataset: InstructionDataset,
    *,
    max_seq_length: int,
    max_new_tokens: int,
) -> dict[str, float]:
    """``rouge_l``, ``exact_match`` and ``loss`` of the base model under ``model`` (its
    adapters disabled) on ``dataset``."""
    return _scores(
        evaluate_generation(
            model,
            tokenizer,
            dataset,
            max_new_tokens=max_new_tokens,
            max_seq_length=max_seq_length,
            zero_shot=True,
        )
    )


def _scores(result: GenerationScores) -> dict[str, float]:
    return {"rouge_l": result.rouge_l, "exact_match": result.exact_match, "loss": result.loss}
