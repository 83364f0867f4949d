"""Greedy generation of a causal LM: batched with left padding equals one by one; scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from causal_helpers import MAX_SEQ_LENGTH, examples
from tiny_causal import TinyCausal

from fedhft.model import AdapterError, CausalAdapterModel
from fedhft.sdk._generation import evaluate_generation, generate_responses, left_pad
from fedhft.sdk._instructions import InstructionDataset, prompt_ids
from fedhft.sdk.errors import DataError


def _randomized(tiny: TinyCausal, seed: int) -> CausalAdapterModel:
    model = tiny.adapted()
    rng = np.random.default_rng(seed)
    model.set_block_state({b.block_id: rng.normal(0.0, 0.3, size=b.shape) for b in model.blocks})
    return model


def test_batched_generation_equals_one_by_one(tiny_causal: TinyCausal) -> None:
    """Prompts of different lengths generated in one left-padded batch give, token for
    token, what each gives alone (so padding and positions are handled)."""
    model = _randomized(tiny_causal, 11)
    prompts = [prompt_ids(tiny_causal.tokenizer, e.prompt) for e in examples(6)]
    assert len({len(p) for p in prompts}) > 1
    batched = generate_responses(model, tiny_causal.tokenizer, prompts, max_new_tokens=10)
    alone = [
        generate_responses(model, tiny_causal.tokenizer, [p], max_new_tokens=10)[0] for p in prompts
    ]
    assert batched == alone
    assert any(len(r) > 0 for r in batched)


def test_generation_stops_at_eos_and_respects_max_new_tokens(tiny_causal: TinyCausal) -> None:
    """A row stops at its end token (nothing after it but padding), the others go on, and
    no row writes more than max_new_tokens."""
    model = _randomized(tiny_causal, 12)
    pad = int(tiny_causal.tokenizer.pad_token_id)
    prompts = [prompt_ids(tiny_causal.tokenizer, e.prompt) for e in examples(3)]
    input_ids, attention_mask = left_pad(prompts, pad)
    free = model.generate(
        input_ids, attention_mask, max_new_tokens=8, eos_token_id=pad, pad_token_id=pad
    )
    assert free.shape == (3, 8)
    # Call a token some row first writes after its first step the end token: that row
    # must stop right there.
    stop = next(
        token
        for row in free.tolist()
        for k, token in enumerate(row)
        if k >= 1 and token not in row[:k]
    )
    generated = model.generate(
        input_ids, attention_mask, max_new_tokens=8, eos_token_id=stop, pad_token_id=pad
    )
    assert generated.shape[1] <= 8
    for row, free_row in zip(generated.tolist(), free.tolist(), strict=True):
        if stop in free_row:
            end = free_row.index(stop) + 1
            assert row[:end] == free_row[:end]
            assert all(token == pad for token in row[end:])
        else:
            assert row == free_row
    with pytest.raises(AdapterError, match="left padding"):
        model.generate(
            torch.cat([input_ids, torch.full((3, 1), pad)], dim=1),
            torch.cat([attention_mask, torch.zeros((3, 1), dtype=torch.long)], dim=1),
            max_new_tokens=2,
            eos_token_id=stop,
            pad_token_id=pad,
        )


def test_zero_shot_scores_the_base_model(tiny_causal: TinyCausal) -> None:
    """`zero_shot=True` scores the base model (adapters off), not the tuned one; scores are
    in range and the tuned model's own score is computed with its adapters."""
    dataset = InstructionDataset(tuple(examples(5)))
    tuned = _randomized(tiny_causal, 13)
    fresh = tiny_causal.adapted()
    kwargs = {"max_new_tokens": 6, "max_seq_length": MAX_SEQ_LENGTH}
    zero_shot = evaluate_generation(tuned, tiny_causal.tokenizer, dataset, zero_shot=True, **kwargs)
    base = evaluate_generation(fresh, tiny_causal.tokenizer, dataset, **kwargs)
    own = evaluate_generation(tuned, tiny_causal.tokenizer, dataset, **kwargs)
    assert zero_shot.predictions == base.predictions
    assert zero_shot.loss == pytest.approx(base.loss, rel=1e-5)
    assert own.loss != pytest.approx(base.loss, rel=1e-3)
    for scores in (zero_shot, own):
        assert 0.0 <= scores.rouge_l <= 1.0 and 0.0 <= scores.exact_match <= 1.0
        assert scores.records == 5
    # The adapters are back on, and the tier's trainable set is restored.
    assert all(p.requires_grad for p in tuned.trainable_parameters())
    assert not any(p.requires_grad for n, p in tuned.peft_model.named_parameters() if "lora_A" in n)


def test_evaluation_refuses_what_it_cannot_score(tiny_causal: TinyCausal) -> None:
    """An empty data set, or max_new_tokens leaving no room for a prompt, is a DataError
    naming the setting to change."""
    model = tiny_causal.adapted()
    with pytest.raises(DataError, match="empty"):
        evaluate_generation(
            model,
            tiny_causal.tokenizer,
            InstructionDataset(()),
            max_new_tokens=4,
            max_seq_length=MAX_SEQ_LENGTH,
        )
    with pytest.raises(DataError, match="max_new_tokens"):
        evaluate_generation(
            model,
            tiny_causal.tokenizer,
            InstructionDataset(tuple(examples(2))),
            max_new_tokens=MAX_SEQ_LENGTH,
            max_seq_length=MAX_SEQ_LENGTH,
        )
