"""Independent ε recomputation: equal to Opacus' accountants stepped like a trainer."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

from fedhft.audit import MechanismUse, recompute_epsilon

PLAN = [(1.1, 0.01, 20), (1.1, 0.01, 20), (1.3, 0.02, 10), (4.0, 1.0, 1)]
"""Three DP-SGD rounds (the first two identical) and one Gaussian release (q = 1)."""


def _stepped(
    accountant: RDPAccountant | PRVAccountant, plan: list[tuple[float, float, int]]
) -> None:
    for sigma, rate, steps in plan:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=rate)


@pytest.mark.parametrize("delta", [1e-5, 1e-7])
def test_rdp_equals_opacus_rdp_accountant_stepped_per_step(delta: float) -> None:
    """RDP: our value is bit-for-bit Opacus' RDPAccountant stepped one step at a time."""
    accountant = RDPAccountant()
    _stepped(accountant, PLAN)
    uses = [MechanismUse(*entry) for entry in PLAN]
    assert recompute_epsilon(uses, accountant="rdp", delta=delta) == accountant.get_epsilon(delta)


def test_prv_equals_opacus_prv_accountant_stepped_per_step() -> None:
    """PRV: our value equals Opacus' PRVAccountant given the same steps."""
    accountant = PRVAccountant()
    _stepped(accountant, PLAN[:3])
    uses = [MechanismUse(*entry) for entry in PLAN[:3]]
    expected = accountant.get_epsilon(1e-5)
    assert recompute_epsilon(uses, accountant="prv", delta=1e-5) == pytest.approx(
        expected, rel=1e-9
    )


def test_prv_groups_releases_across_the_history_without_changing_epsilon() -> None:
    """PRV merges all releases with equal σ and q (order does not matter to composition);
    for an alternating DP-SGD / Gaussian history the value equals Opacus' own (which
    merges only consecutive entries) far below the ε error of 0.01."""
    alternating = [(1.0, 0.02, 40), (6.0, 1.0, 1)] * 3
    accountant = PRVAccountant()
    _stepped(accountant, alternating)
    uses = [MechanismUse(*entry) for entry in alternating]
    got = recompute_epsilon(uses, accountant="prv", delta=1e-5)
    assert got == pytest.approx(accountant.get_epsilon(1e-5), abs=1e-6)


def test_gdp_equals_opacus_gaussian_accountant_when_homogeneous() -> None:
    """GDP with constant σ and q equals Opacus' GaussianAccountant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus' "GDP is experimental".
        accountant = GaussianAccountant()
    for _ in range(60):
        accountant.step(noise_multiplier=1.1, sample_rate=0.01)
    uses = [MechanismUse(1.1, 0.01, 20), MechanismUse(1.1, 0.01, 40)]
    expected = accountant.get_epsilon(1e-5)
    assert recompute_epsilon(uses, accountant="gdp", delta=1e-5) == pytest.approx(
        expected, rel=1e-9
    )


def test_gaussian_mechanism_matches_its_closed_form_rdp() -> None:
    """A single Gaussian release (q = 1) has RDP α/(2σ²) (Mironov 2017, Prop. 7); the
    (ε, δ) value equals Opacus' conversion of that curve."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    sigma, delta = 4.0, 1e-5
    orders = RDPAccountant.DEFAULT_ALPHAS
    closed_form = [alpha / (2 * sigma**2) for alpha in orders]
    expected, _ = get_privacy_spent(orders=orders, rdp=closed_form, delta=delta)
    got = recompute_epsilon([MechanismUse(sigma, 1.0, 1)], accountant="rdp", delta=delta)
    assert got == pytest.approx(expected, rel=1e-9)


ALTERNATING = [(1.0, 0.02, 40), (6.0, 1.0, 1)] * 3
"""DP-SGD rounds interleaved with Gaussian releases: grouped, not merged, by the PRV."""


@pytest.mark.slow
@pytest.mark.parametrize("plan", [PLAN, ALTERNATING], ids=["plan", "alternating"])
def test_sdk_ledger_and_auditor_agree(plan: list[tuple[float, float, int]]) -> None:
    """The SDK's `compute_epsilon` (the client's number) equals the auditor's value for
    every accountant, with the same rules (PRV grouped by σ and q on both sides), so
    honest logs never raise a finding."""
    privacy = pytest.importorskip("fedhft.accounting._records")
    from fedhft.policies import Accountant, NoiseSource

    records = [
        privacy.MechanismRecord(
            round=index,
            mechanism="dp-sgd" if rate < 1 else "gaussian",
            noise_multiplier=sigma,
            sample_rate=rate,
            steps=steps,
            max_grad_norm=1.0 if rate < 1 else None,
            noise_source=NoiseSource.SECURE,
        )
        for index, (sigma, rate, steps) in enumerate(plan)
    ]
    uses = [MechanismUse(*entry) for entry in plan]
    for accountant in Accountant:
        client = privacy.compute_epsilon(records, accountant=accountant, delta=1e-5)
        auditor = recompute_epsilon(uses, accountant=accountant.value, delta=1e-5)
        assert auditor == pytest.approx(client, rel=1e-12), accountant


def test_no_releases_cost_nothing() -> None:
    """An empty history has ε = 0 under every accountant."""
    for accountant in ("rdp", "prv", "gdp"):
        assert recompute_epsilon([], accountant=accountant, delta=1e-5) == 0.0


@pytest.mark.parametrize(("accountant", "delta"), [("moments", 1e-5), ("rdp", 0.0), ("rdp", 1.0)])
def test_bad_accountant_or_delta_is_refused(accountant: str, delta: float) -> None:
    """Unknown accountants and δ outside (0, 1) are refused."""
    with pytest.raises(ValueError, match=r"accountant|delta"):
        recompute_epsilon([MechanismUse(1.0, 0.1, 1)], accountant=accountant, delta=delta)


uses_strategy = st.lists(
    st.builds(
        MechanismUse,
        noise_multiplier=st.floats(min_value=0.5, max_value=8.0),
        sample_rate=st.floats(min_value=1e-3, max_value=1.0),
        steps=st.integers(min_value=1, max_value=50),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(uses_strategy, st.sampled_from(["rdp", "gdp"]))
def test_privacy_spend_never_decreases(uses: list[MechanismUse], accountant: str) -> None:
    """Law: adding a release never lowers the composed ε."""
    previous = 0.0
    for count in range(1, len(uses) + 1):
        current = recompute_epsilon(uses[:count], accountant=accountant, delta=1e-5)
        assert current >= previous - 1e-9
        previous = current
