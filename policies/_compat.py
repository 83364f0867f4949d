"""Whether an organization may join a consortium as it is configured (ARCHITECTURE.md §5)."""

from __future__ import annotations

from ._schema import ConsortiumConfig, Method, OrganizationPolicy
from .errors import IncompatiblePolicyError


def compatibility_violations(policy: OrganizationPolicy, consortium: ConsortiumConfig) -> list[str]:
    """Every reason ``policy`` forbids joining ``consortium``; empty when compatible."""
    violations: list[str] = []
    if policy.consortium != consortium.consortium:
        violations.append(
            f"consortium: policy is for {policy.consortium!r}, config is {consortium.consortium!r}"
        )
    if policy.organization not in consortium.enrolled():
        violations.append(
            f"enrollment: organization {policy.organization!r} is not enrolled in "
            f"{consortium.consortium!r}"
        )
    tier = consortium.tiers.get(policy.training.tier)
    if tier is None:
        violations.append(
            f"training.tier: {policy.training.tier!r} is not a consortium tier; allowed: "
            f"{', '.join(sorted(consortium.tiers))}"
        )
    elif consortium.method is Method.FEDAMOLE and (
        tier.min_experts is None or tier.max_experts is None
    ):
        violations.append(f"training.tier: {policy.training.tier!r} has no expert bounds")
    mode = consortium.secure_aggregation.mode
    if mode not in policy.secure_aggregation.accepted_modes:
        accepted = ", ".join(m.value for m in policy.secure_aggregation.accepted_modes)
        violations.append(
            f"secure_aggregation.mode: consortium uses {mode.value!r}; policy accepts only "
            f"{accepted}"
        )
    if consortium.secure_aggregation.min_cohort < policy.secure_aggregation.min_cohort:
        violations.append(
            f"secure_aggregation.min_cohort: consortium allows cohorts of "
            f"{consortium.secure_aggregation.min_cohort}, policy requires at least "
            f"{policy.secure_aggregation.min_cohort}"
        )
    new_tokens = consortium.evaluation.max_new_tokens
    if consortium.model.task == "causal-lm" and new_tokens >= policy.training.max_seq_length:
        violations.append(
            f"training.max_seq_length: {policy.training.max_seq_length} leaves no room for a "
            f"prompt next to the consortium's evaluation.max_new_tokens {new_tokens}; raise "
            "max_seq_length above it"
        )
    return violations


def require_compatible(policy: OrganizationPolicy, consortium: ConsortiumConfig) -> None:
    """Raise `IncompatiblePolicyError` listing every violation, if there is any."""
    violations = compatibility_violations(policy, consortium)
    if violations:
        raise IncompatiblePolicyError(
            [f"{policy.organization}: {violation}" for violation in violations]
        )
