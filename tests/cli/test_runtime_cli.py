"""`fedhft aggregator serve` and `fedhft client run`: errors named, and a real run from files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _serve_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *flags: str
) -> tuple[int, str, list[object]]:
    """Run `fedhft aggregator serve` with ``flags`` up to the server's start, which the
    test replaces by a recorder of the options it is given (then a refusal, to exit)."""
    import fedhft.aggregator
    from fedhft.aggregator.errors import AggregatorError

    seen: list[object] = []

    def recorder(*args: object, options: object, **kwargs: object) -> object:
        seen.append(options)
        raise AggregatorError("stopped by the test")

    monkeypatch.setattr(fedhft.aggregator, "serve", recorder)
    config = tmp_path / "consortium.yaml"
    config.write_text(dump_yaml(fast_consortium()))
    result = runner.invoke(
        app,
        [
            *("aggregator", "serve", "--config", str(config), "--tls", str(tmp_path)),
            *("--state", str(tmp_path / "state"), *flags),
        ],
    )
    return result.exit_code, result.output, seen


def test_serve_passes_the_call_quota_and_stream_idle_timeout_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--max-calls-per-organization` and `--stream-idle-timeout` reach `ServerOptions`;
    without them the server keeps its defaults (8 calls, 60 s)."""
    from fedhft.aggregator import ServerOptions

    code, output, seen = _serve_options(
        tmp_path,
        monkeypatch,
        "--max-calls-per-organization",
        "3",
        "--stream-idle-timeout",
        "7.5",
    )
    assert code == 1 and "stopped by the test" in output, output
    [options] = seen
    assert isinstance(options, ServerOptions)
    assert options.max_calls_per_organization == 3
    assert options.stream_idle_timeout_s == 7.5
    _, _, seen = _serve_options(tmp_path, monkeypatch)
    [options] = seen
    assert isinstance(options, ServerOptions)
    defaults = ServerOptions()
    assert options.max_calls_per_organization == defaults.max_calls_per_organization == 8
    assert options.stream_idle_timeout_s == defaults.stream_idle_timeout_s == 60.0


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-calls-per-organization", "0"),
        ("--max-calls-per-organization", "-2"),
        ("--max-calls-per-organization", "2.5"),
        ("--max-calls-per-organization", "many"),
        ("--stream-idle-timeout", "0"),
        ("--stream-idle-timeout", "-1"),
        ("--stream-idle-timeout", "nan"),
        ("--stream-idle-timeout", "inf"),
        ("--stream-idle-timeout", "soon"),
    ],
)
def test_serve_refuses_a_bad_limit_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str, value: str
) -> None:
    """A limit that is not a number, not positive or not finite is refused before the
    server starts, in one line naming the option, the allowed values and the value
    given."""
    code, output, seen = _serve_options(tmp_path, monkeypatch, flag, value)
    assert code == 1 and seen == []
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and flag in lines[0] and value in lines[0]
    assert "> 0" in lines[0]


def _client_run_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Path, *flags: str
) -> tuple[int, str, list[object]]:
    """Run `fedhft client run` on ``data`` with ``flags`` up to the loading of the
    training data; the datasets loaded are recorded, and the run stops there."""
    import fedhft.sdk
    from fedhft.sdk.errors import DataError

    loaded: list[object] = []
    load = fedhft.sdk.load_dataset_file

    def recording(*args: Any, **kwargs: Any) -> object:
        loaded.append(load(*args, **kwargs))
        raise DataError("stopped by the test")

    monkeypatch.setattr(fedhft.sdk, "load_dataset_file", recording)
    pki = provision(tmp_path / "pki", (CLI_ORG,))
    config = tmp_path / "consortium.yaml"
    config.write_text(dump_yaml(fast_consortium()))
    org_policy = tmp_path / "policy.yaml"
    org_policy.write_text(dump_yaml(policy(CLI_ORG, tmp_path)))
    result = runner.invoke(
        app,
        [
            *("client", "run", "--policy", str(org_policy), "--consortium", str(config)),
            *("--server", "127.0.0.1:1", "--tls", str(pki.org(CLI_ORG)), "--data", str(data)),
            *flags,
        ],
    )
    return result.exit_code, result.output, loaded


def _data_with_a_long_record(tmp_path: Path) -> Path:
    """A CSV whose third line is a 300-byte record among short ones."""
    data = tmp_path / "train.csv"
    _write_csv(data, ("short one", "x" * 300, "short two"), (0, 1, 0), ("0", "1"))
    return data


def test_client_run_refuses_a_record_over_max_record_bytes_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--max-record-bytes 200`: the 300-byte record is refused in one line naming the
    file and its line, and the run exits non-zero without loading anything."""
    data = _data_with_a_long_record(tmp_path)
    code, output, loaded = _client_run_data(
        tmp_path, monkeypatch, data, "--max-record-bytes", "200"
    )
    assert code == 1 and loaded == []
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "train.csv line 3" in lines[0] and "max_record_bytes=200" in lines[0]


@pytest.mark.parametrize("flags", [(), ("--max-record-bytes", "400")])
def test_client_run_loads_normal_files_with_the_default_record_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...]
) -> None:
    """Without `--max-record-bytes` (cap 1 MiB), or with a cap above the longest record,
    the same file loads whole."""
    data = _data_with_a_long_record(tmp_path)
    code, output, loaded = _client_run_data(tmp_path, monkeypatch, data, *flags)
    assert code == 1 and "stopped by the test" in output, output
    [dataset] = loaded
    assert len(dataset) == 3  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "-5", "1MiB", "1e6"])
def test_client_run_refuses_a_record_cap_that_is_not_positive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A record cap below 1 byte, or not a whole number, is refused in one line naming
    the option."""
    data = _data_with_a_long_record(tmp_path)
    code, output, loaded = _client_run_data(
        tmp_path, monkeypatch, data, "--max-record-bytes", value
    )
    assert code == 1 and loaded == []
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: `--max-record-bytes` must be a whole number > 0")
    assert repr(value) in lines[0]
