"""Tests of mechanism records, their ε under each accountant, and the σ solvers."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.analysis.gdp import compute_mu_poisson, eps_from_mu
from opacus.accountants.utils import get_noise_multiplier
from pydantic import ValidationError
from scipy import optimize
from scipy.stats import norm

from fedhft.accounting import (
    PRV_EPS_ERROR,
    PRV_EPSILON_CUTOFF,
    MechanismRecord,
    auto_noise_multiplier,
    compute_epsilon,
    epsilon_rdp,
    solve_noise_multiplier,
)
from fedhft.policies import Accountant, NoiseSource, OrganizationPolicy
from fedhft.sdk import BudgetExhaustedError

pytestmark = [
    # Opacus's own accountants, run here as the reference, are chatty about numerics.
    pytest.mark.filterwarnings("ignore::RuntimeWarning:opacus.*"),
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
]

DELTA = 1e-5


def dp_sgd(round_: int, sigma: float, q: float, steps: int) -> MechanismRecord:
    return MechanismRecord(
        round=round_,
        mechanism="dp-sgd",
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        max_grad_norm=1.0,
        noise_source=NoiseSource.SECURE,
    )


def gaussian(round_: int, sigma: float) -> MechanismRecord:
    return MechanismRecord(
        round=round_,
        mechanism="gaussian",
        noise_multiplier=sigma,
        sample_rate=1.0,
        steps=1,
        max_grad_norm=None,
        noise_source=NoiseSource.SECURE,
    )


# A federation's worth of releases: DP-SGD rounds with a change of σ and q, and one
# one-shot Gaussian release (FedAMoLE affinity scores) in between.
RECORDS = (
    dp_sgd(0, 1.1, 0.02, 40),
    gaussian(0, 6.0),
    dp_sgd(1, 1.1, 0.02, 40),
    dp_sgd(2, 0.9, 0.05, 30),
)


def stepped(accountant: Any, records: tuple[MechanismRecord, ...]) -> Any:
    """An Opacus accountant stepped once per DP-SGD step of every record."""
    for record in records:
        for _ in range(record.steps):
            accountant.step(
                noise_multiplier=record.noise_multiplier, sample_rate=record.sample_rate
            )
    return accountant


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε of μ-GDP (Balle & Wang 2018, Thm 8; Dong et al. 2019, Cor. 2.13)."""

    def excess(eps: float) -> float:
        return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))

    return float(optimize.brentq(lambda e: excess(e) - delta, 0.0, 100.0))


# --------------------------------------------------------------------------- ε = accountant


def test_rdp_epsilon_equals_opacus_accountant_stepped_through_the_records() -> None:
    """ε(records) under RDP is bit-identical to Opacus's RDPAccountant stepped step by step."""
    expected = stepped(RDPAccountant(), RECORDS).get_epsilon(delta=DELTA)
    assert compute_epsilon(RECORDS, accountant=Accountant.RDP, delta=DELTA) == expected


def test_prv_epsilon_equals_opacus_accountant_on_the_grouped_history() -> None:
    """ε(records) under PRV is bit-identical to Opacus's PRVAccountant holding one entry
    per (σ, q), and within its ε error of the accountant stepped step by step."""
    grouped = PRVAccountant()
    grouped.history = [(1.1, 0.02, 80), (6.0, 1.0, 1), (0.9, 0.05, 30)]
    ours = compute_epsilon(RECORDS, accountant=Accountant.PRV, delta=DELTA)
    assert ours == grouped.get_epsilon(delta=DELTA)
    assert ours == pytest.approx(
        stepped(PRVAccountant(), RECORDS).get_epsilon(delta=DELTA), abs=PRV_EPS_ERROR
    )


def test_gdp_epsilon_equals_opacus_for_one_setting_and_composes_all_settings() -> None:
    """GDP matches Opacus's GaussianAccountant for constant (σ, q); a changing history is
    composed over every record (μ² adds), where Opacus would read only the last one."""
    constant = (dp_sgd(0, 1.1, 0.02, 40), dp_sgd(1, 1.1, 0.02, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus's "experimental" warning.
        opacus_gdp = stepped(GaussianAccountant(), constant)
    assert compute_epsilon(constant, accountant=Accountant.GDP, delta=DELTA) == pytest.approx(
        opacus_gdp.get_epsilon(delta=DELTA), rel=1e-9
    )
    mus = [
        compute_mu_poisson(
            steps=r.steps, noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate
        )
        for r in RECORDS
    ]
    expected = eps_from_mu(mu=math.sqrt(sum(mu * mu for mu in mus)), delta=DELTA)
    got = compute_epsilon(RECORDS, accountant=Accountant.GDP, delta=DELTA)
    assert got == pytest.approx(expected, rel=1e-9)
    last_only = eps_from_mu(mu=mus[-1], delta=DELTA)
    assert got > last_only


def test_no_records_spend_nothing() -> None:
    """An empty history has ε = 0 under every accountant."""
    for accountant in Accountant:
        assert compute_epsilon((), accountant=accountant, delta=DELTA) == 0.0


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan])
def test_delta_out_of_range_is_refused(delta: float) -> None:
    """δ outside (0, 1) raises ValueError."""
    with pytest.raises(ValueError, match="delta"):
        compute_epsilon(RECORDS, accountant=Accountant.RDP, delta=delta)


# --------------------------------------------------------------------------- known answers


def test_known_answer_sigma_1_q_001_10000_steps() -> None:
    """σ=1.0, q=0.01, 10 000 steps, δ=1e-5: RDP ε = 6.7127 (Opacus 1.6.0 RDPAccountant,
    default orders: `history=[(1.0, 0.01, 10000)]`), PRV 6.198, GDP 6.007; the three
    accountants agree within their known slack (PRV ≤ RDP)."""
    record = (dp_sgd(0, 1.0, 0.01, 10_000),)
    rdp = compute_epsilon(record, accountant=Accountant.RDP, delta=DELTA)
    assert rdp == pytest.approx(6.712738297403128, abs=1e-9)
    gdp = compute_epsilon(record, accountant=Accountant.GDP, delta=DELTA)
    assert gdp == pytest.approx(6.007077307595717, abs=1e-6)
    prv = compute_epsilon(record, accountant=Accountant.PRV, delta=DELTA)
    assert prv == pytest.approx(6.198043855918422, abs=1e-6)
    assert prv <= rdp <= 1.15 * prv
    assert abs(gdp - prv) <= 0.1 * prv


def test_rdp_of_plain_gaussian_matches_closed_form() -> None:
    """q = 1: RDP(α) = T·α/(2σ²) (Mironov 2017, Prop. 7) converted by Balle et al. 2020,
    Thm 21, minimized over Opacus's orders, equals our ε; computed here without Opacus."""
    sigma, steps = 3.0, 5
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    expected = min(
        steps * a / (2 * sigma**2)
        - (math.log(DELTA) + math.log(a)) / (a - 1)
        + math.log((a - 1) / a)
        for a in orders
    )
    records = tuple(gaussian(r, sigma) for r in range(steps))
    got = compute_epsilon(records, accountant=Accountant.RDP, delta=DELTA)
    assert got == pytest.approx(expected, rel=1e-12)


def test_prv_of_plain_gaussian_is_a_tight_upper_bound_of_the_exact_epsilon() -> None:
    """q = 1: T Gaussian releases are exactly (√T/σ)-GDP; PRV's ε is within 0.05 above the
    exact analytic ε, RDP and the CLT-based GDP are above it too (valid, looser)."""
    sigma, steps = 4.0, 9
    exact = analytic_gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    records = tuple(gaussian(r, sigma) for r in range(steps))
    prv = compute_epsilon(records, accountant=Accountant.PRV, delta=DELTA)
    assert exact <= prv <= exact + 0.05
    assert compute_epsilon(records, accountant=Accountant.RDP, delta=DELTA) >= exact
    assert compute_epsilon(records, accountant=Accountant.GDP, delta=DELTA) >= exact


def test_prv_falls_back_to_the_rdp_bound_far_beyond_any_budget() -> None:
    """Above ε = 100 (by RDP) PRV returns the RDP bound instead of overflowing to inf."""
    records = (dp_sgd(0, 0.3, 0.5, 1000),)
    rdp = epsilon_rdp([(0.3, 0.5, 1000)], delta=DELTA)
    assert rdp > PRV_EPSILON_CUTOFF
    assert compute_epsilon(records, accountant=Accountant.PRV, delta=DELTA) == rdp


# --------------------------------------------------------------------------- solving σ


def test_solver_refuses_an_accountant_that_can_under_report() -> None:
    """σ is never sized to GDP's ε, which can fall below the true ε (ValueError naming
    the accountants that can)."""
    with pytest.raises(ValueError, match=r"'gdp'.*`prv`.*`rdp`"):
        solve_noise_multiplier(
            epsilon=2.0, delta=DELTA, sample_rate=0.02, steps=500, accountant=Accountant.GDP
        )


@pytest.mark.parametrize("accountant", [Accountant.RDP])
def test_solved_sigma_fits_the_budget_and_is_minimal(accountant: Accountant) -> None:
    """The solved σ reaches ≤ ε; 0.2 % less noise would exceed ε."""
    sigma = solve_noise_multiplier(
        epsilon=2.0, delta=DELTA, sample_rate=0.02, steps=500, accountant=accountant
    )
    at = compute_epsilon((dp_sgd(0, sigma, 0.02, 500),), accountant=accountant, delta=DELTA)
    below = compute_epsilon(
        (dp_sgd(0, sigma * 0.998, 0.02, 500),), accountant=accountant, delta=DELTA
    )
    assert at <= 2.0 < below


def test_solved_sigma_agrees_with_opacus_get_noise_multiplier() -> None:
    """Without prior spend, σ agrees with Opacus's own solver to 1 %."""
    ours = solve_noise_multiplier(
        epsilon=3.0, delta=DELTA, sample_rate=0.01, steps=2000, accountant=Accountant.RDP
    )
    theirs = get_noise_multiplier(
        target_epsilon=3.0, target_delta=DELTA, sample_rate=0.01, steps=2000, accountant="rdp"
    )
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.slow
def test_solved_sigma_fits_under_prv() -> None:
    """PRV: the solved σ keeps ε within budget, and needs less noise than RDP's σ."""
    kwargs: dict[str, Any] = {"epsilon": 2.0, "delta": DELTA, "sample_rate": 0.05, "steps": 100}
    sigma = solve_noise_multiplier(accountant=Accountant.PRV, **kwargs)
    at = compute_epsilon((dp_sgd(0, sigma, 0.05, 100),), accountant=Accountant.PRV, delta=DELTA)
    assert at <= 2.0
    assert sigma < solve_noise_multiplier(accountant=Accountant.RDP, **kwargs)


def test_prior_spend_is_composed_into_the_solution() -> None:
    """With prior releases σ grows, and prior + the new release still fits the budget."""
    prior = RECORDS[:2]
    alone = solve_noise_multiplier(
        epsilon=3.0, delta=DELTA, sample_rate=0.02, steps=200, accountant=Accountant.RDP
    )
    after = solve_noise_multiplier(
        epsilon=3.0,
        delta=DELTA,
        sample_rate=0.02,
        steps=200,
        accountant=Accountant.RDP,
        prior=prior,
    )
    assert after > alone
    total = compute_epsilon(
        (*prior, dp_sgd(1, after, 0.02, 200)), accountant=Accountant.RDP, delta=DELTA
    )
    assert total <= 3.0


def test_exhausted_prior_refuses_with_the_three_numbers() -> None:
    """Prior spend at or above ε raises BudgetExhaustedError stating spent and budget."""
    spent = compute_epsilon(RECORDS, accountant=Accountant.RDP, delta=DELTA)
    with pytest.raises(BudgetExhaustedError) as caught:
        solve_noise_multiplier(
            epsilon=spent * 0.9,
            delta=DELTA,
            sample_rate=0.02,
            steps=10,
            accountant=Accountant.RDP,
            prior=RECORDS,
        )
    assert caught.value.spent == spent
    assert caught.value.budget == pytest.approx(spent * 0.9)
    assert f"{spent:.4g}" in str(caught.value)


def test_unreachable_budget_refuses() -> None:
    """A budget no σ ≤ 10⁶ can meet raises BudgetExhaustedError (also a RuntimeError)."""
    with pytest.raises(RuntimeError, match="budget exhausted"):
        solve_noise_multiplier(
            epsilon=1e-9, delta=DELTA, sample_rate=1.0, steps=1000, accountant=Accountant.RDP
        )


@pytest.mark.parametrize(
    "override",
    [
        {"epsilon": 0.0},
        {"epsilon": math.inf},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
    ],
)
def test_solver_refuses_bad_arguments(override: dict[str, Any]) -> None:
    """ε ≤ 0 or infinite, q outside (0, 1], or no steps raise ValueError."""
    kwargs: dict[str, Any] = {
        "epsilon": 1.0,
        "delta": DELTA,
        "sample_rate": 0.01,
        "steps": 10,
        "accountant": Accountant.RDP,
    }
    with pytest.raises(ValueError, match=next(iter(override))):
        solve_noise_multiplier(**{**kwargs, **override})


def policy(**privacy: Any) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": "st-mary",
            "consortium": "north",
            "privacy": {
                "epsilon": 3.0,
                "delta": DELTA,
                "max_grad_norm": 1.0,
                "planned_rounds": 10,
                **privacy,
            },
            "training": {"tier": "full", "batch_size": 16, "local_steps": 20},
        }
    )


def test_auto_noise_multiplier_spends_the_budget_over_the_planned_rounds() -> None:
    """σ_auto: all planned rounds fit the budget and use at least 99 % of it."""
    org = policy()
    sigma = auto_noise_multiplier(org, sample_rate=0.05, steps_per_round=20)
    rounds = tuple(dp_sgd(r, sigma, 0.05, 20) for r in range(10))
    spent = compute_epsilon(rounds, accountant=Accountant.RDP, delta=DELTA)
    assert 0.99 * 3.0 <= spent <= 3.0


def test_auto_noise_multiplier_reserves_room_for_planned_releases() -> None:
    """Reserved releases (one Gaussian per round) raise σ and still fit, interleaved."""
    org = policy()
    reserved = tuple(gaussian(r, 20.0) for r in range(10))
    plain = auto_noise_multiplier(org, sample_rate=0.05, steps_per_round=20)
    sigma = auto_noise_multiplier(org, sample_rate=0.05, steps_per_round=20, reserved=reserved)
    assert sigma > plain
    interleaved = tuple(
        record for r in range(10) for record in (dp_sgd(r, sigma, 0.05, 20), reserved[r])
    )
    assert compute_epsilon(interleaved, accountant=Accountant.RDP, delta=DELTA) <= 3.0


def test_auto_noise_multiplier_follows_the_policy_accountant() -> None:
    """The policy's accountant is the one σ is solved for."""
    rdp = auto_noise_multiplier(policy(accountant="rdp"), sample_rate=0.05, steps_per_round=20)
    prv = auto_noise_multiplier(policy(accountant="prv"), sample_rate=0.05, steps_per_round=20)
    assert prv < rdp  # The tighter accountant needs less noise for the same budget.


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": math.inf}, "noise_multiplier"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.01}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"round": -1}, "round"),
        ({"mechanism": "laplace"}, "mechanism"),
        ({"max_grad_norm": None}, "max_grad_norm"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"noise_source": "urandom"}, "noise_source"),
        ({"epsilon": 1.0}, "epsilon"),
    ],
)
def test_invalid_records_are_refused(change: dict[str, Any], field: str) -> None:
    """Out-of-range parameters, unknown mechanisms and unknown fields are rejected."""
    valid = dp_sgd(0, 1.0, 0.01, 10).model_dump()
    with pytest.raises(ValidationError, match=field):
        MechanismRecord.model_validate({**valid, **change})


def test_records_are_frozen_and_round_trip_through_json() -> None:
    """A record cannot be changed after creation and survives JSON unchanged."""
    record = dp_sgd(3, 1.234567891234, 0.0123, 77)
    with pytest.raises(ValidationError):
        record.steps = 1  # type: ignore[misc]
    assert MechanismRecord.model_validate_json(record.model_dump_json()) == record
