"""What an organization's state folder remembers about its run and its evidence.

Two small records in ``state_dir``, each written atomically (`fedhft.files`):

- ``server-run.json``: the run id of the server's state, taken at the first `Hello`.
  A server that later answers with another run id, or holds fewer completed rounds
  than this organization saw completed, lost or replaced its state; the client stops
  with `RunMismatchError` instead of waiting for rounds that will never come.
- ``evidence.json``: which privacy ledger and audit log this organization used, and
  how far each reached when it last recorded them (the number of ledger records and
  the SHA-256 of those records; the audit log's last sequence number and the SHA-256
  of that line, which is its record hash, see ``audit/FORMAT.md``). At start both
  files must be writable, must be the same files, and must still begin with what was
  recorded: a rolled-back or swapped ledger or audit log is refused with
  `EvidenceError`. Growth since the record (a crash after more rounds) is accepted.

Notes:
    These checks detect accidents and restores from the wrong backup, not an
    adversary who controls the organization's disk: such an adversary can edit
    ``evidence.json`` too. The audit log's signatures and the ledger's digest remain
    the integrity checks of the files' content.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhft.accounting import MechanismRecord
from fedhft.files import atomic_write

from .errors import EvidenceError, RunMismatchError

SERVER_RUN_FILE = "server-run.json"
EVIDENCE_FILE = "evidence.json"


@dataclass(frozen=True)
class Evidence:
    """The ledger and audit log an organization uses (``None``: it keeps none)."""

    ledger_path: Path | None
    audit_path: Path | None


def check_evidence(state_dir: Path, evidence: Evidence) -> None:
    """At start: the ledger and audit log are writable and the ones recorded last time.

    Raises:
        EvidenceError: a file cannot be written, or is not (or no longer begins with)
            the ledger or audit log this state folder recorded.
    """
    files = (("privacy ledger", evidence.ledger_path), ("audit log", evidence.audit_path))
    for what, path in files:
        if path is not None:
            _check_writable(path, what)
    recorded = _read_json(state_dir / EVIDENCE_FILE)
    if recorded is None:
        return
    record_file = state_dir / EVIDENCE_FILE
    for what, key, path in (
        ("privacy ledger", "ledger", evidence.ledger_path),
        ("audit log", "audit", evidence.audit_path),
    ):
        entry = recorded.get(key)
        if entry is None:
            continue
        before = Path(entry["path"])
        if path is None or path.resolve() != before:
            raise EvidenceError(
                f"this organization's state ({state_dir}) used the {what} {before} last "
                f"time, now {path}: point the policy at {before}, or, if the file was moved "
                f"on purpose, delete {record_file} to accept the current files"
            )
        problem = (_ledger_problem if key == "ledger" else _audit_problem)(path, entry)
        if problem:
            raise EvidenceError(
                f"the {what} {path} is not the one this organization's state ({state_dir}) "
                f"recorded: {problem}. It was rolled back or replaced; restore the latest "
                f"copy from backup (a rolled-back privacy ledger forgets spent privacy)"
            )


def check_rebuilt_ledger(
    state_dir: Path, ledger_path: Path, records: Sequence[MechanismRecord]
) -> None:
    """Before a rebuilt ledger is written: it holds every release ``state_dir`` recorded.

    A rebuild from the complete audit log reproduces the lost ledger's records exactly
    (one per `privacy_spend`, in order), so it passes `check_evidence` unchanged. A
    rebuild from an older or cut audit log would hold fewer releases than the ledger
    had; it is refused here, before writing, rather than at the client's next start.

    Notes:
        The evidence record is checked, never rewritten to fit the rebuilt ledger:
        re-recording would accept exactly the rolled-back spend the record exists to
        catch, since a log cut at a record boundary still verifies on its own.

    Raises:
        EvidenceError: the state folder used another ledger file, or recorded releases
            the rebuilt records do not begin with.
    """
    recorded = _read_json(state_dir / EVIDENCE_FILE)
    entry = None if recorded is None else recorded.get("ledger")
    if entry is None:
        return
    before = Path(entry["path"])
    if ledger_path.resolve() != before:
        raise EvidenceError(
            f"this organization's state ({state_dir}) used the privacy ledger {before}, not "
            f"{ledger_path}: rebuild it to {before} (`--out`), or use that policy"
        )
    problem = _records_problem([record.model_dump(mode="json") for record in records], entry)
    if problem:
        raise EvidenceError(
            f"the ledger rebuilt from the audit log does not hold the releases this "
            f"organization's state ({state_dir}) recorded: {problem}. The audit log is older "
            "than the lost ledger (restored from an older backup, or cut); rebuild from the "
            "latest copy of the audit log. If none holds them, that spend cannot be "
            "reconstructed: treat this organization's privacy budget as spent"
        )


def record_evidence(state_dir: Path, evidence: Evidence) -> None:
    """Record how far the ledger and audit log reach now (at start and at stop)."""
    content: dict[str, Any] = {}
    if evidence.ledger_path is not None and evidence.ledger_path.is_file():
        records = _ledger_records(evidence.ledger_path)
        if records is not None:
            content["ledger"] = {
                "path": str(evidence.ledger_path.resolve()),
                "records": len(records),
                "records_sha256": _records_digest(records),
            }
    if evidence.audit_path is not None and evidence.audit_path.is_file():
        lines = _audit_lines(evidence.audit_path)
        content["audit"] = {
            "path": str(evidence.audit_path.resolve()),
            "last_seq": len(lines),
            "head_sha256": hashlib.sha256(lines[-1]).hexdigest() if lines else "",
        }
    atomic_write(state_dir / EVIDENCE_FILE, json.dumps(content, sort_keys=True).encode())


def check_server_run(
    state_dir: Path,
    *,
    server: str,
    run_id: str,
    server_completed: int | None,
    client_completed: int,
) -> None:
    """The server's run is this organization's, and holds every round it saw completed.

    The first run id seen is recorded in ``state_dir``. ``server_completed`` is the
    number of rounds the server's state holds as completed (``None`` when unknown).

    Raises:
        RunMismatchError: another run id than the recorded one, or fewer completed rounds
            than this organization saw completed.
    """
    path = state_dir / SERVER_RUN_FILE
    recorded = _read_json(path)
    known = None if recorded is None else str(recorded["run_id"])
    if known is not None and known != run_id:
        raise RunMismatchError(
            f"the server at {server} runs run {run_id!r}, but this organization's state "
            f"({state_dir}) belongs to run {known!r}: the server's state was reset or "
            "restored from another run. Ask the operator to restore the server's --state "
            "folder of this run; for a new run, use a new client state folder"
        )
    if server_completed is not None and server_completed < client_completed:
        raise RunMismatchError(
            f"the server at {server} (run {run_id!r}) holds {server_completed} completed "
            f"rounds, but this organization saw round {client_completed} completed: the "
            "server's state was rolled back (restored from an older backup). Ask the "
            "operator to restore its latest --state folder; waiting would never end"
        )
    if known is None:
        atomic_write(path, json.dumps({"run_id": run_id, "server": server}).encode())


def _check_writable(path: Path, what: str) -> None:
    """Ask the OS: can ``path`` be replaced (ledger) or appended to (audit log)?"""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as error:
        raise EvidenceError(
            f"the {what} {path} cannot be written ({error.strerror or error}): its folder "
            "must be a writable folder and the file a writable file; fix the path in the "
            "policy (`privacy.ledger_path`, `audit.log_path`) or the permissions"
        ) from error


def _ledger_problem(path: Path, entry: dict[str, Any]) -> str:
    records = _ledger_records(path)
    if records is None:
        return ""  # Missing or unreadable: `PrivacyLedger.open` reports it precisely.
    return _records_problem(records, entry)


def _records_problem(records: list[Any], entry: dict[str, Any]) -> str:
    if len(records) < int(entry["records"]):
        return f"it holds {len(records)} records, {entry['records']} were recorded"
    if _records_digest(records[: int(entry["records"])]) != entry["records_sha256"]:
        return f"its first {entry['records']} records differ from those recorded"
    return ""


def _audit_problem(path: Path, entry: dict[str, Any]) -> str:
    if not path.is_file():
        return "it is missing"
    lines = _audit_lines(path)
    last = int(entry["last_seq"])
    if len(lines) < last:
        return f"it ends at record {len(lines)}, record {last} was recorded"
    if last and hashlib.sha256(lines[last - 1]).hexdigest() != entry["head_sha256"]:
        return f"its record {last} differs from the one recorded"
    return ""


def _ledger_records(path: Path) -> list[Any] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    records = document.get("records") if isinstance(document, dict) else None
    return records if isinstance(records, list) else None


def _records_digest(records: list[Any]) -> str:
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _audit_lines(path: Path) -> list[bytes]:
    """The complete lines of an audit log (a torn last line is not a record)."""
    data = path.read_bytes()
    return data.split(b"\n")[:-1] if data else []


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_bytes())
    except ValueError as error:
        raise EvidenceError(
            f"{path} is not valid JSON ({error}); restore the state folder from backup"
        ) from error
    if not isinstance(document, dict):
        raise EvidenceError(f"{path} must hold a JSON object; restore it from backup")
    return document
