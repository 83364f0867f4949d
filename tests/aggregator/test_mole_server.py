"""FedAMoLE over gRPC with mutual TLS: affinity upload, RSEA, secure per-holder averages."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.serialization import Encoding
from runtime_helpers import (
    FAST,
    ORGS,
    SERVER_NAME,
    TINY,
    fast_consortium,
    federation_data,
    policy,
    provision,
    running_server,
    start_clients,
    stored_models,
)

from fedhft.aggregator import AggregatorServer, assign_experts
from fedhft.aggregator._mole_rounds import (
    AFFINITY_VERSION,
    MoLECoordinator,
    validate_affinity_upload,
)
from fedhft.aggregator.errors import AggregatorError
from fedhft.policies import ConsortiumConfig
from fedhft.protocol import PROTOCOL_VERSION, create_channel, load_credentials
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc
from fedhft.protocol._transport import status_code_for
from fedhft.sdk import FederatedClient, RetryPolicy, build_base_model
from fedhft.sdk.mole._participant import MoLEParticipant, _decode_blocks

DER = Encoding.DER
TIERS = {
    "edge": {"layers": [-1], "modules": ["value"], "min_experts": 1, "max_experts": 2},
    "full": {"layers": "all", "min_experts": 2, "max_experts": 3},
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _config(rounds: int = 2) -> ConsortiumConfig:
    return fast_consortium(
        method="fedamole",
        rounds=rounds,
        tiers=TIERS,
        clustering={"clusters": 1},
        fedamole={"num_experts": 3, "holders_per_expert": 3, "affinity_noise_multiplier": 2.0},
    )


def _client(org: str, config: ConsortiumConfig, pki: Any, address: str, state: Path) -> Any:
    data = federation_data()[org]
    return FederatedClient(
        build_base_model(config.model, tiny_config=TINY),
        data.train,
        policy(org, state),
        config,
        credentials=pki.org(org),
        server=address,
        server_name=SERVER_NAME,
        state_dir=state / org / "state",
        test_dataset=data.test,
        seed=0,
        wait_ms=2000,
        retry=RetryPolicy(attempts=40, initial_backoff_s=0.2, max_backoff_s=2.0),
    )


@pytest.mark.slow
# The four clients are threads of this process; MoLEPrivateStep silences this torch
# warning with `warnings.catch_warnings`, which is not thread-safe.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_fedamole_end_to_end_over_mtls(tmp_path: Path) -> None:
    """Four organizations: RSEA on the uploaded DP affinities, secure holder averages, ε."""
    config = _config()
    pki = provision(tmp_path / "pki")
    state = tmp_path / "server"
    clients = tmp_path / "clients"
    uploads: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    lock = threading.Lock()
    original = MoLEParticipant.prepare

    def spy(self: MoLEParticipant, round_number: int, release: Any) -> Any:
        upload = original(self, round_number, release)
        with lock:
            uploads.setdefault(round_number, {})[self.organization] = upload
        return upload

    MoLEParticipant.prepare = spy  # type: ignore[method-assign]
    try:
        with running_server(config, pki, state) as server:
            run = start_clients(
                {
                    org: lambda org=org: _client(org, config, pki, server.address, clients)
                    for org in ORGS
                }
            )
            run.join(timeout=300)
            assert server.wait(timeout=30)
            summaries = list(server.summaries)
    finally:
        MoLEParticipant.prepare = original  # type: ignore[method-assign]
    assert run.errors == {}
    assert [s.round for s in summaries] == [1, 2]

    # The published assignment is RSEA on exactly the affinities the clients released.
    affinities = {
        org: _decode_blocks((clients / org / "state" / "mole-affinity.safetensors").read_bytes())[
            0
        ]["affinity"].reshape(-1)
        for org in ORGS
    }
    tiers = {org: ("edge" if org.endswith("-b") else "full") for org in ORGS}
    expected = assign_experts(config, affinities, tiers)
    models = stored_models(state)
    # A restarted server resumes with the stored assignment, state and averaged blocks.
    restarted = AggregatorServer(config, credentials=pki.server, state_dir=state, options=FAST)
    try:
        coordinator = restarted.coordinator
        assert isinstance(coordinator, MoLECoordinator)
        assert coordinator.assignment == expected
        for block_id, value in models[2].states[0].items():
            np.testing.assert_array_equal(coordinator.states[block_id], value)
        uploaded = {b for b in models[2].states[0] if not b.startswith("head.")}
        assert coordinator.aggregated == uploaded - set(summaries[1].outcomes[0].skipped_blocks)
    finally:
        restarted.stop(grace=0.1)

    # Round 1: every aggregated block is the plain average of its holders' uploads.
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
    # Shared expert, router and three experts on each of the 4 MoLE modules; the head is
    # personal. A block left out (a dropout under load) is reported instead.
    left_out = summaries[0].outcomes[0].skipped_blocks
    assert checked == 4 * 5 - len(left_out)

    for org in ORGS:
        report = run.reports[org]
        assert report.rounds_joined == (1, 2)
        assert report.accuracy is not None and 0.0 <= report.accuracy <= 1.0
        spends = [
            line
            for line in (clients / org / "audit.jsonl").read_text().splitlines()
            if '"privacy_spend"' in line
        ]
        assert len(spends) == 3 and '"gaussian"' in spends[0]
        assert report.epsilon_spent is not None and math.isfinite(report.epsilon_spent)


def _upload(**fields: Any) -> pb.AffinityUpload:
    values: dict[str, Any] = {
        "version": AFFINITY_VERSION,
        "round": 1,
        "run_id": "run.a1",
        "affinity": [0.25, 0.25, 0.5],
    }
    values.update(fields)
    return pb.AffinityUpload(**values)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"version": 2}, "FAILED_PRECONDITION"),
        ({"round": 2}, "FAILED_PRECONDITION"),
        ({"run_id": "run.a2"}, "FAILED_PRECONDITION"),
        ({"affinity": [0.25] * 4}, "RESOURCE_EXHAUSTED"),
        ({"affinity": [0.5, 0.5]}, "INVALID_ARGUMENT"),
        ({"affinity": [0.5, 0.5, math.nan]}, "INVALID_ARGUMENT"),
        ({"affinity": [1.5, -0.5, 0.0]}, "INVALID_ARGUMENT"),
        ({"affinity": [0.2, 0.2, 0.2]}, "INVALID_ARGUMENT"),
    ],
)
def test_bad_affinity_uploads_get_precise_statuses(fields: dict[str, Any], status: str) -> None:
    """A wrong version, attempt, size or value is refused with its own gRPC status."""
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the status is what is checked
        validate_affinity_upload(
            _upload(**fields), expected_round=1, run_id="run.a1", num_experts=3
        )
    assert status_code_for(raised.value).name == status


def test_good_affinity_upload_is_read() -> None:
    """A normalized release of the right size for the open attempt is accepted as sent."""
    values = validate_affinity_upload(_upload(), expected_round=1, run_id="run.a1", num_experts=3)
    assert values == (0.25, 0.25, 0.5)


def _status(call: Callable[[], object]) -> str:
    """The name of the gRPC status ``call`` fails with."""
    with pytest.raises(grpc.RpcError) as error:
        call()
    return str(error.value.code().name)  # type: ignore[attr-defined]


def test_affinity_upload_over_the_wire_is_checked_against_the_round(tmp_path: Path) -> None:
    """Before joining, malformed, conflicting: each upload is refused with its own status."""
    config = _config()
    pki = provision(tmp_path / "pki")
    with running_server(config, pki, tmp_path / "server") as server:
        org = "clin-a"
        credentials = load_credentials(pki.org(org))
        with create_channel(credentials, server.address, SERVER_NAME) as channel:
            stub = pb_grpc.AggregatorStub(channel)
            sealing = credentials.sealing_certificate
            assert sealing is not None
            stub.Hello(
                pb.HelloRequest(
                    protocol=PROTOCOL_VERSION,
                    consortium_config_hash=server.config_hash,
                    identity_certificate=credentials.identity_certificate.public_bytes(DER),
                    sealing_certificate=sealing.public_bytes(DER),
                ),
                timeout=10,
            )
            announced = stub.AwaitRound(pb.RoundRequest(after_round=0, wait_ms=5000), timeout=10)
            assert announced.mole.affinity_requested and not announced.mole.assignment
            assert announced.mole.num_experts == 3
            upload = _upload(run_id=announced.run_id)
            assert _status(lambda: stub.SubmitAffinity(upload, timeout=10)) == (
                "FAILED_PRECONDITION"
            )
            joined = stub.JoinRound(
                pb.JoinRequest(round=1, participate=True, tier="full"), timeout=10
            )
            assert joined.accepted
            wrong = _upload(run_id=announced.run_id, affinity=[0.5, 0.5])
            assert _status(lambda: stub.SubmitAffinity(wrong, timeout=10)) == "INVALID_ARGUMENT"
            assert stub.SubmitAffinity(upload, timeout=10).accepted
            assert stub.SubmitAffinity(upload, timeout=10).accepted  # The same release again.
            other = _upload(run_id=announced.run_id, affinity=[0.5, 0.25, 0.25])
            assert _status(lambda: stub.SubmitAffinity(other, timeout=10)) == "ALREADY_EXISTS"


def test_server_refuses_fedamole_in_ckks_mode(tmp_path: Path) -> None:
    """FedAMoLE needs masking mode; a CKKS consortium is refused before anything starts."""
    config = fast_consortium(
        method="fedamole",
        tiers=TIERS,
        fedamole={"num_experts": 3, "holders_per_expert": 3},
        secure_aggregation={"mode": "ckks"},
    )
    pki = provision(tmp_path / "pki")
    with pytest.raises(AggregatorError, match="masking"):
        AggregatorServer(config, credentials=pki.server, state_dir=tmp_path / "state", new_run=True)
    assert not (tmp_path / "state").exists()
