"""Instruction-tuning data: records users bring, a seeded synthetic federation, and encoding.

What a hospital or a bank brings to tune a decoder on its own prompts comes in three common
shapes, one per record (JSON Lines, CSV/TSV or a `datasets` folder saved to disk):

* ``instruction`` (+ optional ``input``) and ``output`` — Alpaca / Dolly style;
* ``prompt`` and ``completion`` — raw text, the completion follows the prompt verbatim;
* ``messages`` — a chat: ``[{"role": ..., "content": ...}, ...]`` ending with the
  assistant's answer, rendered with the tokenizer's own chat template.

Every record becomes an `InstructionExample`: a prompt (text or chat turns) and the response
the model must learn to write. `encode_instruction` turns it into token ids and labels for a
causal LM: the loss covers the response tokens (and the end-of-sequence token) only;
truncation keeps the whole response and cuts the prompt from the left; a record whose
response cannot fit ``max_seq_length`` is refused naming where it came from.

The synthetic federation (ARCHITECTURE.md §8) reuses the classification generator's texts —
clinical triage notes and bank transactions whose strongest cue words mean different
priorities in the two domain groups — and asks four short-answer questions about them (a
priority level, the team that handles the case, an amount to set aside, whether to escalate)
with the SAME wording in both domains, so the right answer depends on the organization's
domain: what a shared model cannot learn and a personalized one can.

Scoring what a model writes: ROUGE-L F1 (the `rouge-score` package, FedAMoLE's metric) and
exact match after SQuAD-style normalization (lower case, no punctuation or articles, single
spaces).
"""

from __future__ import annotations

import csv
import json
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._data import (
    DEFAULT_MAX_RECORD_BYTES,
    SYNTHETIC_LABELS,
    _RecordLines,
    _require_file,
    split_indices,
    synthetic_federation,
)
from .errors import DataError

IGNORE_INDEX = -100
"""The label of a position the loss skips (prompt and padding), as PyTorch's cross-entropy."""

CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")

_SHAPES = {
    "instruction": ("instruction", "output"),
    "prompt": ("prompt", "completion"),
    "messages": ("messages",),
}


@dataclass(frozen=True)
class ChatTurn:
    """One turn of a chat: ``role`` is ``system``, ``user`` or ``assistant``."""

    role: str
    content: str


@dataclass(frozen=True)
class InstructionExample:
    """A prompt and the response to learn.

    ``prompt`` is raw text (``prompt``/``completion`` records) or the chat turns before the
    answer (``instruction`` and ``messages`` records, rendered with the tokenizer's chat
    template). ``source`` says where the record came from (file and line), for errors.
    """

    prompt: str | tuple[ChatTurn, ...]
    response: str
    source: str = ""

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        if not self.response.strip():
            raise DataError(f"{where}the response is empty; every record needs an answer")
        if isinstance(self.prompt, str):
            if not self.prompt.strip():
                raise DataError(f"{where}the prompt is empty")
        elif not any(turn.role == "user" for turn in self.prompt):
            raise DataError(f"{where}the chat has no user turn before the answer")


@dataclass(frozen=True)
class InstructionDataset:
    """An organization's instruction records, in order."""

    examples: tuple[InstructionExample, ...]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[InstructionExample]:
        return iter(self.examples)

    def select(self, indices: Iterable[int]) -> InstructionDataset:
        """The records at ``indices``, in that order."""
        return InstructionDataset(tuple(self.examples[i] for i in indices))

    def split(
        self, test_fraction: float, *, seed: int
    ) -> tuple[InstructionDataset, InstructionDataset]:
        """A seeded random ``(train, test)`` split with ``round(n · test_fraction)`` tests.

        Raises:
            DataError: ``test_fraction`` is not in (0, 1) or leaves a side empty.
        """
        train, test = split_indices(len(self), test_fraction, seed=seed, noun="records")
        return self.select(train), self.select(test)


@dataclass(frozen=True)
class InstructionOrganization:
    """One synthetic organization's instruction data, already split."""

    organization: str
    domain: str
    train: InstructionDataset
    test: InstructionDataset


# ---------------------------------------------------------------------------- records


def _text_field(item: Mapping[str, Any], field: str, where: str, *, required: bool) -> str:
    value = item.get(field)
    if value is None:
        if required:
            raise DataError(f"{where}: field {field!r} is missing")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be text, got {type(value).__name__}")
    return value


def _chat_turns(value: object, where: str) -> tuple[ChatTurn, ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of turns")
    turns = []
    for index, turn in enumerate(value):
        at = f"{where}: messages[{index}]"
        if not isinstance(turn, Mapping) or set(turn) - {"role", "content"}:
            raise DataError(f"{at} must be an object with 'role' and 'content' only")
        role, content = turn.get("role"), turn.get("content")
        if role not in CHAT_ROLES:
            raise DataError(f"{at}: role must be one of {list(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{at}: 'content' must be text")
        turns.append(ChatTurn(str(role), content))
    if turns[-1].role != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer")
    return tuple(turns)


def instruction_from_record(item: Mapping[str, Any], where: str) -> InstructionExample:
    """The `InstructionExample` of one record in any of the three shapes.

    Raises:
        DataError: the record matches no shape or several, misses a field of its shape, has
            an empty response, or a malformed chat (naming ``where`` and the field).
    """
    shapes = [name for name, fields in _SHAPES.items() if fields[0] in item]
    if len(shapes) != 1:
        found = "none" if not shapes else " and ".join(repr(s) for s in shapes)
        raise DataError(
            f"{where}: a record needs exactly one of 'instruction' (+ 'input', 'output'), "
            f"'prompt' (+ 'completion') or 'messages'; found {found}"
        )
    shape = shapes[0]
    if shape == "messages":
        turns = _chat_turns(item["messages"], where)
        return InstructionExample(turns[:-1], turns[-1].content, where)
    if shape == "prompt":
        prompt = _text_field(item, "prompt", where, required=True)
        completion = _text_field(item, "completion", where, required=True)
        return InstructionExample(prompt, completion, where)
    instruction = _text_field(item, "instruction", where, required=True)
    extra = _text_field(item, "input", where, required=False)
    output = _text_field(item, "output", where, required=True)
    if not instruction.strip():
        raise DataError(f"{where}: field 'instruction' is empty")
    content = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return InstructionExample((ChatTurn("user", content),), output, where)


def _load_jsonl(file: Path, max_record_bytes: int) -> list[InstructionExample]:
    examples = []
    with file.open(newline="", encoding="utf-8-sig") as handle:
        lines = _RecordLines(handle, file, max_record_bytes)
        for line in lines:
            number = lines.record_line
            lines.next_record()
            if not line.strip():
                continue
            where = f"{file} line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg})") from error
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
            examples.append(instruction_from_record(item, where))
    return examples


def _load_csv(file: Path, delimiter: str, max_record_bytes: int) -> list[InstructionExample]:
    examples = []
    with file.open(newline="", encoding="utf-8-sig") as handle:
        lines = _RecordLines(handle, file, max_record_bytes)
        reader = csv.reader(lines, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{file} is empty; expected a header row and records")
        if "messages" in header:
            raise DataError(f"{file}: chat 'messages' records need JSON Lines or a data set")
        lines.next_record()
        for fields in reader:
            where = f"{file} line {lines.record_line}"
            if fields:
                if len(fields) != len(header):
                    raise DataError(
                        f"{where}: {len(fields)} fields where the header has {len(header)}"
                    )
                item = {k: v for k, v in zip(header, fields, strict=True) if v != ""}
                examples.append(instruction_from_record(item, where))
            lines.next_record()
    return examples


def _load_saved(folder: Path, split: str | None) -> list[InstructionExample]:
    from datasets import Dataset, DatasetDict
    from datasets import load_from_disk as hf_load_from_disk

    try:
        loaded = hf_load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise DataError(f"{folder} is not a data set saved with `datasets` save_to_disk") from (
            error
        )
    if isinstance(loaded, DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            raise DataError(f"{folder}: choose split= among {splits}, got {split!r}")
        loaded = loaded[split]
    if not isinstance(loaded, Dataset):
        raise DataError(f"{folder} holds a {type(loaded).__name__}, not a Dataset")
    return [
        instruction_from_record(
            {k: v for k, v in row.items() if v is not None}, f"{folder} row {index}"
        )
        for index, row in enumerate(loaded)
    ]


def load_instructions(
    path: str | Path,
    *,
    split: str | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> InstructionDataset:
    """Load instruction records by the path's kind: ``.jsonl``/``.ndjson``, ``.csv``,
    ``.tsv``, or a folder saved with ``datasets``' ``save_to_disk``.

    Raises:
        DataError: a missing path, an unsupported kind, no records, or a bad record
            (naming the file, the line and the field).
    """
    target = Path(path)
    if not target.exists():
        raise DataError(f"data path {target} does not exist")
    suffix = target.suffix.lower()
    if target.is_dir():
        examples = _load_saved(target, split)
    else:
        _require_file(target)
        if suffix in (".jsonl", ".ndjson"):
            examples = _load_jsonl(target, max_record_bytes)
        elif suffix in (".csv", ".tsv"):
            examples = _load_csv(target, "\t" if suffix == ".tsv" else ",", max_record_bytes)
        else:
            raise DataError(
                f"{target}: unsupported kind {suffix!r}; use .jsonl, .ndjson, .csv, .tsv or a "
                "folder saved with `datasets`"
            )
    if not examples:
        raise DataError(f"{target} holds no records")
    return InstructionDataset(tuple(examples))


# ---------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncodedInstruction:
    """Token ids of prompt + response, and labels that are `IGNORE_INDEX` on the prompt."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_length: int
    """Number of prompt tokens kept (the response starts here)."""


def _plain_chat(turns: Sequence[ChatTurn]) -> str:
    # Tokenizers without a chat template (tiny test tokenizers, base models) get a plain,
    # documented layout; instruct models render their own template.
    rendered = "".join(f"{turn.role.capitalize()}: {turn.content}\n" for turn in turns)
    return rendered + "Assistant: "


def render_prompt(tokenizer: Any, prompt: str | Sequence[ChatTurn]) -> str:
    """The prompt as the model reads it: raw text, or chat turns through the tokenizer's
    chat template with the generation prompt added."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": turn.role, "content": turn.content} for turn in prompt]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return str(text)
    return _plain_chat(prompt)


def prompt_ids(tokenizer: Any, prompt: str | Sequence[ChatTurn]) -> list[int]:
    """Token ids of the rendered prompt (what generation starts from)."""
    text = render_prompt(tokenizer, prompt)
    # A chat template writes its own special tokens; raw text gets the tokenizer's.
    special = isinstance(prompt, str) or not getattr(tokenizer, "chat_template", None)
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_instruction(
    tokenizer: Any, example: InstructionExample, max_seq_length: int
) -> EncodedInstruction:
    """Token ids and response-only labels of one record, at most ``max_seq_length`` long.

    Prompt and response are tokenized separately, so the boundary is exactly where
    generation starts; the response ends with the tokenizer's end-of-sequence token. When
    the record is too long, prompt tokens are dropped from the left.

    Raises:
        DataError: the response (with its end token) leaves no room for one prompt token.
    """
    prompt = prompt_ids(tokenizer, example.prompt)
    response = list(tokenizer(example.response, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id
    if eos is not None:
        response.append(int(eos))
    room = max_seq_length - len(response)
    if room < 1:
        where = f"{example.source}: " if example.source else ""
        raise DataError(
            f"{where}the response is {len(response)} tokens, which leaves no room for the "
            f"prompt in max_seq_length = {max_seq_length}; shorten the response or raise "
            "training.max_seq_length"
        )
    kept = prompt[-room:]
    return EncodedInstruction(
        input_ids=tuple(kept + response),
        labels=tuple([IGNORE_INDEX] * len(kept) + response),
        prompt_length=len(kept),
    )


# ---------------------------------------------------------------------------- synthetic

# The same four questions in both domains; each answer depends on the case's priority
# (0..3) AND on the domain, through the cue words' concept shift and the answer tables.
_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("priority", "What priority should this case get? Answer with one word."),
    ("team", "Which team should handle this case?"),
    ("amount", "How much should be set aside for this case?"),
    ("escalate", "Does this case need escalation? Answer yes or no."),
)
_ANSWERS: dict[str, dict[str, tuple[str, ...]]] = {
    "clinical": {
        "priority": SYNTHETIC_LABELS,
        "team": ("pharmacy", "general practice", "urgent care", "emergency"),
        "amount": ("$20", "$150", "$900", "$6000"),
        "escalate": ("no", "no", "yes", "yes"),
    },
    "banking": {
        "priority": SYNTHETIC_LABELS,
        "team": ("payments", "customer service", "disputes", "fraud team"),
        "amount": ("$0", "$250", "$2500", "$25000"),
        "escalate": ("no", "no", "yes", "yes"),
    },
}


def synthetic_instruction_federation(
    *,
    num_organizations: int,
    alpha: float,
    samples_per_org: int,
    seed: int,
    test_fraction: float = 0.25,
    domains: Sequence[str] = ("clinical", "banking"),
) -> list[InstructionOrganization]:
    """A seeded instruction federation of clinical and banking organizations.

    Organization ``i`` gets the texts and priorities of `synthetic_federation` (Dirichlet(α)
    label skew, concept shift between domain groups) and, for each text, one of four
    questions drawn from its own Dirichlet(α) mix of questions; the answer is that
    question's answer for the text's priority in the organization's domain. Organization
    ``i``'s data depends only on ``seed`` and ``i``.

    Raises:
        ValueError: an argument is out of range or a domain has no answer table.
    """
    unknown = [d for d in domains if d not in _ANSWERS]
    if unknown:
        raise ValueError(f"no instruction answers for domains {unknown}; use {list(_ANSWERS)}")
    texts = synthetic_federation(
        num_organizations=num_organizations,
        alpha=alpha,
        samples_per_org=samples_per_org,
        seed=seed,
        test_fraction=test_fraction,
        domains=domains,
    )
    children = np.random.SeedSequence([seed, 1]).spawn(num_organizations)
    federation = []
    for org, child in zip(texts, children, strict=True):
        rng = np.random.default_rng(child)
        mix = rng.dirichlet(np.full(len(_QUESTIONS), alpha))

        def records(
            data: Iterable[tuple[str, int]],
            rng: np.random.Generator = rng,
            mix: np.ndarray[Any, Any] = mix,
            domain: str = org.domain,
        ) -> InstructionDataset:
            examples = []
            for text, label in data:
                kind, question = _QUESTIONS[int(rng.choice(len(_QUESTIONS), p=mix))]
                answer = _ANSWERS[domain][kind][label]
                prompt = (ChatTurn("user", f"{question}\nCase: {text}"),)
                examples.append(InstructionExample(prompt, answer))
            return InstructionDataset(tuple(examples))

        federation.append(
            InstructionOrganization(
                org.organization, org.domain, records(org.train), records(org.test)
            )
        )
    return federation


# ---------------------------------------------------------------------------- scoring

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (SQuAD)."""
    lowered = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the two answers are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference`` (the `rouge-score` package)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)
