"""FedAMoLE on a causal LM over gRPC with mutual TLS: `FederatedClient` with instruction
records, the real aggregation server, reports with what the model writes."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_causal import TinyCausal, causal_consortium, federation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aggregator"))
from runtime_helpers import (
    SERVER_NAME,
    provision,
    running_server,
    start_clients,
    stored_models,
)

from fedhft.policies import ConsortiumConfig, OrganizationPolicy
from fedhft.sdk import FederatedClient, RetryPolicy
from fedhft.sdk.mole._participant import MoLEParticipant

ORGS = ("clin-a", "clin-b", "bank-a", "bank-b")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _consortium(tiny: TinyCausal) -> ConsortiumConfig:
    return causal_consortium(
        tiny,
        organizations=ORGS,
        method="fedamole",
        adapter={"target_modules": ["q_proj", "v_proj"], "rank": 4, "alpha": 8, "a_seed": 3},
        tiers={"full": {"min_experts": 2, "max_experts": 3}},
        clustering={"clusters": 1},
        fedamole={"num_experts": 3, "holders_per_expert": 3, "affinity_noise_multiplier": 2.0},
        training={"learning_rate": 0.02},
        secure_aggregation={
            "threshold_fraction": 0.75,
            "max_dropout_fraction": 0.25,
            "stage_timeout_s": 8.0,
        },
    )


def _policy(org: str, state: Path) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "instruct",
            "privacy": {
                "epsilon": 50.0,
                "delta": 1e-3,
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.1,
                "planned_rounds": 2,
                "ledger_path": str(state / org / "ledger.json"),
            },
            "training": {"tier": "full", "batch_size": 4, "local_steps": 2, "max_seq_length": 96},
            "audit": {"log_path": str(state / org / "audit.jsonl")},
        }
    )


@pytest.mark.slow
# The four clients are threads of this process; MoLEPrivateStep silences this torch
# warning with `warnings.catch_warnings`, which is not thread-safe.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_causal_fedamole_end_to_end_over_mtls(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """Four organizations with instruction records, two rounds: every round-1 block is the
    plain average of its holders' uploads, and each report carries ROUGE-L against the
    zero-shot base model, three audited spends (affinity + two rounds) and a finite ε."""
    tiny = tiny_causal_models["llama"]
    config = _consortium(tiny)
    pki = provision(tmp_path / "pki", ORGS)
    state, clients = tmp_path / "server", tmp_path / "clients"
    data = dict(zip(ORGS, federation(), strict=True))
    uploads: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    original = MoLEParticipant.prepare

    def spy(self: MoLEParticipant, round_number: int, release: Any) -> Any:
        upload = original(self, round_number, release)
        uploads.setdefault(round_number, {})[self.organization] = upload
        return upload

    def client(org: str, address: str) -> FederatedClient:
        return FederatedClient(
            tiny.base(),
            data[org].train,
            _policy(org, clients),
            config,
            credentials=pki.org(org),
            server=address,
            server_name=SERVER_NAME,
            state_dir=clients / org / "state",
            test_dataset=data[org].test,
            tokenizer=tiny.tokenizer,
            seed=0,
            wait_ms=2000,
            retry=RetryPolicy(attempts=40, initial_backoff_s=0.2, max_backoff_s=2.0),
        )

    MoLEParticipant.prepare = spy  # type: ignore[method-assign]
    try:
        with running_server(config, pki, state) as server:
            run = start_clients({org: lambda org=org: client(org, server.address) for org in ORGS})
            run.join(timeout=300)
            assert server.wait(timeout=30)
            summaries = list(server.summaries)
    finally:
        MoLEParticipant.prepare = original  # type: ignore[method-assign]
    assert run.errors == {}
    assert [s.round for s in summaries] == [1, 2]

    models = stored_models(state)
    clip = config.secure_aggregation.clip
    step = 1.0 / config.secure_aggregation.scale
    checked = 0
    for block_id, value in models[1].states[0].items():
        holders = [np.clip(u[block_id], -clip, clip) for u in uploads[1].values() if block_id in u]
        if len(holders) < config.secure_aggregation.min_cohort:
            np.testing.assert_array_equal(value, models[0].states[0][block_id])
            continue
        np.testing.assert_allclose(value, np.mean(holders, axis=0), atol=len(holders) * step)
        checked += 1
    # Shared expert, router and three experts on each of the 4 MoLE modules; no head.
    assert checked == 4 * 5 - len(summaries[0].outcomes[0].skipped_blocks)
    assert not any(b.startswith("head.") for b in models[1].states[0])

    for org in ORGS:
        report = run.reports[org]
        assert report.rounds_joined == (1, 2)
        assert report.generation is not None
        assert 0.0 <= report.generation["rouge_l"] <= 1.0
        assert "zero_shot_rouge_l" in report.generation
        spends = [
            line
            for line in (clients / org / "audit.jsonl").read_text().splitlines()
            if '"privacy_spend"' in line
        ]
        assert len(spends) == 3 and '"gaussian"' in spends[0]
        assert report.epsilon_spent is not None and math.isfinite(report.epsilon_spent)
