"""The aggregation server's SQLite state: binding, enrollment, atomic round commits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedhft.aggregator._store import AggregatorStore
from fedhft.aggregator.errors import StateError


def test_state_refuses_another_configuration(tmp_path: Path) -> None:
    """A state folder keeps its run id and refuses a different consortium config."""
    store = AggregatorStore(tmp_path)
    assert store.bind(consortium="c", config_hash="h1", run_id="run-a") == "run-a"
    store.close()
    again = AggregatorStore(tmp_path)
    assert again.bind(consortium="c", config_hash="h1", run_id="run-b") == "run-a"
    with pytest.raises(StateError, match="new --state folder"):
        again.bind(consortium="c", config_hash="h2", run_id="run-c")


def test_enrollment_reports_changed_certificates(tmp_path: Path) -> None:
    """Enrolling the same certificates twice is a no-op; new ones replace and are reported."""
    store = AggregatorStore(tmp_path)
    assert store.enroll("org-a", b"id1", b"seal1") is True
    assert store.enroll("org-a", b"id1", b"seal1") is False
    assert store.enroll("org-a", b"id2", b"seal1") is True
    assert store.enrolled()["org-a"].identity_certificate == b"id2"


def test_round_completes_once(tmp_path: Path) -> None:
    """A completed round stores its model and cannot be opened or completed again."""
    store = AggregatorStore(tmp_path)
    store.set_initial_model(b"m0")
    attempt = store.begin_attempt(1)
    store.complete_attempt(1, attempt, b"m1", {"participants": 3})
    assert store.latest_model() == (1, b"m1")
    assert store.completed_rounds() == 1
    with pytest.raises(StateError, match="already completed"):
        store.begin_attempt(1)
    with pytest.raises(StateError, match="not open"):
        store.complete_attempt(1, attempt, b"m1-again", {})


def test_crash_mid_round_is_aborted_and_retried(tmp_path: Path) -> None:
    """An attempt left open by a killed process is aborted at restart, the model unchanged."""
    script = (
        "import os, sys\n"
        "from fedhft.aggregator._store import AggregatorStore\n"
        "s = AggregatorStore(sys.argv[1])\n"
        "s.set_initial_model(b'm0')\n"
        "s.begin_attempt(1)\n"
        "os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert done.returncode == 9
    store = AggregatorStore(tmp_path)
    assert store.abort_open_attempts() == [(1, 1)]
    assert store.latest_model() == (0, b"m0")
    assert store.completed_rounds() == 0
    assert store.begin_attempt(1) == 2
    statuses = [(a["round"], a["attempt"], a["status"]) for a in store.attempts()]
    assert statuses == [(1, 1, "aborted"), (1, 2, "open")]


def test_sketches_survive_a_restart_exactly(tmp_path: Path) -> None:
    """Kept sketches come back bit for bit after reopening; the latest one per
    organization counts."""
    store = AggregatorStore(tmp_path)
    store.save_sketch("org-a", 1, [0.1, -0.2, 1 / 3])
    store.save_sketch("org-b", 1, [1.0, 0.0, 0.0])
    store.save_sketch("org-b", 2, [0.0, 1.0, 0.0])
    store.close()
    again = AggregatorStore(tmp_path)
    assert again.sketches() == {"org-a": (0.1, -0.2, 1 / 3), "org-b": (0.0, 1.0, 0.0)}
