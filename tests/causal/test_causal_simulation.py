"""`simulate_in_process` on a causal LM: instruction records in, FedHFT rounds with DP-SGD
and masking secure sums, every organization scored on what its model writes.

Four tiny-Llama organizations, two rounds. Checked: each organization gets ROUGE-L and
exact match in [0, 1]; its ledger, read back from disk, holds an ε within its budget equal
to the accountant's for the rounds it took; the secure sums ran over every organization;
the zero-shot base scored once (`score_zero_shot`) equals what each participant reports;
the non-private baseline accounts nothing; labelled texts are refused for a causal LM.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from tiny_causal import TinyCausal, causal_consortium, federation

from fedhft.accounting import compute_epsilon
from fedhft.policies import ConsortiumConfig, load_organization_policy
from fedhft.sdk import synthetic_federation
from fedhft.sdk.privacy import PrivacyLedger
from fedhft.simulation import (
    LocalTraining,
    SimulatedOrganization,
    SimulationError,
    score_zero_shot,
    simulate_in_process,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning:opacus.*"),
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    pytest.mark.filterwarnings("ignore::fedhft.errors.SecurityWarning"),
]

TIERS = {"clin-a": "full", "bank-a": "top", "clin-b": "full", "bank-b": "full"}
TRAINING = LocalTraining(batch_size=4, local_steps=2, max_seq_length=96)


def _consortium(tiny: TinyCausal, method: str) -> ConsortiumConfig:
    return causal_consortium(
        tiny,
        organizations=tuple(TIERS),
        tiers={"full": {"keep_ratio": 0.5}, "top": {"layers": [-1], "keep_ratio": 0.5}},
        method=method,
        training={"learning_rate": 0.05},
        secure_aggregation={"threshold_fraction": 0.75, "max_dropout_fraction": 0.25},
    )


def _organizations() -> dict[str, SimulatedOrganization]:
    return {
        org: SimulatedOrganization(data.train, data.test.select(range(2)), tier, data.domain)
        for (org, tier), data in zip(TIERS.items(), federation(), strict=True)
    }


def test_causal_fedhft_scores_every_organization_and_spends_within_budget(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    tiny = tiny_causal_models["llama"]
    config = _consortium(tiny, "fedhft")
    organizations = _organizations()
    # No tokenizer given: the consortium model's own (pinned by its fingerprint).
    result = simulate_in_process(
        config,
        organizations,
        epsilon=8.0,
        training=TRAINING,
        rounds=2,
        seed=1,
        workdir=tmp_path,
        base_model=tiny.base(),
    )
    for record in result.rounds:
        assert record.summary is not None
        for outcome in record.summary.outcomes:
            assert sorted(outcome.survivors) == sorted(TIERS)
    baseline = score_zero_shot(
        config,
        organizations,
        max_seq_length=TRAINING.max_seq_length,
        base_model=tiny.base(),
    )
    for org, scores in result.organizations.items():
        for metric in ("rouge_l", "exact_match", "zero_shot_rouge_l", "zero_shot_exact_match"):
            assert 0.0 <= scores[metric] <= 1.0, (org, metric)
        # The base scored once per organization is what its participant reports.
        for metric in ("rouge_l", "exact_match", "loss"):
            assert scores[f"zero_shot_{metric}"] == pytest.approx(baseline[org][metric])
        assert scores["bytes_up"] > 0 and scores["rounds_joined"] == 2
        policy = load_organization_policy(tmp_path / org / "policy.yaml")
        ledger = PrivacyLedger.open(
            tmp_path / org / "ledger.json",
            organization=org,
            accountant=policy.privacy.accountant,
            delta=policy.privacy.delta,
            epsilon_budget=policy.privacy.epsilon,
        )
        assert [r.round for r in ledger.records] == [1, 2]
        spent = ledger.spent()
        assert 0.0 < spent <= 8.0
        assert spent == pytest.approx(
            compute_epsilon(
                ledger.records, accountant=policy.privacy.accountant, delta=policy.privacy.delta
            ),
            rel=1e-9,
        )
        assert scores["epsilon"] == pytest.approx(spent)
    rouge = [m["rouge_l"] for m in result.organizations.values()]
    assert result.mean("rouge_l") == pytest.approx(statistics.fmean(rouge))
    assert result.worst("exact_match") == min(
        m["exact_match"] for m in result.organizations.values()
    )


def test_the_non_private_causal_baseline_accounts_nothing(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    tiny = tiny_causal_models["llama"]
    result = simulate_in_process(
        _consortium(tiny, "fedavg"),
        _organizations(),
        epsilon=None,
        training=TRAINING,
        rounds=1,
        workdir=tmp_path,
        base_model=tiny.base(),
        tokenizer=tiny.tokenizer,
        zero_shot=False,
    )
    assert result.epsilon_spent is None
    for org, scores in result.organizations.items():
        assert scores["epsilon"] is None
        assert not (tmp_path / org / "ledger.json").exists()
        assert 0.0 <= scores["rouge_l"] <= 1.0
        assert not any(name.startswith("zero_shot_") for name in scores), org


def test_labelled_texts_are_refused_for_a_causal_lm(
    tiny_causal_models: dict[str, TinyCausal],
) -> None:
    tiny = tiny_causal_models["llama"]
    organizations = _organizations()
    texts = synthetic_federation(num_organizations=1, alpha=1.0, samples_per_org=16, seed=0)[0]
    organizations["bank-b"] = SimulatedOrganization(texts.train, texts.test, "full")
    with pytest.raises(SimulationError, match=r"bank-b.*instruction records"):
        simulate_in_process(
            _consortium(tiny, "fedhft"), organizations, epsilon=8.0, base_model=tiny.base()
        )
