"""`fedhft audit verify` and `fedhft audit report`: exit codes and one line per finding."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_helpers import Federation, lines_of, rewrite_log, write_federation, write_lines
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedhft.cli import app
from fedhft.policies import OrganizationPolicy, dump_yaml

runner = CliRunner()


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def certs(tmp_path: Path, client_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey) -> Path:
    """A --certs folder with bare public keys (no CA)."""
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "st-mary-hospital.pem").write_bytes(_pem(client_key))
    (folder / "aggregator.pem").write_bytes(_pem(server_key))
    return folder


@pytest.fixture
def policy_file(tmp_path: Path, policy: OrganizationPolicy) -> Path:
    path = tmp_path / "st-mary-hospital.yaml"
    path.write_text(dump_yaml(policy), encoding="utf-8")
    return path


def test_verify_exits_zero_for_an_honest_log(
    federation: Federation, certs: Path, policy_file: Path
) -> None:
    """An honest log with its server log and policy: exit 0 and an `ok:` line with the
    head hash and ε against the budget."""
    result = runner.invoke(
        app,
        [
            "audit", "verify", str(federation.client_log),
            "--server-log", str(federation.server_log),
            "--policy", str(policy_file),
            "--certs", str(certs),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {federation.client_log}: 13 records")
    assert "of budget 4" in result.stdout and "head " in result.stdout


def test_verify_exits_one_with_a_line_per_finding(federation: Federation, certs: Path) -> None:
    """A tampered log: exit 1, each finding on its own line naming file, line and seq."""
    lines = lines_of(federation.client_log)
    lines[2] = lines[2].replace(b'"steps":20', b'"steps":2')
    write_lines(federation.client_log, lines)
    result = runner.invoke(
        app, ["audit", "verify", str(federation.client_log), "--certs", str(certs)]
    )
    assert result.exit_code == 1
    output = result.stdout.splitlines()
    assert f"{federation.client_log}:3: seq 3: error [signature]" in "\n".join(output)
    assert f"{federation.client_log}:4: seq 4: error [chain]" in "\n".join(output)
    assert output[-1].startswith("FAILED:")


def test_verify_json_output(federation: Federation, certs: Path) -> None:
    """`--json` prints the report as JSON."""
    result = runner.invoke(
        app, ["audit", "verify", str(federation.client_log), "--certs", str(certs), "--json"]
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["ok"] is True


def test_verify_expect_head(federation: Federation, certs: Path) -> None:
    """`--expect-head` fails when the noted head hash is no longer in the log."""
    result = runner.invoke(
        app,
        ["audit", "verify", str(federation.client_log), "--certs", str(certs),
         "--expect-head", "ab" * 32],
    )  # fmt: skip
    assert result.exit_code == 1 and "[head]" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--certs", "{empty}"], "no certificate or public key for `st-mary-hospital`"),
        ([], "give the organization's key"),
        (["--key", "{log}"], "neither a PEM/DER public key"),
        (["--certs", "{certs}", "--policy", "{log}"], "invalid policy"),
    ],
)
def test_verify_exits_two_for_unusable_inputs(
    tmp_path: Path, federation: Federation, certs: Path, arguments: list[str], message: str
) -> None:
    """Missing keys, a key file that is not a key, an invalid policy: exit 2 with why."""
    empty = tmp_path / "empty"
    empty.mkdir()
    filled = [a.format(empty=empty, log=federation.client_log, certs=certs) for a in arguments]
    result = runner.invoke(app, ["audit", "verify", str(federation.client_log), *filled])
    assert result.exit_code == 2
    assert message in result.stderr


def test_verify_missing_log_exits_two(tmp_path: Path, certs: Path) -> None:
    """A log path that does not exist is an input error."""
    result = runner.invoke(
        app, ["audit", "verify", str(tmp_path / "nope.jsonl"), "--certs", str(certs)]
    )
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_verify_with_a_consortium_ca(
    tmp_path: Path, client_key: Ed25519PrivateKey, policy: OrganizationPolicy
) -> None:
    """With real CA-issued credentials (`fedhft ca`), keys are taken from the identity
    certificates, checked against the CA at the records' times, and the log verifies."""
    from fedhft.protocol import init_ca, issue_organization, issue_server

    ca = init_ca("northern-health-finance", tmp_path / "ca")
    organization = issue_organization(ca, "st-mary-hospital", tmp_path / "org")
    server = issue_server(ca, "agg.example.org", tmp_path / "server")
    federation = write_federation(
        tmp_path,
        organization.identity_key,
        server.identity_key,
        policy,
        start=datetime.now(UTC),
        server_party="agg.example.org",
    )
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(tmp_path / "ca" / "ca.crt", certs / "ca.crt")
    shutil.copy(tmp_path / "org" / "identity.crt", certs / "st-mary-hospital.crt")
    shutil.copy(tmp_path / "server" / "identity.crt", certs / "agg.example.org.crt")
    result = runner.invoke(
        app,
        ["audit", "verify", str(federation.client_log),
         "--server-log", str(federation.server_log), "--certs", str(certs)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr
    server_only = runner.invoke(
        app, ["audit", "verify", str(federation.server_log), "--certs", str(certs)]
    )
    assert server_only.exit_code == 0, server_only.output
    assert "records of `agg.example.org`" in server_only.stdout


def test_report_writes_html_and_json(
    tmp_path: Path, federation: Federation, certs: Path, policy_file: Path
) -> None:
    """`fedhft audit report` writes report.html and report.json and exits 0 when the
    log verifies."""
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        ["audit", "report", str(federation.client_log), "--out", str(out),
         "--server-log", str(federation.server_log), "--policy", str(policy_file),
         "--certs", str(certs)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file()
    assert json.loads((out / "report.json").read_text())["verification"]["ok"] is True


@pytest.mark.slow
def test_console_script_exit_code(federation: Federation, certs: Path) -> None:
    """The installed entry point (run as a process) exits 1 for a tampered log."""
    lines = lines_of(federation.client_log)
    write_lines(federation.client_log, [lines[0], *lines[2:]])
    completed = subprocess.run(
        [sys.executable, "-c", "from fedhft.cli import main; main()",
         "audit", "verify", str(federation.client_log), "--certs", str(certs)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "[sequence]" in completed.stdout and "[chain]" in completed.stdout


def _quadruple_sigma_and_resign(path: Path, key: Ed25519PrivateKey) -> None:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()

    def edit(documents: list[dict[str, object]]) -> None:
        for document in documents:
            payload = document["payload"]
            assert isinstance(payload, dict)
            if document["event"] == "privacy_spend":
                payload["noise_multiplier"] *= 4
                for _ in range(payload["steps"]):
                    accountant.step(
                        noise_multiplier=payload["noise_multiplier"],
                        sample_rate=payload["sample_rate"],
                    )
                payload["epsilon_after"] = accountant.get_epsilon(delta=payload["delta"])

    rewrite_log(path, key, edit)


def test_verify_exits_one_for_sigma_rewritten_by_the_organization(
    federation: Federation,
    certs: Path,
    policy_file: Path,
    client_key: Ed25519PrivateKey,
) -> None:
    """σ × 4 in every spend, ε recomputed and the log re-signed with the organization's
    own key: exit 1 with --server-log and --policy, naming the bound history and σ."""
    _quadruple_sigma_and_resign(federation.client_log, client_key)
    result = runner.invoke(
        app,
        [
            "audit", "verify", str(federation.client_log),
            "--server-log", str(federation.server_log),
            "--policy", str(policy_file),
            "--certs", str(certs),
        ],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "[bound-history]" in result.output
    assert "[noise-multiplier]" in result.output


def test_verify_exits_one_for_a_dropped_last_record_with_the_server_log(
    federation: Federation, certs: Path
) -> None:
    """The last record cut off at a line boundary: exit 1 against the server's log."""
    write_lines(federation.client_log, lines_of(federation.client_log)[:-1])
    result = runner.invoke(
        app,
        [
            "audit", "verify", str(federation.client_log),
            "--server-log", str(federation.server_log),
            "--certs", str(certs),
        ],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "[receipt-missing]" in result.output
