"""The Ray engine: organizations trained from their folders on a pool of Ray workers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedhft.aggregator import RoundCoordinator
from fedhft.audit import verify_log
from fedhft.model import MaskedAdapterModel, encode_clusters, tier_mask
from fedhft.policies import (
    ConsortiumConfig,
    Method,
    SecureAggregationMode,
    load_consortium_config,
    load_organization_policy,
    parse_policy,
)
from fedhft.protocol import load_credentials
from fedhft.protocol.secagg.graph import effective_degree
from fedhft.simulation import (
    LABELS,
    RayFederation,
    RayUnavailableError,
    SimulatedConsortium,
    consortium_document,
    organization_folders,
    provision,
    require_ray,
)
from fedhft.simulation import _ray as ray_engine


def _provision(root: Path, clients: int) -> SimulatedConsortium:
    return provision(
        root,
        clients=clients,
        rounds=2,
        method=Method.FEDHFT,
        secure=SecureAggregationMode.MASKING,
        model="tiny",
        epsilon=8.0,
        local_steps=2,
        samples=40,
        alpha=2.0,
        seed=0,
    )


def _federation(consortium: SimulatedConsortium) -> RayFederation:
    folders = organization_folders(
        consortium.root, consortium.organizations, consortium.tiers, LABELS
    )
    return RayFederation(consortium.consortium_path, folders, workers=2)


def _verify(consortium: SimulatedConsortium, org: str) -> Any:
    """The organization's audit log verified against its policy and identity key."""
    folder = consortium.folder(org)
    report = verify_log(
        folder / "audit.jsonl",
        public_key=load_credentials(consortium.root / "pki" / org).identity_key.public_key(),
        policy=load_organization_policy(folder / "policy.yaml"),
    )
    report.raise_if_failed()
    return report


def _spends(consortium: SimulatedConsortium, org: str) -> list[tuple[str, int]]:
    """(mechanism, round) of each privacy spend in the organization's audit log."""
    lines = (consortium.folder(org) / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [
        (r["payload"]["mechanism"], r["payload"]["round"])
        for r in records
        if r["event"] == "privacy_spend"
    ]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module's tests (starting it takes seconds)."""
    ray = require_ray()
    ray.init(
        num_cpus=2,
        object_store_memory=128 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield
    ray.shutdown()


def test_missing_ray_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray the engine raises a typed error naming `pip install 'fedhft[ray]'`."""
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayUnavailableError, match=r"pip install 'fedhft\[ray\]'"):
        require_ray()


@pytest.mark.parametrize("clients", [50, 200, 500])
def test_large_consortia_use_a_sparse_secagg_graph(clients: int) -> None:
    """Hundreds of organizations sum with SecAgg+: each masks with k ≪ N − 1 neighbours."""
    data = consortium_document(
        organizations=[f"org-{i}" for i in range(clients)],
        rounds=2,
        method=Method.FEDHFT,
        secure=SecureAggregationMode.MASKING,
        model="tiny",
        seed=0,
    )
    config = parse_policy(data, ConsortiumConfig, "sim")
    k = config.secure_aggregation.neighbours
    assert k is not None
    assert effective_degree(clients, k) < clients - 1
    if clients == 200:
        assert effective_degree(clients, k) <= 25


@pytest.mark.parametrize("clients", [3, 12])
def test_process_engine_sizes_keep_the_complete_graph(clients: int) -> None:
    """Consortia the process engine runs are unchanged: no `neighbours`, complete graph."""
    data = consortium_document(
        organizations=[f"org-{i}" for i in range(clients)],
        rounds=2,
        method=Method.FEDHFT,
        secure=SecureAggregationMode.MASKING,
        model="tiny",
        seed=0,
    )
    assert "neighbours" not in data["secure_aggregation"]


def test_a_worker_keeps_no_organization_state_between_tasks(tmp_path: Path) -> None:
    """After training an organization's round, the worker's model is back to the base
    weights with no label prior; the round's spend and staged update are in the
    organization's own folder."""
    consortium = _provision(tmp_path, 3)
    worker = ray_engine.OrganizationWorker(str(consortium.consortium_path))
    base = {k: v.clone() for k, v in worker.model.peft_model.state_dict().items()}
    config = load_consortium_config(consortium.consortium_path)
    coordinator = RoundCoordinator(
        config,
        run_id="test",
        initial_state=MaskedAdapterModel.from_consortium(config).get_block_state(),
        tier_blocks={t: tier_mask(config, t) for t in config.tiers},
    )
    folder = organization_folders(
        consortium.root, consortium.organizations, consortium.tiers, LABELS
    )[0]
    trained = worker.train(folder, 1, encode_clusters(coordinator.model_for_round(1)), None)
    assert not trained.refused and trained.contributions
    after = worker.model.peft_model.state_dict()
    assert all(torch.equal(base[name], after[name]) for name in base)
    assert worker.model.label_log_prior is None
    assert [m for m, _ in _spends(consortium, folder.organization)] == [
        "gaussian",
        "gaussian",
        "dp-sgd",
    ]
    assert any(folder.state.iterdir())


@pytest.mark.slow
def test_ray_rounds_sum_securely_and_every_audit_log_verifies(
    tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rounds of 6 organizations on 2 workers: each secure sum equals the plain sum
    of the organizations' contributions, every ledger holds one DP-SGD spend per round,
    and every organization's signed audit log verifies with its ε recomputed."""
    consortium = _provision(tmp_path, 6)
    sessions: list[tuple[Any, dict[str, dict[str, np.ndarray]], Any]] = []
    real_secure_sum = ray_engine.run_secagg_in_process

    def recording(params: Any, inputs: Any, identities: Any, **kwargs: Any) -> Any:
        result = real_secure_sum(params, inputs, identities, **kwargs)
        sessions.append((params, inputs, result))
        return result

    monkeypatch.setattr(ray_engine, "run_secagg_in_process", recording)
    with _federation(consortium) as federation:
        result = federation.run()
    assert [r.summary is not None for r in result.rounds] == [True, True]
    # Round 1 has one cluster session, round 2 (after the split) one per cluster.
    assert len(sessions) == 3
    for params, inputs, outcome in sessions:
        assert set(outcome.survivors) == set(inputs)
        for block_id, block_sum in outcome.blocks.items():
            plain = sum(np.asarray(v[block_id]) for v in inputs.values() if block_id in v)
            np.testing.assert_allclose(block_sum.sum, plain, atol=len(inputs) / params.scale)
    for org in consortium.organizations:
        report = result.reports[org]
        assert report["rounds_joined"] == [1, 2]
        assert 0.0 <= report["accuracy"] <= 1.0
        assert report["bytes_up"] > 0
        assert [m for m, _ in _spends(consortium, org)] == [
            "gaussian",
            "gaussian",
            "dp-sgd",
            "dp-sgd",
        ]
        verified = _verify(consortium, org)
        assert verified.epsilon[-1].recomputed == pytest.approx(report["epsilon_spent"], rel=1e-3)


@pytest.mark.slow
def test_a_killed_worker_makes_its_organization_a_dropout(tmp_path: Path, local_ray: None) -> None:
    """A worker killed mid-round: the organization it was training drops out of that
    round only; the round completes without it, the worker comes back for the others,
    and every audit log, the dropout's included, still verifies."""
    consortium = _provision(tmp_path, 6)
    ray = require_ray()

    def kill_first_worker(round_number: int, workers: list[Any]) -> None:
        if round_number == 2:
            ray.kill(workers[0], no_restart=False)

    with _federation(consortium) as federation:
        result = federation.run(after_submit=kill_first_worker)
    first, second = result.rounds
    assert first.lost == ()
    assert len(second.lost) == 1
    (lost,) = second.lost
    assert second.summary is not None
    assert lost not in second.summary.participants
    assert len(second.summary.participants) == 5
    assert result.reports[lost]["rounds_joined"] == [1]
    for org in consortium.organizations:
        if org != lost:
            assert result.reports[org]["rounds_joined"] == [1, 2]
        _verify(consortium, org)
