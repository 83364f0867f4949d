"""Validation rules of the organization policy and the consortium configuration."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

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
