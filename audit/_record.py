"""One audit record: its fields, canonical bytes, hash, Ed25519 signature and parsing.

A record is one line of JSON Lines (`audit/FORMAT.md` is the normative description):

    {"event":...,"party":...,"payload":{...},"prev":<hex>,"seq":<int>,"sig":<hex>,
     "time":<RFC 3339 UTC>,"v":1}

- `prev` is the SHA-256 of the previous record's canonical bytes *including* its `sig`
  (64 zeros for the first record), which chains every record to all earlier ones;
- `sig` is an Ed25519 signature (RFC 8032) by the party's identity key over
  ``SIGNING_CONTEXT || canonical(record without "sig")``.

Notes:
    The identity key also signs secure-aggregation key advertisements and the server's
    key signs receipts, so every signed message starts with a purpose-specific context
    string; a signature made for one purpose can never be replayed as another.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._canonical import JSONValue, canonical_json, sha256_hex
from .errors import AuditPayloadError

FORMAT_VERSION: Final = 1
GENESIS_PREV: Final = "0" * 64
SIGNING_CONTEXT: Final = b"fedhft/audit-record/v1\x00"
RECORD_FIELDS: Final = frozenset({"v", "seq", "time", "party", "event", "payload", "prev", "sig"})

_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")
_PARTY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,252}$")
_EVENT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits, e.g. `2025-03-01T09:30:00.000000Z`.

    A fixed width makes the text order equal the time order.
    """
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware; use datetime.now(UTC)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse a record time written by `format_time`; raise `ValueError` otherwise."""
    if _TIME.fullmatch(text) is None:
        raise ValueError(f"time must look like 2025-03-01T09:30:00.000000Z, got {text!r}")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> JSONValue:
    if isinstance(value, MappingProxyType | dict):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(item) for item in value]
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Record:
    """One signed audit record, as written to (or read from) a log line."""

    seq: int
    time: str
    party: str
    event: str
    payload: Any = field(repr=False)  # a read-only Mapping[str, JSONValue]
    prev: str
    sig: str
    v: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", _freeze(_thaw(self.payload)))

    def unsigned_fields(self) -> dict[str, JSONValue]:
        """The record as a JSON object without `sig` (what the signature covers)."""
        return {
            "event": self.event,
            "party": self.party,
            "payload": _thaw(self.payload),
            "prev": self.prev,
            "seq": self.seq,
            "time": self.time,
            "v": self.v,
        }

    def payload_dict(self) -> dict[str, JSONValue]:
        """A mutable copy of the payload."""
        thawed = _thaw(self.payload)
        assert isinstance(thawed, dict)
        return thawed

    def to_json_object(self) -> dict[str, JSONValue]:
        """The record as a JSON object including `sig`."""
        return {**self.unsigned_fields(), "sig": self.sig}

    def canonical_bytes(self) -> bytes:
        """RFC 8785 bytes of the whole record; a log line is these bytes plus a newline."""
        return canonical_json(self.to_json_object())

    def signing_message(self) -> bytes:
        """The exact bytes the Ed25519 signature covers."""
        return SIGNING_CONTEXT + canonical_json(self.unsigned_fields())

    def digest(self) -> str:
        """Hex SHA-256 of `canonical_bytes()`: the next record's `prev`."""
        return sha256_hex(self.canonical_bytes())

    def verify_signature(self, public_key: Ed25519PublicKey) -> None:
        """Raise `cryptography.exceptions.InvalidSignature` unless `sig` verifies."""
        if _HEX128.fullmatch(self.sig) is None:
            raise InvalidSignature("sig is not 128 lower-case hex digits")
        public_key.verify(bytes.fromhex(self.sig), self.signing_message())


def sign_record(
    *,
    signing_key: Ed25519PrivateKey,
    seq: int,
    time: str,
    party: str,
    event: str,
    payload: dict[str, JSONValue],
    prev: str,
) -> Record:
    """Build and sign a record; the payload must already have passed `check_payload`."""
    unsigned = Record(
        seq=seq, time=time, party=party, event=event, payload=payload, prev=prev, sig=""
    )
    signature = signing_key.sign(unsigned.signing_message())
    return Record(
        seq=seq,
        time=time,
        party=party,
        event=event,
        payload=payload,
        prev=prev,
        sig=signature.hex(),
    )


def parse_record(line: bytes) -> Record:
    """Parse one log line (without its newline) into a `Record`.

    Raises `ValueError` naming what is wrong: not UTF-8, not JSON, a missing or unknown
    field, a field of the wrong type or shape. It does not check the signature or chain.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 at byte {exc.start}") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(document, dict):
        raise ValueError("a record must be a JSON object")
    missing = sorted(RECORD_FIELDS - document.keys())
    unknown = sorted(document.keys() - RECORD_FIELDS)
    if missing or unknown:
        parts = [f"missing fields {missing}"] if missing else []
        parts += [f"unknown fields {unknown}"] if unknown else []
        raise ValueError("; ".join(parts))
    if document["v"] != FORMAT_VERSION or type(document["v"]) is not int:
        raise ValueError(f"format version `v` must be {FORMAT_VERSION}, got {document['v']!r}")
    seq = document["seq"]
    if type(seq) is not int or seq < 1:
        raise ValueError(f"`seq` must be an integer >= 1, got {seq!r}")
    checks = (
        ("time", _TIME, "an RFC 3339 UTC time with 6 fractional digits"),
        ("party", _PARTY, "an organization id or host name"),
        ("event", _EVENT, "an event name"),
        ("prev", _HEX64, "64 lower-case hex digits"),
        ("sig", _HEX128, "128 lower-case hex digits"),
    )
    for name, pattern, meaning in checks:
        value = document[name]
        if not isinstance(value, str) or pattern.fullmatch(value) is None:
            raise ValueError(f"`{name}` must be {meaning}, got {_short(value)}")
    if not isinstance(document["payload"], dict):
        raise ValueError("`payload` must be a JSON object")
    record = Record(
        seq=seq,
        time=document["time"],
        party=document["party"],
        event=document["event"],
        payload=document["payload"],
        prev=document["prev"],
        sig=document["sig"],
    )
    try:
        record.canonical_bytes()
    except AuditPayloadError as exc:
        raise ValueError(str(exc)) from None
    return record


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in audit records")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
