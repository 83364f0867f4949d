"""`fedhft simulate`: a real server and client processes on loopback, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_simulate_tiny_runs_and_its_audit_logs_verify(tmp_path: Path) -> None:
    """A tiny 3-organization simulation completes its rounds within budget; logs verify."""
    figures_path = tmp_path / "figures.json"
    workdir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedhft.cli",
            "simulate",
            "--model",
            "tiny",
            "--clients",
            "3",
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
    assert [a["status"] for a in figures["rounds"]] == ["completed", "completed"]
    organizations = figures["organizations"]
    assert len(organizations) == 3
    for row in organizations:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 < row["epsilon_spent"] <= row["epsilon_budget"] + 1e-9
        assert row["bytes_up_per_round"] > 0
        assert len(row["membership"]) == 2
    assert "mean personalized accuracy" in done.stdout
    org = organizations[0]["organization"]
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
    assert f"ok: {workdir / 'orgs' / org / 'audit.jsonl'}" in verify.stdout
