"""A lost privacy ledger against a real server: the server's view of participation stops
a client that lost everything, and a ledger rebuilt from the audit log starts again.

Three of the four organizations take part in two rounds on loopback mTLS; the fourth
is enrolled but never joins. The server keeps running while each test restarts one
organization's client with part of its files lost.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runtime_helpers import (
    Pki,
    fast_consortium,
    federation_data,
    make_client,
    policy,
    provision,
    running_server,
    start_federation,
)
from typer.testing import CliRunner, Result

from fedhft.cli import app
from fedhft.policies import ConsortiumConfig
from fedhft.sdk import EvidenceError, FederatedClient, PrivacyLedger
from fedhft.sdk._participant import RoundParticipant
from fedhft.sdk.errors import LedgerMissingError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
]

TOOK_PART = ("clin-a", "clin-b", "bank-a")
NEWCOMER = "bank-b"


@dataclass(frozen=True)
class Federation:
    """A server that ran two rounds with `TOOK_PART`, still serving."""

    config: ConsortiumConfig
    pki: Pki
    address: str
    clients: Path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Two completed rounds of three organizations; the server stays up for the tests."""
    root = tmp_path_factory.mktemp("lost-ledger")
    config = fast_consortium()
    pki = provision(root / "pki")
    clients = root / "clients"
    with running_server(config, pki, root / "server") as server:
        run = start_federation(config, pki, server.address, clients, organizations=TOOK_PART)
        run.join()
        assert run.errors == {}
        for org in TOOK_PART:
            assert run.reports[org].rounds_joined == (1, 2)
        yield Federation(config, pki, server.address, clients)


def _restart(federation: Federation, org: str) -> FederatedClient:
    return make_client(
        org,
        federation_data()[org],
        federation.config,
        federation.pki,
        federation.address,
        federation.clients,
    )


def test_an_organization_that_lost_ledger_state_and_audit_log_is_stopped_by_the_servers_view(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ledger, state folder and audit log all lost: the server's record of the rounds it
    accepted uploads in stops the restarted client before any training, twice, naming
    the rounds, the ledger and the recovery; no ε = 0 ledger stays behind."""
    org = "clin-a"
    ledger_path = Path(policy(org, federation.clients).privacy.ledger_path)
    assert PrivacyLedger.open(
        ledger_path, organization=org, accountant="rdp", delta=1e-5, epsilon_budget=50.0
    ).records
    shutil.rmtree(federation.clients / org)  # Ledger, audit log and state folder.
    trained: list[int] = []
    original = RoundParticipant.prepare

    def spy(self: RoundParticipant, round_number: int, clusters: object) -> object:
        trained.append(round_number)
        return original(self, round_number, clusters)  # type: ignore[arg-type]

    monkeypatch.setattr(RoundParticipant, "prepare", spy)
    for _ in range(2):  # The second start finds nothing the first one left behind.
        with _restart(federation, org) as client, pytest.raises(LedgerMissingError) as refused:
            client.run()
        message = str(refused.value)
        assert "rounds [1, 2]" in message and str(ledger_path) in message
        assert "fedhft ledger rebuild" in message and "treat" in message
        assert not ledger_path.exists()
    assert trained == []


def test_a_new_organization_proceeds(federation: Federation) -> None:
    """An enrolled organization that never took part starts at ε = 0 against the same
    server: the server's view shows no rounds for it."""
    with _restart(federation, NEWCOMER) as client:
        report = client.run()
    assert report.rounds_joined == () and report.epsilon_spent == 0.0


def test_a_ledger_rebuilt_with_the_cli_starts_and_an_older_copy_is_refused(
    federation: Federation,
) -> None:
    """Ledger lost after real rounds, rebuilt with `fedhft ledger rebuild --state`: the
    client starts on it. A copy holding fewer rounds (an older backup) is refused."""
    org = "clin-b"
    org_policy = policy(org, federation.clients)
    ledger_path = Path(org_policy.privacy.ledger_path)
    before = PrivacyLedger.open(
        ledger_path, organization=org, accountant="rdp", delta=1e-5, epsilon_budget=50.0
    )
    ledger_path.unlink()
    policy_file = federation.clients / f"{org}-policy.json"
    policy_file.write_text(org_policy.model_dump_json())
    state_dir = federation.clients / org / "state"

    def rebuild(audit_log: Path) -> Result:
        return CliRunner().invoke(
            app,
            [
                *("ledger", "rebuild", "--audit-log", str(audit_log), "--policy"),
                *(str(policy_file), "--key", str(federation.pki.org(org) / "identity.crt")),
                *("--state", str(state_dir)),
            ],
        )

    # An older copy of the audit log (cut before round 2's spend) verifies on its own,
    # but the state folder recorded round 2: refused before anything is written.
    lines = Path(org_policy.audit.log_path).read_bytes().splitlines(keepends=True)
    spends = [i for i, line in enumerate(lines) if b'"privacy_spend"' in line]
    older = federation.clients / f"{org}-older-audit.jsonl"
    older.write_bytes(b"".join(lines[: spends[1]]))
    refused = rebuild(older)
    assert refused.exit_code == 1, refused.output
    assert "holds 1 records, 2 were recorded" in refused.output
    assert not ledger_path.exists()

    result = rebuild(Path(org_policy.audit.log_path))
    assert result.exit_code == 0, result.output
    with _restart(federation, org) as client:
        client.connect()
        assert client.trainer is not None and client.trainer.ledger is not None
        assert client.trainer.ledger.records == before.records
        assert client.trainer.ledger.spent() == pytest.approx(before.spent(), rel=1e-12)
    PrivacyLedger.rebuild(
        ledger_path,
        before.records[:1],
        organization=org,
        accountant=before.accountant,
        delta=before.delta,
        epsilon_budget=before.epsilon_budget,
        force=True,
    )
    with pytest.raises(EvidenceError, match="rolled back"):
        _restart(federation, org)
    (state_dir / "evidence.json").unlink()  # Even without the record, the server's view.
    with _restart(federation, org) as client, pytest.raises(LedgerMissingError, match=r"\[2\]"):
        client.connect()
