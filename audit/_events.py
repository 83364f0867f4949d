"""Event types of the audit log, the fields each payload must carry, and payload hygiene.

Audit logs leave the organization (auditors, the consortium operator), so a payload may
only describe *what happened* — hashes, mechanism parameters, round numbers, reasons —
never carry raw records, gradients, keys or shares (ARCHITECTURE.md §6). Two guards enforce it
before anything is signed:

- field names that look like secrets (`key`, `share`, `secret`, `gradient`, `private`,
  ...; names containing `fingerprint` are allowed, since a fingerprint is a hash of a
  public key) are refused;
- values must be plain JSON of modest size, and a long array of numbers — which is what
  a leaked tensor looks like — is refused.

Known event types also have required fields with simple type rules, so a wiring mistake
in the trainer or the server fails at the call site instead of producing a log that an
auditor later rejects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Final

from ._canonical import MAX_SAFE_INTEGER, JSONValue, is_json_sequence, normalize
from .errors import AuditPayloadError, SecretPayloadError


class EventType(StrEnum):
    """Event types fedhft writes; `str` values, so plain strings compare equal."""

    POLICY_LOADED = "policy_loaded"
    ROUND_JOINED = "round_joined"
    PRIVACY_SPEND = "privacy_spend"
    UPDATE_COMMITTED = "update_committed"
    AGGREGATION_RECEIPT = "aggregation_receipt"
    REFUSAL = "refusal"
    KEY_EVENT = "key_event"
    LOG_REPAIRED = "log_repaired"
    # The aggregation server's own log.
    UPLOAD_ACCEPTED = "upload_accepted"
    ROUND_AGGREGATED = "round_aggregated"
    SUM_REJECTED = "sum_rejected"


MECHANISMS: Final = frozenset({"dp-sgd", "gaussian"})
ACCOUNTANTS: Final = frozenset({"rdp", "prv", "gdp"})
NOISE_SOURCES: Final = frozenset({"secure", "pseudo"})

MAX_STRING_CHARS: Final = 2048
MAX_ARRAY_ITEMS: Final = 256
MAX_NUMERIC_ARRAY_ITEMS: Final = 64
MAX_DEPTH: Final = 6

_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")
_IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# Substrings of a field name (lower-cased, separators removed) that mark it as secret.
_SECRET_MARKERS: Final = (
    "key",
    "share",
    "secret",
    "gradient",
    "private",
    "password",
    "passphrase",
    "seed",
    "nonce",
    "plaintext",
    "rawdata",
    "rawrecord",
)
_ALLOWED_MARKERS: Final = ("fingerprint",)

FieldCheck = Callable[[object], bool]


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_round(value: object) -> bool:
    return type(value) is int and value >= 0


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _is_positive(value: object) -> bool:
    return type(value) in (int, float) and value > 0  # type: ignore[operator]


def _is_positive_or_null(value: object) -> bool:
    return value is None or _is_positive(value)


def _is_non_negative(value: object) -> bool:
    return type(value) in (int, float) and value >= 0  # type: ignore[operator]


def _is_rate(value: object) -> bool:
    return type(value) in (int, float) and 0 < value <= 1  # type: ignore[operator]


def _is_delta(value: object) -> bool:
    return type(value) in (int, float) and 0 < value < 1  # type: ignore[operator]


def _is_steps(value: object) -> bool:
    return type(value) is int and value >= 1


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _is_hex128(value: object) -> bool:
    return isinstance(value, str) and _HEX128.fullmatch(value) is not None


def _is_identifier(value: object) -> bool:
    return isinstance(value, str) and _IDENTIFIER.fullmatch(value) is not None


def _is_text(value: object) -> bool:
    return isinstance(value, str) and len(value) > 0


def _one_of(options: frozenset[str]) -> FieldCheck:
    return lambda value: isinstance(value, str) and value in options


def _is_cluster_list(value: object) -> bool:
    return (
        is_json_sequence(value)
        and len(value) > 0  # type: ignore[arg-type]
        and all(_is_round(item) for item in value)  # type: ignore[attr-defined]
    )


# What each rule means, for error messages.
_RULES: dict[FieldCheck, str] = {
    _is_int: "an integer",
    _is_round: "an integer >= 0",
    _is_number: "a number",
    _is_positive: "a number > 0",
    _is_non_negative: "a number >= 0",
    _is_positive_or_null: "a number > 0 (or null for a Gaussian release)",
    _is_rate: "a number in (0, 1]",
    _is_delta: "a number in (0, 1)",
    _is_steps: "an integer >= 1",
    _is_hex64: "64 lower-case hex digits (a SHA-256)",
    _is_hex128: "128 lower-case hex digits (an Ed25519 signature)",
    _is_identifier: "an identifier ([a-z0-9][a-z0-9_-]*)",
    _is_text: "a non-empty string",
    _is_cluster_list: "a non-empty list of integers >= 0",
}

_MECHANISM = _one_of(MECHANISMS)
_ACCOUNTANT = _one_of(ACCOUNTANTS)
_NOISE_SOURCE = _one_of(NOISE_SOURCES)
_RULES[_MECHANISM] = f"one of {sorted(MECHANISMS)}"
_RULES[_ACCOUNTANT] = f"one of {sorted(ACCOUNTANTS)}"
_RULES[_NOISE_SOURCE] = f"one of {sorted(NOISE_SOURCES)}"

REQUIRED_FIELDS: Final[dict[str, dict[str, FieldCheck]]] = {
    EventType.POLICY_LOADED: {
        "policy_sha256": _is_hex64,
        "organization": _is_identifier,
        "consortium": _is_identifier,
    },
    EventType.ROUND_JOINED: {"round": _is_round, "clusters": _is_cluster_list},
    EventType.PRIVACY_SPEND: {
        "round": _is_round,
        "mechanism": _MECHANISM,
        "accountant": _ACCOUNTANT,
        "noise_multiplier": _is_positive,
        "sample_rate": _is_rate,
        "steps": _is_steps,
        "max_grad_norm": _is_positive_or_null,
        "epsilon_after": _is_non_negative,
        "delta": _is_delta,
        "noise_source": _NOISE_SOURCE,
    },
    EventType.UPDATE_COMMITTED: {
        "round": _is_round,
        "cluster": _is_round,
        "upload_sha256": _is_hex64,
    },
    EventType.AGGREGATION_RECEIPT: {
        "round": _is_round,
        "cluster": _is_round,
        "organization": _is_identifier,
        "upload_sha256": _is_hex64,
        "server": _is_hex64,
        "receipt_sig": _is_hex128,
    },
    EventType.REFUSAL: {"round": _is_round, "reason": _is_text},
    EventType.KEY_EVENT: {"kind": _is_text, "fingerprint": _is_hex64},
    EventType.LOG_REPAIRED: {
        "truncated_bytes": _is_steps,
        "truncated_sha256": _is_hex64,
        "offset": _is_round,
    },
    EventType.UPLOAD_ACCEPTED: {
        "round": _is_round,
        "cluster": _is_round,
        "organization": _is_identifier,
        "upload_sha256": _is_hex64,
    },
    EventType.ROUND_AGGREGATED: {"round": _is_round, "cluster": _is_round},
    EventType.SUM_REJECTED: {
        "round": _is_round,
        "cluster": _is_round,
        "block": _is_text,
        "bound": _is_text,
    },
}


def is_secret_name(name: str) -> bool:
    """Whether a payload field name looks like it holds a secret.

    Matching is on the lower-cased name with separators removed, so `signingKey`,
    `signing-key` and `signing_key` are all refused; `key_fingerprint` is allowed.
    """
    folded = re.sub(r"[^a-z0-9]", "", name.lower())
    if any(marker in folded for marker in _ALLOWED_MARKERS):
        return False
    return any(marker in folded for marker in _SECRET_MARKERS)


def check_event_type(event_type: str) -> None:
    """Raise `AuditPayloadError` unless ``event_type`` is a well-formed event name."""
    if not isinstance(event_type, str) or _EVENT_NAME.fullmatch(event_type) is None:
        raise AuditPayloadError(
            f"event type must match [a-z][a-z0-9_]* (at most 63 characters), got "
            f"{event_type!r}; use the `EventType` constants"
        )


def _check_hygiene(value: object, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise AuditPayloadError(f"`{path}` nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_SAFE_INTEGER:
            raise AuditPayloadError(
                f"`{path}` is an integer beyond 2**53, which JSON readers do not keep "
                "exactly; write it as a string"
            )
    elif isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise AuditPayloadError(
                f"`{path}` is a string of {len(value)} characters; at most "
                f"{MAX_STRING_CHARS} are allowed (log a hash of large content instead)"
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and is_secret_name(key):
                raise SecretPayloadError(
                    f"`{path}.{key}` is named like a secret (key, share, secret, gradient, "
                    "private, seed, ...); audit records must not carry secrets — log a "
                    "fingerprint or a hash instead"
                )
            _check_hygiene(item, f"{path}.{key}", depth + 1)
    elif is_json_sequence(value):
        items = list(value)  # type: ignore[call-overload]
        if len(items) > MAX_ARRAY_ITEMS:
            raise AuditPayloadError(
                f"`{path}` has {len(items)} items; at most {MAX_ARRAY_ITEMS} are allowed"
            )
        numeric = sum(1 for item in items if type(item) in (int, float))
        if numeric > MAX_NUMERIC_ARRAY_ITEMS:
            raise SecretPayloadError(
                f"`{path}` holds {numeric} numbers, which looks like a tensor (gradient, "
                f"update); at most {MAX_NUMERIC_ARRAY_ITEMS} numbers per array are allowed "
                "— log a hash of the tensor instead"
            )
        for index, item in enumerate(items):
            _check_hygiene(item, f"{path}[{index}]", depth + 1)


def payload_problems(event_type: str, payload: Mapping[str, object]) -> list[str]:
    """Problems of a known event's payload with its required fields (empty when fine)."""
    problems: list[str] = []
    for field, check in REQUIRED_FIELDS.get(event_type, {}).items():
        if field not in payload:
            problems.append(f"{event_type} payload lacks `{field}`")
        elif not check(payload[field]):
            problems.append(
                f"{event_type} payload field `{field}` must be {_RULES[check]}, got "
                f"{_describe(payload[field])}"
            )
    if (
        event_type == EventType.PRIVACY_SPEND
        and payload.get("mechanism") == "dp-sgd"
        and payload.get("max_grad_norm", 0) is None
    ):
        problems.append("privacy_spend of dp-sgd needs `max_grad_norm` (the clipping norm)")
    return problems


def _describe(value: object) -> str:
    # Values of known fields are public numbers, hashes and names, but stay short.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def prepare_payload(event_type: str, payload: Mapping[str, object]) -> dict[str, JSONValue]:
    """Check a payload and return it as plain JSON, exactly as it will read back.

    Raises `SecretPayloadError` for a field named like a secret or a tensor-like array,
    and `AuditPayloadError` for anything else unfit to log: not JSON, too large, or a
    known event's required field missing or of the wrong kind.
    """
    check_event_type(event_type)
    if not isinstance(payload, Mapping):
        raise AuditPayloadError(
            f"the payload of {event_type} must be a mapping, got {type(payload).__name__}"
        )
    _check_hygiene(payload, "payload", 0)
    plain = normalize(payload)
    assert isinstance(plain, dict)
    problems = payload_problems(event_type, plain)
    if problems:
        raise AuditPayloadError("; ".join(problems))
    return plain
