"""Validation rules of the organization policy and the consortium configuration."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from fedhft.policies import (
    ConsortiumConfig,
    OrganizationPolicy,
    PolicyError,
    parse_policy,
)


def _org(examples_dir: Path) -> dict[str, Any]:
    data = yaml.safe_load((examples_dir / "st-mary-hospital.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _consortium(examples_dir: Path) -> dict[str, Any]:
    data = yaml.safe_load((examples_dir / "consortium.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _problems(data: dict[str, Any], model: type[Any]) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, model, "policy.yaml")
    assert isinstance(caught.value, ValueError)
    return caught.value.problems


def test_example_organization_is_valid(examples_dir: Path) -> None:
    """The shipped example policy validates and keeps its values."""
    policy = parse_policy(_org(examples_dir), OrganizationPolicy, "x")
    assert policy.privacy.epsilon == 4.0
    assert policy.privacy.noise_multiplier == "auto"
    assert policy.training.tier == "full"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("privacy", "epsilon"), -1.0, "privacy.epsilon"),
        (("privacy", "epsilon"), 0, "privacy.epsilon"),
        (("privacy", "delta"), 1.0, "privacy.delta"),
        (("privacy", "delta"), 0.0, "privacy.delta"),
        (("privacy", "accountant"), "moments", "privacy.accountant"),
        (("privacy", "max_grad_norm"), 0, "privacy.max_grad_norm"),
        (("privacy", "noise_multiplier"), "automatic", "privacy.noise_multiplier"),
        (("privacy", "noise_multiplier"), -0.5, "privacy"),
        (("privacy", "planned_rounds"), 0, "privacy.planned_rounds"),
        (("privacy", "noise_source"), "urandom", "privacy.noise_source"),
        (("training", "batch_size"), 0, "training.batch_size"),
        (("training", "max_seq_length"), 4, "training.max_seq_length"),
        (("training", "memory_limit_mb"), 1, "training.memory_limit_mb"),
        (("secure_aggregation", "min_cohort"), 2, "secure_aggregation.min_cohort"),
        (("secure_aggregation", "accepted_modes"), [], "secure_aggregation.accepted_modes"),
        (("secure_aggregation", "accepted_modes"), ["plain"], "accepted_modes"),
        (("organization",), "St Mary", "organization"),
        (("audit", "log_path"), "", "audit.log_path"),
    ],
)
def test_invalid_organization_field_is_named(
    examples_dir: Path, path: tuple[str, ...], value: object, field: str
) -> None:
    """Each out-of-range organization field fails with the file and field path named."""
    data = _org(examples_dir)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = _problems(data, OrganizationPolicy)
    assert any(p.startswith("policy.yaml: ") and field in p for p in problems), problems


def test_unknown_field_is_an_error_listing_allowed_fields(examples_dir: Path) -> None:
    """A typo'd field is rejected and the message lists the allowed names."""
    data = _org(examples_dir)
    data["privacy"]["epsilom"] = 3.0
    (problem,) = _problems(data, OrganizationPolicy)
    assert "privacy.epsilom: unknown field" in problem
    assert "epsilon" in problem and "max_grad_norm" in problem


def test_unknown_field_inside_a_tier_lists_tier_fields(examples_dir: Path) -> None:
    """A typo inside the tiers table names the tier path and the allowed tier fields."""
    data = _consortium(examples_dir)
    data["tiers"]["edge"]["keep_ration"] = 0.4
    (problem,) = _problems(data, ConsortiumConfig)
    assert "tiers.edge.keep_ration: unknown field" in problem
    assert "keep_ratio" in problem


def test_steps_and_epochs_are_exclusive(examples_dir: Path) -> None:
    """Exactly one of local_steps and local_epochs must be set."""
    both = _org(examples_dir)
    both["training"]["local_epochs"] = 1.0
    assert any("exactly one" in p for p in _problems(both, OrganizationPolicy))
    neither = _org(examples_dir)
    del neither["training"]["local_steps"]
    assert any("exactly one" in p for p in _problems(neither, OrganizationPolicy))


def test_delta_must_be_below_one_over_n(examples_dir: Path) -> None:
    """With a known data-set size n, δ ≥ 1/n is refused."""
    data = _org(examples_dir)
    data["training"]["expected_records"] = 1000
    data["privacy"]["delta"] = 1e-3
    assert any("1/n" in p for p in _problems(data, OrganizationPolicy))
    data["privacy"]["delta"] = 1e-4
    parse_policy(data, OrganizationPolicy, "x")


def test_policy_is_frozen(examples_dir: Path) -> None:
    """Loaded policies cannot be mutated."""
    policy = parse_policy(_org(examples_dir), OrganizationPolicy, "x")
    with pytest.raises(ValueError, match="frozen"):
        policy.privacy.epsilon = 100.0  # type: ignore[misc]


def test_example_consortium_is_valid(examples_dir: Path) -> None:
    """The example consortium validates and computes Shamir thresholds."""
    config = parse_policy(_consortium(examples_dir), ConsortiumConfig, "x")
    assert config.enrolled()[0] == "st-mary-hospital"
    assert config.secure_aggregation.threshold(5) == 3
    assert config.secure_aggregation.threshold(3) == 2


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["tiers"]["edge"].update(modules=["key"]), "not among adapter"),
        (lambda d: d["tiers"]["edge"].update(min_experts=3, max_experts=2), "min_experts"),
        (lambda d: d["tiers"]["edge"].update(layers=[]), "at least one layer"),
        (lambda d: d["tiers"]["edge"].update(keep_ratio=0), "keep_ratio"),
        (lambda d: d["tiers"]["edge"].update(row_fraction=1.5), "row_fraction"),
        (lambda d: d.update(method="fedprox"), "method"),
        (lambda d: d.update(rounds=0), "rounds"),
        (lambda d: d["clustering"].update(clusters=0), "clustering.clusters"),
        (lambda d: d["clustering"].update(warmup_rounds=10), "warmup_rounds"),
        (lambda d: d.update(method="fedavg"), "one cluster"),
        (lambda d: d["secure_aggregation"].update(mode="paillier"), "mode"),
        (lambda d: d["secure_aggregation"].update(min_cohort=2), "min_cohort"),
        (lambda d: d["secure_aggregation"].update(threshold_fraction=0.5), "threshold"),
        (lambda d: d["secure_aggregation"].update(max_dropout_fraction=0.5), "survivors"),
        (lambda d: d.update(enrollment=[]), "enrollment"),
        (lambda d: d["enrollment"].append({"organization": "glen-clinic"}), "twice"),
        (lambda d: d["adapter"].update(rank=0), "adapter.rank"),
        (lambda d: d["model"].update(num_labels=1), "model.num_labels"),
        (lambda d: d.update(tiers={}), "tiers"),
        (lambda d: d["model"].update(pooling="max"), "model.pooling"),
        (lambda d: d["personalization"].update(head="personal"), "label_prior: dp calibrates"),
        (lambda d: d["personalization"].update(label_prior_noise_multiplier=0), "noise_mult"),
        (lambda d: d["clustering"].update(clusters=1), "signal: sketch needs"),
        (lambda d: d["clustering"].update(warmup_rounds=0), "signal: sketch needs"),
        (lambda d: d["clustering"].update(signal="labels"), "clustering.signal"),
        (lambda d: d["clustering"].update(sketch_noise_multiplier=-1), "sketch_noise"),
    ],
)
def test_invalid_consortium_is_rejected(examples_dir: Path, mutate: Any, needle: str) -> None:
    """Each invalid consortium setting fails with a message naming it."""
    data = copy.deepcopy(_consortium(examples_dir))
    mutate(data)
    problems = _problems(data, ConsortiumConfig)
    assert any(needle in p for p in problems), problems


def test_fedamole_requires_expert_bounds(examples_dir: Path) -> None:
    """Method fedamole needs min/max experts on every tier."""
    data = _consortium(examples_dir)
    data["method"] = "fedamole"
    del data["tiers"]["full"]["max_experts"]
    assert any("tiers.full needs" in p for p in _problems(data, ConsortiumConfig))


# ------------------------------------------------------------------ strict numeric fields


def _numeric_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool, bool]]:
    """Every numeric field under ``model``: (dotted path, holds floats, is a list of ints).

    A ``dict`` of models (the tiers) is entered through the example's ``edge`` tier."""
    found: list[tuple[str, bool, bool]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        args = get_args(annotation) or (annotation,)
        if get_origin(annotation) is dict:
            found += _numeric_fields(args[1], f"{path}.edge.")
            continue
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            found += _numeric_fields(nested[0], f"{path}.")
        elif float in args or int in args:
            found.append((path, float in args, False))
        elif any(get_args(a) == (int,) for a in args):
            found.append((path, False, True))
    return found


_NUMERIC = [
    (model, *field)
    for model in (OrganizationPolicy, ConsortiumConfig)
    for field in _numeric_fields(model)
]


def _example_of(model: type[BaseModel], examples_dir: Path) -> dict[str, Any]:
    return _org(examples_dir) if model is OrganizationPolicy else _consortium(examples_dir)


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def test_every_numeric_field_is_found() -> None:
    """The walk below reaches the numeric fields of both files (a guard on the walk)."""
    paths = {path for _, path, _, _ in _NUMERIC}
    assert {
        "privacy.epsilon",
        "privacy.planned_rounds",
        "training.batch_size",
        "secure_aggregation.min_cohort",
        "adapter.rank",
        "tiers.edge.layers",
        "tiers.edge.keep_ratio",
        "secure_aggregation.clip",
        "clustering.warmup_rounds",
    } <= paths
    assert len(_NUMERIC) >= 40


_UNION_FIELDS = {"privacy.noise_multiplier": "must be a number > 0 or 'auto'"}
"""Numeric fields that also take a word: a wrong value is one line naming both forms."""


@pytest.mark.parametrize(
    ("model", "path", "is_float", "is_list"),
    _NUMERIC,
    ids=[f"{m.__name__}.{p}" for m, p, _, _ in _NUMERIC],
)
def test_a_boolean_is_not_a_number(
    examples_dir: Path, model: type[BaseModel], path: str, is_float: bool, is_list: bool
) -> None:
    """`true` in any numeric field is a type error naming the field, never 1 (or 1.0)."""
    data = _example_of(model, examples_dir)
    _set(data, path, [True] if is_list else True)
    problems = _problems(data, model)
    wanted = "valid number" if is_float else "valid integer"
    if path in _UNION_FIELDS:
        wanted = _UNION_FIELDS[path]
    assert any(p.startswith(f"policy.yaml: {path}") and wanted in p for p in problems), problems


_FLOATS = [(m, p) for m, p, is_float, _ in _NUMERIC if is_float]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize(("model", "path"), _FLOATS, ids=[f"{m.__name__}.{p}" for m, p in _FLOATS])
def test_a_float_must_be_finite(
    examples_dir: Path, model: type[BaseModel], path: str, value: float
) -> None:
    """inf, -inf and nan in any float field are refused with the field named."""
    data = _example_of(model, examples_dir)
    _set(data, path, value)
    problems = _problems(data, model)
    wanted = _UNION_FIELDS.get(path, "finite number")
    assert any(p.startswith(f"policy.yaml: {path}") and wanted in p for p in problems), problems


@pytest.mark.parametrize(
    ("path", "value"),
    [("training.batch_size", "32"), ("training.batch_size", 32.0), ("privacy.epsilon", "8.0")],
)
def test_numbers_are_not_parsed_from_text_or_floats(
    examples_dir: Path, path: str, value: Any
) -> None:
    """A quoted number or a float in an integer field is a type error, not coerced."""
    data = _org(examples_dir)
    _set(data, path, value)
    assert any(p.startswith(f"policy.yaml: {path}: ") for p in _problems(data, OrganizationPolicy))


def test_enum_fields_still_take_their_names(examples_dir: Path) -> None:
    """Strict numbers leave enum fields readable from their YAML names."""
    data = _org(examples_dir)
    data["privacy"]["accountant"] = "prv"
    data["secure_aggregation"]["accepted_modes"] = ["ckks", "masking"]
    policy = parse_policy(data, OrganizationPolicy, "policy.yaml")
    assert policy.privacy.accountant == "prv"
    data["privacy"]["accountant"] = "moments"
    (problem,) = _problems(data, OrganizationPolicy)
    assert problem.startswith("policy.yaml: privacy.accountant: Input should be 'rdp'")
