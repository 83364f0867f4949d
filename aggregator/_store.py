"""The aggregation server's durable state in one SQLite file.

Everything the server must not lose lives here: the consortium it serves, enrollment,
the cluster models after each completed round, the attempts of each round, stage
progress and the receipts it signed. A round's result is written in one transaction
together with the mark that the round is complete, so a crash leaves either the old model
and an open attempt (aborted and retried at restart) or the new model and a completed
round: never half of one (DESIGN §7).

Notes:
    Only masked vectors and secure sums are ever written: stage payloads are stored as
    the server received them, which for masked inputs is ``x + masks mod 2^k``. Nothing
    here is an individual organization's update.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StateError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enrollment (
    organization TEXT PRIMARY KEY,
    identity_certificate BLOB NOT NULL,
    sealing_certificate BLOB NOT NULL,
    enrolled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'completed', 'aborted')),
    started_at REAL NOT NULL,
    finished_at REAL,
    summary TEXT,
    PRIMARY KEY (round, attempt)
);
CREATE TABLE IF NOT EXISTS models (
    round INTEGER PRIMARY KEY,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS stage_progress (
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    cluster INTEGER NOT NULL,
    stage TEXT NOT NULL,
    organization TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    payload BLOB,
    received_at REAL NOT NULL,
    PRIMARY KEY (round, attempt, cluster, stage, organization)
);
CREATE TABLE IF NOT EXISTS sketches (
    organization TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    sketch TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    cluster INTEGER NOT NULL,
    organization TEXT NOT NULL,
    upload_sha256 TEXT NOT NULL,
    receipt BLOB NOT NULL,
    PRIMARY KEY (round, attempt, cluster, organization)
);
"""


@dataclass(frozen=True)
class EnrolledOrganization:
    """An organization's certificates as the server recorded them at enrollment."""

    organization: str
    identity_certificate: bytes
    sealing_certificate: bytes


class AggregatorStore:
    """The server's SQLite state (``state.sqlite`` under the `--state` folder)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / "state.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed round survives power loss, not only a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ identity

    def bind(self, *, consortium: str, config_hash: str, run_id: str) -> str:
        """Bind the state to one consortium config; returns the run id in force.

        A fresh state takes ``run_id``; an existing one keeps its own and refuses a
        different consortium or configuration, so a restart never mixes two runs.
        """
        with self._transaction() as db:
            rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("schema", str(SCHEMA_VERSION)),
                        ("consortium", consortium),
                        ("config_hash", config_hash),
                        ("run_id", run_id),
                    ],
                )
                return run_id
        if rows.get("schema") != str(SCHEMA_VERSION):
            raise StateError(f"{self.path}: state schema {rows.get('schema')} is not supported")
        if rows.get("consortium") != consortium or rows.get("config_hash") != config_hash:
            raise StateError(
                f"{self.path}: this state belongs to consortium {rows.get('consortium')!r} "
                "with another configuration; use a new --state folder for a new run"
            )
        return str(rows["run_id"])

    # ------------------------------------------------------------------ enrollment

    def enroll(self, organization: str, identity_cert: bytes, sealing_cert: bytes) -> bool:
        """Record an organization's certificates; returns whether they are new or changed."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT identity_certificate, sealing_certificate FROM enrollment "
                "WHERE organization = ?",
                (organization,),
            ).fetchone()
            if row is not None and (bytes(row[0]), bytes(row[1])) == (identity_cert, sealing_cert):
                return False
            db.execute(
                "INSERT OR REPLACE INTO enrollment VALUES (?, ?, ?, ?)",
                (organization, identity_cert, sealing_cert, time.time()),
            )
            return True

    def enrolled(self) -> dict[str, EnrolledOrganization]:
        """Every enrolled organization's certificates."""
        rows = self._db.execute(
            "SELECT organization, identity_certificate, sealing_certificate FROM enrollment"
        ).fetchall()
        return {r[0]: EnrolledOrganization(r[0], bytes(r[1]), bytes(r[2])) for r in rows}

    # ------------------------------------------------------------------ rounds

    def completed_rounds(self) -> int:
        """The highest completed round (0 before the first)."""
        row = self._db.execute(
            "SELECT MAX(round) FROM attempts WHERE status = 'completed'"
        ).fetchone()
        return int(row[0] or 0)

    def abort_open_attempts(self) -> list[tuple[int, int]]:
        """Mark every open attempt aborted (at startup); returns ``(round, attempt)`` pairs."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT round, attempt FROM attempts WHERE status = 'open'"
            ).fetchall()
            db.execute(
                "UPDATE attempts SET status = 'aborted', finished_at = ? WHERE status = 'open'",
                (time.time(),),
            )
        return [(int(r[0]), int(r[1])) for r in rows]

    def begin_attempt(self, round_number: int) -> int:
        """Open a new attempt of ``round_number``; returns its attempt number (from 1)."""
        with self._transaction() as db:
            done = db.execute(
                "SELECT 1 FROM attempts WHERE round = ? AND status = 'completed'",
                (round_number,),
            ).fetchone()
            if done is not None:
                raise StateError(f"round {round_number} is already completed")
            row = db.execute(
                "SELECT MAX(attempt) FROM attempts WHERE round = ?", (round_number,)
            ).fetchone()
            attempt = int(row[0] or 0) + 1
            db.execute(
                "INSERT INTO attempts VALUES (?, ?, 'open', ?, NULL, NULL)",
                (round_number, attempt, time.time()),
            )
        return attempt

    def abort_attempt(self, round_number: int, attempt: int, reason: str) -> None:
        """Close an attempt without applying anything."""
        self._db.execute(
            "UPDATE attempts SET status = 'aborted', finished_at = ?, summary = ? "
            "WHERE round = ? AND attempt = ? AND status = 'open'",
            (time.time(), json.dumps({"aborted": reason}), round_number, attempt),
        )

    def complete_attempt(
        self, round_number: int, attempt: int, model_state: bytes, summary: dict[str, Any]
    ) -> None:
        """Store the new model and mark the round completed, atomically."""
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE attempts SET status = 'completed', finished_at = ?, summary = ? "
                "WHERE round = ? AND attempt = ? AND status = 'open'",
                (time.time(), json.dumps(summary, sort_keys=True), round_number, attempt),
            ).rowcount
            if updated != 1:
                raise StateError(f"round {round_number} attempt {attempt} is not open")
            db.execute("INSERT INTO models VALUES (?, ?)", (round_number, model_state))

    def attempts(self) -> list[dict[str, Any]]:
        """Every attempt with its status and summary, oldest first."""
        rows = self._db.execute(
            "SELECT round, attempt, status, started_at, finished_at, summary FROM attempts "
            "ORDER BY round, attempt"
        ).fetchall()
        return [
            {
                "round": r[0],
                "attempt": r[1],
                "status": r[2],
                "started_at": r[3],
                "finished_at": r[4],
                "summary": json.loads(r[5]) if r[5] else None,
            }
            for r in rows
        ]

    def latest_model(self) -> tuple[int, bytes] | None:
        """The model after the latest completed round, if any round completed."""
        row = self._db.execute(
            "SELECT round, state FROM models ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def set_initial_model(self, model_state: bytes) -> None:
        """Store the model of round 0 (the starting point) if none is stored yet."""
        self._db.execute("INSERT OR IGNORE INTO models VALUES (0, ?)", (model_state,))

    # ------------------------------------------------------------------ FedAMoLE

    def save_assignment(self, assignment: Mapping[str, Sequence[int]]) -> None:
        """Keep the run's FedAMoLE expert assignment; it is fixed once made.

        Raises:
            StateError: another assignment was stored before.
        """
        encoded = json.dumps(
            {org: sorted(experts) for org, experts in assignment.items()}, sort_keys=True
        )
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'fedamole_assignment'").fetchone()
            if row is not None and row[0] != encoded:
                raise StateError(f"{self.path}: this run's FedAMoLE assignment was already made")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('fedamole_assignment', ?)", (encoded,))

    def assignment(self) -> dict[str, tuple[int, ...]] | None:
        """The stored FedAMoLE expert assignment, if it was made."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = 'fedamole_assignment'"
        ).fetchone()
        if row is None:
            return None
        return {org: tuple(int(e) for e in experts) for org, experts in json.loads(row[0]).items()}

    def last_summary(self) -> dict[str, Any] | None:
        """The summary of the latest completed round, if any."""
        row = self._db.execute(
            "SELECT summary FROM attempts WHERE status = 'completed' ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

    # ------------------------------------------------------------------ stages, receipts

    def save_sketch(self, organization: str, round_number: int, sketch: Sequence[float]) -> None:
        """Keep an organization's sketch (a DP release; the latest one counts)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sketches (organization, round, sketch) VALUES (?, ?, ?)",
                (organization, round_number, json.dumps([float(v) for v in sketch])),
            )

    def sketches(self) -> dict[str, tuple[float, ...]]:
        """Every organization's kept sketch."""
        rows = self._db.execute("SELECT organization, sketch FROM sketches").fetchall()
        return {org: tuple(float(v) for v in json.loads(text)) for org, text in rows}

    def record_stage(
        self,
        *,
        round_number: int,
        attempt: int,
        cluster: int,
        stage: str,
        organization: str,
        payload_sha256: str,
        payload: bytes | None,
    ) -> None:
        """Record that a stage message of an organization was accepted."""
        self._db.execute(
            "INSERT OR REPLACE INTO stage_progress VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                round_number,
                attempt,
                cluster,
                stage,
                organization,
                payload_sha256,
                payload,
                time.time(),
            ),
        )

    def stage_payloads(self) -> list[bytes]:
        """Every stored stage payload (for inspection and tests)."""
        rows = self._db.execute(
            "SELECT payload FROM stage_progress WHERE payload IS NOT NULL"
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def record_receipt(
        self,
        *,
        round_number: int,
        attempt: int,
        cluster: int,
        organization: str,
        upload_sha256: str,
        receipt: bytes,
    ) -> None:
        """Keep a receipt the server signed for an accepted upload."""
        self._db.execute(
            "INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?, ?)",
            (round_number, attempt, cluster, organization, upload_sha256, receipt),
        )

    def receipts(self, round_number: int) -> list[tuple[int, int, str, str]]:
        """``(attempt, cluster, organization, upload_sha256)`` of a round's receipts."""
        rows = self._db.execute(
            "SELECT attempt, cluster, organization, upload_sha256 FROM receipts "
            "WHERE round = ? ORDER BY attempt, cluster, organization",
            (round_number,),
        ).fetchall()
        return [(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]
