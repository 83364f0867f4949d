"""Loading policy files: error messages, YAML round-trip, JSON Schema."""

from __future__ import annotations

import json
import math
import re
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.policies import (
    Accountant,
    ConsortiumConfig,
    NoiseSource,
    OrganizationPolicy,
    PolicyError,
    PrivacyBudget,
    SecureAggregationMode,
    TrainingLimits,
    dump_yaml,
    load_any,
    load_consortium_config,
    load_organization_policy,
    parse_policy,
    policy_hash,
)
from fedhft.policies._load import MAX_POLICY_BYTES
from fedhft.policies._schema import SecureAggregationRequirements


def test_all_examples_load(examples_dir: Path) -> None:
    """Every shipped example loads as the kind it declares."""
    kinds = {p.name: load_any(p).kind for p in sorted(examples_dir.glob("*.yaml"))}
    assert kinds.pop("consortium.yaml") == "consortium"
    assert len(kinds) == 5 and set(kinds.values()) == {"organization"}


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A missing file is a PolicyError naming the path."""
    with pytest.raises(PolicyError, match=r"missing\.yaml: cannot read"):
        load_organization_policy(tmp_path / "missing.yaml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    """Broken YAML reports the file and line."""
    path = tmp_path / "bad.yaml"
    path.write_text("kind: organization\nprivacy: [unclosed\n")
    with pytest.raises(PolicyError, match=r"bad.yaml: not valid YAML at line \d"):
        load_any(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    """A YAML list at the top level is refused."""
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(PolicyError, match="mapping"):
        load_consortium_config(path)


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    """`kind` must name one of the two file kinds."""
    path = tmp_path / "k.yaml"
    path.write_text("kind: bank\n")
    with pytest.raises(PolicyError, match="kind: must be one of consortium, organization"):
        load_any(path)


def test_error_names_file_and_field(tmp_path: Path, examples_dir: Path) -> None:
    """A negative epsilon in a file is reported as `file: privacy.epsilon: ...`."""
    text = (examples_dir / "glen-clinic.yaml").read_text().replace("epsilon: 8.0", "epsilon: -1")
    path = tmp_path / "glen.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_organization_policy(path)
    assert caught.value.problems == [
        f"{path}: privacy.epsilon: Input should be greater than 0, got -1"
    ]


def test_schema_accepts_every_example(examples_dir: Path) -> None:
    """The published JSON Schemas are valid and the examples satisfy them."""
    schemas = {
        "organization": OrganizationPolicy.model_json_schema(),
        "consortium": ConsortiumConfig.model_json_schema(),
    }
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for path in examples_dir.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        jsonschema.validate(data, schemas[data["kind"]])
    bad = yaml.safe_load((examples_dir / "harbour-bank.yaml").read_text())
    bad["privacy"]["epsilom"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas["organization"])


identifiers = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)


@st.composite
def organization_policies(draw: st.DrawFn) -> OrganizationPolicy:
    steps = draw(st.booleans())
    return OrganizationPolicy(
        organization=draw(identifiers),
        consortium=draw(identifiers),
        privacy=PrivacyBudget(
            epsilon=draw(positive),
            delta=draw(st.floats(min_value=1e-12, max_value=0.5)),
            accountant=draw(st.sampled_from([a for a in Accountant if a.enforces_budget])),
            max_grad_norm=draw(positive),
            noise_multiplier=draw(st.one_of(st.just("auto"), positive)),
            planned_rounds=draw(st.integers(1, 1000)),
            noise_source=draw(st.sampled_from(NoiseSource)),
        ),
        training=TrainingLimits(
            tier=draw(identifiers),
            batch_size=draw(st.integers(1, 512)),
            local_steps=draw(st.integers(1, 1000)) if steps else None,
            local_epochs=None if steps else draw(positive),
            max_seq_length=draw(st.integers(8, 512)),
            memory_limit_mb=draw(st.one_of(st.none(), st.integers(64, 10**6))),
        ),
        secure_aggregation=SecureAggregationRequirements(
            accepted_modes=draw(
                st.lists(st.sampled_from(SecureAggregationMode), min_size=1, unique=True)
            ),
            min_cohort=draw(st.integers(3, 100)),
        ),
    )


@settings(max_examples=60, deadline=None)
@given(organization_policies())
def test_policy_round_trips_through_yaml(policy: OrganizationPolicy) -> None:
    """Any valid policy dumped to YAML loads back equal, with the same hash."""
    loaded = parse_policy(yaml.safe_load(dump_yaml(policy)), OrganizationPolicy, "rt")
    assert loaded == policy
    assert policy_hash(loaded) == policy_hash(policy)


def test_consortium_round_trips_through_yaml(examples_dir: Path) -> None:
    """The example consortium survives a YAML round-trip unchanged."""
    config = load_consortium_config(examples_dir / "consortium.yaml")
    again = parse_policy(yaml.safe_load(dump_yaml(config)), ConsortiumConfig, "rt")
    assert again == config
    assert json.loads(again.model_dump_json()) == json.loads(config.model_dump_json())


@pytest.mark.parametrize("written", ["1e-5", "1E-05", "0.1e-4", "+1e-5"])
def test_exponent_without_a_dot_is_a_number(
    tmp_path: Path, examples_dir: Path, written: str
) -> None:
    """`delta: 1e-5` is the float 1e-5 (YAML 1.2 and JSON), not a string strict types refuse."""
    path = tmp_path / "glen.yaml"
    path.write_text(_glen(examples_dir, "delta: 1.0e-5", f"delta: {written}"))
    assert load_organization_policy(path).privacy.delta == pytest.approx(1e-5)


def test_policy_written_as_json_loads_back_equal(tmp_path: Path, examples_dir: Path) -> None:
    """A policy dumped with `json.dumps` (which writes 1e-05) loads back equal."""
    policy = load_organization_policy(examples_dir / "glen-clinic.yaml")
    path = tmp_path / "glen.json"
    path.write_text(json.dumps(policy.model_dump(mode="json")))
    assert "1e-05" in path.read_text()
    assert load_organization_policy(path) == policy


# ------------------------------------------------------------------ hostile files


def _glen(examples_dir: Path, old: str = "", new: str = "") -> str:
    text = (examples_dir / "glen-clinic.yaml").read_text()
    assert old in text
    return text.replace(old, new, 1)


def _problems_of(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_any(path)
    return caught.value.problems


def test_duplicate_key_is_refused(tmp_path: Path, examples_dir: Path) -> None:
    """`epsilon: 8.0` then `epsilon: 80.0` is an error naming both lines, not a silent 80."""
    path = tmp_path / "dup.yaml"
    path.write_text(_glen(examples_dir, "  epsilon: 8.0\n", "  epsilon: 8.0\n  epsilon: 80.0\n"))
    assert _problems_of(path) == [f"{path}: privacy.epsilon: given twice (lines 5 and 6); keep one"]


def test_duplicate_top_level_key_is_refused(tmp_path: Path, examples_dir: Path) -> None:
    """A section given twice is refused too, whatever its contents."""
    path = tmp_path / "dup.yaml"
    path.write_text(_glen(examples_dir) + "audit:\n  log_path: elsewhere.jsonl\n")
    (problem,) = _problems_of(path)
    assert problem.startswith(f"{path}: audit: given twice (lines 21 and 23)")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", ".Inf"])
def test_infinite_epsilon_is_refused_naming_the_file(
    tmp_path: Path, examples_dir: Path, value: str
) -> None:
    """`epsilon: .inf` (or nan) fails validation with the file and field named."""
    path = tmp_path / "inf.yaml"
    path.write_text(_glen(examples_dir, "epsilon: 8.0", f"epsilon: {value}"))
    (problem,) = _problems_of(path)
    assert problem.startswith(f"{path}: privacy.epsilon: Input should be a finite number")


def test_boolean_batch_size_is_refused(tmp_path: Path, examples_dir: Path) -> None:
    """`batch_size: true` is a type error, not a batch of 1."""
    path = tmp_path / "bool.yaml"
    path.write_text(_glen(examples_dir, "batch_size: 32", "batch_size: true"))
    assert _problems_of(path) == [
        f"{path}: training.batch_size: Input should be a valid integer, got True"
    ]


def test_non_utf8_file_is_one_line(tmp_path: Path, examples_dir: Path) -> None:
    """A Latin-1 file is a PolicyError saying where the first bad byte is."""
    path = tmp_path / "latin.yaml"
    text = _glen(examples_dir, "tier: edge", "tier: edge # café")
    path.write_bytes(text.encode("latin-1"))
    offset = text.index("é")
    assert _problems_of(path) == [
        f"{path}: not UTF-8 text (byte 0xe9 at offset {offset}); save the file as UTF-8"
    ]


@pytest.mark.parametrize(
    "content",
    [
        bytes(range(256)) * 4,
        b"kind: organization\x00\x00\x00",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    ],
)
def test_binary_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    """Binary data is refused with one line, never a UnicodeDecodeError."""
    path = tmp_path / "blob.yaml"
    path.write_bytes(content)
    (problem,) = _problems_of(path)
    assert problem.startswith(f"{path}: ")
    assert "not UTF-8 text" in problem or "binary data" in problem


@pytest.mark.parametrize(
    "content",
    [
        "[" * 100_000 + "]" * 100_000,
        "a: " + "{b: " * 100_000 + "1" + "}" * 100_000,
        "".join(f"{'  ' * level}k{level}:\n" for level in range(40)) + "  " * 40 + "v\n",
    ],
    ids=["flow-sequences", "flow-mappings", "block-mappings"],
)
def test_deep_nesting_is_refused(tmp_path: Path, content: str) -> None:
    """100,000 nested levels (or 40 in block style) are one error, not a RecursionError."""
    path = tmp_path / "deep.yaml"
    path.write_text(content)
    (problem,) = _problems_of(path)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: nested more than 16 levels deep at line \d+; "
        "a policy file needs at most 4",
        problem,
    ), problem


def test_nesting_within_the_limit_is_read(tmp_path: Path, examples_dir: Path) -> None:
    """16 levels are still YAML (an unknown field here, not a depth error)."""
    path = tmp_path / "ok.yaml"
    path.write_text(_glen(examples_dir) + "extra: " + "[" * 15 + "]" * 15 + "\n")
    (problem,) = _problems_of(path)
    assert problem.startswith(f"{path}: extra: unknown field")


def test_aliases_are_refused(tmp_path: Path, examples_dir: Path) -> None:
    """An alias (which could multiply nesting or size past the limits) is refused."""
    path = tmp_path / "alias.yaml"
    text = _glen(examples_dir, "  epsilon: 8.0", "  epsilon: &e 8.0")
    path.write_text(text.replace("  max_grad_norm: 1.0", "  max_grad_norm: *e"))
    assert _problems_of(path) == [
        f"{path}: alias *e at line 8: aliases are not allowed in policy files; write the value out"
    ]


def test_oversized_file_is_refused_before_parsing(tmp_path: Path, examples_dir: Path) -> None:
    """A file over 1 MiB is refused by its size alone; one just under it still loads."""
    text = _glen(examples_dir)
    padding = MAX_POLICY_BYTES - len(text.encode())
    path = tmp_path / "big.yaml"
    path.write_text(text + "#" * (padding - 1) + "\n")
    assert path.stat().st_size == MAX_POLICY_BYTES
    assert load_any(path).kind == "organization"
    path.write_text(text + "#" * padding + "\n")
    assert _problems_of(path) == [
        f"{path}: {MAX_POLICY_BYTES + 1} bytes, more than the {MAX_POLICY_BYTES} bytes "
        "(1 MiB) a policy file may hold"
    ]


def test_sixty_megabyte_file_is_refused(tmp_path: Path) -> None:
    """The reviewer's 60 MB file is refused by its size (it is never read, let alone parsed)."""
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(60 * 1024 * 1024)
    (problem,) = _problems_of(path)
    assert problem.startswith(f"{path}: {60 * 1024 * 1024} bytes, more than the")


EXAMPLES = Path(str(files("fedhft.policies") / "examples"))
"""The example files (a module constant: Hypothesis tests take no function fixtures)."""

_NOT_A_NOISE_MULTIPLIER = st.one_of(
    st.booleans(),
    st.none(),
    st.sampled_from([math.inf, -math.inf, math.nan]),
    st.text(max_size=8).filter(lambda text: text != "auto"),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None)
@given(value=_NOT_A_NOISE_MULTIPLIER)
def test_a_bad_noise_multiplier_is_one_line_naming_its_forms(value: object) -> None:
    """`privacy.noise_multiplier` is a number or `auto`: a value of neither form (a
    boolean, a non-finite number, other text, a list, a mapping) is one problem, naming
    the field and both allowed forms, not one line per form."""
    data = yaml.safe_load((EXAMPLES / "glen-clinic.yaml").read_text())
    data["privacy"]["noise_multiplier"] = value
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, OrganizationPolicy, "glen.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith(
        "glen.yaml: privacy.noise_multiplier: must be a number > 0 or 'auto'"
    ), problem


@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(
        st.booleans(),
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(),
        st.text(max_size=8).filter(lambda text: text != "all"),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    )
)
def test_a_bad_tier_layers_value_is_one_line_naming_its_forms(value: object) -> None:
    """`tiers.<name>.layers` is `all` or a list of layer indices: any other value is one
    problem naming the field and both forms."""
    data = yaml.safe_load((EXAMPLES / "consortium.yaml").read_text())
    data["tiers"]["edge"]["layers"] = value
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, ConsortiumConfig, "consortium.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith(
        "consortium.yaml: tiers.edge.layers: must be 'all' or a list of layer indices"
    ), problem


@settings(max_examples=40, deadline=None)
@given(
    layers=st.lists(
        st.one_of(st.integers(-3, 3), st.booleans(), st.text(max_size=3), st.floats()),
        min_size=1,
        max_size=5,
    ).filter(lambda items: not all(type(item) is int for item in items))
)
def test_a_layer_list_with_bad_items_names_each_item_once(layers: list[object]) -> None:
    """A list given for `layers` is the list form: each item that is not a whole number
    is one problem at its own index, with no line about the `all` form."""
    data = yaml.safe_load((EXAMPLES / "consortium.yaml").read_text())
    data["tiers"]["edge"]["layers"] = layers
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, ConsortiumConfig, "consortium.yaml")
    bad = [i for i, item in enumerate(layers) if type(item) is not int]
    assert [p.split(":")[1].strip() for p in caught.value.problems] == [
        f"tiers.edge.layers.{i}" for i in bad
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "noise_multiplier: auto",
            "noise_multiplier: true",
            "privacy.noise_multiplier: must be a number > 0 or 'auto', got True",
        ),
        (
            "noise_multiplier: auto",
            "noise_multiplier: .inf",
            "privacy.noise_multiplier: must be a number > 0 or 'auto', got inf",
        ),
    ],
)
def test_union_field_errors_from_a_file_are_one_line(
    tmp_path: Path, examples_dir: Path, old: str, new: str, expected: str
) -> None:
    """Loading a file with `noise_multiplier: true` or `.inf` gives exactly one problem."""
    path = tmp_path / "glen.yaml"
    path.write_text(_glen(examples_dir, old, new))
    assert _problems_of(path) == [f"{path}: {expected}"]
