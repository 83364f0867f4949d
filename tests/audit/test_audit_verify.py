"""`verify_log`: honest logs verify; every kind of tampering is caught and named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import (
    DEFAULT_PLAN,
    ORG,
    Federation,
    fixed_key,
    lines_of,
    make_policy,
    rewrite_log,
    write_federation,
    write_lines,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedhft.audit import (
    AuditLog,
    AuditVerificationError,
    Check,
    EventType,
    Severity,
    VerificationReport,
    privacy_spend_payload,
    sign_receipt,
    upload_accepted_payload,
    verify_log,
)
from fedhft.policies import OrganizationPolicy


def _verify(
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy | None = None,
    *,
    with_server: bool = True,
) -> VerificationReport:
    return verify_log(
        federation.client_log,
        public_key=client_key.public_key(),
        server_log=federation.server_log if with_server else None,
        server_public_key=server_key.public_key(),
        policy=policy,
    )


def _errors(report: VerificationReport) -> set[tuple[Check, int | None]]:
    """Errors other than the server log's bound-history check (see `_rewrites_exposed`)."""
    return {(f.check, f.seq) for f in report.errors if f.check is not Check.BOUND_HISTORY}


def _rewrites_exposed(report: VerificationReport) -> bool:
    """Whether the server's receipts show that the client log was rewritten or cut."""
    return any(f.check is Check.BOUND_HISTORY for f in report.errors)


def _seq_of(path: Path, event: str, nth: int = 0) -> int:
    seqs = [
        json.loads(line)["seq"] for line in lines_of(path) if json.loads(line)["event"] == event
    ]
    return int(seqs[nth])


# ------------------------------------------------------------------------ honest logs


def test_honest_federation_verifies_with_everything_checked(
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> None:
    """An honest run verifies against its policy and the server's log: no findings,
    every receipt checked, and the recomputed ε equals Opacus' after every round."""
    report = _verify(federation, client_key, server_key, policy)
    assert report.findings == []
    assert report.ok and report.party == ORG and report.records == 1 + 4 * len(DEFAULT_PLAN)
    assert report.checked_receipts == len(DEFAULT_PLAN)
    assert [point.recomputed for point in report.epsilon] == federation.epsilons
    assert [point.logged for point in report.epsilon] == federation.epsilons
    report.raise_if_failed()


def test_real_local_dp_sgd_training_log_verifies(tmp_path: Path) -> None:
    """A log written from a real Opacus DP-SGD run (tiny model, Poisson sampling, three
    rounds) verifies, and the auditor's ε equals the PrivacyEngine's own."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    torch.set_num_threads(1)
    features, labels = torch.randn(256, 8), torch.randint(0, 2, (256,))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=DataLoader(TensorDataset(features, labels), batch_size=32),
        noise_multiplier=1.2,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    client_key, server_key = fixed_key("real-client"), fixed_key("real-server")
    policy = make_policy(noise_multiplier=1.2, epsilon=8.0)
    # One epoch of 256 records in expected batches of 32: 8 steps per round.
    policy = policy.model_copy(
        update={"training": policy.training.model_copy(update={"local_steps": 8})}
    )
    delta = policy.privacy.delta
    client_path, server_path = tmp_path / "client.jsonl", tmp_path / "server.jsonl"
    steps_so_far = 0
    engine_epsilons: list[float] = []
    with (
        AuditLog.open(client_path, party_id=ORG, signing_key=client_key) as client,
        AuditLog.open(server_path, party_id="aggregator", signing_key=server_key) as server,
    ):
        for round_number in range(3):
            client.append(EventType.ROUND_JOINED, {"round": round_number, "clusters": [0]})
            before = [p.detach().clone() for p in model.parameters()]
            for batch_features, batch_labels in loader:
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(batch_features), batch_labels)
                loss.backward()
                optimizer.step()
            total_steps = sum(steps for _, _, steps in engine.accountant.history)
            sigma, rate, _ = engine.accountant.history[-1]
            epsilon = engine.get_epsilon(delta)
            engine_epsilons.append(epsilon)

            class Spend:
                round = round_number
                mechanism = "dp-sgd"
                noise_multiplier = sigma
                sample_rate = rate
                steps = total_steps - steps_so_far
                max_grad_norm = 1.0
                noise_source = "secure"

            steps_so_far = total_steps
            client.append(
                EventType.PRIVACY_SPEND,
                privacy_spend_payload(
                    Spend(), accountant="rdp", epsilon_after=epsilon, delta=delta
                ),
            )
            update = b"".join(
                (after.detach() - old).numpy().tobytes()
                for after, old in zip(model.parameters(), before, strict=True)
            )
            upload = hashlib.sha256(update).hexdigest()
            committed = client.append(
                EventType.UPDATE_COMMITTED,
                {"round": round_number, "cluster": 0, "upload_sha256": upload},
            )
            receipt = sign_receipt(
                server_key,
                round=round_number,
                cluster=0,
                organization=ORG,
                upload_sha256=upload,
                audit_head_sha256=committed.digest(),
                spend_sha256=client.spend_sha256(round_number),
            )
            server.append(EventType.UPLOAD_ACCEPTED, upload_accepted_payload(receipt))
            client.append(EventType.AGGREGATION_RECEIPT, receipt.to_payload())
    report = verify_log(
        client_path,
        public_key=client_key.public_key(),
        server_log=server_path,
        server_public_key=server_key.public_key(),
        policy=policy,
    )
    assert report.ok, [f.line_text() for f in report.findings]
    assert [p.recomputed for p in report.epsilon] == pytest.approx(engine_epsilons, rel=1e-12)
    assert engine_epsilons[0] < engine_epsilons[-1]


# ------------------------------------------------------------------------ tampering


def test_changed_payload_field_is_caught_at_that_record(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """Editing a payload field in place breaks that record's signature and the next
    record's link, both named by seq."""
    lines = lines_of(federation.client_log)
    seq = _seq_of(federation.client_log, "update_committed", 1)
    lines[seq - 1] = lines[seq - 1].replace(b'"cluster":0', b'"cluster":1')
    write_lines(federation.client_log, lines)
    report = _verify(federation, client_key, server_key)
    assert {(Check.SIGNATURE, seq), (Check.CHAIN, seq + 1)} <= _errors(report)


def test_deleted_record_is_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """Removing a record leaves a sequence gap and a broken link at the next record."""
    lines = lines_of(federation.client_log)
    del lines[4]  # seq 5
    write_lines(federation.client_log, lines)
    report = _verify(federation, client_key, server_key)
    assert {(Check.SEQUENCE, 6), (Check.CHAIN, 6)} <= _errors(report)
    message = next(f.message for f in report.errors if f.check is Check.SEQUENCE)
    assert "1 record(s) missing" in message


def test_swapped_records_are_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """Swapping two records breaks the order and the chain at both."""
    lines = lines_of(federation.client_log)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(federation.client_log, lines)
    errors = _errors(_verify(federation, client_key, server_key))
    assert {(Check.SEQUENCE, 4), (Check.CHAIN, 4), (Check.SEQUENCE, 3), (Check.CHAIN, 3)} <= errors


def test_record_appended_with_another_key_is_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """A well-chained record signed by someone else's key fails its signature check."""
    impostor = fixed_key("impostor")
    lines = lines_of(federation.client_log)
    last = json.loads(lines[-1])
    from fedhft.audit._record import sign_record

    forged = sign_record(
        signing_key=impostor,
        seq=last["seq"] + 1,
        time=last["time"],
        party=ORG,
        event="refusal",
        payload={"round": 9, "reason": "appended by an impostor"},
        prev=hashlib.sha256(lines[-1]).hexdigest(),
    )
    write_lines(federation.client_log, [*lines, forged.canonical_bytes()])
    report = _verify(federation, client_key, server_key)
    assert _errors(report) == {(Check.SIGNATURE, forged.seq)}


def test_truncated_file_reports_the_torn_tail(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """Cutting the file mid-record: complete records still verify, the torn tail is an
    error naming where it starts, and the server's acceptance of the lost upload shows."""
    data = federation.client_log.read_bytes()
    federation.client_log.write_bytes(data[: len(data) - 40])
    report = _verify(federation, client_key, server_key)
    torn = [f for f in report.errors if f.check is Check.TORN_TAIL]
    assert len(torn) == 1 and torn[0].line == report.records + 1
    assert not any(f.check in (Check.SIGNATURE, Check.CHAIN) for f in report.findings)


def test_lowered_epsilon_is_caught_even_with_a_valid_chain(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """A client rewriting its own history (re-signed, chain intact) to lower ε is caught
    by recomputing ε from the mechanism parameters, and by ε going down."""
    seq = _seq_of(federation.client_log, "privacy_spend", 2)

    def lower(documents: list[dict[str, Any]]) -> None:
        documents[seq - 1]["payload"]["epsilon_after"] = 0.5

    rewrite_log(federation.client_log, client_key, lower)
    report = _verify(federation, client_key, server_key)
    assert _errors(report) == {(Check.EPSILON_RECOMPUTED, seq), (Check.EPSILON_DECREASED, seq)}
    assert _rewrites_exposed(report)
    message = next(f.message for f in report.errors if f.check is Check.EPSILON_RECOMPUTED)
    assert "under-reports" in message


def test_last_only_epsilon_check_still_catches_the_final_value_and_decreases(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """With `epsilon_check="last"` only the final ε is recomputed: a lowered middle value
    is then caught by monotonicity alone, a lowered final value by recomputation."""
    middle = _seq_of(federation.client_log, "privacy_spend", 1)
    final = _seq_of(federation.client_log, "privacy_spend", 2)

    def lower(documents: list[dict[str, Any]]) -> None:
        documents[middle - 1]["payload"]["epsilon_after"] = 0.1
        documents[final - 1]["payload"]["epsilon_after"] = 0.2

    rewrite_log(federation.client_log, client_key, lower)
    report = verify_log(
        federation.client_log, public_key=client_key.public_key(), epsilon_check="last"
    )
    assert _errors(report) == {
        (Check.EPSILON_DECREASED, middle),
        (Check.EPSILON_RECOMPUTED, final),
    }
    assert [p.recomputed is None for p in report.epsilon] == [True, True, False]


def test_understated_mechanism_is_caught_by_the_budget_not_the_chain(
    tmp_path: Path, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """Spending beyond the policy budget is an error at the record that crosses it."""
    policy = make_policy(epsilon=1.0)
    federation = write_federation(tmp_path, client_key, server_key, policy, [(0.8, 0.05, 50)] * 2)
    report = _verify(federation, client_key, server_key, policy)
    budget = [f for f in report.errors if f.check is Check.BUDGET]
    assert budget and budget[0].seq == _seq_of(federation.client_log, "privacy_spend", 0)


def test_upload_without_receipt_is_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """An upload with no receipt in the client log and no acceptance in the server log
    is an error naming the commitment."""
    receipt_seq = _seq_of(federation.client_log, "aggregation_receipt", 1)
    commit_seq = _seq_of(federation.client_log, "update_committed", 1)
    rewrite_log(federation.client_log, client_key, lambda docs: docs.pop(receipt_seq - 1))
    report = _verify(federation, client_key, server_key, with_server=False)
    assert _errors(report) == {(Check.RECEIPT_MISSING, commit_seq)}

    accepted_seq = _seq_of(federation.server_log, "upload_accepted", 1)
    rewrite_log(federation.server_log, server_key, lambda docs: docs.pop(accepted_seq - 1))
    report = _verify(federation, client_key, server_key)
    assert (Check.RECEIPT_MISSING, commit_seq) in _errors(report)


def test_receipt_without_upload_is_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """A receipt (and a server acceptance) for an upload the client log does not commit
    to is an error in both directions."""
    commit_seq = _seq_of(federation.client_log, "update_committed", 0)
    rewrite_log(federation.client_log, client_key, lambda docs: docs.pop(commit_seq - 1))
    report = _verify(federation, client_key, server_key)
    checks = {(f.check, f.source) for f in report.errors}
    assert (Check.UPLOAD_MISSING, str(federation.client_log)) in checks
    assert (Check.UPLOAD_MISSING, str(federation.server_log)) in checks


def test_receipt_forged_by_the_client_is_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """A receipt the client signed itself (claiming the server) fails its signature."""
    seq = _seq_of(federation.client_log, "aggregation_receipt", 0)

    def forge(documents: list[dict[str, Any]]) -> None:
        payload = documents[seq - 1]["payload"]
        fake = sign_receipt(
            client_key,
            round=payload["round"],
            cluster=payload["cluster"],
            organization=ORG,
            upload_sha256=payload["upload_sha256"],
        )
        payload["receipt_sig"] = fake.sig

    rewrite_log(federation.client_log, client_key, forge)
    assert _errors(_verify(federation, client_key, server_key)) == {(Check.RECEIPT_SIGNATURE, seq)}


def test_truncation_at_a_record_boundary_is_caught_by_the_server_log(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """Dropping the last whole round from the client log keeps its chain valid, but the
    server's acceptance of that upload exposes it; a noted head hash exposes it too."""
    head = _verify(federation, client_key, server_key).head_sha256
    lines = lines_of(federation.client_log)
    write_lines(federation.client_log, lines[:-4])
    report = _verify(federation, client_key, server_key)
    # The last upload's receipt binds a head and a spend the log no longer has.
    assert [(f.check, f.source) for f in report.errors] == [
        (Check.BOUND_HISTORY, str(federation.server_log)),
        (Check.BOUND_HISTORY, str(federation.server_log)),
        (Check.UPLOAD_MISSING, str(federation.server_log)),
    ]
    headed = verify_log(
        federation.client_log, public_key=client_key.public_key(), expected_head=head
    )
    assert [f.check for f in headed.errors] == [Check.HEAD]


def test_time_going_backwards_is_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """A record dated before its predecessor is an error at that record."""

    def backdate(documents: list[dict[str, Any]]) -> None:
        documents[5]["time"] = "2025-02-01T00:00:00.000000Z"

    rewrite_log(federation.client_log, client_key, backdate)
    assert _errors(_verify(federation, client_key, server_key)) == {(Check.TIME, 6)}


def test_non_canonical_line_is_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """A record rewritten with other JSON formatting (same content) is flagged."""
    lines = lines_of(federation.client_log)
    pretty = json.dumps(json.loads(lines[0]), indent=1).replace("\n", "").encode()
    write_lines(federation.client_log, [pretty, *lines[1:]])
    assert (Check.CANONICAL, 1) in _errors(_verify(federation, client_key, server_key))


def test_every_problem_is_reported_not_just_the_first(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """Several independent tamperings all appear in one report, and raise_if_failed
    raises with all of them."""
    lines = lines_of(federation.client_log)
    spend_seq = _seq_of(federation.client_log, "privacy_spend", 1)
    lines[1] = lines[1].replace(b'"round":0', b'"round":5')
    lines[spend_seq - 1] = lines[spend_seq - 1].replace(b'"steps":20', b'"steps":2')
    write_lines(federation.client_log, lines)
    federation.client_log.write_bytes(federation.client_log.read_bytes() + b'{"torn')
    report = _verify(federation, client_key, server_key)
    expected = {(Check.SIGNATURE, 2), (Check.SIGNATURE, spend_seq), (Check.TORN_TAIL, None)}
    assert expected <= _errors(report)
    with pytest.raises(AuditVerificationError) as caught:
        report.raise_if_failed()
    assert len(caught.value.findings) == len(report.errors) >= 3


def test_policy_mismatches_are_reported(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """Checked against a policy requiring PRV at a smaller δ, the log's RDP spends at
    δ = 1e-5 are policy errors; the policy hash mismatch is a warning."""
    strict = make_policy(accountant="prv", delta=1e-6)
    report = _verify(federation, client_key, server_key, strict)
    policy_errors = [f for f in report.errors if f.check is Check.POLICY]
    assert len(policy_errors) == 2 * len(DEFAULT_PLAN)
    warnings = [f for f in report.findings if f.severity is Severity.WARNING]
    assert any("hash of the given policy" in f.message for f in warnings)


def test_spend_must_be_logged_before_the_upload(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """An update committed before the round's privacy spend was recorded is an error."""
    spend_seq = _seq_of(federation.client_log, "privacy_spend", 0)

    def reorder(documents: list[dict[str, Any]]) -> None:
        times = [document["time"] for document in documents]
        spend = documents.pop(spend_seq - 1)
        documents.insert(spend_seq, spend)  # now after update_committed
        for document, time in zip(documents, times, strict=True):
            document["time"] = time

    rewrite_log(federation.client_log, client_key, reorder)
    report = _verify(federation, client_key, server_key)
    assert _errors(report) == {(Check.SPEND_BEFORE_UPLOAD, spend_seq)}
    assert _rewrites_exposed(report)


def test_pseudo_random_noise_is_a_warning_not_a_failure(
    tmp_path: Path,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> None:
    """Noise from a pseudo-random generator is flagged once as a warning."""
    federation = write_federation(tmp_path, client_key, server_key, policy, noise_source="pseudo")
    report = _verify(federation, client_key, server_key, policy)
    assert report.ok
    assert [f.check for f in report.findings] == [Check.NOISE]


def test_server_log_signed_by_another_key_is_caught(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """The server's log is verified with the server's key too."""
    report = verify_log(
        federation.client_log,
        public_key=client_key.public_key(),
        server_log=federation.server_log,
        server_public_key=fixed_key("not the server").public_key(),
    )
    sources = {f.source for f in report.errors if f.check is Check.SIGNATURE}
    assert sources == {str(federation.server_log)}
    assert any(f.check is Check.RECEIPT_SIGNATURE for f in report.errors)


@pytest.mark.slow
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_is_detected(
    data: st.DataObject,
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
) -> None:
    """Law: changing any one byte of a log to any other value makes verification fail."""
    original = federation.client_log.read_bytes()
    try:
        index = data.draw(st.integers(0, len(original) - 1), label="index")
        replacement = data.draw(
            st.integers(0, 255).filter(lambda b: b != original[index]), label="byte"
        )
        changed = bytearray(original)
        changed[index] = replacement
        federation.client_log.write_bytes(bytes(changed))
        report = _verify(federation, client_key, server_key)
        assert not report.ok
    finally:
        federation.client_log.write_bytes(original)


# ------------------------------------------------------------------ the organization's own history


def _quadruple_sigma(documents: list[dict[str, Any]]) -> None:
    """σ × 4 in every spend, ε recomputed as Opacus' RDP accountant would for it: a
    self-consistent history the organization re-signs with its own key."""
    accountant = RDPAccountant()
    for document in documents:
        payload = document["payload"]
        if document["event"] != "privacy_spend":
            continue
        payload["noise_multiplier"] *= 4
        for _ in range(payload["steps"]):
            accountant.step(
                noise_multiplier=payload["noise_multiplier"], sample_rate=payload["sample_rate"]
            )
        payload["epsilon_after"] = accountant.get_epsilon(delta=payload["delta"])


def test_sigma_rewritten_and_resigned_by_the_organization_is_caught(
    federation: Federation,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> None:
    """The review's attack: σ × 4 in every spend, ε recomputed, the log re-signed and
    re-chained with the organization's own key. ε recomputation cannot see it (the
    history is consistent); the server's receipts, which bind the log head and the spend
    record of every upload, do, and so does σ checked against the policy."""
    rewrite_log(federation.client_log, client_key, _quadruple_sigma)
    without_server = verify_log(federation.client_log, public_key=client_key.public_key())
    assert without_server.ok  # the chain, signatures and ε all check out

    report = _verify(federation, client_key, server_key)
    bound = [f for f in report.errors if f.check is Check.BOUND_HISTORY]
    assert len(bound) == 2 * len(DEFAULT_PLAN)  # every head and every spend signed
    assert all(f.source == str(federation.server_log) for f in bound)
    assert not any(f.check is Check.EPSILON_RECOMPUTED for f in report.findings)

    against_policy = verify_log(
        federation.client_log, public_key=client_key.public_key(), policy=policy
    )
    sigma_findings = [f for f in against_policy.errors if f.check is Check.NOISE_MULTIPLIER]
    assert [f.seq for f in sigma_findings] == [
        _seq_of(federation.client_log, "privacy_spend", n) for n in range(len(DEFAULT_PLAN))
    ]


def test_auto_sigma_is_re_solved_by_the_clients_solver(
    tmp_path: Path, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """With `noise_multiplier: auto` the verifier re-solves σ for each spend's logged rate
    and steps with the SDK's own solver: an honest auto log verifies, the σ × 4 rewrite
    does not."""
    from fedhft.accounting import auto_noise_multiplier

    policy = make_policy(noise_multiplier="auto")
    plan = [
        (auto_noise_multiplier(policy, sample_rate=rate, steps_per_round=20), rate, 20)
        for rate in (0.01, 0.01, 0.02)
    ]
    federation = write_federation(tmp_path, client_key, server_key, policy, plan)
    assert _verify(federation, client_key, server_key, policy).findings == []
    rewrite_log(federation.client_log, client_key, _quadruple_sigma)
    report = verify_log(federation.client_log, public_key=client_key.public_key(), policy=policy)
    assert {f.check for f in report.errors} == {Check.NOISE_MULTIPLIER}
    assert "auto" in report.errors[0].message


def test_dropping_the_last_record_fails_against_the_server_log(
    federation: Federation, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """The review's truncation: the last record (the final receipt) dropped. The chain
    is intact, but the server signed a receipt for that upload and nothing it bound
    comes later in the log: an error, not a warning."""
    write_lines(federation.client_log, lines_of(federation.client_log)[:-1])
    report = _verify(federation, client_key, server_key)
    assert not report.ok
    assert [(f.check, f.seq) for f in report.errors] == [
        (Check.RECEIPT_MISSING, _seq_of(federation.client_log, "update_committed", 2))
    ]


def test_a_missing_receipt_before_later_bound_records_is_only_a_warning(
    tmp_path: Path, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """A receipt missing in the middle, while the server bound later records of the
    log, is what a crash between upload and receipt leaves (the log went on): a
    warning. Here the client logs round 0 without its receipt and goes on honestly."""
    honest = write_federation(
        tmp_path, client_key, server_key, make_policy(), receipt_lost_in_rounds={0}
    )
    report = _verify(honest, client_key, server_key)
    assert report.ok
    assert [(f.check, f.severity) for f in report.findings] == [
        (Check.RECEIPT_MISSING, Severity.WARNING)
    ]


def test_an_upload_whose_receipt_binds_no_head_is_an_error_once_binding_is_in_use(
    tmp_path: Path, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """A (modified) client that withholds its log head for one upload, while the server's
    other receipts bind theirs, leaves that part of its history unpinned: an error."""
    federation = write_federation(
        tmp_path, client_key, server_key, make_policy(), head_withheld_in_rounds={1}
    )
    report = _verify(federation, client_key, server_key)
    assert [(f.check, f.source) for f in report.errors] == [
        (Check.BOUND_HISTORY, str(federation.server_log))
    ]
    assert "withheld" in report.errors[0].message
