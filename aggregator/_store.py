"""The aggregation server's durable state in one SQLite file.

Everything the server must not lose lives here: the consortium it serves, enrollment,
the cluster models after each completed round, the attempts of each round, stage
progress and the receipts it signed. A round's result is written in one transaction
together with the mark that the round is complete, so a crash leaves either the old model
and an open attempt (aborted and retried at restart) or the new model and a completed
round: never half of one (ARCHITECTURE.md §7).

Notes:
    Only masked vectors and secure sums are ever written: stage payloads are stored as
    the server received them, which for masked inputs is ``x + masks mod 2^k``. Nothing
    here is an individual organization's update.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from fedhft.files import fsync_folder

from .errors import StateError

SCHEMA_VERSION = 1
STATE_FILE = "state.sqlite"
_META_KEYS = ("config_hash", "consortium", "run_id", "schema")
_SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE enrollment (
    organization TEXT PRIMARY KEY,
    identity_certificate BLOB NOT NULL,
    sealing_certificate BLOB NOT NULL,
    enrolled_at REAL NOT NULL
);
CREATE TABLE attempts (
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'completed', 'aborted')),
    started_at REAL NOT NULL,
    finished_at REAL,
    summary TEXT,
    PRIMARY KEY (round, attempt)
);
CREATE TABLE models (
    round INTEGER PRIMARY KEY,
    state BLOB NOT NULL
);
CREATE TABLE stage_progress (
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
CREATE TABLE sketches (
    organization TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    sketch TEXT NOT NULL
);
CREATE TABLE receipts (
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


def check_state(path: Path, db: sqlite3.Connection) -> None:
    """Refuse a state that is not a complete, intact run: raises `StateError`.

    Checked in order: the file is an SQLite database (`quick_check` passes), every
    table holds exactly the columns of this schema version, the run identity is
    recorded, the completed rounds are 1..n without a gap, and each has its model.

    Notes:
        A state that fails any check is refused rather than repaired or replaced: an
        empty database or a dropped table would otherwise become a new run or a run
        that looks finished, serving a model no round produced.
    """
    problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise _damaged(path, f"SQLite's integrity check reports {problems[0]!r:.200}")
    expected = _expected_columns()
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        raise StateError(
            f"{path} is an empty database: the server's state was lost. Restore the "
            "--state folder from backup to resume the run; to start a new run instead, "
            "use an empty --state folder with --new-run"
        )
    for table, columns in expected.items():
        found = tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
        if found != columns:
            what = "is missing" if not found else f"has columns {list(found)}"
            raise _damaged(path, f"table {table!r} {what}, expected columns {list(columns)}")
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    missing = [key for key in _META_KEYS if key not in meta]
    if missing:
        raise _damaged(path, f"the run identity lacks {missing}")
    if meta["schema"] != str(SCHEMA_VERSION):
        raise StateError(
            f"{path}: state schema {meta['schema']!r} is not supported by this fedhft, "
            f"which reads schema {SCHEMA_VERSION}; run the fedhft version that wrote it"
        )
    completed = [
        int(row[0])
        for row in db.execute(
            "SELECT DISTINCT round FROM attempts WHERE status = 'completed' ORDER BY round"
        )
    ]
    if completed != list(range(1, len(completed) + 1)):
        raise _damaged(path, f"the completed rounds {completed} are not 1..n")
    models = {int(row[0]) for row in db.execute("SELECT round FROM models")}
    lost = sorted(set(completed) - models)
    if lost:
        raise _damaged(path, f"rounds {lost} are marked completed but their models are missing")
    last = completed[-1] if completed else 0
    if max(models, default=0) != last:
        raise _damaged(
            path, f"a model of round {max(models)} is stored but round {last} is the last completed"
        )


def _connect(path: Path) -> sqlite3.Connection:
    """Open an existing state file, refusing one that is missing, empty or not SQLite."""
    if not path.is_file():
        raise StateError(
            f"no server state at {path}. To resume a run, restore its --state folder from "
            "backup; to start a new run, pass --new-run (`new_run=True`)"
        )
    with path.open("rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    if not header:
        raise StateError(
            f"{path} is empty (0 bytes): the server's state was lost or truncated. "
            "Restore the --state folder from backup; a new run needs an empty --state "
            "folder and --new-run"
        )
    if header != _SQLITE_HEADER:
        raise _damaged(path, "it is not an SQLite database (overwritten?)")
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _damaged(path: Path, detail: str) -> StateError:
    return StateError(
        f"{path} is damaged: {detail}. The server will not resume from it nor start a new "
        "run over it; restore the --state folder from backup"
    )


def _side_files(path: Path) -> tuple[Path, Path]:
    """SQLite's write-ahead log and shared-memory files next to ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


@functools.cache
def _expected_columns() -> dict[str, tuple[str, ...]]:
    """Every table of this schema version and its columns, from `_SCHEMA` itself."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            name: tuple(row[1] for row in db.execute(f"PRAGMA table_info({name})"))
            for name in names
        }
    finally:
        db.close()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialized(
    method: Callable[Concatenate[AggregatorStore, _P], _R],
) -> Callable[Concatenate[AggregatorStore, _P], _R]:
    """Run a store method under the store's own lock: the round thread and the gRPC
    workers share one SQLite connection, which must see one call (one transaction) at
    a time."""

    @functools.wraps(method)
    def serialized(self: AggregatorStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return serialized


class AggregatorStore:
    """The server's SQLite state (``state.sqlite`` under the `--state` folder).

    Open an existing state with ``AggregatorStore(folder)`` and start a new run's with
    `AggregatorStore.create`: a missing, empty, damaged or incomplete state is never
    taken for a new run (see `check_state`).

    Safe to share between threads: every method runs under the store's own lock.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / STATE_FILE
        self._lock = threading.RLock()
        self._db = _connect(self.path)
        try:
            check_state(self.path, self._db)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed round survives power loss, not only a process crash.
            self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise _damaged(self.path, str(error)) from error
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def create(
        cls, folder: str | Path, *, consortium: str, config_hash: str, run_id: str
    ) -> AggregatorStore:
        """Start a new run's state in ``folder``; refuses a folder that holds one.

        The database is built under a temporary name and renamed into place once its
        tables and its run identity are committed, so a crash leaves no state or a
        complete one, never an empty database that a later start could mistake for a
        new run.

        Raises:
            StateError: ``folder`` already holds a state (or its SQLite side files).
        """
        path = Path(folder) / STATE_FILE
        taken = [p for p in (path, *_side_files(path)) if p.exists()]
        if taken:
            raise StateError(
                f"{taken[0]} exists: this --state folder already holds a run. Start the "
                "server without --new-run to resume it, or choose an empty --state folder "
                "for a new run"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        building = path.with_name(f".{STATE_FILE}.new")
        for leftover in (building, *_side_files(building)):
            leftover.unlink(missing_ok=True)
        db = sqlite3.connect(building, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema", str(SCHEMA_VERSION)),
                    ("consortium", consortium),
                    ("config_hash", config_hash),
                    ("run_id", run_id),
                ],
            )
            db.execute("COMMIT")
        finally:
            db.close()
        os.replace(building, path)
        fsync_folder(path.parent)
        return cls(folder)

    @_serialized
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

    @_serialized
    def bind(self, *, consortium: str, config_hash: str) -> str:
        """The run id of this state, after checking it belongs to this consortium config.

        Raises:
            StateError: the state belongs to another consortium or configuration.
        """
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if rows["consortium"] != consortium or rows["config_hash"] != config_hash:
            raise StateError(
                f"{self.path}: this state belongs to consortium {rows['consortium']!r} "
                "with another configuration; use a new --state folder for a new run"
            )
        return str(rows["run_id"])

    # ------------------------------------------------------------------ enrollment

    @_serialized
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

    @_serialized
    def enrolled(self) -> dict[str, EnrolledOrganization]:
        """Every enrolled organization's certificates."""
        rows = self._db.execute(
            "SELECT organization, identity_certificate, sealing_certificate FROM enrollment"
        ).fetchall()
        return {r[0]: EnrolledOrganization(r[0], bytes(r[1]), bytes(r[2])) for r in rows}

    # ------------------------------------------------------------------ rounds

    @_serialized
    def completed_rounds(self) -> int:
        """The highest completed round (0 before the first)."""
        row = self._db.execute(
            "SELECT MAX(round) FROM attempts WHERE status = 'completed'"
        ).fetchone()
        return int(row[0] or 0)

    @_serialized
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

    @_serialized
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

    @_serialized
    def abort_attempt(self, round_number: int, attempt: int, reason: str) -> None:
        """Close an attempt without applying anything."""
        self._db.execute(
            "UPDATE attempts SET status = 'aborted', finished_at = ?, summary = ? "
            "WHERE round = ? AND attempt = ? AND status = 'open'",
            (time.time(), json.dumps({"aborted": reason}), round_number, attempt),
        )

    @_serialized
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

    @_serialized
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

    @_serialized
    def latest_model(self) -> tuple[int, bytes] | None:
        """The model after the latest completed round, if any round completed."""
        row = self._db.execute(
            "SELECT round, state FROM models ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    @_serialized
    def set_initial_model(self, model_state: bytes) -> None:
        """Store the model of round 0 (the starting point) if none is stored yet."""
        self._db.execute("INSERT OR IGNORE INTO models VALUES (0, ?)", (model_state,))

    # ------------------------------------------------------------------ FedAMoLE

    @_serialized
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

    @_serialized
    def assignment(self) -> dict[str, tuple[int, ...]] | None:
        """The stored FedAMoLE expert assignment, if it was made."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = 'fedamole_assignment'"
        ).fetchone()
        if row is None:
            return None
        return {org: tuple(int(e) for e in experts) for org, experts in json.loads(row[0]).items()}

    @_serialized
    def last_summary(self) -> dict[str, Any] | None:
        """The summary of the latest completed round, if any."""
        row = self._db.execute(
            "SELECT summary FROM attempts WHERE status = 'completed' ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

    # ------------------------------------------------------------------ stages, receipts

    @_serialized
    def save_sketch(self, organization: str, round_number: int, sketch: Sequence[float]) -> None:
        """Keep an organization's sketch (a DP release; the latest one counts)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sketches (organization, round, sketch) VALUES (?, ?, ?)",
                (organization, round_number, json.dumps([float(v) for v in sketch])),
            )

    @_serialized
    def sketches(self) -> dict[str, tuple[float, ...]]:
        """Every organization's kept sketch."""
        rows = self._db.execute("SELECT organization, sketch FROM sketches").fetchall()
        return {org: tuple(float(v) for v in json.loads(text)) for org, text in rows}

    @_serialized
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

    @_serialized
    def stage_payloads(self) -> list[bytes]:
        """Every stored stage payload (for inspection and tests)."""
        rows = self._db.execute(
            "SELECT payload FROM stage_progress WHERE payload IS NOT NULL"
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    @_serialized
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

    @_serialized
    def upload_rounds(self, organization: str, *, input_stages: Collection[str]) -> list[int]:
        """The rounds (ascending) in which an input of ``organization`` was accepted.

        Any attempt counts: a receipt was signed, or a stage in ``input_stages`` was
        recorded (a crash can fall between the two).
        """
        rows = self._db.execute(
            "SELECT round FROM receipts WHERE organization = ? UNION "
            "SELECT round FROM stage_progress WHERE organization = ? "
            "AND stage IN (SELECT value FROM json_each(?)) ORDER BY round",
            (organization, organization, json.dumps(sorted(input_stages))),
        ).fetchall()
        return [int(r[0]) for r in rows]

    @_serialized
    def receipts(self, round_number: int) -> list[tuple[int, int, str, str]]:
        """``(attempt, cluster, organization, upload_sha256)`` of a round's receipts."""
        rows = self._db.execute(
            "SELECT attempt, cluster, organization, upload_sha256 FROM receipts "
            "WHERE round = ? ORDER BY attempt, cluster, organization",
            (round_number,),
        ).fetchall()
        return [(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]
