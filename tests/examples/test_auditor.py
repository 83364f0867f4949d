"""The compliance officer's flow (examples/auditor/), on the logs of a tiny real run.

`fedhft simulate` runs three organizations for two rounds on loopback (tiny model, real
DP-SGD, secure aggregation, signed audit logs); the auditor's scripts collect one
organization's evidence and verify it. The promises: genuine logs verify (exit 0), a
copy with one record edited does not (exit 1, the edited line named), and the report's
HTML and JSON name the organization and its ε.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from example_helpers import EXAMPLES, run_script

AUDITOR = EXAMPLES / "auditor"
ORG = "clinical-00"


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workdir of a finished tiny three-organization, two-round run."""
    root = tmp_path_factory.mktemp("run") / "sim"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--model", "tiny", "--clients", "3", "--rounds", "2", "--local-steps", "2"]
    args += ["--samples", "60", "--workdir", str(root), "--timeout", "600"]
    subprocess.run(  # the server and clients are stopped by simulate, also on failure
        [sys.executable, "-m", "fedhft.cli", "simulate", *args],
        env=env,
        check=True,
        capture_output=True,
        timeout=700,
    )
    return root


def _collect(run: Path, case: Path, env: dict[str, str]) -> None:
    run_script(
        AUDITOR / "collect.sh",
        str(case),
        ORG,
        str(run / "orgs" / ORG / "audit.jsonl"),
        str(run / "orgs" / ORG / "policy.yaml"),
        str(run / "pki" / ORG / "identity.crt"),
        str(run / "server" / "state" / "audit.jsonl"),
        "localhost",
        str(run / "pki" / "server" / "identity.crt"),
        str(run / "pki" / "ca.crt"),
        env=env,
        cwd=case.parent,
    )


@pytest.mark.slow
def test_genuine_logs_verify_and_report(
    simulated_run: Path, tmp_path: Path, example_env: dict[str, str]
) -> None:
    case = tmp_path / "case"
    _collect(simulated_run, case, example_env)
    assert not list(case.rglob("*.key"))  # the auditor holds certificates only

    result = run_script(AUDITOR / "verify.sh", str(case), ORG, env=example_env, cwd=tmp_path)
    assert result.stdout.startswith(f"ok: {case}/{ORG}/audit.jsonl")

    document = json.loads((case / "reports" / ORG / "report.json").read_text())
    assert document["organization"] == ORG
    assert document["verification"]["ok"] is True
    epsilon = document["epsilon"]["logged"]
    # The auditor's ε is recomputed from the logged mechanisms, and within the budget.
    assert document["epsilon"]["recomputed"] == pytest.approx(epsilon, rel=1e-6)
    assert 0 < epsilon <= document["budget"]["epsilon"]
    html = (case / "reports" / ORG / "report.html").read_text()
    assert ORG in html
    assert f"{epsilon:.3f}" in html


@pytest.mark.slow
def test_one_edited_record_fails_verification(
    simulated_run: Path, tmp_path: Path, example_env: dict[str, str]
) -> None:
    case = tmp_path / "case"
    _collect(simulated_run, case, example_env)
    log = case / ORG / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    # Under-report the privacy spent in the last `privacy_spend` record, editing only
    # the number in place: what a party that wanted to look more private would do.
    index = max(i for i, line in enumerate(lines) if '"privacy_spend"' in line)
    logged = json.loads(lines[index])["payload"]["epsilon_after"]
    edited = re.sub(r'"epsilon_after":[^,}]+', f'"epsilon_after":{logged / 2!r}', lines[index])
    assert edited != lines[index]
    lines[index] = edited
    log.chmod(stat.S_IRUSR | stat.S_IWUSR)
    log.write_text("".join(lines))

    result = run_script(
        AUDITOR / "verify.sh", str(case), ORG, env=example_env, cwd=tmp_path, check=False
    )
    assert result.returncode == 1
    assert f"{log}:{index + 1}:" in result.stdout
    # One edit, caught four ways: the record's signature, the next record's chain link,
    # the recomputed ε, and the spend the server's receipts bind.
    for check in ("[signature]", "[chain]", "[epsilon-recomputed]", "[bound-history]"):
        assert check in result.stdout
    assert "the case folder changed since it was collected" in result.stderr
    document = json.loads((case / "reports" / ORG / "report.json").read_text())
    assert document["verification"]["ok"] is False


def test_collect_refuses_wrong_arguments(tmp_path: Path, example_env: dict[str, str]) -> None:
    result = run_script(
        AUDITOR / "collect.sh", str(tmp_path / "case"), env=example_env, cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    assert "collect.sh CASE ORG" in result.stderr
    assert not (tmp_path / "case").exists()
