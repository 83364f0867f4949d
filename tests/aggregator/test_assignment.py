"""Reverse-selection expert assignment solved with a MILP (fedhft.aggregator._assignment)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.aggregator._assignment import (
    InfeasibleAssignmentError,
    assign_experts,
    check_assignment,
    check_fedamole_feasible,
    feasibility_problems,
    reverse_selection_scores,
    solve_assignment,
)
from fedhft.policies import ConsortiumConfig


def _brute_force(scores: np.ndarray, c: int, low: list[int], high: list[int]) -> float | None:
    """Best total score over every assignment meeting the constraints (None if none)."""
    n, e = scores.shape
    best: float | None = None
    subsets = list(itertools.combinations(range(n), c))
    for choice in itertools.product(subsets, repeat=e):
        held = np.zeros(n, dtype=int)
        total = 0.0
        for expert, holders in enumerate(choice):
            for i in holders:
                held[i] += 1
                total += scores[i, expert]
        if np.all(held >= low) and np.all(held <= high) and (best is None or total > best):
            best = total
    return best


@st.composite
def instances(draw: st.DrawFn) -> tuple[np.ndarray, int, list[int], list[int]]:
    """Small random RSEA instances, feasible or not."""
    n = draw(st.integers(1, 4))
    e = draw(st.integers(1, 4))
    c = draw(st.integers(1, n))
    low = draw(st.lists(st.integers(0, e), min_size=n, max_size=n))
    high = [lo + draw(st.integers(0, 2)) for lo in low]
    values = draw(st.lists(st.floats(-0.5, 3.0, allow_nan=False), min_size=n * e, max_size=n * e))
    return np.asarray(values).reshape(n, e), c, low, high


@settings(max_examples=120, deadline=None)
@given(instances())
def test_milp_is_feasible_and_optimal_or_raises_exactly_when_none_exists(
    instance: tuple[np.ndarray, int, list[int], list[int]],
) -> None:
    """The MILP meets every constraint and equals the brute-force optimum; no solution → raises."""
    affinity, c, low, high = instance
    scores = reverse_selection_scores(affinity)
    best = _brute_force(scores, c, low, high)
    predicted = feasibility_problems(
        num_experts=affinity.shape[1], holders_per_expert=c, min_experts=low, max_experts=high
    )
    assert (best is None) == bool(predicted)
    if best is None:
        with pytest.raises(InfeasibleAssignmentError):
            solve_assignment(scores, holders_per_expert=c, min_experts=low, max_experts=high)
        return
    x = solve_assignment(scores, holders_per_expert=c, min_experts=low, max_experts=high)
    assert np.all(x.sum(axis=0) == c)
    assert np.all(x.sum(axis=1) >= low) and np.all(x.sum(axis=1) <= high)
    assert float((x * scores).sum()) == pytest.approx(best, abs=1e-7)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1.0, 5.0, allow_nan=False), min_size=12, max_size=12))
def test_scores_are_each_experts_distribution_over_clients(values: list[float]) -> None:
    """Every column of the reverse-selection scores is a distribution over clients."""
    scores = reverse_selection_scores(np.asarray(values).reshape(4, 3))
    assert np.all(scores >= 0)
    np.testing.assert_allclose(scores.sum(axis=0), 1.0)


def test_reverse_selection_prefers_the_client_an_expert_stands_out_for() -> None:
    """An expert goes to the client whose share of its affinity is largest, not its raw max."""
    # Client 0 likes everything (raw maxima); expert 1 is relatively most popular with client 1.
    affinity = np.array([[0.9, 0.6], [0.1, 0.4], [0.1, 0.0]])
    x = solve_assignment(
        reverse_selection_scores(affinity),
        holders_per_expert=1,
        min_experts=[0, 0, 0],
        max_experts=[1, 1, 1],
    )
    assert x.astype(int).tolist() == [[1, 0], [0, 1], [0, 0]]


def test_check_assignment_rejects_violations() -> None:
    """Wrong holder counts, client bounds, shapes or non-binary entries raise."""
    bounds: dict[str, Any] = {"holders_per_expert": 1, "min_experts": [1, 0], "max_experts": [1, 1]}
    check_assignment(np.array([[1, 0], [0, 1]]), **bounds)
    for bad in (
        np.array([[1, 1], [0, 0]]),  # client 0 over its max
        np.array([[1, 0], [1, 1]]),  # expert 0 has two holders
        np.array([[0, 1], [0, 0]]),  # expert 0 has no holder
        np.array([[0.5, 0.5], [0.5, 0.5]]),
        np.array([1, 0]),
    ):
        with pytest.raises(InfeasibleAssignmentError):
            check_assignment(bad, **bounds)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((0, 3)), np.array([1.0, 2.0]), np.array([[np.nan, 1.0]])],
)
def test_bad_affinity_matrices_raise(bad: np.ndarray) -> None:
    """Empty, one-dimensional or non-finite affinity is rejected."""
    with pytest.raises(InfeasibleAssignmentError):
        reverse_selection_scores(bad)


def _consortium(organizations: int = 4, **fedamole: Any) -> ConsortiumConfig:
    return ConsortiumConfig.model_validate(
        {
            "consortium": "c",
            "model": {"source": "tiny", "num_labels": 2},
            "adapter": {"target_modules": ["value"], "rank": 2, "alpha": 4, "a_seed": 1},
            "tiers": {
                "edge": {"min_experts": 1, "max_experts": 1},
                "full": {"min_experts": 2, "max_experts": 4},
            },
            "method": "fedamole",
            "rounds": 2,
            "fedamole": {"num_experts": 4, "holders_per_expert": 3, **fedamole},
            "enrollment": [{"organization": f"org-{i}"} for i in range(organizations)],
        }
    )


def test_check_fedamole_feasible_uses_each_organizations_tier() -> None:
    """4 experts × 3 holders = 12 slots fit 4 full tiers but not 3 edge + 1 full (max 7)."""
    consortium = _consortium()
    check_fedamole_feasible(consortium, {f"org-{i}": "full" for i in range(4)})
    tiers = {"org-0": "full", "org-1": "edge", "org-2": "edge", "org-3": "edge"}
    with pytest.raises(InfeasibleAssignmentError, match=r"\[5, 7\]"):
        check_fedamole_feasible(consortium, tiers)
    with pytest.raises(InfeasibleAssignmentError, match="not defined"):
        check_fedamole_feasible(consortium, {"org-0": "gpu"})


def test_assign_experts_maps_organizations_to_held_expert_ids() -> None:
    """Two domains of three: each expert goes to the three organizations preferring it."""
    consortium = _consortium(organizations=6, num_experts=4, holders_per_expert=3)
    domain_a, domain_b = [0.4, 0.4, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]
    affinities = {f"org-{i}": domain_a if i < 3 else domain_b for i in range(6)}
    affinities["org-1"] = [0.35, 0.45, 0.1, 0.1]
    tiers = {org: "full" for org in affinities}
    assignment = assign_experts(consortium, affinities, tiers)
    assert assignment == {
        **{f"org-{i}": (0, 1) for i in range(3)},
        **{f"org-{i}": (2, 3) for i in range(3, 6)},
    }


def test_assign_experts_rejects_wrong_lengths_and_unknown_tiers() -> None:
    """Affinities of the wrong length or organizations without a tier raise."""
    consortium = _consortium()
    affinities = {f"org-{i}": [0.25] * 4 for i in range(4)}
    with pytest.raises(InfeasibleAssignmentError, match="no tier"):
        assign_experts(consortium, affinities, {"org-0": "full"})
    affinities["org-0"] = [0.5, 0.5]
    with pytest.raises(InfeasibleAssignmentError, match="num_experts"):
        assign_experts(consortium, affinities, {org: "full" for org in affinities})


@pytest.mark.parametrize(
    ("fedamole", "message"),
    [
        ({"holders_per_expert": 5}, "exceeds the 4 enrolled"),
        ({"holders_per_expert": 2}, "below secure_aggregation.min_cohort"),
        ({"num_experts": 1, "holders_per_expert": 3}, "cannot fit 4 organizations"),
        ({"num_experts": 6, "holders_per_expert": 3}, "cannot fit 4 organizations"),
    ],
)
def test_consortium_load_rejects_assignments_no_tier_mix_can_satisfy(
    fedamole: dict[str, int], message: str
) -> None:
    """Config load refuses E·c outside [n·min tier min, n·max tier max] and c out of range."""
    with pytest.raises(ValueError, match=message):
        _consortium(**fedamole)
