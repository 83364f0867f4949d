"""`fedhft ledger rebuild`: a lost ledger restored from the verified audit log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedhft.aggregator._federation import RoundCoordinator
from fedhft.audit import AuditLog, load_public_key, verify_log
from fedhft.cli import app
from fedhft.model import tier_mask
from fedhft.policies import OrganizationPolicy
from fedhft.sdk import LocalTrainer, MaskedAdapterModel, synthetic_federation
from fedhft.sdk._participant import RoundParticipant
from fedhft.sdk.privacy._ledger import open_organization_ledger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aggregator"))
from federation_helpers import TINY, consortium, policy

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")

ORG = "clin-a"
runner = CliRunner()


def _spent(tmp_path: Path) -> tuple[OrganizationPolicy, Path, Path, float]:
    """Two accounted rounds with a signed audit log; (policy, policy file, key file, ε)."""
    org_policy = policy(ORG, tmp_path)
    identity = Ed25519PrivateKey.generate()
    key_file = tmp_path / "identity.pub.pem"
    key_file.write_bytes(
        identity.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(org_policy.model_dump(mode="json")))
    config = consortium()
    audit = AuditLog.open(org_policy.audit.log_path, party_id=ORG, signing_key=identity)
    model = MaskedAdapterModel.from_consortium(config, tiny_config=TINY)
    trainer = LocalTrainer(model, org_policy, config, audit=audit, seed=0)
    data = synthetic_federation(num_organizations=1, alpha=1.0, samples_per_org=40, seed=2)
    participant = RoundParticipant(trainer, data[0].train, state_dir=tmp_path / "state")
    coordinator = RoundCoordinator(
        config,
        run_id="p",
        initial_state=MaskedAdapterModel.from_consortium(
            config, tiny_config=TINY
        ).get_block_state(),
        tier_blocks={t: tier_mask(config, t, tiny_config=TINY) for t in config.tiers},
    )
    for round_number in (1, 2):
        participant.prepare(round_number, coordinator.model_for_round(round_number))
        participant.complete(round_number)
    audit.close()
    assert trainer.ledger is not None
    return org_policy, policy_file, key_file, trainer.ledger.spent()


def test_rebuilt_ledger_has_the_audit_logs_epsilon_and_lets_the_client_start(
    tmp_path: Path,
) -> None:
    """Ledger lost: rebuild from the verified audit log gives its ε, and the client opens it."""
    org_policy, policy_file, key_file, spent = _spent(tmp_path)
    ledger_path = Path(org_policy.privacy.ledger_path)
    ledger_path.unlink()
    log = Path(org_policy.audit.log_path)
    args = ["ledger", "rebuild", "--audit-log", str(log), "--policy", str(policy_file)]
    result = runner.invoke(app, [*args, "--key", str(key_file)])
    assert result.exit_code == 0, result.output
    print(result.output)
    report = verify_log(log, public_key=load_public_key(key_file), policy=org_policy)
    logged = report.epsilon[-1].recomputed
    ledger = open_organization_ledger(org_policy, state_dir=tmp_path / "state")
    assert [record.round for record in ledger.records] == [1, 2]
    assert logged is not None and ledger.spent() == pytest.approx(logged, rel=1e-9)
    assert ledger.spent() == pytest.approx(spent, rel=1e-9)


def test_rebuild_refuses_a_tampered_log_and_an_existing_ledger(tmp_path: Path) -> None:
    """An existing ledger without --force, a log missing a head noted earlier, or a log
    that fails verification: nothing written."""
    org_policy, policy_file, key_file, _ = _spent(tmp_path)
    ledger_path = Path(org_policy.privacy.ledger_path)
    before = ledger_path.read_bytes()
    log = Path(org_policy.audit.log_path)
    args = ["ledger", "rebuild", "--audit-log", str(log), "--policy", str(policy_file)]
    args += ["--key", str(key_file)]
    kept = runner.invoke(app, args)
    assert kept.exit_code == 2 and "--force" in kept.output
    assert ledger_path.read_bytes() == before
    ledger_path.unlink()
    unknown_head = runner.invoke(app, [*args, "--expect-head", "ab" * 32])
    assert unknown_head.exit_code == 1, unknown_head.output
    assert not ledger_path.exists()
    lines = log.read_text().splitlines()
    spend = next(i for i, line in enumerate(lines) if '"privacy_spend"' in line)
    lines[spend] = lines[spend].replace('"steps":3', '"steps":1')
    assert '"steps":1' in lines[spend]
    log.write_text("\n".join(lines) + "\n")
    tampered = runner.invoke(app, args)
    assert tampered.exit_code == 1, tampered.output
    assert not ledger_path.exists()


def test_rebuild_with_the_state_folder_refuses_an_older_audit_log_and_the_client_starts(
    tmp_path: Path,
) -> None:
    """With `--state`: a rebuild from an audit log cut before round 2's spend (an older
    backup) is refused before writing; the complete log reproduces the recorded records,
    so the client's evidence check accepts the rebuilt ledger. An older ledger is not."""
    from fedhft.sdk import EvidenceError
    from fedhft.sdk._client_state import Evidence, check_evidence, record_evidence

    org_policy, policy_file, key_file, _ = _spent(tmp_path)
    ledger_path = Path(org_policy.privacy.ledger_path)
    log = Path(org_policy.audit.log_path)
    state = tmp_path / "state"
    evidence = Evidence(ledger_path=ledger_path, audit_path=log)
    record_evidence(state, evidence)  # As the client does at `Hello` and at close.
    ledger_path.unlink()
    lines = log.read_bytes().splitlines(keepends=True)
    spends = [i for i, line in enumerate(lines) if b'"privacy_spend"' in line]
    older = tmp_path / "older-audit.jsonl"
    older.write_bytes(b"".join(lines[: spends[1]]))
    args = ["ledger", "rebuild", "--policy", str(policy_file), "--key", str(key_file)]
    args += ["--state", str(state)]
    refused = runner.invoke(app, [*args, "--audit-log", str(older)])
    assert refused.exit_code == 1, refused.output
    assert "holds 1 records, 2 were recorded" in refused.output
    assert not ledger_path.exists()
    rebuilt = runner.invoke(app, [*args, "--audit-log", str(log)])
    assert rebuilt.exit_code == 0, rebuilt.output
    check_evidence(state, evidence)
    kept = ledger_path.read_bytes()
    ledger_path.unlink()
    assert runner.invoke(app, [*args[:-2], "--audit-log", str(older)]).exit_code == 0
    with pytest.raises(EvidenceError, match="rolled back"):
        check_evidence(state, evidence)
    ledger_path.write_bytes(kept)
