"""The aggregation server's SQLite state: binding, enrollment, atomic round commits, and
the refusal of a missing, empty, damaged or incomplete state."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from state_damage import sql_damage, torn_page, truncate_half

from fedhft.aggregator._store import AggregatorStore
from fedhft.aggregator.errors import StateError


def _new(folder: Path, run_id: str = "run-a") -> AggregatorStore:
    return AggregatorStore.create(folder, consortium="c", config_hash="h1", run_id=run_id)


def test_state_refuses_another_configuration(tmp_path: Path) -> None:
    """A state folder keeps its run id and refuses a different consortium config."""
    store = _new(tmp_path)
    assert store.bind(consortium="c", config_hash="h1") == "run-a"
    store.close()
    again = AggregatorStore(tmp_path)
    assert again.bind(consortium="c", config_hash="h1") == "run-a"
    with pytest.raises(StateError, match="new --state folder"):
        again.bind(consortium="c", config_hash="h2")


def test_enrollment_reports_changed_certificates(tmp_path: Path) -> None:
    """Enrolling the same certificates twice is a no-op; new ones replace and are reported."""
    store = _new(tmp_path)
    assert store.enroll("org-a", b"id1", b"seal1") is True
    assert store.enroll("org-a", b"id1", b"seal1") is False
    assert store.enroll("org-a", b"id2", b"seal1") is True
    assert store.enrolled()["org-a"].identity_certificate == b"id2"


def test_round_completes_once(tmp_path: Path) -> None:
    """A completed round stores its model and cannot be opened or completed again."""
    store = _new(tmp_path)
    store.set_initial_model(b"m0")
    attempt = store.begin_attempt(1)
    store.complete_attempt(1, attempt, b"m1", {"participants": 3})
    assert store.latest_model() == (1, b"m1")
    assert store.completed_rounds() == 1
    with pytest.raises(StateError, match="already completed"):
        store.begin_attempt(1)
    with pytest.raises(StateError, match="not open"):
        store.complete_attempt(1, attempt, b"m1-again", {})


def test_upload_rounds_are_the_rounds_with_an_accepted_input_of_that_organization(
    tmp_path: Path,
) -> None:
    """Rounds with a receipt or a recorded input stage of the organization, in any
    attempt and across a restart; key stages, other organizations' inputs do not count."""
    store = _new(tmp_path)
    inputs = ("ckks_input", "masked_input")
    assert store.upload_rounds("org-a", input_stages=inputs) == []
    for round_number, attempt, stage, organization in (
        (1, 1, "advertise", "org-a"),  # Keys only: the round's attempt was aborted.
        (1, 2, "masked_input", "org-a"),
        (2, 1, "masked_input", "org-b"),
        (3, 1, "ckks_input", "org-a"),
    ):
        store.record_stage(
            round_number=round_number,
            attempt=attempt,
            cluster=0,
            stage=stage,
            organization=organization,
            payload_sha256="00" * 32,
            payload=None,
        )
    store.record_receipt(
        round_number=4,
        attempt=1,
        cluster=1,
        organization="org-a",
        upload_sha256="00" * 32,
        receipt=b"r",
    )
    store.close()
    again = AggregatorStore(tmp_path)
    assert again.upload_rounds("org-a", input_stages=inputs) == [1, 3, 4]
    assert again.upload_rounds("org-b", input_stages=inputs) == [2]
    assert again.upload_rounds("org-c", input_stages=inputs) == []


def test_crash_mid_round_is_aborted_and_retried(tmp_path: Path) -> None:
    """An attempt left open by a killed process is aborted at restart, the model unchanged."""
    script = (
        "import os, sys\n"
        "from fedhft.aggregator._store import AggregatorStore\n"
        "s = AggregatorStore.create(sys.argv[1], consortium='c', config_hash='h', run_id='r')\n"
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
    store = _new(tmp_path)
    store.save_sketch("org-a", 1, [0.1, -0.2, 1 / 3])
    store.save_sketch("org-b", 1, [1.0, 0.0, 0.0])
    store.save_sketch("org-b", 2, [0.0, 1.0, 0.0])
    store.close()
    again = AggregatorStore(tmp_path)
    assert again.sketches() == {"org-a": (0.1, -0.2, 1 / 3), "org-b": (0.0, 1.0, 0.0)}


def _three_rounds(folder: Path) -> None:
    """A closed state whose run completed rounds 1 to 3."""
    store = _new(folder)
    store.set_initial_model(b"m0")
    for round_number in (1, 2, 3):
        store.complete_attempt(round_number, store.begin_attempt(round_number), b"m", {})
    store.close()


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty file": (lambda path: path.write_bytes(b""), "is empty"),
    "garbage": (lambda path: path.write_bytes(b"\x13garbage" * 4096), "not an SQLite database"),
    "truncated": (truncate_half, "integrity check|malformed"),
    "torn page": (torn_page, "integrity check|malformed"),
    "models dropped": (sql_damage("DROP TABLE models"), "table 'models' is missing"),
    "column dropped": (
        sql_damage("ALTER TABLE receipts DROP COLUMN receipt"),
        "table 'receipts' has",
    ),
    "models deleted": (
        sql_damage("DELETE FROM models"),
        r"rounds \[1, 2, 3\] .* models are missing",
    ),
    "round 2 lost": (sql_damage("DELETE FROM attempts WHERE round = 2"), r"not 1\.\.n"),
    "run id lost": (sql_damage("DELETE FROM meta WHERE key = 'run_id'"), "run identity lacks"),
    "schema-less": (sql_damage("DROP TABLE meta"), "table 'meta' is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_state_is_refused_never_reset(tmp_path: Path, damage: str) -> None:
    """Each damage to a state with three completed rounds is a `StateError` naming the
    file and backup, at open and at create: never a new run or a silent restart."""
    _three_rounds(tmp_path)
    path = tmp_path / "state.sqlite"
    harm, message = DAMAGE[damage]
    harm(path)
    with pytest.raises(StateError, match=message) as refused:
        AggregatorStore(tmp_path)
    assert str(path) in str(refused.value)
    assert "backup" in str(refused.value)
    with pytest.raises(StateError, match="already holds a run"):
        _new(tmp_path, run_id="run-b")


def test_empty_database_is_not_a_new_run(tmp_path: Path) -> None:
    """An SQLite file without tables (state lost) is refused, not taken for a new run."""
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("DROP TABLE t")
    db.close()
    with pytest.raises(StateError, match="empty database"):
        AggregatorStore(tmp_path)


def test_missing_state_needs_an_explicit_new_run(tmp_path: Path) -> None:
    """Without a state file the store refuses to open; only `create` starts a run."""
    with pytest.raises(StateError, match="--new-run"):
        AggregatorStore(tmp_path / "state")
    assert not (tmp_path / "state" / "state.sqlite").exists()
    store = _new(tmp_path / "state")
    assert store.bind(consortium="c", config_hash="h1") == "run-a"
    assert store.completed_rounds() == 0


def test_intact_state_with_completed_rounds_resumes(tmp_path: Path) -> None:
    """The checks pass on an intact state, which resumes where it stopped."""
    _three_rounds(tmp_path)
    store = AggregatorStore(tmp_path)
    assert store.completed_rounds() == 3
    assert store.latest_model() == (3, b"m")
