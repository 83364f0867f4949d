"""Every accountant that may enforce a budget never under-reports ε: checked against an
independent implementation, the PLD accountant of Google's `dp-accounting` (Koskela et
al. 2020; Doroshenko et al. 2022), on DP-SGD histories with one-shot Gaussian releases
(fedhft.accounting._analysis, fedhft.accounting._records, fedhft.audit._recompute)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedhft.accounting import MechanismRecord, auto_noise_multiplier, compute_epsilon
from fedhft.audit import recompute_epsilon
from fedhft.audit._recompute import MechanismUse
from fedhft.policies import Accountant, NoiseSource, OrganizationPolicy, PrivacyBudget

History = Sequence[tuple[float, float, int]]

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning:opacus.*"),
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
]

DELTA = 1e-5
# Our ε may sit below the oracle's by at most this fraction (discretization of both).
ORACLE_SLACK = 0.01
# The PLD accountant's pessimistic estimate is an upper bound that tightens as the loss
# grid gets finer; at 1e-3 it is within 0.1 % of its limit on these histories, and a
# composition costs well under a second.
PLD_INTERVAL = 1e-3


def pld_epsilon(history: History, *, delta: float = DELTA, interval: float = PLD_INTERVAL) -> float:
    """ε of ``history`` by dp-accounting's PLD accountant: each ``(σ, q, steps)`` entry
    is ``steps`` Poisson-subsampled Gaussians, or plain Gaussians when ``q = 1``."""
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    events = []
    for sigma, q, steps in history:
        gaussian = dp_event.GaussianDpEvent(sigma)
        one = gaussian if q == 1.0 else dp_event.PoissonSampledDpEvent(q, gaussian)
        events.append(dp_event.SelfComposedDpEvent(one, steps))
    accountant.compose(dp_event.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


def _budget(accountant: Accountant) -> dict[str, Any]:
    return {"epsilon": 3.0, "delta": DELTA, "max_grad_norm": 1.0, "planned_rounds": 10} | {
        "accountant": accountant.value
    }


def _policy_accepts(accountant: Accountant) -> bool:
    try:
        PrivacyBudget.model_validate(_budget(accountant))
    except ValidationError:
        return False
    return True


# Every accountant a policy may name: each of them enforces a budget.
ENFORCING = [accountant for accountant in Accountant if _policy_accepts(accountant)]


def _records(history: History) -> tuple[MechanismRecord, ...]:
    return tuple(
        MechanismRecord(
            round=index,
            mechanism="gaussian" if q == 1.0 else "dp-sgd",
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            max_grad_norm=None if q == 1.0 else 1.0,
            noise_source=NoiseSource.SECURE,
        )
        for index, (sigma, q, steps) in enumerate(history)
    )


def sdk_epsilon(history: History, accountant: Accountant) -> float:
    """The client's ε: what the privacy ledger enforces."""
    return compute_epsilon(_records(history), accountant=accountant, delta=DELTA)


def audit_epsilon(history: History, accountant: Accountant) -> float:
    """The auditor's ε: what the verifier checks the budget with."""
    uses = [MechanismUse(sigma, q, steps) for sigma, q, steps in history]
    return recompute_epsilon(uses, accountant=accountant.value, delta=DELTA)


IMPLEMENTATIONS: dict[str, Callable[[History, Accountant], float]] = {
    "sdk": sdk_epsilon,
    "audit": audit_epsilon,
}

# (σ, q, steps) entries; q = 1 is a one-shot Gaussian release (sensitivity 1).
HISTORIES: list[History] = [
    [(1.0, 0.01, 1000)],  # GDP says 1.618 here, PLD 1.828.
    [(0.8, 0.05, 200), (2.0, 1.0, 1)],
    [(1.1, 0.02, 40), (6.0, 1.0, 1), (1.1, 0.02, 40), (0.9, 0.05, 30)],
    [(10.0, 1.0, 1), (1.0, 0.2, 10)],
]
SLOW_HISTORIES: list[History] = [
    [(1.5, 0.02, 300), (4.0, 1.0, 1), (1.5, 0.02, 300)],
    [(0.6, 0.1, 50)],
    [(3.0, 1.0, 1)],
    [(2.0, 1.0, 1), (2.0, 1.0, 1), (2.0, 1.0, 1)],
    *(
        [(sigma, q, steps), (3.0, 1.0, 1)]
        for sigma, q, steps in itertools.product((0.7, 1.0, 2.0), (0.005, 0.05, 0.25), (10, 2000))
    ),
]


def _assert_not_below_oracle(ours: float, history: History) -> None:
    oracle = pld_epsilon(history)
    assert ours >= oracle * (1.0 - ORACLE_SLACK), (
        f"ε {ours:.4f} under-reports the PLD oracle's {oracle:.4f} for {history}"
    )


def test_gdp_cannot_enforce_a_budget() -> None:
    """A policy naming `gdp` is refused, and the message names the allowed accountants."""
    with pytest.raises(ValidationError, match=r"`prv`.*`rdp`"):
        PrivacyBudget.model_validate(_budget(Accountant.GDP))
    assert ENFORCING == [Accountant.RDP, Accountant.PRV]


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("accountant", ENFORCING)
@pytest.mark.parametrize("history", HISTORIES, ids=str)
def test_enforced_epsilon_is_never_below_the_pld_oracle(
    history: History, accountant: Accountant, implementation: str
) -> None:
    """ε the ledger enforces and the auditor checks ≥ dp-accounting's PLD ε − 1 %."""
    ours = IMPLEMENTATIONS[implementation](history, accountant)
    _assert_not_below_oracle(ours, history)


@pytest.mark.slow
@pytest.mark.parametrize("accountant", ENFORCING)
@pytest.mark.parametrize("history", SLOW_HISTORIES, ids=str)
def test_enforced_epsilon_is_never_below_the_pld_oracle_on_a_grid(
    history: History, accountant: Accountant
) -> None:
    """The same law over a grid of σ, q and step counts, each with a Gaussian release,
    for the client's and the auditor's ε."""
    for implementation in IMPLEMENTATIONS.values():
        _assert_not_below_oracle(implementation(history, accountant), history)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(
    sigma=st.floats(0.6, 4.0),
    q=st.floats(0.002, 0.3),
    steps=st.integers(1, 3000),
    release=st.one_of(st.none(), st.floats(1.0, 20.0)),
    accountant=st.sampled_from(ENFORCING),
)
def test_enforced_epsilon_is_never_below_the_pld_oracle_for_any_history(
    sigma: float, q: float, steps: int, release: float | None, accountant: Accountant
) -> None:
    """The same law for any (σ, q, steps) with or without a one-shot Gaussian release."""
    history: list[tuple[float, float, int]] = [(sigma, q, steps)]
    if release is not None:
        history.append((release, 1.0, 1))
    _assert_not_below_oracle(sdk_epsilon(history, accountant), history)


# (ε budget, q, steps per round, reserved one-shot release σ or None); 10 planned rounds.
AUTO_CASES = [
    (3.0, 0.05, 20, None),
    pytest.param(3.0, 0.02, 50, 4.0, marks=pytest.mark.slow),
    pytest.param(3.0, 0.01, 100, None, marks=pytest.mark.slow),
    pytest.param(1.0, 0.05, 20, None, marks=pytest.mark.slow),
    pytest.param(8.0, 0.2, 5, 2.0, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("accountant", ENFORCING)
@pytest.mark.parametrize(("epsilon", "q", "steps", "release"), AUTO_CASES)
def test_auto_noise_multiplier_never_overruns_the_budget_under_the_pld_oracle(
    accountant: Accountant, epsilon: float, q: float, steps: int, release: float | None
) -> None:
    """`noise_multiplier: auto` spends at most the budget by the oracle's ε, every planned
    round and reserved release included."""
    policy = OrganizationPolicy.model_validate(
        {
            "organization": "st-mary",
            "consortium": "north",
            "privacy": _budget(accountant) | {"epsilon": epsilon},
            "training": {"tier": "full", "batch_size": 16, "local_steps": steps},
        }
    )
    releases: History = [] if release is None else [(release, 1.0, 1)]
    sigma = auto_noise_multiplier(
        policy, sample_rate=q, steps_per_round=steps, reserved=_records(releases)
    )
    oracle = pld_epsilon([*releases, (sigma, q, policy.privacy.planned_rounds * steps)])
    assert oracle <= epsilon, f"σ = {sigma:.4f} spends ε = {oracle:.4f} > {epsilon}"
