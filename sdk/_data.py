"""Text-classification data: a seeded synthetic federation and loaders for user files.

The synthetic federation (ARCHITECTURE.md §8) is what every demo, test and learning benchmark
uses. Organizations alternate between domain groups (clinical triage notes, bank
transaction descriptions) that share ONE label space, a four-level priority, with:

* **Dirichlet label skew**: organization i's label proportions are drawn from
  Dirichlet(α·1), so small α gives organizations dominated by one or two labels
  (Hsu et al. 2019, arXiv:1909.06335).
* **Concept shift**: the strongest cue words are shared by both domains but mean
  different labels in each (a cue for `low` in clinical notes marks `high` in banking,
  and so on: a rotation by two levels), so a model trained on one domain is worse than
  chance on the other and pooling both domains blurs the cues.
* **Domain vocabulary**: each domain has its own label-bearing phrases (weaker, noisier
  evidence than the cues) and neutral context words.
* **A long tail**: cue words follow a Zipf law within each label, so a few hundred
  examples leave many cues unseen and pooling data within a domain pays off.

The loaders read CSV/TSV, JSON Lines and `datasets` saved with ``save_to_disk`` into a
:class:`TextDataset`, with errors that name the file, the line and the column.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from .errors import DataError

SYNTHETIC_LABELS: tuple[str, ...] = ("low", "medium", "high", "critical")
"""The label space every synthetic organization shares (a priority level)."""

# ---------------------------------------------------------------------------- vocabulary


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(phrase.strip() for phrase in text.split(","))


# Shared cue words, listed by their CLINICAL label, most frequent first within a label.
# In banking, a cue listed under label k means label (k + 2) mod 4 (see `_cue_label`).
_CUES: tuple[tuple[str, ...], ...] = (
    _words(
        "recurring scheduled annual previous weekly brief morning partial linked sequential "
        "monthly pending weekday quarterly standard initial interim shared combined seasonal"
    ),
    _words(
        "intermittent second daily manual extended evening batch recent remote holiday early "
        "third midday periodic prior final mixed automated returned regional"
    ),
    _words(
        "overnight repeated multiple weekend delayed foreign continuous irregular double frequent "
        "missing late afternoon split grouped updated renewed local external internal"
    ),
    _words(
        "unexpected flagged sudden unscheduled rapid ongoing night first duplicate unusual "
        "persistent reported secondary verbal written daytime hourly paired occasional latest"
    ),
)
_CUE_SHIFT = 2

# Label-bearing phrases of each domain, by label.
_PHRASES: dict[str, tuple[tuple[str, ...], ...]] = {
    "clinical": (
        _phrases(
            "prescription refill, routine checkup, vaccination booking, sick note request, mild "
            "cold, dietary advice, minor rash, blood pressure review"
        ),
        _phrases(
            "cough, ear infection, sprained ankle, urinary symptoms, back pain, moderate fever, "
            "skin infection, migraine"
        ),
        _phrases(
            "high fever, deep laceration, suspected fracture, asthma flare, abdominal pain, "
            "dehydration, kidney stone, allergic swelling"
        ),
        _phrases(
            "chest pain, stroke symptoms, unresponsive episode, heavy bleeding, breathing "
            "difficulty, anaphylaxis, seizure, suspected overdose"
        ),
    ),
    "banking": (
        _phrases(
            "grocery purchase, utility bill payment, salary deposit, coffee shop payment, pharmacy "
            "purchase, subscription renewal, bus fare, rent payment"
        ),
        _phrases(
            "address change, new payee, card replacement, limit increase, overseas purchase, cash "
            "withdrawal, loan inquiry, standing order change"
        ),
        _phrases(
            "chargeback claim, declined payments, password reset, wire transfer, crypto exchange "
            "deposit, gift card purchase, new device login, dormant account activity"
        ),
        _phrases(
            "account takeover, stolen card use, money mule pattern, sanctions match, phishing "
            "report, identity theft, unauthorized transfer, fraud ring link"
        ),
    ),
}

# Neutral context: who and where, no label information.
_SUBJECTS: dict[str, tuple[str, ...]] = {
    "clinical": _phrases(
        "patient, adult male, elderly woman, child, teenager, pregnant woman, older man, young "
        "adult, care home resident, student"
    ),
    "banking": _phrases(
        "customer, business account, joint account, student account, retail client, savings "
        "account, corporate card, private client, small business, pensioner account"
    ),
}
_CONTEXTS: dict[str, tuple[str, ...]] = {
    "clinical": _phrases(
        "called the nurse line, walked in, referred by the gp, brought in by family, seen at the "
        "front desk, booked online, arrived by ambulance, waiting in reception"
    ),
    "banking": _phrases(
        "via the mobile app, at a branch, through online banking, by phone, card present, "
        "contactless, at an atm, through the web portal"
    ),
}
_FILLERS: dict[str, tuple[str, ...]] = {
    "clinical": _phrases(
        "vitals recorded, history noted, no known allergies, notes attached, triage form complete, "
        "observations stable so far, family informed"
    ),
    "banking": _phrases(
        "reference attached, statement noted, merchant code logged, receipt on file, channel "
        "verified, balance checked, case opened"
    ),
}

# How often the domain phrase agrees with the label (otherwise it is a random label's).
_PHRASE_AGREEMENT = 0.55
# Probability that an example carries a second cue word.
_SECOND_CUE = 0.5
# Zipf exponent of cue frequencies within a label.
_ZIPF = 1.0
# Share of examples whose label is replaced by a uniformly random one.
_LABEL_NOISE = 0.03


def _cue_label(cue_index: int, domain_group: int) -> int:
    """Label a cue listed under clinical label ``cue_index`` means in ``domain_group``."""
    return (cue_index + _CUE_SHIFT * domain_group) % len(SYNTHETIC_LABELS)


def cue_words(domain: str, label: int) -> tuple[str, ...]:
    """The shared cue words that mark ``label`` in ``domain`` (for tests and demos)."""
    group = _domain_group(domain)
    return next(_CUES[k] for k in range(len(SYNTHETIC_LABELS)) if _cue_label(k, group) == label)


def _domain_group(domain: str) -> int:
    if domain not in _PHRASES:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose from {sorted(_PHRASES)}")
    return 0 if domain == "clinical" else 1


# ---------------------------------------------------------------------------- data sets


def split_indices(
    size: int, test_fraction: float, *, seed: int, noun: str
) -> tuple[list[int], list[int]]:
    """Seeded random ``(train, test)`` indices of ``size`` items, ``round(size ·
    test_fraction)`` of them for testing (``noun`` names the items in errors).

    Raises:
        DataError: ``test_fraction`` is not in (0, 1) or leaves a side empty.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}")
    n_test = round(size * test_fraction)
    if not 0 < n_test < size:
        raise DataError(
            f"test_fraction {test_fraction} of {size} {noun} leaves the train or test split empty"
        )
    order = np.random.default_rng(seed).permutation(size)
    return order[n_test:].tolist(), order[:n_test].tolist()


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels indexing ``label_names``."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"TextDataset needs one label per text, got {len(self.texts)} texts and "
                f"{len(self.labels)} labels"
            )
        if not self.label_names:
            raise DataError("TextDataset needs at least one label name")
        if len(set(self.label_names)) != len(self.label_names):
            raise DataError(f"label_names must be distinct, got {list(self.label_names)}")
        bad = [label for label in self.labels if not 0 <= label < len(self.label_names)]
        if bad:
            raise DataError(
                f"labels must be in 0..{len(self.label_names) - 1} (one per label name), "
                f"got {bad[0]}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(zip(self.texts, self.labels, strict=True))

    def label_counts(self) -> tuple[int, ...]:
        """Number of examples of each label, in ``label_names`` order."""
        counts = np.bincount(
            np.asarray(self.labels, dtype=np.int64), minlength=len(self.label_names)
        )
        return tuple(int(c) for c in counts)

    def select(self, indices: Iterable[int]) -> TextDataset:
        """The examples at ``indices``, in that order."""
        chosen = list(indices)
        return TextDataset(
            texts=tuple(self.texts[i] for i in chosen),
            labels=tuple(self.labels[i] for i in chosen),
            label_names=self.label_names,
        )

    def split(self, test_fraction: float, *, seed: int) -> tuple[TextDataset, TextDataset]:
        """A seeded random ``(train, test)`` split with ``round(n · test_fraction)`` tests.

        Raises:
            DataError: ``test_fraction`` is not in (0, 1) or leaves a side empty.
        """
        train, test = split_indices(len(self), test_fraction, seed=seed, noun="examples")
        return self.select(train), self.select(test)


@dataclass(frozen=True)
class OrganizationData:
    """One organization's local data, already split."""

    organization: str
    domain: str
    train: TextDataset
    test: TextDataset


# ---------------------------------------------------------------------------- generator


def _zipf_weights(size: int) -> npt.NDArray[np.float64]:
    weights: npt.NDArray[np.float64] = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** _ZIPF
    normalized: npt.NDArray[np.float64] = weights / float(weights.sum())
    return normalized


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _example(rng: np.random.Generator, domain: str, label: int) -> str:
    """One short text of ``domain`` whose true label is ``label``."""
    group = _domain_group(domain)
    cue_list = next(_CUES[k] for k in range(len(SYNTHETIC_LABELS)) if _cue_label(k, group) == label)
    weights = _zipf_weights(len(cue_list))
    n_cues = 2 if rng.random() < _SECOND_CUE else 1
    cues = [cue_list[int(i)] for i in rng.choice(len(cue_list), size=n_cues, p=weights)]
    phrase_label = label if rng.random() < _PHRASE_AGREEMENT else int(rng.integers(4))
    phrase = _pick(rng, _PHRASES[domain][phrase_label])
    subject = _pick(rng, _SUBJECTS[domain])
    context = _pick(rng, _CONTEXTS[domain])
    if domain == "clinical":
        text = f"{subject} {context} with {cues[0]} {phrase}"
        if n_cues == 2:
            text += f", {cues[1]} episodes"
    else:
        text = f"{cues[0]} {phrase} on {subject} {context}"
        if n_cues == 2:
            text += f", {cues[1]} activity"
    if rng.random() < 0.5:
        text += f", {_pick(rng, _FILLERS[domain])}"
    return text


def synthetic_federation(
    *,
    num_organizations: int,
    alpha: float,
    samples_per_org: int,
    seed: int,
    test_fraction: float = 0.25,
    domains: Sequence[str] = ("clinical", "banking"),
) -> list[OrganizationData]:
    """A seeded multi-domain federation with label skew and concept shift.

    Organization ``i`` is ``f"{domain}-{i:02d}"`` with ``domain = domains[i % len]``;
    its label proportions are Dirichlet(α·1); it gets ``samples_per_org`` examples split
    into train and test with the same proportions (a personalized-FL evaluation).
    Organization ``i``'s data depends only on ``seed`` and ``i``, not on how many
    organizations there are.

    Raises:
        ValueError: an argument is out of range or a domain is unknown.
    """
    if num_organizations < 1:
        raise ValueError(f"`num_organizations` must be >= 1, got {num_organizations}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"`alpha` must be a finite number > 0, got {alpha!r}")
    if samples_per_org < 2:
        raise ValueError(f"`samples_per_org` must be >= 2, got {samples_per_org}")
    if not domains:
        raise ValueError("`domains` must name at least one domain")
    for domain in domains:
        _domain_group(domain)
    children = np.random.SeedSequence(seed).spawn(num_organizations)
    federation = []
    for index, child in enumerate(children):
        rng = np.random.default_rng(child)
        domain = domains[index % len(domains)]
        proportions = rng.dirichlet(np.full(len(SYNTHETIC_LABELS), alpha))
        labels = rng.choice(len(SYNTHETIC_LABELS), size=samples_per_org, p=proportions)
        texts = tuple(_example(rng, domain, int(label)) for label in labels)
        noisy = rng.random(samples_per_org) < _LABEL_NOISE
        random_labels = rng.integers(len(SYNTHETIC_LABELS), size=samples_per_org)
        final_labels = np.where(noisy, random_labels, labels)
        local = TextDataset(
            texts=texts,
            labels=tuple(int(label) for label in final_labels),
            label_names=SYNTHETIC_LABELS,
        )
        train, test = local.split(test_fraction, seed=int(rng.integers(2**63)))
        federation.append(
            OrganizationData(
                organization=f"{domain}-{index:02d}", domain=domain, train=train, test=test
            )
        )
    return federation


# ---------------------------------------------------------------------------- loaders

DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
"""Largest record a loader accepts by default: 1 MiB, far above any text a model reads
(`max_seq_length` is at most 8192 tokens), far below what exhausts a machine's memory."""

_INTEGER = re.compile(r"^\s*[+]?\d+\s*$")


class _RecordLines:
    """The lines of a text file, refusing a record over ``max_record_bytes`` (UTF-8).

    A record is a JSON Lines line or a CSV row, which spans several lines when a quoted
    field holds a line break; the caller calls `next_record` between records. A line is
    read at most the room left in the record (plus a line break) at a time, so an
    oversized record is refused without being held in memory whole. The handle is
    opened with ``newline=""``: "\\n", "\\r\\n" and "\\r" end lines and are kept, as
    the `csv` module expects.
    """

    def __init__(self, handle: TextIO, file: Path, max_record_bytes: int) -> None:
        self._handle = handle
        self._file = file
        self._limit = max_record_bytes
        self._record_bytes = 0
        self.lines_read = 0
        self.record_line = 1
        """Line number where the current record starts."""

    def next_record(self) -> None:
        """Start counting a new record at the next line."""
        self._record_bytes = 0
        self.record_line = self.lines_read + 1

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        # Two characters more than the room left: a record that fits still ends in "\r\n".
        size = self._limit - self._record_bytes + 2
        line = self._handle.readline(size)
        if not line:
            raise StopIteration
        self.lines_read += 1
        self._record_bytes += len(line.rstrip("\r\n").encode())
        cut_short = len(line) == size and not line.endswith(("\n", "\r"))
        if self._record_bytes > self._limit or cut_short:
            raise DataError(
                f"{self._file} line {self.record_line}: record larger than "
                f"max_record_bytes={self._limit}; if such records are intended, raise the cap "
                "(`max_record_bytes=` in Python, `--max-record-bytes` on `fedhft client run`)"
            )
        return line


def _label_index(value: object, label_names: Sequence[str] | None, where: str) -> int:
    """The label index of a raw ``value`` (an int, an integer string, or a label name)."""
    if isinstance(value, str) and label_names is not None and value in label_names:
        return list(label_names).index(value)
    if isinstance(value, bool):
        index = None
    elif isinstance(value, int):
        index = value
    elif isinstance(value, str) and _INTEGER.match(value):
        index = int(value)
    else:
        index = None
    if index is None:
        if label_names is None:
            raise DataError(
                f"{where}: label {value!r} is not a non-negative integer; pass "
                "label_names=[...] to use label names (the order must be the same in "
                "every organization)"
            )
        raise DataError(
            f"{where}: label {value!r} is neither a label name nor an index; allowed: "
            f"{list(label_names)} or 0..{len(label_names) - 1}"
        )
    if index < 0 or (label_names is not None and index >= len(label_names)):
        allowed = "a non-negative integer" if label_names is None else f"0..{len(label_names) - 1}"
        raise DataError(f"{where}: label {value!r} is outside the label set; allowed: {allowed}")
    return index


def _text_value(value: object, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: column {column!r} is empty")
    return value


def _build(
    path: Path,
    rows: Sequence[tuple[str, int]],
    label_names: Sequence[str] | None,
) -> TextDataset:
    if not rows:
        raise DataError(f"{path} has no examples")
    texts = tuple(text for text, _ in rows)
    labels = tuple(label for _, label in rows)
    names = (
        tuple(label_names)
        if label_names is not None
        else tuple(str(i) for i in range(max(labels) + 1))
    )
    return TextDataset(texts=texts, labels=labels, label_names=names)


def _missing_columns(
    path: Path, present: Sequence[str], wanted: Sequence[str], where: str = ""
) -> None:
    missing = [column for column in wanted if column not in present]
    if missing:
        raise DataError(
            f"{path}{where}: missing column(s) {missing}; columns present: {list(present)}; "
            "pass text_column=/label_column= to name yours"
        )


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"{path} is not a file")


def _ragged(got: int, expected: int, delimiter: str) -> str:
    fields = "1 field" if got == 1 else f"{got} fields"
    fix = (
        f"quote a field that holds {delimiter!r}"
        if got > expected
        else "give every column a value, empty or not"
    )
    return f"{fields}, the header has {expected}; {fix}"


def load_csv(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    delimiter: str = ",",
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> TextDataset:
    """A CSV (or, with ``delimiter="\\t"``, TSV) file with a header row.

    Labels are integers indexing ``label_names``, or names in ``label_names``. Without
    ``label_names`` labels must be integers and are named ``"0"``, ``"1"``, ...
    Every row must have as many fields as the header; blank lines are skipped.

    Raises:
        DataError: missing file, empty file, missing columns, a row with more or fewer
            fields than the header, a row over ``max_record_bytes`` bytes, empty text,
            or a label that is not an integer / not in the label set (naming the line).
    """
    file = Path(path)
    _require_file(file)
    rows: list[tuple[str, int]] = []
    with file.open(newline="", encoding="utf-8-sig") as handle:
        lines = _RecordLines(handle, file, max_record_bytes)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{file} is empty; expected a header row and examples")
            _missing_columns(file, header, (text_column, label_column))
            text_at, label_at = header.index(text_column), header.index(label_column)
            lines.next_record()
            for fields in reader:
                where = f"{file} line {lines.record_line}"
                if fields:
                    if len(fields) != len(header):
                        raise DataError(f"{where}: {_ragged(len(fields), len(header), delimiter)}")
                    rows.append(
                        (
                            _text_value(fields[text_at], text_column, where),
                            _label_index(fields[label_at].strip(), label_names, where),
                        )
                    )
                lines.next_record()
        except UnicodeDecodeError as error:
            raise DataError(f"{file} is not UTF-8 text: {error.reason}") from error
        except csv.Error as error:
            raise DataError(f"{file} line {lines.record_line}: not valid CSV: {error}") from error
    if not rows:
        raise DataError(f"{file} has a header but no examples")
    return _build(file, rows, label_names)


def load_jsonl(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> TextDataset:
    """A JSON Lines file: one object per line with a text and a label field.

    Blank lines are skipped. Labels as in :func:`load_csv` (JSON integers too).

    Raises:
        DataError: missing or empty file, a line that is not a JSON object or is over
            ``max_record_bytes`` bytes, missing fields, empty text, or a bad label
            (naming the line).
    """
    file = Path(path)
    _require_file(file)
    rows: list[tuple[str, int]] = []
    try:
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
                _missing_columns(file, list(item), (text_column, label_column), f" line {number}")
                rows.append(
                    (
                        _text_value(item[text_column], text_column, where),
                        _label_index(item[label_column], label_names, where),
                    )
                )
    except UnicodeDecodeError as error:
        raise DataError(f"{file} is not UTF-8 text: {error.reason}") from error
    if not rows:
        raise DataError(f"{file} is empty; expected one JSON object per line")
    return _build(file, rows, label_names)


def load_from_disk(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    split: str | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> TextDataset:
    """A Hugging Face ``datasets`` data set saved with ``save_to_disk``.

    A ``DatasetDict`` needs ``split`` unless it holds one split. A ``ClassLabel`` label
    column supplies ``label_names`` when none are given; when both are given, labels are
    mapped by name.

    Raises:
        DataError: missing folder, not a saved data set, unknown split, missing columns,
            no rows, a text over ``max_record_bytes`` bytes, or a bad label (naming the
            row index).
    """
    from datasets import ClassLabel, Dataset, DatasetDict
    from datasets import load_from_disk as hf_load_from_disk

    folder = Path(path)
    if not folder.exists():
        raise DataError(f"data set folder {folder} does not exist")
    try:
        loaded = hf_load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise DataError(
            f"{folder} is not a data set saved with `datasets` save_to_disk: {error}"
        ) from error
    if isinstance(loaded, DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            raise DataError(f"{folder}: choose split= among {splits}, got {split!r}")
        loaded = loaded[split]
    if not isinstance(loaded, Dataset):
        raise DataError(f"{folder} holds a {type(loaded).__name__}, not a Dataset")
    _missing_columns(folder, loaded.column_names, (text_column, label_column))
    if len(loaded) == 0:
        raise DataError(f"{folder} has no rows")
    feature = loaded.features[label_column]
    class_names: list[str] | None = list(feature.names) if isinstance(feature, ClassLabel) else None
    names = label_names if label_names is not None else class_names
    rows: list[tuple[str, int]] = []
    for index, (text, label) in enumerate(
        zip(loaded[text_column], loaded[label_column], strict=True)
    ):
        where = f"{folder} row {index}"
        if isinstance(text, str) and len(text.encode()) > max_record_bytes:
            raise DataError(
                f"{where}: text larger than max_record_bytes={max_record_bytes}; if such "
                "records are intended, raise the cap (`max_record_bytes=` in Python, "
                "`--max-record-bytes` on `fedhft client run`)"
            )
        if class_names is not None and isinstance(label, int) and 0 <= label < len(class_names):
            label = class_names[label]
        rows.append((_text_value(text, text_column, where), _label_index(label, names, where)))
    return _build(folder, rows, names)


def load_dataset_file(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    split: str | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> TextDataset:
    """Load ``path`` by its kind: a folder (``save_to_disk``), ``.csv``, ``.tsv``,
    ``.jsonl`` or ``.ndjson``, refusing any record over ``max_record_bytes`` bytes.

    Raises:
        DataError: the path is missing or of an unsupported kind, or loading fails.
    """
    target = Path(path)
    if not target.exists():
        raise DataError(f"data path {target} does not exist")
    columns: dict[str, Any] = {
        "text_column": text_column,
        "label_column": label_column,
        "label_names": label_names,
        "max_record_bytes": max_record_bytes,
    }
    if target.is_dir():
        return load_from_disk(target, split=split, **columns)
    suffix = target.suffix.lower()
    if suffix == ".csv":
        return load_csv(target, **columns)
    if suffix == ".tsv":
        return load_csv(target, delimiter="\t", **columns)
    if suffix in (".jsonl", ".ndjson"):
        return load_jsonl(target, **columns)
    raise DataError(
        f"{target}: unsupported data file type {suffix or '(none)'!r}; use .csv, .tsv, "
        ".jsonl, .ndjson or a folder saved with `datasets` save_to_disk"
    )
