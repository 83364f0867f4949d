"""The aggregation server over loopback mTLS: enrollment, rejections, state, restarts.

`open_round` starts one server and plays three organizations by hand (raw gRPC stubs)
that join round 1 while the fourth refuses it, so the round's sessions are open and
waiting for key advertisements; the rejection tests probe that server. Other tests run
real clients (threads) or a real server process (`fedhft aggregator serve`, killed).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from runtime_helpers import (
    FAST,
    ORGS,
    Pki,
    assert_per_row_averages,
    fast_consortium,
    ledger_rounds,
    provision,
    running_server,
    spying,
    start_federation,
    stored_models,
)

from fedhft.aggregator import AggregatorServer, ServerOptions
from fedhft.aggregator._sessions import MaskingSession
from fedhft.aggregator.errors import StateError
from fedhft.policies import dump_yaml
from fedhft.protocol import (
    PROTOCOL_VERSION,
    Credentials,
    MaskedInput,
    SecAggClient,
    SessionParams,
    create_channel,
    decode_message,
    init_ca,
    issue_organization,
    load_credentials,
    receive_model,
    verify_identity_certificate,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc
from fedhft.protocol.errors import TransportError
from fedhft.protocol.session_codec import decode_session, released_model_hash

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

TIMEOUT = 20.0
JOINED = ("bank-a", "bank-b", "clin-a")
REFUSER = "clin-b"


def _der(certificate: Any) -> bytes:
    return bytes(certificate.public_bytes(serialization.Encoding.DER))


def _hello(credentials: Credentials, config_hash: bytes, **changes: Any) -> pb.HelloRequest:
    fields: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "consortium_config_hash": config_hash,
        "identity_certificate": _der(credentials.identity_certificate),
        "sealing_certificate": _der(credentials.sealing_certificate),
    }
    fields.update(changes)
    return pb.HelloRequest(**fields)


def _refusal(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code of the `grpc.RpcError` that ``call`` raises."""
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code()  # type: ignore[attr-defined]


@dataclass
class OpenRound:
    """A server whose round 1 has open sessions, and stubs acting for each organization."""

    server: AggregatorServer
    pki: Pki
    credentials: dict[str, Credentials]
    stubs: dict[str, Any]
    announcement: pb.RoundAnnouncement
    sessions: dict[str, pb.SessionAnnouncement]
    intruder: Credentials
    foreign: Credentials


@pytest.fixture(scope="module")
def open_round(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenRound]:
    """Round 1 joined by three organizations (one refuses), its sessions open."""
    root = tmp_path_factory.mktemp("open-round")
    pki = provision(root / "pki")
    ca = init_ca("tiny-test", root / "other-ca")
    foreign = issue_organization(ca, "clin-a", root / "foreign")
    from fedhft.protocol import load_ca

    intruder = issue_organization(load_ca(pki.ca), "intruder", root / "intruder")
    options = ServerOptions(
        join_timeout_s=120,
        train_timeout_s=300,
        max_message_bytes=4 * 1024 * 1024,
    )
    server = AggregatorServer(
        fast_consortium(),
        credentials=pki.server,
        state_dir=root / "state",
        options=options,
        new_run=True,
    ).start()
    credentials = {org: load_credentials(pki.org(org)) for org in ORGS}
    channels = {org: create_channel(credentials[org], server.address, "localhost") for org in ORGS}
    stubs = {org: pb_grpc.AggregatorStub(channel) for org, channel in channels.items()}
    try:
        for org in ORGS:
            stubs[org].Hello(_hello(credentials[org], server.config_hash), timeout=TIMEOUT)
        announcement = stubs[REFUSER].AwaitRound(
            pb.RoundRequest(after_round=0, wait_ms=10_000), timeout=TIMEOUT
        )
        tiers = {"bank-a": "full", "bank-b": "edge", "clin-a": "full"}
        for org in JOINED:
            joined = stubs[org].JoinRound(
                pb.JoinRequest(round=1, participate=True, tier=tiers[org]), timeout=TIMEOUT
            )
            assert joined.accepted
        stubs[REFUSER].JoinRound(
            pb.JoinRequest(round=1, participate=False, refusal=pb.REFUSAL_REASON_BUDGET_EXHAUSTED),
            timeout=TIMEOUT,
        )
        sessions = {
            org: stubs[org].AwaitSession(
                pb.SessionRequest(round=1, cluster=0, wait_ms=10_000), timeout=TIMEOUT
            )
            for org in ORGS
        }
        yield OpenRound(server, pki, credentials, stubs, announcement, sessions, intruder, foreign)
    finally:
        for channel in channels.values():
            channel.close()
        server.stop(grace=0.2)


def _raw_stub(server: AggregatorServer, key: bytes | None, chain: bytes | None) -> Any:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server.credentials.ca_certificate_pem(),
        private_key=key,
        certificate_chain=chain,
    )
    channel = grpc.secure_channel(
        server.address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    return channel, pb_grpc.AggregatorStub(channel)


# --------------------------------------------------------------------------- enrollment


def test_hello_records_certificates_and_logs_key_events(open_round: OpenRound) -> None:
    """Hello stores each organization's certified keys and logs one key event each."""
    enrolled = open_round.server.store.enrolled()
    assert set(enrolled) == set(ORGS)
    for org in ORGS:
        record = enrolled[org]
        assert record.identity_certificate == _der(open_round.credentials[org].identity_certificate)
    log = open_round.server.state_dir / "audit.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    keys = [e["payload"]["organization"] for e in events if e["event"] == "key_event"]
    assert sorted(keys) == sorted(ORGS)


def test_hello_with_another_configuration_is_refused(open_round: OpenRound) -> None:
    """An organization holding another consortium file cannot enroll."""
    stub = open_round.stubs["bank-a"]
    hello = _hello(open_round.credentials["bank-a"], bytes(32))
    assert (
        _refusal(lambda: stub.Hello(hello, timeout=TIMEOUT)) == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_hello_with_another_organizations_certificate_is_refused(open_round: OpenRound) -> None:
    """An organization cannot enroll with another organization's identity certificate."""
    stub = open_round.stubs["bank-a"]
    other = open_round.credentials["bank-b"]
    hello = _hello(
        open_round.credentials["bank-a"],
        open_round.server.config_hash,
        identity_certificate=_der(other.identity_certificate),
    )
    assert _refusal(lambda: stub.Hello(hello, timeout=TIMEOUT)) == grpc.StatusCode.PERMISSION_DENIED


# --------------------------------------------------------------------------- who gets in


def test_client_without_certificate_is_refused(open_round: OpenRound) -> None:
    """A client presenting no certificate fails the TLS handshake (UNAVAILABLE)."""
    channel, stub = _raw_stub(open_round.server, None, None)
    with channel:
        hello = _hello(open_round.credentials["bank-a"], open_round.server.config_hash)
        assert _refusal(lambda: stub.Hello(hello, timeout=TIMEOUT)) == grpc.StatusCode.UNAVAILABLE


def test_client_certified_by_another_ca_is_refused(open_round: OpenRound) -> None:
    """An enrolled name certified by a look-alike CA fails the TLS handshake."""
    foreign = open_round.foreign
    channel, stub = _raw_stub(
        open_round.server, foreign.tls_private_key_pem(), foreign.tls_certificate_pem()
    )
    with channel:
        hello = _hello(foreign, open_round.server.config_hash)
        assert _refusal(lambda: stub.Hello(hello, timeout=TIMEOUT)) == grpc.StatusCode.UNAVAILABLE


def test_organization_not_enrolled_is_refused(open_round: OpenRound) -> None:
    """A certificate of the consortium CA for an organization not enrolled: refused."""
    intruder = open_round.intruder
    with create_channel(intruder, open_round.server.address, "localhost") as channel:
        stub = pb_grpc.AggregatorStub(channel)
        hello = _hello(intruder, open_round.server.config_hash)
        assert _refusal(lambda: stub.Hello(hello, timeout=TIMEOUT)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        request = pb.RoundRequest(after_round=0, wait_ms=10)
        assert _refusal(lambda: stub.AwaitRound(request, timeout=TIMEOUT)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )


# --------------------------------------------------------------------------- the round


def test_round_announcement_and_sessions_bind_the_served_model(open_round: OpenRound) -> None:
    """Sessions carry parameters whose session id, model and roster match the round."""
    announcement = open_round.announcement
    assert announcement.status == pb.ROUND_STATUS_OPEN and announcement.round == 1
    assert announcement.clusters == 2
    stub = open_round.stubs["bank-a"]
    hashes = []
    for cluster in range(announcement.clusters):
        header, _ = receive_model(
            stub.DownloadModel(pb.ModelRequest(round=1, cluster=cluster), timeout=TIMEOUT),
            max_total=10**8,
        )
        hashes.append(header.model_hash)
    assert released_model_hash(hashes) == announcement.model_hash
    ready = open_round.sessions["bank-a"]
    assert ready.status == pb.SESSION_STATUS_READY
    params = decode_session(ready.session_params)
    assert isinstance(params, SessionParams)
    assert params.sid == ready.session.session_id
    assert params.model_hash == announcement.model_hash
    assert params.run_id == announcement.run_id
    assert tuple(params.roster) == JOINED
    for peer in ready.peers:
        from cryptography import x509

        verify_identity_certificate(
            x509.load_der_x509_certificate(peer.identity_certificate),
            open_round.credentials["bank-a"].ca_certificate,
            peer.organization,
        )
    assert open_round.sessions[REFUSER].status == pb.SESSION_STATUS_NOT_SELECTED


def test_a_local_round_serves_its_model_after_it_completed(tmp_path: Path) -> None:
    """A local-only round completes once every organization has joined; one that asks
    for the round's model afterwards still gets the announced model (it used to find no
    round open and lose the round)."""
    config = fast_consortium(method="local", clustering={"clusters": 1})
    pki = provision(tmp_path / "pki")
    credentials = {org: load_credentials(pki.org(org)) for org in ORGS}
    with running_server(config, pki, tmp_path / "state") as server:
        channels = {
            org: create_channel(credentials[org], server.address, "localhost") for org in ORGS
        }
        try:
            stubs = {org: pb_grpc.AggregatorStub(channel) for org, channel in channels.items()}
            for org in ORGS:
                stubs[org].Hello(_hello(credentials[org], server.config_hash), timeout=TIMEOUT)
            first = stubs["clin-a"].AwaitRound(
                pb.RoundRequest(after_round=0, wait_ms=10_000), timeout=TIMEOUT
            )
            for org, tier in ORGS.items():
                request = pb.JoinRequest(round=1, participate=True, tier=tier)
                assert stubs[org].JoinRound(request, timeout=TIMEOUT).accepted
            second = stubs["clin-a"].AwaitRound(
                pb.RoundRequest(after_round=1, wait_ms=10_000), timeout=TIMEOUT
            )
            assert second.round == 2
            header, _ = receive_model(
                stubs["clin-a"].DownloadModel(pb.ModelRequest(round=1, cluster=0), timeout=TIMEOUT),
                max_total=10**8,
            )
        finally:
            for channel in channels.values():
                channel.close()
    assert released_model_hash([header.model_hash]) == first.model_hash


def test_messages_for_another_round_or_session_are_refused(open_round: OpenRound) -> None:
    """Wrong round, stale session id or wrong stage: FAILED_PRECONDITION."""
    stub = open_round.stubs["bank-a"]
    ref = open_round.sessions["bank-a"].session
    late_join = pb.JoinRequest(round=2, participate=True, tier="full")
    assert _refusal(lambda: stub.JoinRound(late_join, timeout=TIMEOUT)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    other_round = pb.SessionRequest(round=9, cluster=0, wait_ms=10)
    assert _refusal(lambda: stub.AwaitSession(other_round, timeout=TIMEOUT)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    old_model = pb.ModelRequest(round=0, cluster=0)
    assert _refusal(lambda: list(stub.DownloadModel(old_model, timeout=TIMEOUT))) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    stale = pb.SessionRef(
        run_id=ref.run_id, round=ref.round, cluster=ref.cluster, session_id=bytes(32)
    )
    submission = pb.StageSubmission(session=stale, stage=pb.STAGE_ADVERTISE_KEYS, payload=b"x")
    assert _refusal(lambda: stub.SubmitStage(submission, timeout=TIMEOUT)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    early = pb.StageSubmission(session=ref, stage=pb.STAGE_CONSISTENCY, payload=b"x")
    assert _refusal(lambda: stub.SubmitStage(early, timeout=TIMEOUT)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_oversized_messages_are_refused(open_round: OpenRound) -> None:
    """A stage payload above its cap, or a message above the gRPC limit: RESOURCE_EXHAUSTED."""
    stub = open_round.stubs["bank-a"]
    ref = open_round.sessions["bank-a"].session
    large = pb.StageSubmission(
        session=ref, stage=pb.STAGE_ADVERTISE_KEYS, payload=b"\0" * (2 * 1024 * 1024)
    )
    assert _refusal(lambda: stub.SubmitStage(large, timeout=TIMEOUT)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    huge = _hello(
        open_round.credentials["bank-a"],
        open_round.server.config_hash,
        software_version="x" * (5 * 1024 * 1024),
    )
    assert _refusal(lambda: stub.Hello(huge, timeout=TIMEOUT)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def test_forged_or_malformed_stage_messages_are_refused(open_round: OpenRound) -> None:
    """Another organization's advertisement is PERMISSION_DENIED; garbage INVALID_ARGUMENT."""
    ready = open_round.sessions["bank-b"]
    params = decode_session(ready.session_params)
    assert isinstance(params, SessionParams)
    keys = {org: open_round.credentials[org].identity_public_key for org in params.roster}
    as_bank_b = SecAggClient(
        params,
        organization="bank-b",
        identity_key=open_round.credentials["bank-b"].identity_key,
        peer_identities=keys,
    )
    advertisement = as_bank_b.advertise_keys().encode()
    forged = pb.StageSubmission(
        session=ready.session, stage=pb.STAGE_ADVERTISE_KEYS, payload=advertisement
    )
    stub = open_round.stubs["bank-a"]
    assert _refusal(lambda: stub.SubmitStage(forged, timeout=TIMEOUT)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    garbage = pb.StageSubmission(
        session=ready.session, stage=pb.STAGE_ADVERTISE_KEYS, payload=b"not a message"
    )
    assert _refusal(lambda: stub.SubmitStage(garbage, timeout=TIMEOUT)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    session = open_round.server.attempt.sessions[0]  # type: ignore[union-attr]
    assert session.pending() == frozenset(JOINED)  # Nothing was accepted.


# --------------------------------------------------------------------------- state


def _walk_arrays(value: object, seen: set[int], depth: int = 0) -> Iterator[np.ndarray]:
    """Every numpy array reachable from ``value`` through fedhft objects and containers."""
    if id(value) in seen or depth > 8:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict | list | tuple | set | frozenset) or type(value).__name__ == (
        "mappingproxy"
    ):
        items = value.values() if hasattr(value, "values") else value  # type: ignore[union-attr]
        for item in items:  # type: ignore[union-attr]
            yield from _walk_arrays(item, seen, depth + 1)
    elif type(value).__module__.startswith("fedhft."):
        fields = dict(getattr(value, "__dict__", {}))
        for name in getattr(type(value), "__slots__", ()):
            if hasattr(value, name):
                fields[name] = getattr(value, name)
        for item in fields.values():
            yield from _walk_arrays(item, seen, depth + 1)


def test_server_never_holds_an_individual_update(tmp_path: Path) -> None:
    """After a round the database holds masked inputs only and memory only the sums."""
    config = fast_consortium(rounds=1)
    pki = provision(tmp_path / "pki")
    with spying() as spy, running_server(config, pki, tmp_path / "server") as server:
        run = start_federation(config, pki, server.address, tmp_path / "clients")
        run.join()
        assert server.wait(5) and run.errors == {}
        sessions = [
            s for attempt in server.recent_attempts.values() for s in attempt.sessions.values()
        ]
        assert sessions and all(isinstance(s, MaskingSession) for s in sessions)
        # In memory: no running masked sums are left, and every float vector the sessions
        # hold is one of the released per-block sums.
        released = []
        for session in sessions:
            assert isinstance(session, MaskingSession)
            assert session.server._sums == {}
            released += [block.sum for block in session.result().blocks.values()]
        floats = [a for a in _walk_arrays(sessions, set()) if a.dtype == np.float64]
        assert floats
        for array in floats:
            assert any(array is r or np.array_equal(array, r) for r in released)
        payloads = server.store.stage_payloads()
    clip = config.secure_aggregation.clip
    scale = config.secure_aggregation.scale
    contributions = [
        np.clip(u.vectors(j)[b], -clip, clip)
        for u in spy.updates[1].values()
        for j in range(2)
        for b in u.block_ids
    ]
    masked = [decode_message(p) for p in payloads]
    assert len(masked) == 2 * len(ORGS) and all(isinstance(m, MaskedInput) for m in masked)
    inside = total = 0
    for message in masked:
        assert isinstance(message, MaskedInput)
        for _, words in message.blocks:
            signed = words.view(np.int32 if words.dtype == np.uint32 else np.int64)
            values = signed.astype(np.float64) / scale
            inside += int(np.count_nonzero(np.abs(values) <= clip))
            total += values.size
            for contribution in contributions:
                if contribution.shape == values.shape:
                    assert not np.allclose(values, contribution, atol=1e-3)
    # Uniform words fall inside ±clip with probability 2·clip·scale/2^32 = 1/256.
    assert inside / total < 0.05


def test_stopped_server_resumes_and_each_round_is_spent_once(tmp_path: Path) -> None:
    """A server stopped mid-round and restarted on its state redoes the round once."""
    config = fast_consortium()
    pki = provision(tmp_path / "pki")
    state = tmp_path / "server"
    clients = tmp_path / "clients"
    with spying() as spy:
        first = AggregatorServer(
            config, credentials=pki.server, state_dir=state, options=FAST, new_run=True
        )
        first.start()
        port = first.port
        run = start_federation(config, pki, first.address, clients)
        deadline = time.time() + 60
        while time.time() < deadline:
            attempt = first.attempt
            if (
                attempt is not None
                and attempt.sessions
                and (attempt.sessions[0].stage == pb.STAGE_CONSISTENCY)
            ):
                break
            time.sleep(0.01)
        first.stop(grace=0)
        second = AggregatorServer(
            config, credentials=pki.server, state_dir=state, port=port, options=FAST
        ).start()
        try:
            run.join()
            assert second.wait(5)
        finally:
            second.stop(grace=0.2)
    assert run.errors == {}
    attempts = [(a["round"], a["attempt"], a["status"]) for a in _attempts(state)]
    assert attempts == [(1, 1, "aborted"), (1, 2, "completed"), (2, 1, "completed")]
    for org in ORGS:
        assert ledger_rounds(org, clients) == [1, 2]
    models = stored_models(state)
    step = 1.0 / config.secure_aggregation.scale
    assert assert_per_row_averages(
        config, spy.released[1], models[1], spy.updates[1], tolerance_per_holder=step
    )


def _attempts(state: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(state / "state.sqlite") as db:
        rows = db.execute(
            "SELECT round, attempt, status FROM attempts ORDER BY round, attempt"
        ).fetchall()
    return [{"round": r, "attempt": a, "status": s} for r, a, s in rows]


@pytest.mark.slow
def test_killed_server_process_resumes_and_each_round_is_spent_once(tmp_path: Path) -> None:
    """`fedhft aggregator serve` killed (SIGKILL) mid-round and restarted: rounds once each."""
    config = fast_consortium()
    pki = provision(tmp_path / "pki")
    config_file = tmp_path / "consortium.yaml"
    config_file.write_text(dump_yaml(config))
    state = tmp_path / "server"
    port_file = tmp_path / "port"
    clients = tmp_path / "clients"

    def serve(port: int, *new_run: str) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-c",
            "from fedhft.cli import main; main()",
            "aggregator",
            "serve",
            "--config",
            str(config_file),
            "--tls",
            str(pki.server),
            "--state",
            str(state),
            "--port",
            str(port),
            "--port-file",
            str(port_file),
            "--join-timeout",
            "60",
            "--train-timeout",
            "120",
            "--retry-pause",
            "0.2",
            *new_run,
        ]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    first = serve(0, "--new-run")
    try:
        deadline = time.time() + 120
        while not port_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        port = int(port_file.read_text())
        address = f"127.0.0.1:{port}"
        run = start_federation(config, pki, address, clients)
        # Kill it once round 1 has received masked inputs.
        while time.time() < deadline and not _has_masked_inputs(state):
            time.sleep(0.05)
        assert _has_masked_inputs(state)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        port_file.unlink()
        second = serve(port)
        try:
            run.join(timeout=240)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert run.errors == {}
    statuses = [(a["round"], a["status"]) for a in _attempts(state)]
    assert statuses == [(1, "aborted"), (1, "completed"), (2, "completed")]
    for org in ORGS:
        assert run.reports[org].rounds_joined == (1, 2)
        audit = clients / org / "audit.jsonl"
        spends = [
            json.loads(line)["payload"]["round"]
            for line in audit.read_text().splitlines()
            if json.loads(line)["event"] == "privacy_spend"
        ]
        assert spends == [1, 2]
        assert ledger_rounds(org, clients) == [1, 2]


def _has_masked_inputs(state: Path) -> bool:
    if not (state / "state.sqlite").exists():
        return False
    try:
        with sqlite3.connect(state / "state.sqlite", timeout=1) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM stage_progress WHERE round = 1 AND stage = 'masked_input'"
            ).fetchone()
    except sqlite3.OperationalError:
        return False
    return bool(row and row[0] > 0)


def test_taken_port_fails_before_the_state_is_opened(tmp_path: Path) -> None:
    """A second server on a taken port fails at once and leaves its state untouched."""
    pki = provision(tmp_path / "pki")
    config = fast_consortium()
    first = AggregatorServer(
        config, credentials=pki.server, state_dir=tmp_path / "a", options=FAST, new_run=True
    )
    try:
        with pytest.raises(TransportError, match="cannot listen"):
            AggregatorServer(
                config,
                credentials=pki.server,
                state_dir=tmp_path / "b",
                port=first.port,
                options=FAST,
                new_run=True,
            )
        assert not (tmp_path / "b" / "state.sqlite").exists()
    finally:
        first.stop()


def test_state_of_another_configuration_is_refused(tmp_path: Path) -> None:
    """A state folder keeps its configuration: another consortium file cannot resume it."""
    pki = provision(tmp_path / "pki")
    AggregatorServer(
        fast_consortium(),
        credentials=pki.server,
        state_dir=tmp_path / "state",
        options=FAST,
        new_run=True,
    ).stop()
    with pytest.raises(StateError, match="new --state folder"):
        AggregatorServer(
            fast_consortium(rounds=3),
            credentials=pki.server,
            state_dir=tmp_path / "state",
            options=FAST,
        )
    # The refused attempt released everything: the right configuration still resumes.
    AggregatorServer(
        fast_consortium(), credentials=pki.server, state_dir=tmp_path / "state", options=FAST
    ).stop()
