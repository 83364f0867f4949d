"""The running system end to end: a real server and four real clients on loopback mTLS.

Four organizations of two tiers, two clusters, the tiny model; clients run as threads
of the test process, the server in the same process, and every message crosses gRPC.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import (
    ORGS,
    assert_per_row_averages,
    fast_consortium,
    policy,
    provision,
    running_server,
    spying,
    start_federation,
    stored_models,
)
from safetensors.numpy import load as load_arrays

from fedhft.aggregator import ckks_ceremony
from fedhft.aggregator._sketches import sketch_centroids
from fedhft.aggregator._store import AggregatorStore
from fedhft.audit import verify_log
from fedhft.policies import ConsortiumConfig, OrganizationPolicy, SecureAggregationMode
from fedhft.protocol import SecAggClient, load_credentials
from fedhft.protocol.session_codec import CKKS_PUBLIC_FILE, CKKS_SEALED_FILE
from fedhft.sdk._mixture import sketch_membership

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


def _events(path: Path, event: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["payload"] for r in records if r["event"] == event]


def test_masking_rounds_move_clusters_by_the_clear_per_row_averages(tmp_path: Path) -> None:
    """Two masking rounds: each cluster adapter moves by the clear per-row average update."""
    config = fast_consortium()
    pki = provision(tmp_path / "pki")
    clients = tmp_path / "clients"
    with spying() as spy, running_server(config, pki, tmp_path / "server") as server:
        run = start_federation(config, pki, server.address, clients)
        run.join()
        assert server.wait(5)
    assert run.errors == {}
    models = stored_models(tmp_path / "server")
    assert sorted(models) == [0, 1, 2]
    step = 1.0 / config.secure_aggregation.scale
    for round_number in (1, 2):
        checked = assert_per_row_averages(
            config,
            spy.released[round_number],
            models[round_number],
            spy.updates[round_number],
            tolerance_per_holder=step,
        )
        assert checked > 0
    moved = sum(
        float(np.abs(models[2].states[j][b] - spy.released[1].states[j][b]).sum())
        for j in range(2)
        for b in models[2].states[j]
    )
    assert moved > 0
    server_key = load_credentials(pki.server).identity_public_key
    for org, report in run.reports.items():
        assert report.rounds_joined == (1, 2) and report.rounds_refused == ()
        assert report.accuracy is not None and 0.0 <= report.accuracy <= 1.0
        assert report.bytes_up > 0 and report.bytes_down > report.bytes_up
        audit = clients / org / "audit.jsonl"
        assert [p["round"] for p in _events(audit, "privacy_spend")] == [1, 2]
        assert len(_events(audit, "aggregation_receipt")) == 4  # 2 rounds × 2 clusters
        verified = verify_log(
            audit,
            public_key=load_credentials(pki.org(org)).identity_public_key,
            server_log=tmp_path / "server" / "audit.jsonl",
            server_public_key=server_key,
            policy=policy(org, clients),
        )
        assert verified.ok, [f.message for f in verified.errors]
        assert verified.checked_receipts == 4
        # Every receipt binds the organization's log head (its update_committed) and the
        # round's spend record, so the server's log pins this log's history.
        accepted = [
            p
            for p in _events(tmp_path / "server" / "audit.jsonl", "upload_accepted")
            if p["organization"] == org
        ]
        assert len(accepted) == 4
        assert all("audit_head_sha256" in p and "spend_sha256" in p for p in accepted)


def test_a_client_killed_after_sharing_keys_drops_out(tmp_path: Path) -> None:
    """A client that dies after sharing keys becomes a dropout; the round completes."""
    config = fast_consortium(rounds=1)
    pki = provision(tmp_path / "pki")
    victim = "clin-b"
    original = SecAggClient.mask_input

    def dies(self: SecAggClient, relayed: object, inputs: object) -> object:
        if self.organization == victim:
            raise SystemExit(f"{victim} killed")
        return original(self, relayed, inputs)  # type: ignore[arg-type]

    SecAggClient.mask_input = dies  # type: ignore[method-assign,assignment]
    try:
        with spying() as spy, running_server(config, pki, tmp_path / "server") as server:
            run = start_federation(config, pki, server.address, tmp_path / "clients")
            run.join()
            assert server.wait(5)
            summaries = list(server.summaries)
    finally:
        SecAggClient.mask_input = original  # type: ignore[method-assign]
    assert set(run.errors) == {victim} and isinstance(run.errors[victim], SystemExit)
    assert [s.round for s in summaries] == [1]
    for outcome in summaries[0].outcomes:
        assert outcome.dropped == (victim,)
        assert victim not in outcome.survivors and len(outcome.survivors) == 3
    survivors = {org: u for org, u in spy.updates[1].items() if org != victim}
    models = stored_models(tmp_path / "server")
    step = 1.0 / config.secure_aggregation.scale
    assert assert_per_row_averages(
        config, spy.released[1], models[1], survivors, tolerance_per_holder=step
    )


Blocks = tuple[tuple[str, np.ndarray], ...]


def _refused_then_retried(
    tmp_path: Path, corrupt_blocks: Callable[[Blocks, ConsortiumConfig], Blocks]
) -> list[dict[str, object]]:
    """One round in which `bank-b` passes its first masked upload through
    `corrupt_blocks`. Checks what every refused sum must leave: no client error, no
    `round_aggregated` for the corrupted attempt, and a retried round that moves the
    model by the honest per-row averages. Returns the server's `sum_rejected` records."""
    config = fast_consortium(rounds=1)
    pki = provision(tmp_path / "pki")
    original = SecAggClient.mask_input
    corrupted: list[int] = []

    def corrupt(self: SecAggClient, relayed: object, inputs: object) -> object:
        masked = original(self, relayed, inputs)  # type: ignore[arg-type]
        if self.organization != "bank-b" or corrupted:
            return masked
        corrupted.append(1)
        return dataclasses.replace(masked, blocks=corrupt_blocks(masked.blocks, config))

    SecAggClient.mask_input = corrupt  # type: ignore[method-assign,assignment]
    try:
        with spying() as spy, running_server(config, pki, tmp_path / "server") as server:
            run = start_federation(config, pki, server.address, tmp_path / "clients")
            run.join()
            assert server.wait(5)
    finally:
        SecAggClient.mask_input = original  # type: ignore[method-assign]
    assert run.errors == {} and corrupted == [1]
    server_log = tmp_path / "server" / "audit.jsonl"
    assert all(p["attempt"] != 1 for p in _events(server_log, "round_aggregated"))
    models = stored_models(tmp_path / "server")
    step = 1.0 / config.secure_aggregation.scale
    assert assert_per_row_averages(
        config, spy.released[1], models[1], spy.updates[1], tolerance_per_holder=step
    )
    return _events(server_log, "sum_rejected")


@pytest.mark.slow
def test_a_corrupted_masked_upload_is_refused_over_grpc_and_nothing_applied(
    tmp_path: Path,
) -> None:
    """A malicious organization corrupts its masked upload of round 1's first attempt
    (a ring wrap-around that makes a row's summed weight negative, as flipped bytes
    can). The server refuses the sums before applying anything, logs `sum_rejected` with
    the block and the bound, and retries; the round then moves the model by the honest
    per-row averages, and no signed record claims the corrupted attempt was applied."""

    def shrink_last_row_weight(blocks: Blocks, config: ConsortiumConfig) -> Blocks:
        shifted = []
        for block, words in blocks:
            words = np.array(words)
            modulus = 1 << (words.dtype.itemsize * 8)
            # The last word is the block's last row weight: subtract (n + 1) units.
            shift = (len(ORGS) + 1) * int(config.secure_aggregation.scale)
            words[-1] = words.dtype.type((int(words[-1]) - shift) % modulus)
            shifted.append((block, words))
        return tuple(shifted)

    rejected = _refused_then_retried(tmp_path, shrink_last_row_weight)
    assert len(rejected) == 1
    assert rejected[0]["round"] == 1 and rejected[0]["attempt"] == 1
    assert "row weights" in str(rejected[0]["bound"])


def test_a_sum_outside_the_ring_range_is_audited_as_rejected_over_grpc(tmp_path: Path) -> None:
    """A malicious organization adds a quarter of the ring to one word of its masked
    upload in round 1's first attempt, so the unmasked sum decodes beyond the levels the
    contributors can reach. The attempt ends like every refused sum: nothing applied, a
    `sum_rejected` record in the server's signed log naming the round, cluster, attempt,
    block and the ring-range bound (no value), and the retried round moves the model by
    the honest per-row averages."""

    def add_a_quarter_ring(blocks: Blocks, config: ConsortiumConfig) -> Blocks:
        block, words = blocks[0]
        words = np.array(words)
        bits = words.dtype.itemsize * 8
        words[0] = words.dtype.type((int(words[0]) + (1 << (bits - 2))) % (1 << bits))
        return ((block, words), *blocks[1:])

    rejected = _refused_then_retried(tmp_path, add_a_quarter_ring)
    assert len(rejected) == 1
    assert set(rejected[0]) == {"round", "cluster", "attempt", "block", "bound"}
    assert rejected[0]["round"] == 1 and rejected[0]["attempt"] == 1
    assert "ring" in str(rejected[0]["bound"])


def test_an_organization_out_of_budget_refuses_and_the_round_goes_on(tmp_path: Path) -> None:
    """An exhausted budget refuses every round (audited); the others complete both rounds."""
    config = fast_consortium()
    pki = provision(tmp_path / "pki")
    poor = "bank-a"
    clients = tmp_path / "clients"
    poor_policy = policy(poor, clients, epsilon=1.0)
    with running_server(config, pki, tmp_path / "server") as server:
        run = start_federation(config, pki, server.address, clients, policies={poor: poor_policy})
        run.join()
        assert server.wait(5)
        summaries = list(server.summaries)
    assert run.errors == {}
    assert run.reports[poor].rounds_joined == () and run.reports[poor].rounds_refused == (1, 2)
    assert run.reports[poor].epsilon_spent == 0.0
    refusals = _events(clients / poor / "audit.jsonl", "refusal")
    assert [(r["round"], r["reason"]) for r in refusals] == [
        (1, "privacy budget exhausted"),
        (2, "privacy budget exhausted"),
    ]
    assert _events(clients / poor / "audit.jsonl", "privacy_spend") == []
    assert [s.round for s in summaries] == [1, 2]
    for summary in summaries:
        assert poor not in summary.participants and len(summary.participants) == 3
    for org in set(ORGS) - {poor}:
        assert run.reports[org].rounds_joined == (1, 2)


def test_ckks_mode_end_to_end(tmp_path: Path) -> None:
    """CKKS mode: two rounds, clusters move by the per-row averages of decrypted sums."""
    config = fast_consortium(secure_aggregation={"mode": "ckks"})
    pki = provision(tmp_path / "pki")
    ceremony = ckks_ceremony(config, [pki.org(org) for org in ORGS], pki.server)
    assert (pki.server / CKKS_PUBLIC_FILE).is_file()
    for org in ORGS:
        assert (pki.org(org) / CKKS_SEALED_FILE).stat().st_mode & 0o077 == 0
    clients = tmp_path / "clients"

    def ckks_policy(org: str) -> OrganizationPolicy:
        base = policy(org, clients)
        accepted = {"accepted_modes": [SecureAggregationMode.MASKING, SecureAggregationMode.CKKS]}
        return base.model_copy(
            update={"secure_aggregation": base.secure_aggregation.model_copy(update=accepted)}
        )

    with spying() as spy, running_server(config, pki, tmp_path / "server") as server:
        run = start_federation(
            config, pki, server.address, clients, policies={org: ckks_policy(org) for org in ORGS}
        )
        run.join()
        assert server.wait(5)
    assert run.errors == {}
    models = stored_models(tmp_path / "server")
    bound = ceremony.parameters.error_bound(len(ORGS))
    for round_number in (1, 2):
        assert assert_per_row_averages(
            config,
            spy.released[round_number],
            models[round_number],
            spy.updates[round_number],
            tolerance_per_holder=bound,
        )
    for org in ORGS:
        assert run.reports[org].rounds_joined == (1, 2)
        assert len(_events(clients / org / "audit.jsonl", "aggregation_receipt")) == 4


def test_sketch_clustering_and_a_calibrated_head_over_grpc(tmp_path: Path) -> None:
    """Clusters on sketches over gRPC: each warm-up join carries the organization's kept
    DP sketch, the server keeps exactly those and splits on their k-means centroids (in
    the stored model), each client's π follows its own sketch, and the ledger and the
    verified audit log hold each release once."""
    config = fast_consortium(
        clustering={"clusters": 2, "warmup_rounds": 1, "membership": "hard", "signal": "sketch"},
        personalization={"head": "shared", "label_prior": "dp"},
    )
    pki = provision(tmp_path / "pki")
    clients = tmp_path / "clients"
    with running_server(config, pki, tmp_path / "server") as server:
        run = start_federation(config, pki, server.address, clients)
        run.join()
        assert server.wait(5)
        run_id = server.run_id
    assert run.errors == {}
    store = AggregatorStore(tmp_path / "server")
    received = {org: np.asarray(values) for org, values in store.sketches().items()}
    store.close()
    kept = {
        org: load_arrays((clients / org / "state" / "release-sketch.safetensors").read_bytes())[
            "values"
        ]
        for org in ORGS
    }
    assert set(received) == set(ORGS)
    for org in ORGS:
        np.testing.assert_array_equal(received[org], kept[org])
    final = stored_models(tmp_path / "server")[2]
    for got, want in zip(
        final.centroids, sketch_centroids(received, 2, run_id=run_id), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    server_key = load_credentials(pki.server).identity_public_key
    for org, report in run.reports.items():
        assert report.rounds_joined == (1, 2)
        own = sketch_membership(kept[org], final, temperature=0.1, hard=True)
        assert list(report.membership) == own.tolist()
        spends = _events(clients / org / "audit.jsonl", "privacy_spend")
        assert [(p["round"], p["mechanism"]) for p in spends] == [
            (1, "gaussian"),
            (1, "gaussian"),
            (1, "dp-sgd"),
            (2, "dp-sgd"),
        ]
        verified = verify_log(
            clients / org / "audit.jsonl",
            public_key=load_credentials(pki.org(org)).identity_public_key,
            server_log=tmp_path / "server" / "audit.jsonl",
            server_public_key=server_key,
            policy=policy(org, clients),
        )
        assert verified.ok, [f.message for f in verified.errors]
