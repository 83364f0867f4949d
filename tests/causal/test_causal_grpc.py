"""A causal-LM federation that clusters on sketches, over gRPC with mutual TLS on
loopback: a real server and four `FederatedClient` threads on the tiny Qwen2 model."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as load_arrays
from tiny_causal import TinyCausal, causal_consortium, federation

from fedhft.aggregator import AggregatorServer, ServerOptions
from fedhft.aggregator._store import AggregatorStore
from fedhft.model import build_base_model, sketch_dimension
from fedhft.policies import OrganizationPolicy
from fedhft.protocol import init_ca, issue_organization, issue_server
from fedhft.sdk import ClientReport, FederatedClient, RetryPolicy

ORGS = ("clin-a", "clin-b", "bank-a", "bank-b")
OPTIONS = ServerOptions(
    join_timeout_s=20, train_timeout_s=60, retry_pause_s=0.2, poll_interval_ms=50
)

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


def _policy(org: str, state: Path) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "instruct",
            "privacy": {
                "epsilon": 8.0,
                "delta": 1e-3,
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.0,
                "planned_rounds": 2,
                "ledger_path": str(state / org / "ledger.json"),
            },
            "training": {"tier": "full", "batch_size": 4, "local_steps": 1, "max_seq_length": 96},
            "audit": {"log_path": str(state / org / "audit.jsonl")},
        }
    )


def test_causal_sketches_travel_over_grpc_one_per_organization(
    tiny_causal_models: dict[str, TinyCausal], tmp_path: Path
) -> None:
    """Each warm-up join carries the organization's kept DP sketch of the model's hidden
    width; the server stores exactly one per organization, equal to what each kept, and
    splits the clusters on them; every client finishes both rounds and reports ROUGE-L."""
    tiny = tiny_causal_models["qwen2"]
    config = causal_consortium(
        tiny,
        organizations=ORGS,
        clustering={"clusters": 2, "warmup_rounds": 1, "signal": "sketch"},
        secure_aggregation={
            "threshold_fraction": 0.75,
            "max_dropout_fraction": 0.25,
            "stage_timeout_s": 8.0,
        },
    )
    ca = init_ca("causal-test", tmp_path / "pki" / "ca")
    issue_server(ca, "localhost", tmp_path / "pki" / "server")
    for org in ORGS:
        issue_organization(ca, org, tmp_path / "pki" / org)
    clients = tmp_path / "clients"
    reports: dict[str, ClientReport] = {}
    errors: dict[str, BaseException] = {}
    server = AggregatorServer(
        config,
        credentials=tmp_path / "pki" / "server",
        state_dir=tmp_path / "server",
        options=OPTIONS,
        new_run=True,
    ).start()
    try:

        def body(org: str, index: int) -> None:
            data = federation()[index]
            try:
                with FederatedClient(
                    build_base_model(config.model),
                    data.train,
                    _policy(org, clients),
                    config,
                    credentials=tmp_path / "pki" / org,
                    server=server.address,
                    server_name="localhost",
                    state_dir=clients / org / "state",
                    test_dataset=data.test,
                    tokenizer=tiny.tokenizer,
                    seed=0,
                    wait_ms=2000,
                    retry=RetryPolicy(attempts=40, initial_backoff_s=0.2, max_backoff_s=2.0),
                ) as client:
                    reports[org] = client.run()
            except BaseException as error:  # Collected for the assertions below.
                errors[org] = error

        threads = [
            threading.Thread(target=body, args=(org, i), name=f"client-{org}")
            for i, org in enumerate(ORGS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert not any(t.is_alive() for t in threads)
        assert server.wait(5)
    finally:
        server.stop(grace=0.5)
    assert errors == {}
    store = AggregatorStore(tmp_path / "server")
    received = {org: np.asarray(values) for org, values in store.sketches().items()}
    store.close()
    hidden = tiny.base().config.hidden_size
    assert sketch_dimension(config) == hidden
    assert sorted(received) == sorted(ORGS)
    for org in ORGS:
        kept = load_arrays((clients / org / "state" / "release-sketch.safetensors").read_bytes())
        assert received[org].shape == (hidden,)
        np.testing.assert_array_equal(received[org], kept["values"])
        report = reports[org]
        assert report.rounds_joined == (1, 2) and len(report.membership) == 2
        assert report.generation is not None and 0.0 <= report.generation["rouge_l"] <= 1.0
