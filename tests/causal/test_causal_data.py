"""Bad instruction data on each tiny architecture (Llama and Qwen2): every case the
tokenizer decides is refused with its error, naming the record, before any spend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tiny_causal import TinyCausal, causal_consortium

from fedhft.model import ClusterAdapters
from fedhft.policies import OrganizationPolicy
from fedhft.sdk import CausalTrainer
from fedhft.sdk._generation import evaluate_generation
from fedhft.sdk._instructions import InstructionDataset, load_instructions
from fedhft.sdk.errors import DataError
from fedhft.sdk.participants import RoundParticipant

MAX_SEQ_LENGTH = 32


def _trainer(tiny: TinyCausal, tmp_path: Path) -> CausalTrainer:
    policy = OrganizationPolicy.model_validate(
        {
            "organization": "a",
            "consortium": "instruct",
            "privacy": {
                "epsilon": 8.0,
                "delta": 1e-3,
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.0,
                "planned_rounds": 2,
                "ledger_path": str(tmp_path / "ledger.json"),
            },
            "training": {
                "tier": "full",
                "batch_size": 2,
                "local_steps": 1,
                "max_seq_length": MAX_SEQ_LENGTH,
            },
        }
    )
    config = causal_consortium(
        tiny, clustering={"clusters": 2, "warmup_rounds": 1, "signal": "sketch"}
    )
    return CausalTrainer(tiny.adapted(), policy, config, tokenizer=tiny.tokenizer)


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_record_that_cannot_fit_is_refused_naming_it_before_any_spend(
    tiny_causal: TinyCausal, tmp_path: Path
) -> None:
    """A response too long for `max_seq_length` with this tokenizer: training, the
    participant's round (sketch release included) and evaluation each refuse it with
    the file, the line and the limit, and the ledger holds nothing."""
    long_answer = " ".join(["triage level urgent cardiology department"] * 12)
    file = _write(
        tmp_path / "clinic.jsonl",
        [
            {"instruction": "Triage: chest pain", "output": "urgent"},
            {"instruction": "Triage: fever", "output": long_answer},
        ],
    )
    data = load_instructions(file)
    assert len(tiny_causal.tokenizer(long_answer)["input_ids"]) >= MAX_SEQ_LENGTH
    trainer = _trainer(tiny_causal, tmp_path)
    pattern = rf"{file} line 2: the response is \d+ tokens.*max_seq_length = {MAX_SEQ_LENGTH}"
    with pytest.raises(DataError, match=pattern):
        trainer.train_round(data, round=1)
    participant = RoundParticipant(trainer, data, state_dir=tmp_path / "state")
    # The warm-up round releases a sketch first: it refuses the record before releasing.
    with pytest.raises(DataError, match=pattern):
        participant.prepare(1, ClusterAdapters.initial(trainer.model.get_block_state()))
    with pytest.raises(DataError, match=pattern):
        evaluate_generation(
            trainer.model,
            tiny_causal.tokenizer,
            data,
            max_new_tokens=4,
            max_seq_length=MAX_SEQ_LENGTH,
        )
    assert trainer.ledger is None or trainer.ledger.records == ()


def test_an_empty_data_set_is_refused_by_training_the_sketch_and_evaluation(
    tiny_causal: TinyCausal, tmp_path: Path
) -> None:
    """No records: nothing to train, sketch or score, each a DataError, nothing spent."""
    trainer = _trainer(tiny_causal, tmp_path)
    empty = InstructionDataset(())
    with pytest.raises(DataError, match="empty instruction data set"):
        trainer.train_round(empty, round=1)
    with pytest.raises(DataError, match="empty instruction data set"):
        trainer.release_sketch(empty)
    with pytest.raises(DataError, match="empty instruction data set"):
        evaluate_generation(
            trainer.model, tiny_causal.tokenizer, empty, max_new_tokens=4, max_seq_length=32
        )
    assert trainer.ledger is None or trainer.ledger.records == ()
