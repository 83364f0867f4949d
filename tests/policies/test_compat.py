"""Whether an organization's policy admits the consortium's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhft.policies import (
    ConsortiumConfig,
    IncompatiblePolicyError,
    OrganizationPolicy,
    compatibility_violations,
    load_consortium_config,
    load_organization_policy,
    require_compatible,
)


def test_examples_are_mutually_compatible(examples_dir: Path) -> None:
    """Every example organization may join the example consortium."""
    config = load_consortium_config(examples_dir / "consortium.yaml")
    for path in examples_dir.glob("*.yaml"):
        if path.name != "consortium.yaml":
            assert compatibility_violations(load_organization_policy(path), config) == []


def test_every_violation_is_returned(examples_dir: Path) -> None:
    """All violations are reported together, not only the first."""
    config = load_consortium_config(examples_dir / "consortium.yaml")
    policy = load_organization_policy(examples_dir / "harbour-bank.yaml")
    weak_data = config.model_dump()
    weak_data.update(
        consortium="other",
        enrollment=weak_data["enrollment"][:1],
        tiers={"edge": weak_data["tiers"]["edge"]},
    )
    weak_data["secure_aggregation"]["mode"] = "ckks"
    weak = ConsortiumConfig.model_validate(weak_data)
    strict_data = policy.model_dump()
    strict_data["secure_aggregation"]["min_cohort"] = 5
    strict = OrganizationPolicy.model_validate(strict_data)
    violations = compatibility_violations(strict, weak)
    fields = [v.split(":")[0] for v in violations]
    assert fields == [
        "consortium",
        "enrollment",
        "training.tier",
        "secure_aggregation.mode",
        "secure_aggregation.min_cohort",
    ]
    assert "allowed: edge" in violations[2]
    with pytest.raises(IncompatiblePolicyError) as caught:
        require_compatible(strict, weak)
    assert len(caught.value.problems) == 5
    assert all(p.startswith("harbour-bank: ") for p in caught.value.problems)
