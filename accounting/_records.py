"""DP mechanism records, their ε, and the noise multiplier that fits a budget.

A :class:`MechanismRecord` holds every parameter an auditor needs to recompute ε of one
release: DP-SGD rounds (Poisson-subsampled Gaussian, Abadi et al. 2016) and one-shot
Gaussian releases (q = 1, one step) such as FedAMoLE's affinity scores. ε of a sequence
of records is their adaptive composition under the organization's accountant
(`_analysis.py`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedhft.policies import Accountant, NoiseSource, OrganizationPolicy

from . import _analysis
from .errors import BudgetExhaustedError

# σ above this adds no useful signal; a budget that needs more is exhausted.
MAX_NOISE_MULTIPLIER = 1e6
# Bisection stops when the bracket is this narrow relative to σ.
_SIGMA_RELATIVE_TOLERANCE = 1e-3
# `auto` solves for a hair under the budget so float rounding in a composition that is
# computed differently (records interleaved with other releases) can never exceed it.
_AUTO_MARGIN = 1e-6


class MechanismRecord(BaseModel):
    """One accounted DP release: everything needed to recompute its privacy cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    round: int = Field(ge=0, description="Federation round the release belongs to.")
    mechanism: Literal["dp-sgd", "gaussian"]
    noise_multiplier: float = Field(gt=0, allow_inf_nan=False, description="σ.")
    sample_rate: float = Field(
        gt=0, le=1, allow_inf_nan=False, description="Poisson rate q; 1.0 for a one-shot release."
    )
    steps: int = Field(ge=1, description="Compositions of the (sub)sampled Gaussian.")
    max_grad_norm: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Clipping norm C (sensitivity)."
    )
    noise_source: NoiseSource

    @model_validator(mode="after")
    def _dp_sgd_clips(self) -> MechanismRecord:
        if self.mechanism == "dp-sgd" and self.max_grad_norm is None:
            raise ValueError("a dp-sgd record needs `max_grad_norm`")
        return self

    def history_entry(self) -> _analysis.HistoryEntry:
        """``(σ, q, steps)`` as an Opacus accountant history holds it."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"`delta` must be in (0, 1), got {delta!r}")


def compute_epsilon(
    records: Sequence[MechanismRecord], *, accountant: Accountant, delta: float
) -> float:
    """ε at ``delta`` of all ``records`` composed, under ``accountant``; 0.0 when empty.

    `rdp` and `prv` give upper bounds and may enforce a budget; `gdp` is a central-limit
    estimate that can fall below the true ε, for reports only
    (`fedhft.policies.Accountant.enforces_budget`).
    """
    _check_delta(delta)
    return _analysis.epsilon(
        [record.history_entry() for record in records], accountant=accountant, delta=delta
    )


def solve_noise_multiplier(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant,
    prior: Sequence[MechanismRecord] = (),
) -> float:
    """The smallest σ (to 0.1 %) such that ``prior`` plus ``steps`` of DP-SGD at rate
    ``sample_rate`` and noise σ stays within ``epsilon``.

    The returned σ itself was evaluated and is guaranteed within budget; the search is a
    bisection on σ, since ε falls as σ grows.

    Raises:
        BudgetExhaustedError: ``prior`` already spends ``epsilon``, or even
            σ = 10⁶ would exceed it.
        ValueError: a parameter is out of range, or ``accountant`` can under-report ε
            (`gdp`), so a σ fitted to it could overrun the budget.
    """
    accountant = Accountant(accountant)
    if not accountant.enforces_budget:
        raise ValueError(
            f"`accountant` {accountant.value!r} can under-report ε and cannot size σ to a "
            "budget; use `prv` (tight) or `rdp`"
        )
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"`epsilon` must be a finite number > 0, got {epsilon!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"`sample_rate` must be in (0, 1], got {sample_rate!r}")
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps!r}")
    _check_delta(delta)
    prior_history = tuple(record.history_entry() for record in prior)
    return _solve(epsilon, delta, sample_rate, steps, accountant, prior_history)


@functools.lru_cache(maxsize=256)
def _solve(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant,
    prior_history: tuple[_analysis.HistoryEntry, ...],
) -> float:
    """Bisection behind :func:`solve_noise_multiplier`, cached: a trainer asks every round."""
    spent = _analysis.epsilon(prior_history, accountant=accountant, delta=delta)
    if spent >= epsilon:
        raise BudgetExhaustedError(spent=spent, requested=spent, budget=epsilon)

    def total(sigma: float) -> float:
        return _analysis.epsilon(
            [*prior_history, (sigma, sample_rate, steps)], accountant=accountant, delta=delta
        )

    # Bracket: `high` within budget, `low` over it (or too small to matter).
    high = 1.0
    while (reached := total(high)) > epsilon:
        if high >= MAX_NOISE_MULTIPLIER:
            raise BudgetExhaustedError(spent=spent, requested=reached, budget=epsilon)
        high = min(2.0 * high, MAX_NOISE_MULTIPLIER)
    low = high / 2.0
    while total(low) <= epsilon:
        high, low = low, low / 2.0
        if low < 1e-3:
            # ε is still within budget with almost no noise: any σ this small is moot.
            return high
    while high - low > _SIGMA_RELATIVE_TOLERANCE * high:
        middle = (low + high) / 2.0
        if total(middle) <= epsilon:
            high = middle
        else:
            low = middle
    return high


def auto_noise_multiplier(
    policy: OrganizationPolicy,
    *,
    sample_rate: float,
    steps_per_round: int,
    reserved: Sequence[MechanismRecord] = (),
) -> float:
    """σ for ``noise_multiplier: auto``: the budget spread over the planned rounds.

    Solves for the smallest σ such that ``policy.privacy.planned_rounds`` rounds of
    ``steps_per_round`` DP-SGD steps at rate ``sample_rate`` — plus any ``reserved``
    releases planned over the whole run (e.g. one Gaussian affinity release per
    round) — stay within ``policy.privacy.epsilon``. It depends only on the policy and
    these arguments, so every restart finds the same σ.
    """
    privacy = policy.privacy
    return solve_noise_multiplier(
        epsilon=privacy.epsilon * (1.0 - _AUTO_MARGIN),
        delta=privacy.delta,
        sample_rate=sample_rate,
        steps=privacy.planned_rounds * steps_per_round,
        accountant=privacy.accountant,
        prior=reserved,
    )
