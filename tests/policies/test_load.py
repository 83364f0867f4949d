"""Loading policy files: error messages, YAML round-trip, JSON Schema."""

from __future__ import annotations

import json
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
from fedhft.policies._models import SecureAggregationRequirements


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
