"""`fedhft simulate --method fedamole`: server and client processes on loopback, mTLS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_simulate_fedamole_runs_and_its_audit_logs_verify(tmp_path: Path) -> None:
    """A tiny 4-organization FedAMoLE run completes within budget; its audit logs verify."""
    figures_path = tmp_path / "figures.json"
    workdir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedhft.cli",
            "simulate",
            "--method",
            "fedamole",
            "--model",
            "tiny",
            "--clients",
            "4",
            "--rounds",
            "2",
            "--local-steps",
            "3",
            "--samples",
            "60",
            "--workdir",
            str(workdir),
            "--json",
            str(figures_path),
            "--timeout",
            "600",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert figures["method"] == "fedamole"
    assert [a["status"] for a in figures["rounds"]] == ["completed", "completed"]
    organizations = figures["organizations"]
    assert len(organizations) == 4
    for row in organizations:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 < row["epsilon_spent"] <= row["epsilon_budget"] + 1e-9
        assert row["bytes_up_per_round"] > 0
    # The released affinity and both DP-SGD rounds are in each organization's log, and an
    # auditor recomputes ε from them.
    org = organizations[0]["organization"]
    log = (workdir / "orgs" / org / "audit.jsonl").read_text().splitlines()
    mechanisms = [
        json.loads(line)["payload"]["mechanism"]
        for line in log
        if json.loads(line)["event"] == "privacy_spend"
    ]
    assert mechanisms == ["gaussian", "dp-sgd", "dp-sgd"]
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedhft.cli",
            "audit",
            "verify",
            str(workdir / "orgs" / org / "audit.jsonl"),
            "--server-log",
            str(workdir / "server" / "state" / "audit.jsonl"),
            "--policy",
            str(workdir / "orgs" / org / "policy.yaml"),
            "--certs",
            str(workdir / "pki"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
