"""The append-only, hash-chained, signed audit log a party writes (ARCHITECTURE.md §6).

`AuditLog.open` creates a log or resumes one after verifying every existing record with
the party's own key, so a party never extends a history it cannot vouch for. `append`
checks the payload, signs the record, writes it as one line and fsyncs before returning:
when `append` returns, the record survives a crash.

Notes:
    Durability. The file is opened with ``O_APPEND`` and each record is written as one
    line, then ``fsync``-ed; a newly created file also has its directory ``fsync``-ed so
    the name itself survives a crash. A crash mid-write can leave at most one incomplete
    last line (the "torn tail"). Resuming reports it with `TornTailError`; only an
    explicit ``repair=True`` truncates it, and the truncation is itself logged
    (`log_repaired`, with the size and SHA-256 of the bytes removed), so nothing is
    ever hidden.

    One writer. An exclusive ``flock`` is held while the log is open, so two processes
    cannot interleave records (POSIX only; elsewhere the caller must ensure it).

    Time. Record times never go backwards: if the system clock steps back, the record
    carries the previous record's time, so a clock adjustment is not mistaken for
    tampering by `verify_log`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._chain import check_chain
from ._events import EventType, prepare_payload
from ._findings import Check, Severity
from ._keys import key_fingerprint
from ._payloads import log_repaired_payload
from ._record import GENESIS_PREV, Record, format_time, sign_record
from .errors import AuditLogError, AuditPayloadError, TornTailError

try:  # pragma: no cover - the import succeeds on every POSIX system
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MAX_RECORD_BYTES: Final = 64 * 1024
"""Largest encoded record; audit payloads are hashes and parameters, never bulk data."""

Clock = Callable[[], datetime]

_PARTY = re.compile(r"[a-z0-9][a-z0-9._-]{0,252}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """An open audit log of one party; satisfies the SDK's `AuditSink` protocol.

    Use `AuditLog.open(...)`, ideally as a context manager::

        with AuditLog.open("audit.jsonl", party_id="st-mary", signing_key=key) as log:
            log.append(EventType.ROUND_JOINED, round_joined_payload(3, clusters=[0]))
    """

    def __init__(
        self,
        *,
        path: Path,
        fd: int,
        party_id: str,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        last_seq: int,
        head_sha256: str,
        last_time: str | None,
    ) -> None:
        # Private: `open` has verified the file before anyone can append.
        self._path = path
        self._fd: int | None = fd
        self._party_id = party_id
        self._signing_key = signing_key
        self._clock = clock
        self._last_seq = last_seq
        self._head = head_sha256
        self._last_time = last_time
        self._lock = threading.Lock()
        self._broken = False
        self._round_spends: dict[int, str] = {}

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        party_id: str,
        signing_key: Ed25519PrivateKey,
        repair: bool = False,
        clock: Clock | None = None,
    ) -> AuditLog:
        """Create the log at ``path``, or resume it after verifying every record.

        Raises `AuditLogError` when an existing record does not verify with
        ``signing_key``'s public key or belongs to another party, and `TornTailError`
        when the log ends in an incomplete record and ``repair`` is false. With
        ``repair=True`` the torn bytes are truncated and a `log_repaired` record
        (size, offset and SHA-256 of the bytes removed) is appended.
        """
        log_path = Path(path)
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError("signing_key must be an Ed25519PrivateKey (the identity key)")
        _check_party(party_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        existed = log_path.exists()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(log_path, flags, 0o600)
        try:
            _lock_exclusively(fd, log_path)
            if not existed:
                _fsync_directory(log_path.parent)
            data = _read_all(fd)
            public_key = signing_key.public_key()
            chain = check_chain(
                data, public_key=public_key, source=str(log_path), expected_party=party_id
            )
            errors = [
                finding
                for finding in chain.findings
                if finding.severity is Severity.ERROR and finding.check is not Check.TORN_TAIL
            ]
            if errors:
                shown = "\n".join(finding.line_text() for finding in errors[:10])
                more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
                raise AuditLogError(
                    f"refusing to append to {log_path}: its existing records do not verify "
                    f"with the key {key_fingerprint(public_key)[:16]}... of `{party_id}`; "
                    f"run `fedhft audit verify` and keep the file as evidence:\n{shown}{more}"
                )
            torn = chain.torn
            if torn is not None and not repair:
                raise TornTailError(
                    f"{log_path} ends in an incomplete record of {torn.length} bytes at byte "
                    f"{torn.offset}, after line {torn.after_line} (a crash during a write); "
                    "open it with repair=True to truncate the torn bytes and record a "
                    "`log_repaired` event"
                )
            head = chain.head
            log = cls(
                path=log_path,
                fd=fd,
                party_id=party_id,
                signing_key=signing_key,
                clock=clock or _utc_now,
                last_seq=head.seq if head else 0,
                head_sha256=head.digest() if head else GENESIS_PREV,
                last_time=head.time if head else None,
            )
        except BaseException:
            os.close(fd)
            raise
        for entry in chain.records:
            log._note(entry.record)
        if torn is not None:
            os.ftruncate(fd, torn.offset)
            os.fsync(fd)
            log.append(
                EventType.LOG_REPAIRED,
                log_repaired_payload(
                    truncated_bytes=torn.length,
                    truncated_sha256=torn.sha256,
                    offset=torn.offset,
                ),
            )
        return log

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def party_id(self) -> str:
        """The party whose identity key signs every record."""
        return self._party_id

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record (0 for an empty log)."""
        return self._last_seq

    @property
    def head_sha256(self) -> str:
        """Hash of the last record: an auditor who notes it can later detect truncation."""
        return self._head

    def append(self, event_type: str, payload: Mapping[str, object]) -> Record:
        """Sign and durably write one record; return it once it is on disk.

        Raises `SecretPayloadError` for a field named like a secret or a tensor-like
        array, `AuditPayloadError` for a payload that is not JSON or misses a required
        field of a known event type, and `AuditLogError` after the log was closed or a
        write failed.
        """
        plain = prepare_payload(event_type, payload)
        with self._lock:
            if self._fd is None:
                raise AuditLogError(f"{self._path} is closed; open it again to append")
            if self._broken:
                raise AuditLogError(
                    f"an earlier write to {self._path} failed; reopen it (with repair=True "
                    "if it reports a torn tail) before appending"
                )
            now = format_time(self._clock())
            if self._last_time is not None and now < self._last_time:
                now = self._last_time
            record = sign_record(
                signing_key=self._signing_key,
                seq=self._last_seq + 1,
                time=now,
                party=self._party_id,
                event=str(event_type),
                payload=plain,
                prev=self._head,
            )
            line = record.canonical_bytes() + b"\n"
            if len(line) > MAX_RECORD_BYTES:
                raise AuditPayloadError(
                    f"the {event_type} record would take {len(line)} bytes; at most "
                    f"{MAX_RECORD_BYTES} are allowed (log hashes, not content)"
                )
            try:
                _write_all(self._fd, line)
                os.fsync(self._fd)
            except OSError:
                self._broken = True
                raise
            self._last_seq = record.seq
            self._head = record.digest()
            self._last_time = record.time
            self._note(record)
            return record

    def spend_sha256(self, round_number: int) -> str | None:
        """Hash of the last DP-SGD `privacy_spend` record of ``round_number``, if any.

        An upload of that round is post-processing of that spend; the client sends this
        hash with the upload so the server's receipt binds it (FORMAT.md §5, Receipts).
        """
        with self._lock:
            return self._round_spends.get(round_number)

    def _note(self, record: Record) -> None:
        payload = record.payload
        if (
            record.event == EventType.PRIVACY_SPEND
            and payload.get("mechanism") == "dp-sgd"
            and type(payload.get("round")) is int
        ):
            self._round_spends[int(payload["round"])] = record.digest()

    def close(self) -> None:
        """Release the lock and close the file; appending afterwards raises."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"seq {self._last_seq}"
        return f"AuditLog({str(self._path)!r}, party={self._party_id!r}, {state})"


def _check_party(party_id: str) -> None:
    if not isinstance(party_id, str) or not _PARTY.fullmatch(party_id):
        raise ValueError(
            "party_id must be an organization id or the server's host name "
            f"([a-z0-9][a-z0-9._-]*, at most 253 characters), got {party_id!r}"
        )


def _lock_exclusively(fd: int, path: Path) -> None:
    if fcntl is None:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AuditLogError(
            f"{path} is open for writing in another process or AuditLog; a log has one writer"
        ) from None


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
