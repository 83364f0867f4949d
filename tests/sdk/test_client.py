"""`FederatedClient` against a scripted server: refusals, checks and reconnection.

The client's gRPC connection is replaced by a script of answers (`ScriptedServer`), so
each test pins one decision of the client: which rounds it refuses and how it tells the
server and its audit log, which announced sessions it refuses to take part in, and what
it does with forged receipts and models. The full system over real gRPC is tested in
`tests/aggregator/test_end_to_end.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The tiny consortium and policies are shared with the aggregator tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aggregator"))
from federation_helpers import ORGS, TINY, consortium, policy

from fedhft.aggregator._federation import RoundCoordinator
from fedhft.model import tier_mask
from fedhft.policies import (
    ConsortiumConfig,
    IncompatiblePolicyError,
    OrganizationPolicy,
    consortium_hash,
)
from fedhft.protocol import (
    Credentials,
    init_ca,
    issue_organization,
    issue_server,
    load_credentials,
    sign_receipt,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.errors import (
    ChunkIntegrityError,
    ConsortiumMismatchError,
    ForgedReceiptError,
)
from fedhft.sdk import (
    ClusterAdapters,
    FederatedClient,
    LedgerError,
    MaskedAdapterModel,
    RetryPolicy,
    ServerUnreachableError,
    synthetic_federation,
)
from fedhft.sdk._client_sessions import (
    MaskingRun,
    SessionContext,
    _log_receipt,
    check_masking_session,
    run_sessions,
)
from fedhft.sdk.errors import LedgerMissingError

ORG = "clin-a"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Credentials]:
    """The consortium CA's credentials for the server and every organization."""
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca("tiny-test", root / "ca")
    issued = {"server": issue_server(ca, "localhost", root / "server")}
    for org in ORGS:
        issued[org] = issue_organization(ca, org, root / org)
    return issued


class ScriptedServer:
    """Stands in for the client's `Connection`: answers each call from a script."""

    def __init__(self, answers: dict[str, Callable[[Any], Any]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, Any]] = []
        self.bytes_up = 0
        self.bytes_down = 0

    def unary(self, name: str, request: Any, *, timeout: float) -> Any:
        self.requests.append((name, request))
        return self.answers[name](request)

    def download(self, request: Any, **_: Any) -> Any:
        self.requests.append(("DownloadModel", request))
        return self.answers["DownloadModel"](request)

    def close(self) -> None:
        """Nothing to close."""


def _client(
    tmp_path: Path,
    pki: dict[str, Credentials],
    org_policy: OrganizationPolicy | None = None,
    config: ConsortiumConfig | None = None,
) -> FederatedClient:
    config = config or consortium()
    data = synthetic_federation(num_organizations=1, samples_per_org=40, alpha=1.0, seed=3)[0]
    model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
    return FederatedClient(
        model,
        data.train,
        org_policy or policy(ORG, tmp_path),
        config,
        credentials=pki[ORG].directory,
        server="127.0.0.1:1",
        server_name="localhost",
        state_dir=tmp_path / "state",
        seed=0,
    )


def _announcement(client: FederatedClient, **changes: Any) -> pb.RoundAnnouncement:
    config = client.consortium
    masks = [
        pb.TierMask(tier=tier, block_ids=list(tier_mask(config, tier, tiny_config=TINY)))
        for tier in sorted(config.tiers)
    ]
    model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
    blocks = [
        pb.BlockLayout(block_id=b, rows=model.block(b).rows, cols=model.block(b).cols)
        for b in model.block_ids
    ]
    fields: dict[str, Any] = {
        "status": pb.ROUND_STATUS_OPEN,
        "blocks": blocks,
        "round": 1,
        "run_id": "run-1.a1",
        "consortium_config_hash": bytes.fromhex(consortium_hash(config)),
        "model_hash": hashlib.sha256(b"model").digest(),
        "clusters": 2,
        "tier_masks": masks,
        "retry_after_ms": 10,
    }
    fields.update(changes)
    return pb.RoundAnnouncement(**fields)


def _scripted(client: FederatedClient, announcement: pb.RoundAnnouncement) -> ScriptedServer:
    server = ScriptedServer(
        {
            "AwaitRound": lambda _: announcement,
            "JoinRound": lambda r: pb.JoinResponse(round=r.round, accepted=True),
        }
    )
    client.connection = server  # type: ignore[assignment]
    client.server_identity = Credentials.identity_public_key.fget(  # type: ignore[attr-defined]
        client.credentials
    )
    return server


def _audit_events(client: FederatedClient, event: str) -> list[dict[str, Any]]:
    path = Path(client.policy.audit.log_path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["payload"] for r in records if r["event"] == event]


def _joins(server: ScriptedServer) -> list[pb.JoinRequest]:
    return [request for name, request in server.requests if name == "JoinRound"]


# --------------------------------------------------------------------------- refusals


def test_round_of_another_configuration_is_refused(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """An announcement with another config hash: refusal sent, audited, typed error."""
    with _client(tmp_path, pki) as client:
        server = _scripted(client, _announcement(client, consortium_config_hash=bytes(32)))
        with pytest.raises(ConsortiumMismatchError, match="another consortium configuration"):
            client.run_round()
        (join,) = _joins(server)
        assert not join.participate and join.refusal == pb.REFUSAL_REASON_POLICY_INCOMPATIBLE
        assert [e["round"] for e in _audit_events(client, "refusal")] == [1]
        assert _audit_events(client, "policy_loaded")[0]["organization"] == ORG


def test_round_with_another_tier_mask_is_refused(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """A server announcing another block set for this tier is refused."""
    with _client(tmp_path, pki) as client:
        masks = [pb.TierMask(tier="full", block_ids=["head.weight"])]
        server = _scripted(client, _announcement(client, tier_masks=masks))
        with pytest.raises(ConsortiumMismatchError, match="tier 'full'"):
            client.run_round()
        assert not _joins(server)[0].participate


def test_incompatible_policy_refuses_with_a_typed_error(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """A policy demanding a larger cohort than the consortium refuses and raises."""
    strict = policy(ORG, tmp_path)
    strict = strict.model_copy(
        update={
            "secure_aggregation": strict.secure_aggregation.model_copy(update={"min_cohort": 5})
        }
    )
    with _client(tmp_path, pki, strict) as client:
        assert client.trainer is None
        server = _scripted(client, _announcement(client))
        with pytest.raises(IncompatiblePolicyError, match="min_cohort"):
            client.run_round()
        (join,) = _joins(server)
        assert join.refusal == pb.REFUSAL_REASON_POLICY_INCOMPATIBLE
        assert len(_audit_events(client, "refusal")) == 1


def test_exhausted_budget_refuses_the_round_without_spending(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """Out of budget: BUDGET_EXHAUSTED sent, refusal audited with its numbers, nothing spent."""
    poor = policy(ORG, tmp_path, epsilon=0.5)
    with _client(tmp_path, pki, poor) as client:
        server = _scripted(client, _announcement(client))
        outcome = client.run_round()
        assert (outcome.round, outcome.status) == (1, "refused")
        (join,) = _joins(server)
        assert not join.participate and join.refusal == pb.REFUSAL_REASON_BUDGET_EXHAUSTED
        (refusal,) = _audit_events(client, "refusal")
        assert refusal["reason"] == "privacy budget exhausted"
        assert refusal["requested"] > refusal["budget"] == 0.5
        assert client.trainer is not None and client.trainer.ledger is not None
        assert client.trainer.ledger.records == ()
        assert client.report().rounds_refused == (1,)


def test_a_sketch_over_budget_refuses_the_round_and_is_audited_once(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """A warm-up sketch release that does not fit: BUDGET_EXHAUSTED sent without a sketch,
    the trainer's one refusal audited, nothing spent."""
    config = consortium(
        rounds=2,
        clustering={"clusters": 2, "warmup_rounds": 1, "signal": "sketch"}
        | {"sketch_noise_multiplier": 0.01},
    )
    with _client(tmp_path, pki, config=config) as client:
        server = _scripted(client, _announcement(client))
        outcome = client.run_round()
        assert (outcome.round, outcome.status) == (1, "refused")
        (join,) = _joins(server)
        assert not join.participate and join.refusal == pb.REFUSAL_REASON_BUDGET_EXHAUSTED
        assert list(join.sketch) == []
        (refusal,) = _audit_events(client, "refusal")
        assert refusal["mechanism"] == "gaussian"
        assert client.trainer is not None and client.trainer.ledger is not None
        assert client.trainer.ledger.records == ()


def test_model_not_matching_the_announcement_is_rejected(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """Downloaded adapters whose hashes do not give the announced model hash: refused."""
    from fedhft.aggregator._server import ReleasedModel

    with _client(tmp_path, pki) as client:
        assert client.trainer is not None
        state = client.trainer.model.get_block_state()
        released = ReleasedModel.of(1, ClusterAdapters.initial(state, 2))
        server = _scripted(client, _announcement(client))

        def download(request: pb.ModelRequest) -> tuple[pb.ModelHeader, bytes]:
            header = pb.ModelHeader(
                round=1,
                cluster=request.cluster,
                format="safetensors/fedhft-cluster-v1",
                model_hash=released.hashes[request.cluster],
            )
            return header, released.payloads[request.cluster]

        server.answers["DownloadModel"] = download
        with pytest.raises(ChunkIntegrityError, match="not the announced model"):
            client.run_round()
        assert _audit_events(client, "privacy_spend") == []


# --------------------------------------------------------------------------- sessions


def _context(client: FederatedClient) -> SessionContext:
    trainer = client.trainer
    assert trainer is not None
    model = trainer.model
    return SessionContext(
        organization=ORG,
        policy=client.policy,
        consortium=client.consortium,
        config_hash=client.config_hash,
        ca_certificate=client.credentials.ca_certificate,
        identity_key=client.credentials.identity_key,
        server_identity=client.credentials.identity_public_key,
        block_shapes={b: model.block(b).shape for b in model.block_ids},
        uploaded_blocks=frozenset(trainer.uploaded_blocks),
        audit=None,
        connection=None,  # type: ignore[arg-type]
        wait_ms=10,
        rpc_timeout_s=1.0,
        max_broadcast_bytes=1 << 20,
    )


def test_session_checks_refuse_weakened_parameters(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """Lower threshold or cohort, other clip, model or blocks: the client refuses."""
    with _client(tmp_path, pki) as client:
        config = client.consortium
        assert client.trainer is not None
        coordinator = RoundCoordinator(
            config,
            run_id="run-1",
            initial_state=client.trainer.model.get_block_state(),
            tier_blocks={t: tier_mask(config, t, tiny_config=TINY) for t in config.tiers},
        )
        participants = {org: ("full" if org.endswith("-a") else "edge") for org in ORGS}
        params, _ = coordinator.session_params(
            round_number=1, attempt=1, cluster=0, participants=participants
        )
        announcement = _announcement(client, run_id="run-1.a1", model_hash=params.model_hash)
        context = _context(client)

        def check(candidate: Any) -> None:
            check_masking_session(
                candidate,
                context=context,
                announcement=announcement,
                cluster=0,
                session_id=candidate.sid,
            )

        check(params)  # The genuine session passes.
        weakened = {
            "another clip": dataclasses.replace(params, clip=1.0),
            "another model": dataclasses.replace(params, model_hash=bytes(32)),
            "another run": dataclasses.replace(params, run_id="run-1.a9"),
            "another consortium configuration": dataclasses.replace(params, config_hash=bytes(32)),
        }
        shared = next(
            b for b, holders in params.block_supports.items() if len(holders) == len(ORGS)
        )
        without_me = {**params.block_supports, shared: params.block_supports[shared] - {ORG}}
        weakened["other blocks"] = dataclasses.replace(params, block_supports=without_me)
        longer = {**params.block_lengths, shared: params.block_lengths[shared] + 1}
        weakened["length"] = dataclasses.replace(params, block_lengths=longer)
        for reason, candidate in weakened.items():
            with pytest.raises(ConsortiumMismatchError, match=reason):
                check(candidate)
        with pytest.raises(ConsortiumMismatchError, match="session id"):
            check_masking_session(
                params, context=context, announcement=announcement, cluster=0, session_id=bytes(32)
            )
        # Consortium and policy demand more than the server offers: refused too.
        unanimous = consortium(
            secure_aggregation={"threshold_fraction": 1.0, "max_dropout_fraction": 0.0}
        )
        context = dataclasses.replace(context, consortium=unanimous)
        with pytest.raises(ConsortiumMismatchError, match="threshold below 4"):
            check(params)
        strict = policy(ORG, tmp_path)
        strict = strict.model_copy(
            update={
                "secure_aggregation": strict.secure_aggregation.model_copy(update={"min_cohort": 4})
            }
        )
        context = dataclasses.replace(_context(client), policy=strict)
        with pytest.raises(ConsortiumMismatchError, match="minimum cohort below 4"):
            check(params)


def test_forged_receipt_is_rejected(tmp_path: Path, pki: dict[str, Credentials]) -> None:
    """A receipt not signed by the server's identity key, or for another upload: refused."""
    with _client(tmp_path, pki) as client:
        context = dataclasses.replace(
            _context(client), server_identity=pki["server"].identity_public_key
        )
        ref = pb.SessionRef(run_id="run-1.a1", round=1, cluster=0, session_id=bytes(range(32)))
        run = MaskingRun(context=context, ref=ref, inputs={})
        digest = hashlib.sha256(b"upload").hexdigest()

        def ack(key: Any, payload_sha256: str, organization: str = ORG) -> pb.StageAck:
            statement = pb.ReceiptStatement(
                consortium="tiny-test",
                server="localhost",
                organization=organization,
                session=ref,
                stage=pb.STAGE_MASKED_INPUT,
                payload_bytes=6,
                payload_sha256=bytes.fromhex(payload_sha256),
            )
            return pb.StageAck(session=ref, receipt=sign_receipt(key, statement))

        _log_receipt(run, ack(pki["server"].identity_key, digest), digest)  # genuine
        with pytest.raises(ForgedReceiptError):
            _log_receipt(run, ack(pki[ORG].identity_key, digest), digest)
        other = hashlib.sha256(b"other").hexdigest()
        with pytest.raises(ForgedReceiptError, match="upload_sha256"):
            _log_receipt(run, ack(pki["server"].identity_key, other), digest)
        with pytest.raises(ForgedReceiptError, match="organization"):
            _log_receipt(run, ack(pki["server"].identity_key, digest, "bank-a"), digest)
        with pytest.raises(ForgedReceiptError, match="without a receipt"):
            _log_receipt(run, pb.StageAck(session=ref), digest)


def test_an_update_already_in_another_sum_ends_that_clusters_session_unsent(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """A masked input refused by `EnteredSums`: nothing of it is committed or uploaded, the
    session ends for this organization, and the refusal is audited."""
    with _client(tmp_path, pki) as client:
        participant = client.participant
        assert participant is not None
        participant.files.stage(b"trained update", b"next state")
        entered = participant.files.entered_sums()
        assert entered is not None
        entered.enter(0, roster=("bank-a", "bank-b", "clin-a", "clin-b"), sid=b"\x01" * 32)
        server = ScriptedServer(
            {
                "SubmitStage": lambda r: pb.StageAck(session=r.session),
                "AwaitStage": lambda r: pb.StageBroadcast(
                    session=r.session, stage=r.stage, status=pb.STAGE_STATUS_READY, payloads=[b""]
                ),
            }
        )
        context = dataclasses.replace(_context(client), connection=server, audit=client.audit_log)
        retry_sid = b"\x02" * 32

        class Retried(MaskingRun):
            def message(self, index: int, previous: list[bytes] | None) -> bytes:
                if index == 2:  # the masked input: ask `EnteredSums` as `MaskingRun` does
                    assert self.entered is not None
                    roster = ("bank-a", "clin-a", "clin-b")
                    self.entered.enter(self.cluster, roster=roster, sid=retry_sid)
                return b"stage %d" % index

        run = Retried(
            context=context,
            ref=pb.SessionRef(run_id="r", round=1, cluster=0, session_id=retry_sid),
            inputs={},
            entered=entered,
        )
        assert not run_sessions([run], 1)
        assert run.failed
        assert [r.stage for n, r in server.requests if n == "SubmitStage"] == [
            pb.STAGE_ADVERTISE_KEYS,
            pb.STAGE_SHARE_KEYS,
        ]
        assert _audit_events(client, "update_committed") == []
        (refusal,) = _audit_events(client, "refusal")
        assert refusal["cluster"] == 0


# --------------------------------------------------------------------------- reconnection


def test_retry_delays_grow_and_stay_bounded() -> None:
    """Backoff doubles from the initial delay, with jitter in [1/2, 1], up to the cap."""
    retry = RetryPolicy(attempts=8, initial_backoff_s=0.5, max_backoff_s=4.0)
    for n in range(8):
        base = min(4.0, 0.5 * 2**n)
        assert all(base / 2 <= retry.delay(n) <= base for _ in range(20))
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_unreachable_server_gives_up_after_bounded_attempts(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """No server listening: UNAVAILABLE is retried a bounded number of times, then typed."""
    with _client(tmp_path, pki) as client:
        client.retry = RetryPolicy(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.1)
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError, match="after 3 attempts"):
            client.connect()
        assert time.monotonic() - started < 30
        assert client.connection is None


def test_credentials_of_another_organization_are_refused(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """A client refuses credentials that are not its policy's organization's."""
    from fedhft.protocol.errors import CredentialsError

    config = consortium()
    data = synthetic_federation(num_organizations=1, samples_per_org=40, alpha=1.0, seed=3)[0]
    with pytest.raises(CredentialsError, match="not to organization"):
        FederatedClient(
            MaskedAdapterModel.from_consortium(config, tiny_config=TINY),
            data.train,
            policy(ORG, tmp_path),
            config,
            credentials=load_credentials(pki["bank-a"].directory),
            server="127.0.0.1:1",
            state_dir=tmp_path / "state",
            audit=False,
        )


# --------------------------------------------------------------------------- lost ledger


def _spend_rounds(tmp_path: Path, pki: dict[str, Credentials], rounds: int) -> float:
    """Train ``rounds`` accounted rounds through a client; the ledger's ε afterwards."""
    with _client(tmp_path, pki) as client:
        participant = client.participant
        assert participant is not None and client.trainer is not None
        config = client.consortium
        coordinator = RoundCoordinator(
            config,
            run_id="spent",
            initial_state=MaskedAdapterModel.from_consortium(
                config, tiny_config=TINY
            ).get_block_state(),
            tier_blocks={t: tier_mask(config, t, tiny_config=TINY) for t in config.tiers},
        )
        for round_number in range(1, rounds + 1):
            participant.prepare(round_number, coordinator.model_for_round(round_number))
            participant.complete(round_number)
        ledger = client.trainer.ledger
        assert ledger is not None and len(ledger.records) == rounds
        return ledger.spent()


def test_lost_ledger_after_spent_rounds_stops_the_client(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """Ledger deleted after rounds were spent: the restart raises a typed error naming the
    ledger, the evidence and the rebuild command, and writes no ε = 0 ledger."""
    assert _spend_rounds(tmp_path, pki, 2) > 0
    ledger_path = Path(policy(ORG, tmp_path).privacy.ledger_path)
    ledger_path.unlink()
    with pytest.raises(LedgerError) as refused:
        _client(tmp_path, pki).close()
    assert isinstance(refused.value, LedgerMissingError)
    message = str(refused.value)
    assert str(ledger_path) in message and "fedhft ledger rebuild" in message
    assert any("state folder" in item for item in refused.value.evidence)
    assert any("2 privacy_spend" in item for item in refused.value.evidence)
    assert not ledger_path.exists()


def test_lost_ledger_and_state_folder_with_the_audit_log_kept_is_refused(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """Ledger and the whole state folder gone, audit log kept: still refused."""
    _spend_rounds(tmp_path, pki, 1)
    ledger_path = Path(policy(ORG, tmp_path).privacy.ledger_path)
    ledger_path.unlink()
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(LedgerError) as refused:
        _client(tmp_path, pki).close()
    assert isinstance(refused.value, LedgerMissingError)
    assert any("1 privacy_spend" in item for item in refused.value.evidence)
    assert not ledger_path.exists()


def test_new_organization_starts_at_zero(tmp_path: Path, pki: dict[str, Credentials]) -> None:
    """No ledger, no round files, no rounds in the audit log: a ledger at ε = 0."""
    with _client(tmp_path, pki) as client:
        assert client.trainer is not None and client.trainer.ledger is not None
        assert client.trainer.ledger.records == () and client.trainer.ledger.spent() == 0.0
    assert Path(policy(ORG, tmp_path).privacy.ledger_path).exists()


# --------------------------------------------------------------------------- run identity


def _hello_server(
    client: FederatedClient,
    pki: dict[str, Credentials],
    monkeypatch: pytest.MonkeyPatch,
    *,
    run_id: str,
    current_round: int,
    announcement: pb.RoundAnnouncement,
    rounds_uploaded: tuple[int, ...] = (),
) -> ScriptedServer:
    """Let `connect()` reach a scripted server that answers `Hello` with ``run_id``; it
    gives up (`TimeoutError`) after 20 polls instead of letting a test wait forever."""
    from cryptography.hazmat.primitives import serialization

    polls: list[int] = []

    def await_round(_: Any) -> pb.RoundAnnouncement:
        polls.append(1)
        if len(polls) > 20:
            raise TimeoutError("the client kept waiting for a round")
        return announcement

    server = ScriptedServer(
        {
            "Hello": lambda _: pb.HelloResponse(
                protocol="fedhft.v1",
                consortium=client.consortium.consortium,
                consortium_config_hash=client.config_hash,
                server_identity_certificate=pki["server"].identity_certificate.public_bytes(
                    serialization.Encoding.DER
                ),
                organization=ORG,
                current_round=current_round,
                run_id=run_id,
                rounds_uploaded=rounds_uploaded,
            ),
            "AwaitRound": await_round,
        }
    )
    monkeypatch.setattr("fedhft.sdk._client.Connection", lambda *a, **k: server)
    return server


def _pending(server_run_id: str = "") -> pb.RoundAnnouncement:
    return pb.RoundAnnouncement(
        status=pb.ROUND_STATUS_PENDING, retry_after_ms=1, server_run_id=server_run_id
    )


def test_server_of_another_run_stops_the_client(
    tmp_path: Path, pki: dict[str, Credentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose state belongs to run A stops with `RunMismatchError` naming both
    runs when the server answers with run B (state reset or restored from elsewhere)."""
    from fedhft.sdk import RunMismatchError

    with _client(tmp_path, pki) as client:
        _hello_server(
            client,
            pki,
            monkeypatch,
            run_id="tiny-test-aaaa",
            current_round=0,
            announcement=_pending("tiny-test-aaaa"),
        )
        client.connect()
    with _client(tmp_path, pki) as client:
        _hello_server(
            client,
            pki,
            monkeypatch,
            run_id="tiny-test-bbbb",
            current_round=0,
            announcement=_pending("tiny-test-bbbb"),
        )
        with pytest.raises(RunMismatchError, match="tiny-test-bbbb") as refused:
            client.run_round()
        assert "tiny-test-aaaa" in str(refused.value)
        assert "reset or restored" in str(refused.value)


def test_server_that_lost_completed_rounds_stops_the_client(
    tmp_path: Path, pki: dict[str, Credentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that saw 3 rounds completed, facing a server whose state holds none,
    stops with an error instead of polling for round 4 forever."""
    from fedhft.sdk import RunMismatchError

    with _client(tmp_path, pki) as client:
        assert client.participant is not None
        client.participant.completed_round = 3  # As its state files say after round 3.
        _hello_server(
            client,
            pki,
            monkeypatch,
            run_id="tiny-test-aaaa",
            current_round=0,
            announcement=_pending(),
        )
        with pytest.raises(RunMismatchError, match="holds 0 completed rounds"):
            client.run_round()


def test_server_replaced_while_the_client_waits_stops_it(
    tmp_path: Path, pki: dict[str, Credentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restarted on another run while a connected client long-polls: the
    announcements name the new run and the client stops instead of waiting."""
    from fedhft.sdk import RunMismatchError

    with _client(tmp_path, pki) as client:
        _hello_server(
            client,
            pki,
            monkeypatch,
            run_id="tiny-test-aaaa",
            current_round=0,
            announcement=_pending("tiny-test-cccc"),
        )
        with pytest.raises(RunMismatchError, match="tiny-test-cccc"):
            client.run_round()


def test_server_view_of_uploaded_rounds_stops_a_client_whose_ledger_lacks_them(
    tmp_path: Path, pki: dict[str, Credentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing local remembers rounds 1-2 but the server accepted uploads in them: the
    client stops at `Hello` (no round asked for) with the rounds, the ledger and the
    recovery, and removes the ε = 0 ledger it created, so the next start is refused too.
    A ledger holding round 1 only is refused naming round 2; one holding both starts."""
    ledger_path = Path(policy(ORG, tmp_path).privacy.ledger_path)
    for _ in range(2):
        with _client(tmp_path, pki) as client:
            assert ledger_path.exists()  # Created at ε = 0: no local evidence of rounds.
            server = _hello_server(
                client,
                pki,
                monkeypatch,
                run_id="tiny-test-aaaa",
                current_round=2,
                announcement=_pending("tiny-test-aaaa"),
                rounds_uploaded=(1, 2),
            )
            with pytest.raises(LedgerMissingError) as refused:
                client.run_round()
        message = str(refused.value)
        assert "rounds [1, 2]" in message and str(ledger_path) in message
        assert "fedhft ledger rebuild" in message and "treat" in message
        assert [name for name, _ in server.requests] == ["Hello"]
        assert not ledger_path.exists()
        assert not (tmp_path / "state" / "evidence.json").exists()
        assert not (tmp_path / "state" / "server-run.json").exists()

    with _client(tmp_path, pki) as client:
        assert client.trainer is not None and client.trainer.ledger is not None
        client.trainer.ledger.commit(client.trainer.mechanism_record(1, 40))
    for held, outcome in (((1,), "refused"), ((1, 2), "started")):
        with _client(tmp_path, pki) as client:
            assert client.trainer is not None and client.trainer.ledger is not None
            if len(client.trainer.ledger.records) < len(held):
                client.trainer.ledger.commit(client.trainer.mechanism_record(2, 40))
            _hello_server(
                client,
                pki,
                monkeypatch,
                run_id="tiny-test-aaaa",
                current_round=2,
                announcement=_pending("tiny-test-aaaa"),
                rounds_uploaded=(1, 2),
            )
            if outcome == "refused":
                with pytest.raises(LedgerMissingError, match=r"rounds \[2\]"):
                    client.connect()
                assert ledger_path.exists()  # Not created by this start: kept.
            else:
                client.connect()


# --------------------------------------------------------------------------- evidence


def test_unwritable_ledger_or_audit_log_is_refused_at_start(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """A ledger or audit log path the OS will not write (its folder is a regular file;
    the path is a folder) is an `EvidenceError` naming it, before anything runs."""
    from fedhft.sdk import EvidenceError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    (tmp_path / "a-folder").mkdir()
    cases = {
        "ledger_path": blocker / "ledger.json",
        "log_path": blocker / "audit.jsonl",
    }
    for field, path in cases.items():
        org_policy = policy(ORG, tmp_path / field)
        section = "privacy" if field == "ledger_path" else "audit"
        changed = org_policy.model_copy(
            update={section: getattr(org_policy, section).model_copy(update={field: str(path)})}
        )
        with pytest.raises(EvidenceError, match="cannot be written") as refused:
            _client(tmp_path / field, pki, changed)
        assert str(path) in str(refused.value)
    directory_policy = policy(ORG, tmp_path / "dir")
    directory_policy = directory_policy.model_copy(
        update={
            "audit": directory_policy.audit.model_copy(
                update={"log_path": str(tmp_path / "a-folder")}
            )
        }
    )
    with pytest.raises(EvidenceError, match="cannot be written"):
        _client(tmp_path / "dir", pki, directory_policy)


def _started_and_stopped(
    tmp_path: Path, pki: dict[str, Credentials], monkeypatch: Any, *, round_number: int, size: int
) -> None:
    """A client that connected to run A, spent privacy for a round and stopped."""
    with _client(tmp_path, pki) as client:
        _hello_server(
            client,
            pki,
            monkeypatch,
            run_id="tiny-test-aaaa",
            current_round=0,
            announcement=_pending("tiny-test-aaaa"),
        )
        client.connect()
        assert client.trainer is not None and client.trainer.ledger is not None
        client.trainer.ledger.commit(client.trainer.mechanism_record(round_number, size))


def test_rolled_back_or_swapped_evidence_is_refused_at_start(
    tmp_path: Path, pki: dict[str, Credentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting on an older copy of the audit log or ledger than last time, or another
    organization state's, is refused; the same files (grown after a crash) start."""
    from fedhft.sdk import EvidenceError

    _started_and_stopped(tmp_path, pki, monkeypatch, round_number=1, size=40)
    audit = Path(policy(ORG, tmp_path).audit.log_path)
    ledger = Path(policy(ORG, tmp_path).privacy.ledger_path)
    older_audit = audit.read_bytes()  # A backup taken now is older than what follows.

    # The same files, grown since the record (as after a crash): accepted, recorded anew.
    _started_and_stopped(tmp_path, pki, monkeypatch, round_number=2, size=40)
    saved_audit, saved_ledger = audit.read_bytes(), ledger.read_bytes()
    assert len(saved_audit.splitlines()) > len(older_audit.splitlines())

    audit.write_bytes(older_audit)  # The older backup restored.
    with pytest.raises(EvidenceError, match=r"audit log .* rolled back or replaced"):
        _client(tmp_path, pki)
    audit.write_bytes(saved_audit)

    # Another organization state's ledger, same path: its records differ.
    other = tmp_path / "other"
    for round_number in (1, 2):
        _started_and_stopped(other, pki, monkeypatch, round_number=round_number, size=20)
    ledger.write_bytes(Path(policy(ORG, other).privacy.ledger_path).read_bytes())
    stamped = json.loads(ledger.read_bytes())
    assert stamped["records"] != json.loads(saved_ledger)["records"]
    with pytest.raises(EvidenceError, match=r"privacy ledger .* records differ"):
        _client(tmp_path, pki)
    ledger.write_bytes(saved_ledger)

    # The policy points at another audit log than last time.
    moved = policy(ORG, tmp_path)
    moved = moved.model_copy(
        update={"audit": moved.audit.model_copy(update={"log_path": str(tmp_path / "new.jsonl")})}
    )
    with pytest.raises(EvidenceError, match="used the audit log"):
        _client(tmp_path, pki, moved)


def test_fedamole_client_waiting_for_its_assignment_stops_on_a_replaced_server(
    tmp_path: Path, pki: dict[str, Credentials]
) -> None:
    """FedAMoLE round 1: after sending its affinity the client waits for the same
    attempt to be announced with the expert assignment. A server restarted on another
    run meanwhile (its announcements name run C, not A) stops it with
    `RunMismatchError`, as the FedHFT path does, instead of polling for an assignment
    the new run never makes."""
    from fedhft.sdk import RunMismatchError, build_base_model

    config = consortium(
        method="fedamole",
        clustering={"clusters": 1},
        tiers={
            "edge": {"layers": [-1], "modules": ["value"], "min_experts": 1, "max_experts": 2},
            "full": {"layers": "all", "min_experts": 2, "max_experts": 3},
        },
        fedamole={"num_experts": 3, "holders_per_expert": 3},
    )
    data = synthetic_federation(num_organizations=1, samples_per_org=40, alpha=1.0, seed=3)[0]
    with FederatedClient(
        build_base_model(config.model, tiny_config=TINY),
        data.train,
        policy(ORG, tmp_path),
        config,
        credentials=pki[ORG].directory,
        server="127.0.0.1:1",
        server_name="localhost",
        state_dir=tmp_path / "state",
        seed=0,
    ) as client:
        assert client.mole is not None
        client.run_id = "tiny-test-aaaa"  # As `connect()` recorded it.
        polls: list[int] = []

        def await_round(_: Any) -> pb.RoundAnnouncement:
            polls.append(1)
            if len(polls) > 20:
                raise TimeoutError("the client kept waiting for its assignment")
            return _pending("tiny-test-cccc")

        client.connection = ScriptedServer({"AwaitRound": await_round})  # type: ignore[assignment]
        sent = pb.RoundAnnouncement(
            status=pb.ROUND_STATUS_OPEN,
            round=1,
            run_id="tiny-test-aaaa.a1",
            server_run_id="tiny-test-aaaa",
            mole=pb.MoLEPlan(num_experts=3, affinity_requested=True),
        )
        with pytest.raises(RunMismatchError, match="tiny-test-cccc") as refused:
            client.mole._await_assignment(sent)
        assert "tiny-test-aaaa" in str(refused.value)
        assert len(polls) == 1  # Stopped at the first announcement of the other run.
