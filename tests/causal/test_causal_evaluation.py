"""`evaluation.max_new_tokens` in the consortium file: it bounds every scored answer, bad
values are refused naming the field, and a file without it hashes as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_causal import TinyCausal, causal_consortium, federation

from fedhft.model import CausalAdapterModel, ClusterAdapters
from fedhft.policies import (
    ConsortiumConfig,
    IncompatiblePolicyError,
    OrganizationPolicy,
    PolicyError,
    consortium_hash,
    parse_policy,
)
from fedhft.sdk import CausalTrainer
from fedhft.sdk.participants import RoundParticipant

ORG = "a"


def _policy(tmp_path: Path, *, max_seq_length: int = 96) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": ORG,
            "consortium": "instruct",
            "privacy": {
                "epsilon": 8.0,
                "delta": 1e-3,
                "max_grad_norm": 1.0,
                "planned_rounds": 2,
                "ledger_path": str(tmp_path / "ledger.json"),
            },
            "training": {
                "tier": "full",
                "batch_size": 4,
                "local_steps": 1,
                "max_seq_length": max_seq_length,
            },
        }
    )


def _answer_lengths(
    tiny: TinyCausal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fields: Any
) -> tuple[list[int], list[int]]:
    """Score a model with random ``B`` through `RoundParticipant.evaluate`; return the
    ``max_new_tokens`` each generate call got and the length of every generated answer."""
    config = causal_consortium(tiny, **fields)
    model = tiny.adapted()
    trainer = CausalTrainer(model, _policy(tmp_path), config, tokenizer=tiny.tokenizer)
    data = federation()[0]
    participant = RoundParticipant(trainer, data.train, state_dir=tmp_path / "state")
    rng = np.random.default_rng(3)
    random = {b.block_id: rng.normal(0.0, 0.3, size=b.shape) for b in model.blocks}
    asked: list[int] = []
    lengths: list[int] = []
    original = CausalAdapterModel.generate

    def spy(self: CausalAdapterModel, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = original(self, *args, **kwargs)
        asked.append(int(kwargs["max_new_tokens"]))
        lengths.extend(int(row.ne(kwargs["pad_token_id"]).sum()) for row in output)
        return output

    monkeypatch.setattr(CausalAdapterModel, "generate", spy)
    scores = participant.evaluate(data.test, ClusterAdapters.initial(random))
    assert 0.0 <= scores["rouge_l"] <= 1.0 and 0.0 <= scores["zero_shot_rouge_l"] <= 1.0
    return asked, lengths


def test_max_new_tokens_from_the_consortium_bounds_every_answer(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `evaluation.max_new_tokens: 2` every answer scored (personalized and zero-shot)
    is at most 2 tokens; the same model under the default writes longer ones."""
    tiny = tiny_causal_models["llama"]
    asked, lengths = _answer_lengths(
        tiny, tmp_path / "two", monkeypatch, evaluation={"max_new_tokens": 2}
    )
    assert set(asked) == {2} and len(asked) == 2  # The personalized model and the base.
    assert lengths and max(lengths) <= 2
    asked, lengths = _answer_lengths(tiny, tmp_path / "default", monkeypatch)
    assert set(asked) == {16}
    assert max(lengths) > 2


def _data(tiny: TinyCausal, **fields: Any) -> dict[str, Any]:
    config = causal_consortium(tiny)
    data: dict[str, Any] = config.model_dump(mode="json")
    data.update(fields)
    return data


@pytest.mark.parametrize("value", [0, -3, 5000, "4", True, 2.0, None])
def test_a_bad_max_new_tokens_is_refused_naming_the_field(
    tiny_causal_models: dict[str, TinyCausal], value: Any
) -> None:
    """Zero, negative, oversized or not a whole number: one problem naming the field."""
    data = _data(tiny_causal_models["llama"], evaluation={"max_new_tokens": value})
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, ConsortiumConfig, "consortium.yaml")
    assert any("evaluation.max_new_tokens" in p for p in caught.value.problems)


def test_an_unknown_evaluation_field_is_refused(
    tiny_causal_models: dict[str, TinyCausal],
) -> None:
    """A typo in the section is an error, not a silently ignored setting."""
    data = _data(tiny_causal_models["llama"], evaluation={"max_new_token": 4})
    with pytest.raises(PolicyError, match="max_new_token"):
        parse_policy(data, ConsortiumConfig, "consortium.yaml")


def test_max_new_tokens_that_leaves_no_room_for_a_prompt_is_refused(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """An organization whose `max_seq_length` cannot hold a prompt and the answer is
    refused when its trainer is built, naming both fields."""
    tiny = tiny_causal_models["llama"]
    config = causal_consortium(tiny, evaluation={"max_new_tokens": 32})
    with pytest.raises(IncompatiblePolicyError) as caught:
        CausalTrainer(
            tiny.adapted(), _policy(tmp_path, max_seq_length=32), config, tokenizer=tiny.tokenizer
        )
    message = str(caught.value)
    assert "training.max_seq_length" in message and "evaluation.max_new_tokens" in message


def test_the_default_evaluation_leaves_the_hash_unchanged(
    tiny_causal_models: dict[str, TinyCausal],
) -> None:
    """Writing the default out gives the hash of a file without the section (so files
    from before it hash as they did); another value gives another hash."""
    tiny = tiny_causal_models["llama"]
    plain = causal_consortium(tiny)
    assert "evaluation" not in plain.model_dump(mode="json")
    explicit = causal_consortium(tiny, evaluation={"max_new_tokens": 16})
    assert consortium_hash(explicit) == consortium_hash(plain)
    other = causal_consortium(tiny, evaluation={"max_new_tokens": 4})
    assert other.model_dump(mode="json")["evaluation"] == {"max_new_tokens": 4}
    assert consortium_hash(other) != consortium_hash(plain)
