"""`fedhft aggregator serve` and `fedhft client run`: errors named, and a real run from files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedhft.cli import app
from fedhft.policies import dump_yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aggregator"))
from runtime_helpers import (
    ORGS,
    fast_consortium,
    federation_data,
    policy,
    provision,
    running_server,
    start_federation,
)

runner = CliRunner()
CLI_ORG = "bank-b"


def test_serve_names_an_invalid_configuration(tmp_path: Path) -> None:
    """A consortium file that does not validate: exit code 1 and the field in the message."""
    config = tmp_path / "consortium.yaml"
    config.write_text("kind: consortium\nconsortium: x\nrounds: 0\n")
    result = runner.invoke(
        app,
        ["aggregator", "serve", "--config", str(config), "--tls", str(tmp_path), "--state", "s"],
    )
    assert result.exit_code == 1
    assert "rounds" in result.output


def test_client_run_names_missing_data(tmp_path: Path) -> None:
    """A data file that does not exist: exit code 1 and the path in the message."""
    pki = provision(tmp_path / "pki", (CLI_ORG,))
    config = tmp_path / "consortium.yaml"
    config.write_text(dump_yaml(fast_consortium()))
    org_policy = tmp_path / "policy.yaml"
    org_policy.write_text(dump_yaml(policy(CLI_ORG, tmp_path)))
    result = runner.invoke(
        app,
        [
            "client",
            "run",
            "--policy",
            str(org_policy),
            "--consortium",
            str(config),
            "--server",
            "127.0.0.1:1",
            "--tls",
            str(pki.org(CLI_ORG)),
            "--data",
            str(tmp_path / "missing.csv"),
        ],
    )
    assert result.exit_code == 1
    assert "missing.csv" in result.output and "does not exist" in result.output


def _write_csv(
    path: Path, texts: tuple[str, ...], labels: tuple[int, ...], names: tuple[str, ...]
) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for text, label in zip(texts, labels, strict=True):
            writer.writerow([text, names[label]])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_client_run_takes_part_from_files_and_writes_its_report(tmp_path: Path) -> None:
    """`fedhft client run` on CSV files joins both rounds and reports accuracy, ε and bytes."""
    config = fast_consortium()
    pki = provision(tmp_path / "pki")
    data = federation_data()
    clients = tmp_path / "clients"
    config_file = tmp_path / "consortium.yaml"
    config_file.write_text(dump_yaml(config))
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(dump_yaml(policy(CLI_ORG, clients)))
    own = data[CLI_ORG]
    names = own.train.label_names
    _write_csv(tmp_path / "train.csv", own.train.texts, own.train.labels, names)
    _write_csv(tmp_path / "test.csv", own.test.texts, own.test.labels, names)
    report = tmp_path / "report.json"
    with running_server(config, pki, tmp_path / "server") as server:
        others = start_federation(
            config,
            pki,
            server.address,
            clients,
            organizations=tuple(org for org in ORGS if org != CLI_ORG),
        )
        command = [
            sys.executable,
            "-c",
            "from fedhft.cli import main; main()",
            "client",
            "run",
            "--policy",
            str(policy_file),
            "--consortium",
            str(config_file),
            "--server",
            server.address,
            "--server-name",
            "localhost",
            "--tls",
            str(pki.org(CLI_ORG)),
            "--data",
            str(tmp_path / "train.csv"),
            "--test",
            str(tmp_path / "test.csv"),
            "--labels",
            ",".join(names),
            "--state",
            str(clients / CLI_ORG / "state"),
            "--report",
            str(report),
        ]
        done = subprocess.run(command, capture_output=True, timeout=300, check=False)
        others.join()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert others.errors == {}
    summary = json.loads(report.read_text())
    assert summary["organization"] == CLI_ORG and summary["tier"] == "edge"
    assert summary["rounds_joined"] == [1, 2] and summary["rounds_refused"] == []
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert 0.0 < summary["epsilon_spent"] <= summary["epsilon_budget"]
    assert summary["bytes_up"] > 0 and summary["bytes_down"] > 0
    assert "accuracy" in done.stdout.decode()
