"""Recomputing ε from logged mechanism parameters, independently of the client's numbers.

The auditor trusts nothing the client computed: every `privacy_spend` record carries the
full parameters of one accounted mechanism (noise multiplier σ, sample rate q, number of
steps; a plain Gaussian release is q = 1), and this module composes them again with the
Opacus analyses, calling the formulas directly rather than through the client's ledger
code, so a bug or a lie in the client's accountant shows up as a disagreement.

- `rdp`: Rényi DP of the Poisson-subsampled Gaussian (Mironov et al. 2019,
  opacus `accountants/analysis/rdp.py`), summed over records at Opacus' default orders
  and converted to (ε, δ) with Opacus' `get_privacy_spent`.
- `prv`: the PRV accountant (Gopi et al. 2021) of Opacus with its default ε error 0.01;
  the value is its certified upper bound. Composition does not depend on order, so all
  records with equal σ and q are merged into one history entry (Opacus merges only
  consecutive ones): a FedAMoLE log alternating DP-SGD and Gaussian releases then costs
  two discretizations instead of one per release (seconds instead of minutes). The
  client's ledger groups the same way (`fedhft.accounting._analysis.group_history`), so both
  sides compute the same number.
- `gdp`: μ-GDP by the central limit theorem (Bu et al. 2020, opacus
  `accountants/analysis/gdp.py`), μ of each record from Opacus' Poisson formula and
  composed as √(Σ μᵢ²), which for constant σ and q is exactly Opacus'
  `GaussianAccountant`; heterogeneous records (which that class refuses) compose by the
  same GDP composition law. GDP can under-report ε (by up to 34 % against the PLD
  accountant on DP-SGD histories), so no policy may name it; it is recomputed only so
  that a log written with it can be read, and a policy's budget is always checked with
  the policy's own accountant (`rdp` or `prv`).

Assumption: records are Poisson-subsampled Gaussian mechanisms with sensitivity
normalized by the clipping norm, which is what DP-SGD in Opacus and the SDK's Gaussian
releases are.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

ACCOUNTANT_NAMES: Final = ("rdp", "prv", "gdp")
PRV_EPS_ERROR: Final = 0.01
"""ε error of the PRV accountant, Opacus' default; the bound returned is ε + this."""
PRV_EPSILON_CUTOFF: Final = 100.0
"""Above this RDP ε the PRV accountant is not run; the RDP bound is reported."""
GDP_EPSILON_MAX: Final = 500.0
"""Upper end of Opacus' root-finding bracket for ε under GDP."""


@dataclass(frozen=True)
class MechanismUse:
    """One accounted release: σ, q and how many times it ran."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def merged_history(uses: Sequence[MechanismUse]) -> list[tuple[float, float, int]]:
    """Opacus' history: consecutive uses with equal σ and q merged, as its `step` does."""
    history: list[tuple[float, float, int]] = []
    for use in uses:
        if history and history[-1][0] == use.noise_multiplier and history[-1][1] == use.sample_rate:
            sigma, rate, steps = history[-1]
            history[-1] = (sigma, rate, steps + use.steps)
        else:
            history.append((use.noise_multiplier, use.sample_rate, use.steps))
    return history


def grouped_history(
    history: Sequence[tuple[float, float, int]],
) -> list[tuple[float, float, int]]:
    """All entries with equal σ and q merged, in order of first appearance."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, rate, count in history:
        steps[(sigma, rate)] = steps.get((sigma, rate), 0) + count
    return [(sigma, rate, count) for (sigma, rate), count in steps.items()]


def recompute_epsilon(uses: Sequence[MechanismUse], *, accountant: str, delta: float) -> float:
    """ε at ``delta`` after composing ``uses`` with ``accountant`` (`rdp`, `prv`, `gdp`)."""
    # Opacus imports torch, which takes seconds; only verification needs it, not every
    # `fedhft` command that imports this package.
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis import gdp as gdp_analysis

    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    history = merged_history(uses)
    if not history:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    if accountant == "prv":
        # Above this the PRV discretization takes minutes and the answer is meaningless
        # for DP anyway; the RDP value is itself a valid upper bound.
        rdp_epsilon = _rdp_epsilon(history, delta)
        if rdp_epsilon > PRV_EPSILON_CUTOFF:
            return rdp_epsilon
        prv = PRVAccountant()
        prv.history = grouped_history(history)
        # With q = 1 the PRV's density takes log(0) on a branch it then discards; the
        # warning is noise, the result is exact.
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return float(prv.get_epsilon(delta, eps_error=PRV_EPS_ERROR))
    if accountant == "gdp":
        mu_squared = 0.0
        for sigma, rate, steps in history:
            with np.errstate(over="ignore"):
                mu = float(
                    gdp_analysis.compute_mu_poisson(
                        steps=steps, noise_multiplier=sigma, sample_rate=rate
                    )
                )
            mu_squared += mu * mu
        mu = math.sqrt(mu_squared)
        if not math.isfinite(mu):
            return math.inf
        # Opacus inverts δ(ε) by root finding on [0, 500]; outside that bracket the
        # answer is 0 (δ already met at ε = 0) or beyond any meaningful budget.
        if mu == 0.0 or gdp_analysis.delta_eps_mu(eps=0.0, mu=mu) <= delta:
            return 0.0
        if gdp_analysis.delta_eps_mu(eps=GDP_EPSILON_MAX, mu=mu) > delta:
            return math.inf
        return float(gdp_analysis.eps_from_mu(mu=mu, delta=delta))
    raise ValueError(f"accountant must be one of {list(ACCOUNTANT_NAMES)}, got {accountant!r}")


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> tuple[float, ...]:
    # RDP composes additively, so `steps` steps cost `steps` times one step; caching one
    # step per (q, σ) keeps re-verifying a long log linear in its length.
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    unit = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders
    )
    return tuple(float(value) for value in unit)


def _rdp_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = np.zeros(len(orders))
    for sigma, rate, steps in history:
        rdp += steps * np.asarray(_rdp_per_step(rate, sigma))
    with warnings.catch_warnings():
        # Opacus warns when the best order is at the end of its default range; the bound
        # is still valid, and the default orders are what every party uses.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(epsilon)


def epsilon_tolerance(accountant: str, epsilon: float, *, rtol: float) -> float:
    """How far a client's ε may differ from ours before it is a finding.

    Closed-form accountants agree to rounding; the PRV accountant's result moves by up to
    its ε error with how the history was split (clients before the ledger grouped its
    history as this module does merged only consecutive records), so that error is
    allowed on top.
    """
    slack = PRV_EPS_ERROR if accountant == "prv" else 0.0
    return rtol * max(epsilon, 1.0) + slack
