"""Reverse-selection expert assignment (RSEA) for FedAMoLE, solved exactly as a MILP.

Implements the server side of FedAMoLE's data-driven architectures (Zhang et al., 2024;
ARCHITECTURE.md §2.3). Input: each client's *noisy* per-expert affinity (a DP release, see
`fedhft.sdk.mole._affinity`; everything here is post-processing of it). Reverse selection:
each *expert* chooses among clients, so the score of client ``i`` for expert ``e`` is
expert ``e``'s affinity distribution over clients, ``S_ie / Σ_j S_je``. The assignment

    maximize   Σ_ie x_ie · score_ie
    subject to Σ_i x_ie = c                      for every expert e
               lo_i ≤ Σ_e x_ie ≤ hi_i            for every client i
               x_ie ∈ {0, 1}

is solved exactly with `scipy.optimize.milp` (HiGHS branch and bound); the solution is
checked against every constraint before it is returned.

Feasibility (`feasibility_problems`): with every expert needing exactly ``c`` holders,
the system has a solution iff ``c ≤ n``, every ``lo_i ≤ E``, and
``Σ lo_i ≤ E·c ≤ Σ min(hi_i, E)``. Necessity is counting; sufficiency is Gale–Ryser:
choose client degrees ``d_i ∈ [lo_i, min(hi_i, E)]`` summing to ``E·c``; for the
bipartite degree sequences ``(c, …, c)`` and ``d`` the Gale–Ryser inequalities
``Σ_{i≤k} d_(i) ≤ E·min(c, k)`` hold because every ``d_i ≤ E`` and ``Σ d = E·c``.

Where the checks run: the consortium file alone does not say which tier each
organization is on, so `ConsortiumConfig` validation applies the tier-independent
bounds (every organization on the tightest/loosest tier), and the server calls
`check_fedamole_feasible` with the enrolled organizations' tiers (from their policies
or join requests) before the first FedAMoLE round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp

from fedhft.policies import ConsortiumConfig

from .errors import AggregatorError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class InfeasibleAssignmentError(AggregatorError, ValueError):
    """No expert assignment satisfies the holder count and the tiers' expert bounds."""


def feasibility_problems(
    *,
    num_experts: int,
    holders_per_expert: int,
    min_experts: Sequence[int],
    max_experts: Sequence[int],
) -> list[str]:
    """Why no assignment exists (empty when one does); see the module docstring."""
    n, e, c = len(min_experts), num_experts, holders_per_expert
    problems: list[str] = []
    if len(max_experts) != n:
        return [f"{n} lower bounds but {len(max_experts)} upper bounds on experts per client"]
    if n == 0:
        return ["no clients to assign experts to"]
    if e < 1 or c < 1:
        return [f"num_experts ({e}) and holders_per_expert ({c}) must be >= 1"]
    if c > n:
        problems.append(
            f"fedamole.holders_per_expert {c} exceeds the {n} organizations; lower it to <= {n}"
        )
    low = sum(min_experts)
    high = sum(min(hi, e) for hi in max_experts)
    if any(lo > min(hi, e) for lo, hi in zip(min_experts, max_experts, strict=True)):
        problems.append(f"a tier's min_experts exceeds its max_experts or fedamole.num_experts {e}")
    elif not low <= e * c <= high:
        problems.append(
            f"fedamole.num_experts × holders_per_expert = {e}×{c} = {e * c} expert slots "
            f"must lie in [Σ min_experts, Σ min(max_experts, num_experts)] = [{low}, {high}] "
            "over the organizations' tiers; change num_experts, holders_per_expert or the "
            "tiers' expert bounds"
        )
    return problems


def check_fedamole_feasible(consortium: ConsortiumConfig, tiers_of_orgs: Mapping[str, str]) -> None:
    """Raise `InfeasibleAssignmentError` when the organizations' tiers admit no assignment.

    ``tiers_of_orgs`` maps each organization taking part to its tier name.
    """
    unknown = sorted({t for t in tiers_of_orgs.values() if t not in consortium.tiers})
    if unknown:
        raise InfeasibleAssignmentError(
            f"tiers {unknown} are not defined by consortium {consortium.consortium!r}"
        )
    tiers = [consortium.tiers[t] for t in tiers_of_orgs.values()]
    missing = sorted(
        {
            t
            for t, tier in zip(tiers_of_orgs.values(), tiers, strict=True)
            if tier.min_experts is None or tier.max_experts is None
        }
    )
    if missing:
        raise InfeasibleAssignmentError(f"tiers {missing} need min_experts and max_experts")
    spec = consortium.fedamole
    problems = feasibility_problems(
        num_experts=spec.num_experts,
        holders_per_expert=spec.holders_per_expert,
        min_experts=[t.min_experts or 0 for t in tiers],
        max_experts=[t.max_experts or 0 for t in tiers],
    )
    if problems:
        raise InfeasibleAssignmentError(
            f"consortium {consortium.consortium!r}: " + "; ".join(problems)
        )


def reverse_selection_scores(affinity: npt.ArrayLike) -> FloatArray:
    """Each expert's distribution over clients: ``max(S, 0)`` normalized per column.

    A column with no positive mass (all noise) becomes uniform: that expert has no
    preference.
    """
    matrix = np.asarray(affinity, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise InfeasibleAssignmentError(
            f"affinity must be a non-empty clients × experts matrix, got shape {matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)):
        raise InfeasibleAssignmentError("affinity contains NaN or infinite values")
    positive = np.maximum(matrix, 0.0)
    totals = positive.sum(axis=0)
    uniform = np.full_like(positive, 1.0 / positive.shape[0])
    safe = np.where(totals > 0, totals, 1.0)
    scores: FloatArray = np.where(totals > 0, positive / safe, uniform)
    return scores


def check_assignment(
    assignment: npt.ArrayLike,
    *,
    holders_per_expert: int,
    min_experts: Sequence[int],
    max_experts: Sequence[int],
) -> None:
    """Raise `InfeasibleAssignmentError` unless `assignment` meets every constraint."""
    x = np.asarray(assignment)
    n = len(min_experts)
    if x.ndim != 2 or x.shape[0] != n or not np.isin(x, (0, 1)).all():
        raise InfeasibleAssignmentError(
            f"an assignment is a 0/1 matrix of {n} clients × experts, got shape {x.shape}"
        )
    holders = x.sum(axis=0)
    if not np.all(holders == holders_per_expert):
        raise InfeasibleAssignmentError(
            f"every expert needs exactly {holders_per_expert} holders, got {holders.tolist()}"
        )
    held = x.sum(axis=1)
    low, high = np.asarray(min_experts), np.asarray(max_experts)
    if np.any(held < low) or np.any(held > high):
        raise InfeasibleAssignmentError(
            f"clients hold {held.tolist()} experts, outside their bounds "
            f"{list(zip(min_experts, max_experts, strict=True))}"
        )


def solve_assignment(
    scores: npt.ArrayLike,
    *,
    holders_per_expert: int,
    min_experts: Sequence[int],
    max_experts: Sequence[int],
) -> BoolArray:
    """The 0/1 clients × experts matrix maximizing total score under the constraints.

    Raises:
        InfeasibleAssignmentError: the constraints admit no assignment (checked before
            solving), or the solver fails to return a checked optimum.
    """
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(min_experts):
        raise InfeasibleAssignmentError(
            f"scores must be {len(min_experts)} clients × experts, got shape {matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)):
        raise InfeasibleAssignmentError("scores contain NaN or infinite values")
    n, e = matrix.shape
    problems = feasibility_problems(
        num_experts=e,
        holders_per_expert=holders_per_expert,
        min_experts=min_experts,
        max_experts=max_experts,
    )
    if problems:
        raise InfeasibleAssignmentError("; ".join(problems))
    # Variable x[i, e] sits at index i·E + e.
    per_expert = np.kron(np.ones((1, n)), np.eye(e))
    per_client = np.kron(np.eye(n), np.ones((1, e)))
    constraints = [
        LinearConstraint(per_expert, holders_per_expert, holders_per_expert),
        LinearConstraint(
            per_client,
            np.asarray(min_experts, dtype=np.float64),
            np.asarray(max_experts, dtype=np.float64),
        ),
    ]
    result = milp(
        c=-matrix.ravel(),
        constraints=constraints,
        integrality=np.ones(n * e),
        bounds=Bounds(0.0, 1.0),
    )
    if not result.success or result.x is None:
        raise InfeasibleAssignmentError(f"the assignment solver failed: {result.message}")
    assignment: BoolArray = np.rint(result.x).reshape(n, e).astype(np.bool_)
    check_assignment(
        assignment,
        holders_per_expert=holders_per_expert,
        min_experts=min_experts,
        max_experts=max_experts,
    )
    return assignment


def assign_experts(
    consortium: ConsortiumConfig,
    affinities: Mapping[str, npt.ArrayLike],
    tiers_of_orgs: Mapping[str, str],
) -> dict[str, tuple[int, ...]]:
    """RSEA for the organizations in `affinities`: organization → held expert ids.

    ``affinities`` holds each organization's released (noisy) affinity over the
    consortium's ``fedamole.num_experts`` experts; ``tiers_of_orgs`` its tier.
    """
    organizations = sorted(affinities)
    missing = [org for org in organizations if org not in tiers_of_orgs]
    if missing:
        raise InfeasibleAssignmentError(f"no tier known for organizations {missing}")
    check_fedamole_feasible(consortium, {org: tiers_of_orgs[org] for org in organizations})
    spec = consortium.fedamole
    rows = [np.asarray(affinities[org], dtype=np.float64) for org in organizations]
    if any(row.shape != (spec.num_experts,) for row in rows):
        raise InfeasibleAssignmentError(
            f"each affinity must have fedamole.num_experts = {spec.num_experts} values"
        )
    tiers = [consortium.tiers[tiers_of_orgs[org]] for org in organizations]
    assignment = solve_assignment(
        reverse_selection_scores(np.stack(rows)),
        holders_per_expert=spec.holders_per_expert,
        min_experts=[t.min_experts or 0 for t in tiers],
        max_experts=[t.max_experts or 0 for t in tiers],
    )
    return {
        org: tuple(int(e) for e in np.flatnonzero(assignment[i]))
        for i, org in enumerate(organizations)
    }
