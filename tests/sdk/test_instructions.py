"""Instruction records in three shapes, response-only labels, the synthetic federation, scores."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fedhft.model import load_tokenizer
from fedhft.sdk._instructions import (
    IGNORE_INDEX,
    ChatTurn,
    InstructionExample,
    encode_instruction,
    exact_match,
    load_instructions,
    normalize_answer,
    prompt_ids,
    rouge_l_f1,
    synthetic_instruction_federation,
)
from fedhft.sdk.errors import DataError


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer()


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer: Any) -> Any:
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = (
        "{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    return templated


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_three_shapes_load_from_json_lines(tmp_path: Path) -> None:
    file = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"instruction": "Classify", "input": "chest pain", "output": "critical"},
            {"instruction": "Say hi", "output": "hi"},
            {"prompt": "2 + 2 =", "completion": " 4"},
            {
                "messages": [
                    {"role": "system", "content": "You triage."},
                    {"role": "user", "content": "fever?"},
                    {"role": "assistant", "content": "high"},
                ]
            },
        ],
    )
    data = load_instructions(file)
    assert [e.response for e in data] == ["critical", "hi", " 4", "high"]
    assert data.examples[0].prompt == (ChatTurn("user", "Classify\n\nchest pain"),)
    assert data.examples[1].prompt == (ChatTurn("user", "Say hi"),)
    assert data.examples[2].prompt == "2 + 2 ="
    assert data.examples[3].prompt == (
        ChatTurn("system", "You triage."),
        ChatTurn("user", "fever?"),
    )
    assert data.examples[3].source == f"{file} line 4"


def test_csv_and_a_saved_data_set_load_like_json_lines(tmp_path: Path) -> None:
    csv_file = tmp_path / "bank.csv"
    csv_file.write_text('prompt,completion\n"Balance due?",yes\n"Fee?",$5\n')
    assert [e.response for e in load_instructions(csv_file)] == ["yes", "$5"]

    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_list([{"instruction": "Team?", "input": None, "output": "payments"}]).save_to_disk(
        str(folder)
    )
    loaded = load_instructions(folder)
    assert loaded.examples[0].prompt == (ChatTurn("user", "Team?"),)
    assert loaded.examples[0].response == "payments"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "Classify"}, "line 1: field 'output' is missing"),
        ({"prompt": "x"}, "line 1: field 'completion' is missing"),
        ({"instruction": "Classify", "output": "  "}, "line 1: the response is empty"),
        ({"prompt": "x", "completion": ""}, "line 1: the response is empty"),
        ({"output": "x"}, "found none"),
        ({"prompt": "x", "completion": "y", "messages": []}, "'prompt' and 'messages'"),
        ({"instruction": 3, "output": "x"}, "field 'instruction' must be text"),
        ({"messages": [{"role": "user", "content": "q"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "no user turn"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "role must be one of"),
        ({"messages": "hello"}, "non-empty list of turns"),
    ],
)
def test_each_bad_record_names_file_line_and_field(
    tmp_path: Path, record: dict[str, object], message: str
) -> None:
    file = _write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(DataError, match=message) as raised:
        load_instructions(file)
    assert str(file) in str(raised.value)


def test_csv_cannot_hold_chats_and_unknown_kinds_are_refused(tmp_path: Path) -> None:
    chat_csv = tmp_path / "chat.csv"
    chat_csv.write_text("messages\n[]\n")
    with pytest.raises(DataError, match="need JSON Lines"):
        load_instructions(chat_csv)
    other = tmp_path / "data.parquet"
    other.write_text("x")
    with pytest.raises(DataError, match="unsupported kind"):
        load_instructions(other)
    with pytest.raises(DataError, match="does not exist"):
        load_instructions(tmp_path / "missing.jsonl")


def test_loss_labels_cover_exactly_the_response_and_its_end_token(tokenizer: Any) -> None:
    example = InstructionExample("the patient reports chest pain", "critical now")
    encoded = encode_instruction(tokenizer, example, max_seq_length=64)
    prompt = prompt_ids(tokenizer, example.prompt)
    response = tokenizer("critical now", add_special_tokens=False)["input_ids"]
    assert list(encoded.input_ids) == [*prompt, *response, tokenizer.sep_token_id]
    assert list(encoded.labels) == [IGNORE_INDEX] * len(prompt) + [
        *response,
        tokenizer.sep_token_id,
    ]
    assert encoded.prompt_length == len(prompt)


def test_truncation_keeps_the_response_and_cuts_the_prompt_from_the_left(
    tokenizer: Any,
) -> None:
    example = InstructionExample("one two three four five six seven eight", "yes")
    full = encode_instruction(tokenizer, example, max_seq_length=64)
    short = encode_instruction(tokenizer, example, max_seq_length=6)
    assert len(short.input_ids) == 6
    response_tokens = len(full.input_ids) - full.prompt_length
    assert short.input_ids[-response_tokens:] == full.input_ids[-response_tokens:]
    assert (
        short.input_ids[: short.prompt_length]
        == full.input_ids[full.prompt_length - short.prompt_length : full.prompt_length]
    )
    assert short.labels[short.prompt_length :] == full.labels[full.prompt_length :]


def test_a_response_that_cannot_fit_is_refused_naming_the_record(tokenizer: Any) -> None:
    example = InstructionExample("q", "a much longer answer than fits", source="bank.jsonl line 7")
    with pytest.raises(DataError, match=r"bank.jsonl line 7: the response is .* max_seq_length"):
        encode_instruction(tokenizer, example, max_seq_length=4)


def test_chats_render_with_the_tokenizers_own_template(chat_tokenizer: Any) -> None:
    turns = (ChatTurn("system", "be brief"), ChatTurn("user", "fever?"))
    ids = prompt_ids(chat_tokenizer, turns)
    assert chat_tokenizer.decode(ids) == "[ system ] be brief [ user ] fever? [ assistant ]"
    encoded = encode_instruction(chat_tokenizer, InstructionExample(turns, "high"), 32)
    assert encoded.input_ids[: encoded.prompt_length] == tuple(ids)


def test_synthetic_federation_asks_the_same_question_with_domain_dependent_answers() -> None:
    federation = synthetic_instruction_federation(
        num_organizations=4, alpha=2.0, samples_per_org=80, seed=3
    )
    assert [o.domain for o in federation] == ["clinical", "banking", "clinical", "banking"]
    again = synthetic_instruction_federation(
        num_organizations=2, alpha=2.0, samples_per_org=80, seed=3
    )
    assert again[0] == federation[0] and again[1] == federation[1]
    answers: dict[str, set[str]] = {"clinical": set(), "banking": set()}
    for org in federation:
        assert len(org.train) == 60 and len(org.test) == 20
        for example in (*org.train, *org.test):
            question = example.prompt[0].content.split("\n")[0]  # type: ignore[union-attr]
            if question.startswith("Which team"):
                answers[org.domain].add(example.response)
    assert answers["clinical"] and answers["banking"]
    assert answers["clinical"].isdisjoint(answers["banking"])


def test_scores_of_what_a_model_writes() -> None:
    assert normalize_answer("  The Fraud-team! ") == "fraudteam"
    assert exact_match("Yes.", "yes") and not exact_match("yes, escalate", "yes")
    assert rouge_l_f1("fraud team", "fraud team") == pytest.approx(1.0)
    assert rouge_l_f1("the fraud team now", "fraud team") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert rouge_l_f1("payments", "fraud team") == 0.0
