"""`simulate_in_process`: a researcher's data in, a real private and secure federation run.

Each test runs a whole federation on the tiny model (four organizations, one or two
rounds) and checks what the function promises: every organization's ledger, read back
from disk, holds an ε within its budget that equals the accountant's and is no less than
an independent accountant's (Google's PLD, `dp-accounting`); the signed audit logs
verify; the secure sums ran over the organizations (the coordinator's summaries name
them as survivors); the metrics are finite and in range.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from fedhft.accounting import compute_epsilon
from fedhft.audit import verify_log
from fedhft.policies import ConsortiumConfig, load_organization_policy
from fedhft.sdk import synthetic_federation
from fedhft.sdk.privacy import PrivacyLedger
from fedhft.simulation import (
    LocalTraining,
    SimulatedOrganization,
    SimulationError,
    simulate_in_process,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning:opacus.*"),
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    pytest.mark.filterwarnings("ignore::fedhft.errors.SecurityWarning"),
]

ORGANIZATIONS = ("north", "south", "east", "west")
TIERS = ("full", "standard", "edge", "full")
TRAINING = LocalTraining(batch_size=8, local_steps=2, max_seq_length=16)
# Our ε may sit below the PLD oracle's by at most this fraction (discretization of both).
ORACLE_SLACK = 0.01


def consortium(method: str, *, rounds: int = 2) -> ConsortiumConfig:
    tiers: dict[str, dict[str, Any]] = {
        "edge": {"layers": [-1], "modules": ["value"], "keep_ratio": 0.5},
        "standard": {"layers": [-2, -1], "keep_ratio": 0.5},
        "full": {"layers": "all", "keep_ratio": 0.5},
    }
    if method == "fedamole":
        tiers = {t: {"min_experts": 1, "max_experts": 2} for t in tiers}
    return ConsortiumConfig.model_validate(
        {
            "consortium": "research",
            "model": {"source": "tiny", "num_labels": 4},
            "adapter": {"target_modules": ["query", "value"], "rank": 4, "alpha": 8, "a_seed": 5},
            "tiers": tiers,
            "method": method,
            "rounds": rounds,
            "fedamole": {"num_experts": 2, "holders_per_expert": 3},
            "enrollment": [{"organization": org} for org in ORGANIZATIONS],
        }
    )


def organizations() -> dict[str, SimulatedOrganization]:
    data = synthetic_federation(
        num_organizations=len(ORGANIZATIONS), alpha=1.0, samples_per_org=48, seed=3
    )
    return {
        org: SimulatedOrganization(d.train, d.test, tier, d.domain)
        for org, d, tier in zip(ORGANIZATIONS, data, TIERS, strict=True)
    }


def pld_epsilon(ledger: PrivacyLedger, delta: float) -> float:
    """ε of the ledger's releases by dp-accounting's PLD accountant (the oracle)."""
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    events = []
    for record in ledger.records:
        gaussian = dp_event.GaussianDpEvent(record.noise_multiplier)
        one = (
            gaussian
            if record.sample_rate == 1.0
            else dp_event.PoissonSampledDpEvent(record.sample_rate, gaussian)
        )
        events.append(dp_event.SelfComposedDpEvent(one, record.steps))
    accountant.compose(dp_event.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("method", ["fedhft", "fedamole"])
def test_each_ledger_holds_the_accountants_epsilon_within_budget(
    method: str, tmp_path: Path
) -> None:
    config = consortium(method)
    result = simulate_in_process(
        config,
        organizations(),
        epsilon=4.0,
        training=TRAINING,
        rounds=2,
        seed=1,
        workdir=tmp_path,
    )
    for org in ORGANIZATIONS:
        policy = load_organization_policy(tmp_path / org / "policy.yaml")
        assert policy.privacy.epsilon == 4.0
        ledger = PrivacyLedger.open(
            tmp_path / org / "ledger.json",
            organization=org,
            accountant=policy.privacy.accountant,
            delta=policy.privacy.delta,
            epsilon_budget=policy.privacy.epsilon,
        )
        assert ledger.records, f"{org} ran no DP release"
        spent = ledger.spent()
        assert 0.0 < spent <= 4.0
        assert spent == pytest.approx(
            compute_epsilon(
                ledger.records, accountant=policy.privacy.accountant, delta=policy.privacy.delta
            )
        )
        assert spent >= pld_epsilon(ledger, policy.privacy.delta) * (1 - ORACLE_SLACK)
        assert result.organizations[org]["epsilon"] == pytest.approx(spent)
        assert result.organizations[org]["rounds_joined"] == 2
        # The signed, hash-chained log verifies and records the policy it ran under.
        verify_log(tmp_path / org / "audit.jsonl", public_key=result.audit_keys[org], policy=policy)
    assert result.epsilon_spent is not None and result.epsilon_spent <= 4.0


def test_fedhft_runs_the_secure_sums_over_every_organization() -> None:
    result = simulate_in_process(
        consortium("fedhft"), organizations(), epsilon=8.0, training=TRAINING, rounds=2
    )
    assert len(result.rounds) == 2
    for record in result.rounds:
        assert record.summary is not None
        assert sorted(record.summary.participants) == sorted(ORGANIZATIONS)
        for outcome in record.summary.outcomes:
            assert sorted(outcome.survivors) == sorted(ORGANIZATIONS)
            assert outcome.aggregated_blocks > 0
    for org, metrics in result.organizations.items():
        assert 0.0 <= metrics["accuracy"] <= 1.0, org
        assert 0.0 <= metrics["macro_f1"] <= 1.0, org
        assert metrics["bytes_up"] > 0 and metrics["bytes_down"] > 0, org
    assert 0.0 <= result.worst_accuracy <= result.mean_accuracy <= 1.0
    assert math.isfinite(result.mean_macro_f1)
    assert result.workdir is None


def test_local_and_the_non_private_baseline_send_nothing_and_spend_nothing() -> None:
    result = simulate_in_process(
        consortium("local", rounds=1), organizations(), epsilon=None, training=TRAINING
    )
    assert [r.summary for r in result.rounds] == [None]
    assert result.epsilon_spent is None
    for metrics in result.organizations.values():
        assert metrics["bytes_up"] == 0
        assert 0.0 <= metrics["accuracy"] <= 1.0


def test_a_used_workdir_is_refused_rather_than_its_ledger_reused(tmp_path: Path) -> None:
    (tmp_path / "north").mkdir()
    with pytest.raises(SimulationError, match="north"):
        simulate_in_process(consortium("fedhft"), organizations(), epsilon=4.0, workdir=tmp_path)


def test_an_organization_outside_the_enrollment_is_refused() -> None:
    strangers = dict(organizations())
    strangers["stranger"] = strangers["north"]
    with pytest.raises(SimulationError, match="stranger"):
        simulate_in_process(consortium("fedhft"), strangers, epsilon=4.0)
