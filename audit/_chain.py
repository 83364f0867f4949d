"""Reading a log file and checking its hash chain, signatures, order and payloads.

Used both when a party resumes its own log (any error refuses the resume) and by the
auditor's `verify_log` (every problem becomes a finding). Every complete line is checked
on its own merits, and each link against the line before it, so one bad record yields
findings at that record and at the link after it, while the rest of the log is still
checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._canonical import sha256_hex
from ._events import EventType, prepare_payload
from ._findings import Check, Finding, Severity
from ._record import GENESIS_PREV, Record, parse_record, parse_time
from .errors import AuditPayloadError


@dataclass(frozen=True)
class TornTail:
    """Bytes after the last newline: an incomplete record."""

    offset: int
    length: int
    sha256: str
    after_line: int


@dataclass(frozen=True)
class LoggedRecord:
    """A parsed record and where it sits in the file."""

    record: Record
    line: int
    offset: int


@dataclass
class ChainResult:
    """Records that parsed, and findings about the file."""

    records: list[LoggedRecord] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    torn: TornTail | None = None
    party: str | None = None
    lines: int = 0

    @property
    def head(self) -> Record | None:
        """The last record that parsed."""
        return self.records[-1].record if self.records else None


def split_lines(data: bytes) -> tuple[list[tuple[int, bytes]], TornTail | None]:
    """Complete lines as (offset, bytes without newline), and the torn tail if any."""
    lines: list[tuple[int, bytes]] = []
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            break
        lines.append((offset, data[offset:end]))
        offset = end + 1
    torn = None
    if offset < len(data):
        tail = data[offset:]
        torn = TornTail(
            offset=offset, length=len(tail), sha256=sha256_hex(tail), after_line=len(lines)
        )
    return lines, torn


def check_chain(
    data: bytes,
    *,
    public_key: Ed25519PublicKey | None,
    source: str,
    expected_party: str | None = None,
) -> ChainResult:
    """Check every record of a log's bytes; `public_key=None` skips signatures."""
    result = ChainResult()
    lines, torn = split_lines(data)
    result.lines = len(lines)
    previous: LoggedRecord | None = None
    previous_digest = GENESIS_PREV
    party = expected_party

    def report(check: Check, message: str, line: int, seq: int | None = None) -> None:
        result.findings.append(Finding(source, check, message, line=line, seq=seq))

    for index, (offset, raw) in enumerate(lines):
        line = index + 1
        try:
            record = parse_record(raw)
        except ValueError as exc:
            report(Check.PARSE, f"line is not an audit record: {exc}", line)
            # A line that does not parse breaks the chain; the next record's `prev`
            # will not match and is reported there.
            previous_digest = sha256_hex(raw)
            continue
        seq = record.seq
        if record.canonical_bytes() != raw:
            report(
                Check.CANONICAL,
                "record is not in canonical encoding (RFC 8785); it was rewritten by "
                "something other than an audit-log writer",
                line,
                seq,
            )
        if public_key is not None:
            try:
                record.verify_signature(public_key)
            except InvalidSignature:
                report(
                    Check.SIGNATURE,
                    f"signature does not verify with the public key of `{record.party}`"
                    " (record altered, or signed by another key)",
                    line,
                    seq,
                )
        if party is None:
            party = record.party
        elif record.party != party:
            report(Check.PARTY, f"record names party `{record.party}`, log is `{party}`", line, seq)
        expected_seq = 1 if previous is None else previous.record.seq + 1
        if seq != expected_seq:
            if previous is None:
                detail = f"the first record has seq {seq}, expected 1 (records removed?)"
            elif seq > expected_seq:
                detail = (
                    f"seq {seq} follows seq {previous.record.seq}: "
                    f"{seq - expected_seq} record(s) missing"
                )
            else:
                detail = f"seq {seq} follows seq {previous.record.seq}: out of order or duplicated"
            report(Check.SEQUENCE, detail, line, seq)
        if record.prev != previous_digest:
            before = "the genesis value (64 zeros)" if index == 0 else f"line {line - 1}"
            report(
                Check.CHAIN,
                f"`prev` does not match the hash of {before}: a record was changed, "
                "removed, inserted or reordered",
                line,
                seq,
            )
        if previous is not None:
            try:
                went_back = parse_time(record.time) < parse_time(previous.record.time)
            except ValueError:
                went_back = False
            if went_back:
                report(
                    Check.TIME,
                    f"time {record.time} is earlier than {previous.record.time} "
                    f"(line {previous.line})",
                    line,
                    seq,
                )
        try:
            prepare_payload(record.event, record.payload_dict())
        except AuditPayloadError as exc:
            report(Check.PAYLOAD, f"{record.event}: {exc}", line, seq)
        if record.event == EventType.LOG_REPAIRED:
            result.findings.append(
                Finding(
                    source,
                    Check.REPAIRED,
                    "the writer truncated a torn record of "
                    f"{record.payload.get('truncated_bytes')} bytes here after a crash",
                    line=line,
                    seq=seq,
                    severity=Severity.NOTICE,
                )
            )
        logged = LoggedRecord(record=record, line=line, offset=offset)
        result.records.append(logged)
        previous = logged
        previous_digest = record.digest()
    if torn is not None:
        result.torn = torn
        result.findings.append(
            Finding(
                source,
                Check.TORN_TAIL,
                f"the log ends in an incomplete record of {torn.length} bytes at byte "
                f"{torn.offset} (a crash during a write, or truncation); the "
                f"{torn.after_line} complete line(s) before it were checked",
                line=torn.after_line + 1,
            )
        )
    result.party = party
    return result
