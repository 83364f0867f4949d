"""The organization's round participant: crash-safe pending updates and personal state."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhft.aggregator._federation import RoundCoordinator
from fedhft.model import tier_mask
from fedhft.protocol import SecAggClient, SecAggServer, SessionParams
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.ckks._aggregation import CKKSAggregator, CKKSClient, CKKSSession
from fedhft.protocol.ckks._scheme import (
    CKKSCeremony,
    CKKSKeyring,
    CKKSParameters,
    CKKSServerContext,
)
from fedhft.protocol.errors import CohortTooSmallError, ThresholdError
from fedhft.protocol.session_codec import decode_block_sums
from fedhft.sdk import LocalTrainer, MaskedAdapterModel, synthetic_federation
from fedhft.sdk._client_sessions import CKKSRun, MaskingRun
from fedhft.sdk._participant import FloatArray, RoundParticipant
from fedhft.sdk._round_files import RoundFiles
from fedhft.sdk.errors import SumAlreadyEnteredError

sys.path.insert(0, str(Path(__file__).parents[1] / "aggregator"))
from federation_helpers import TINY, consortium, policy

sys.path.insert(0, str(Path(__file__).parents[1] / "protocol"))
from secagg_helpers import make_identities


def _participant(tmp_path: Path) -> tuple[RoundParticipant, RoundCoordinator]:
    config = consortium()
    data = synthetic_federation(num_organizations=1, alpha=1.0, samples_per_org=40, seed=2)
    model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
    trainer = LocalTrainer(model, policy("clin-a", tmp_path), config, seed=0)
    coordinator = RoundCoordinator(
        config,
        run_id="p",
        initial_state=MaskedAdapterModel.from_consortium(
            config, tiny_config=TINY
        ).get_block_state(),
        tier_blocks={t: tier_mask(config, t, tiny_config=TINY) for t in config.tiers},
    )
    return RoundParticipant(trainer, data[0].train, state_dir=tmp_path / "state"), coordinator


def test_retry_after_restart_resends_the_same_update_and_spends_once(tmp_path: Path) -> None:
    """A round retried after a restart re-sends the trained update; the ledger has one spend."""
    first, coordinator = _participant(tmp_path)
    clusters = coordinator.model_for_round(1)
    update = first.prepare(1, clusters)
    again, _ = _participant(tmp_path)
    retried = again.prepare(1, clusters)
    assert retried.digest() == update.digest()
    ledger = again.trainer.ledger
    assert ledger is not None
    assert [r.round for r in ledger.records] == [1]


def test_restart_after_a_finished_round_makes_its_personal_state_current(tmp_path: Path) -> None:
    """A pending round the server finished while this process was down is completed first."""
    first, coordinator = _participant(tmp_path)
    first.prepare(1, coordinator.model_for_round(1))
    restarted, _ = _participant(tmp_path)
    assert restarted.completed_round == 0
    restarted.prepare(2, coordinator.model_for_round(2))
    assert restarted.completed_round == 1
    assert restarted.personal is not None
    assert restarted.personal.last_delta, "the last Δ is kept for the next membership"
    restarted.complete(2)
    reloaded, _ = _participant(tmp_path)
    assert reloaded.completed_round == 2
    assert reloaded.personal is not None
    for block_id, delta in restarted.personal.last_delta.items():
        np.testing.assert_array_equal(reloaded.personal.last_delta[block_id], delta)


# --------------------------------------------------------------------------- retried sums

ROSTER = ("org-a", "org-b", "org-c", "org-d", "org-x")
BLOCK = "layer.0.lora_B"


def _sum_params(roster: tuple[str, ...], run_id: str) -> SessionParams:
    return SessionParams(
        run_id=run_id,
        round=1,
        cluster=0,
        roster=roster,
        config_hash=hashlib.sha256(b"config").digest(),
        model_hash=hashlib.sha256(b"model").digest(),
        threshold=len(roster) // 2 + 1,
        min_cohort=3,
        block_lengths={BLOCK: 6},
        block_supports={BLOCK: set(roster)},
        clip=1.0,
        scale=2.0**16,
    )


def _staged(tmp_path: Path, inputs: dict[str, FloatArray]) -> dict[str, RoundFiles]:
    """Each organization's state folder, reopened from disk (as after a restart), with
    its trained update staged."""
    files = {}
    for org, vector in inputs.items():
        files[org] = RoundFiles(tmp_path / org, state_name="s.safetensors", output_name="o.bin")
        if files[org].staged_output() is None:
            files[org].stage(vector.tobytes(), b"next state")
    return files


def _secure_sum(
    params: SessionParams,
    inputs: dict[str, FloatArray],
    files: dict[str, RoundFiles],
    identities: dict[str, Ed25519PrivateKey],
    *,
    silent_at_input: frozenset[str] = frozenset(),
) -> FloatArray:
    """One masking session of the clients' real `MaskingRun`s against a real server; the
    server's sum (raises when the session aborts)."""
    public = {org: identities[org].public_key() for org in params.roster}
    server = SecAggServer(params, peer_identities=public)
    ref = pb.SessionRef(run_id=params.run_id, round=1, cluster=0, session_id=params.sid)
    runs = {
        org: MaskingRun(
            context=None,  # type: ignore[arg-type]  # only `_send` uses it
            ref=ref,
            inputs={BLOCK: inputs[org]},
            client=SecAggClient(
                params, organization=org, identity_key=identities[org], peer_identities=public
            ),
            entered=files[org].entered_sums(),
        )
        for org in params.roster
    }
    closes = (
        server.finish_advertise,
        server.finish_share_keys,
        server.finish_masked_input,
        server.finish_consistency,
    )
    previous: dict[str, list[bytes] | None] = dict.fromkeys(params.roster)
    for index in range(5):
        for org in sorted(server.participants):
            if runs[org].failed or (index == 2 and org in silent_at_input):
                continue
            try:
                server.receive(runs[org].message(index, previous[org]))
            except SumAlreadyEnteredError:
                runs[org].failed = True  # as `run_sessions` does: this cluster ends here
        if index == 4:
            return server.finish_unmask().blocks[BLOCK].sum
        broadcast = closes[index]()
        for org in params.roster:
            message = broadcast[org] if isinstance(broadcast, dict) else broadcast
            previous[org] = [message.encode()] if message is not None else None
    raise AssertionError("unreachable")


def _inputs() -> dict[str, FloatArray]:
    rng = np.random.default_rng(5)
    return {org: rng.uniform(-0.5, 0.5, size=6) for org in ROSTER}


def test_retry_without_one_organization_cannot_difference_out_its_update(tmp_path: Path) -> None:
    """K ≥ 2, cluster 0 unmasked, the round retried without X: the others refuse to put
    their staged updates into a second cluster-0 sum, so S₁ − S₂ = x never exists."""
    inputs, identities = _inputs(), make_identities(ROSTER)
    first = _secure_sum(
        _sum_params(ROSTER, "run-1.a1"), inputs, _staged(tmp_path, inputs), identities
    )
    np.testing.assert_allclose(first, sum(inputs.values()), atol=1e-3)
    without_x = ROSTER[:-1]
    with pytest.raises((ThresholdError, CohortTooSmallError)):
        _secure_sum(
            _sum_params(without_x, "run-1.a2"), inputs, _staged(tmp_path, inputs), identities
        )


def test_server_restart_after_unmask_cannot_get_a_second_differently_composed_sum(
    tmp_path: Path,
) -> None:
    """After unmasking, a restarted server (new attempt, new session id) and restarted
    clients (state reopened from disk) still get no second sum over another roster, and
    the unmasked survivors stay bound even for an identical roster."""
    inputs, identities = _inputs(), make_identities(ROSTER)
    first = _secure_sum(
        _sum_params(ROSTER, "run-1.a1"), inputs, _staged(tmp_path, inputs), identities
    )
    retried = _secure_sum(
        _sum_params(ROSTER, "run-1.a2"), inputs, _staged(tmp_path, inputs), identities
    )
    # Quantization rounds randomly: the same sum to within one step per contributor.
    np.testing.assert_allclose(retried, first, atol=len(ROSTER) * 2.0**-16)
    with pytest.raises((ThresholdError, CohortTooSmallError)):
        _secure_sum(
            _sum_params(ROSTER, "run-1.a3"),
            inputs,
            _staged(tmp_path, inputs),
            identities,
            silent_at_input=frozenset({"org-x"}),
        )
    entered = _staged(tmp_path, inputs)["org-a"].entered_sums()
    assert entered is not None and entered.clusters()[0]["survivors"] == sorted(ROSTER)


def test_a_new_staged_update_may_enter_any_sum(tmp_path: Path) -> None:
    """The binding is per staged update: a newly trained one starts unbound."""
    inputs = _inputs()
    files = _staged(tmp_path, inputs)
    entered = files["org-a"].entered_sums()
    assert entered is not None
    entered.enter(0, roster=ROSTER, sid=b"\x01" * 32)
    files["org-a"].complete(None)
    files["org-a"].stage(b"another update", b"next state")
    fresh = files["org-a"].entered_sums()
    assert fresh is not None and fresh.clusters() == {}
    fresh.enter(0, roster=ROSTER[1:], sid=b"\x02" * 32)


@pytest.fixture(scope="module")
def ckks_keys() -> tuple[CKKSCeremony, dict[str, CKKSKeyring]]:
    """A CKKS key ceremony for `ROSTER` (N = 2048) and every organization's keyring."""
    sealing = {org: X25519PrivateKey.generate() for org in ROSTER}
    parameters = CKKSParameters.choose(max_clients=len(ROSTER), value_bound=1.0, scale_bits=30)
    ceremony = CKKSCeremony.create(
        consortium="c",
        sealing_keys={org: key.public_key() for org, key in sealing.items()},
        parameters=parameters,
    )
    keyrings = {
        org: CKKSKeyring.open(
            ceremony.sealed_keys[org], private_key=key, consortium="c", organization=org
        )
        for org, key in sealing.items()
    }
    return ceremony, keyrings


def _ckks_sum(
    roster: tuple[str, ...],
    run_id: str,
    inputs: dict[str, FloatArray],
    files: dict[str, RoundFiles],
    keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]],
) -> list[FloatArray]:
    """One CKKS session of the clients' real `CKKSRun`s against a real aggregator; the
    sums the clients report back to the server."""
    ceremony, keyrings = keys
    session = CKKSSession(
        run_id=run_id,
        round=1,
        cluster=0,
        roster=roster,
        key_id=ceremony.key_id,
        min_cohort=3,
        block_lengths={BLOCK: 6},
        block_supports={BLOCK: frozenset(roster)},
    )
    aggregator = CKKSAggregator(session, CKKSServerContext.from_bytes(ceremony.public_context))
    ref = pb.SessionRef(run_id=run_id, round=1, cluster=0, session_id=session.sid)
    runs = [
        CKKSRun(
            context=None,  # type: ignore[arg-type]  # only `_send` uses it
            ref=ref,
            inputs={BLOCK: inputs[org]},
            client=CKKSClient(session, keyrings[org]),
            entered=files[org].entered_sums(),
        )
        for org in roster
    ]
    for run in runs:
        try:
            aggregator.receive(run.client.organization, run.message(0, None))  # type: ignore[union-attr]
        except SumAlreadyEnteredError:
            run.failed = True
    if len(aggregator.received) < session.min_cohort:
        return []
    encrypted_sum = aggregator.result().encode()
    reported = []
    for run in runs:
        if not run.failed:
            try:
                report = run.message(1, [encrypted_sum])
                reported.append(decode_block_sums(report, {BLOCK: 6})[BLOCK])
            except SumAlreadyEnteredError:
                run.failed = True
    return reported


def test_ckks_retry_without_one_organization_reports_no_second_sum(
    tmp_path: Path, ckks_keys: tuple[CKKSCeremony, dict[str, CKKSKeyring]]
) -> None:
    """CKKS mode, the round retried without X: no client uploads its staged update into
    the second sum, so the server never holds S₁ and S₂ to subtract."""
    inputs = _inputs()
    first = _ckks_sum(ROSTER, "run-1.a1", inputs, _staged(tmp_path, inputs), ckks_keys)
    assert len(first) == len(ROSTER)
    np.testing.assert_allclose(first[0], sum(inputs.values()), atol=1e-3)
    again = _ckks_sum(ROSTER, "run-1.a2", inputs, _staged(tmp_path, inputs), ckks_keys)
    assert len(again) == len(ROSTER), "an identical-roster retry is allowed"
    assert _ckks_sum(ROSTER[:-1], "run-1.a3", inputs, _staged(tmp_path, inputs), ckks_keys) == []
