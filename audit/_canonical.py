"""Canonical JSON encoding of audit records: RFC 8785 (JSON Canonicalization Scheme).

A signature or a hash is only checkable by a third party if both sides derive the same
bytes from the same record. We use JCS (RFC 8785) because independent implementations
exist in most languages: object keys sorted by their UTF-16 code units, no whitespace,
strings as UTF-8 with only the mandatory escapes, and numbers written the way
ECMAScript's `Number.prototype.toString` writes an IEEE-754 double (shortest digits
that round-trip). Python's own `json.dumps(..., sort_keys=True)` differs from JCS only
in numbers (`1e-05` versus `1e-5`, `1.0` versus `1`), so strings reuse the standard
library's escaping and numbers are formatted here.

Assumptions: every number is an IEEE-754 double (integers beyond 2**53 are refused when
writing, because they would not survive a round trip through most JSON parsers); NaN and
infinities are refused, as RFC 8785 requires.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal

from .errors import AuditPayloadError

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]
"""A JSON value as the standard library's `json` module reads it."""

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer every JSON parser reads exactly (I-JSON, RFC 7493 §2.2)."""


def format_number(value: float) -> str:
    """Write a finite double as ECMAScript does (RFC 8785 §3.2.2.3).

    The shortest round-trip digits come from Python's `repr`, which uses the same
    shortest-digits rule; only the placement of the decimal point and the exponent
    differ, and those follow ECMA-262 `Number::toString` step by step.
    """
    if not math.isfinite(value):
        raise AuditPayloadError(f"numbers must be finite, got {value!r}")
    if value == 0:
        return "0"  # ECMAScript writes -0 as "0" too.
    sign = "-" if value < 0 else ""
    # `repr` yields the shortest digits that round-trip; Decimal splits them exactly into
    # an integer of digits and a power of ten, without another rounding.
    decimal_digits = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(str(digit) for digit in decimal_digits.digits)
    exponent = int(decimal_digits.exponent)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped.lstrip("0")
    # `point` is ECMA-262's n: the value is 0.<digits> x 10**point.
    point = len(digits) + exponent
    k = len(digits)
    if k <= point <= 21:
        text = digits + "0" * (point - k)
    elif 0 < point <= 21:
        text = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        text = "0." + "0" * (-point) + digits
    else:
        shown_exponent = point - 1
        exponent_sign = "+" if shown_exponent >= 0 else "-"
        head = digits[0] if k == 1 else digits[0] + "." + digits[1:]
        text = f"{head}e{exponent_sign}{abs(shown_exponent)}"
    return sign + text


def _encode(value: object, path: str, out: list[str]) -> None:
    # `bool` is a subclass of `int`, so it must be tested first. Subclasses of `int`,
    # `float` and `str` (enums, numpy.float64) are written as the plain value they are.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        number = int(value)
        if abs(number) > MAX_SAFE_INTEGER:
            # Every JSON number is a double to JCS: a large integer read from a log line
            # (e.g. "56447966544000930", which is how 5.644796654400093e16 is written)
            # stands for the nearest double. Writers refuse such integers in payloads.
            out.append(format_number(float(number)))
        else:
            out.append(str(number))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise AuditPayloadError(f"`{path}` must be a finite number, got {value!r}")
        out.append(format_number(float(value)))
    elif isinstance(value, str):
        _check_text(value, path)
        out.append(json.dumps(str(value), ensure_ascii=False))
    elif isinstance(value, Mapping):
        out.append("{")
        keys = list(value.keys())
        for key in keys:
            if not isinstance(key, str):
                raise AuditPayloadError(
                    f"`{path}` has a key of type {type(key).__name__}; keys must be strings"
                )
            _check_text(key, path)
        for index, key in enumerate(sorted(keys, key=_utf16_order)):
            if index:
                out.append(",")
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(":")
            _encode(value[key], f"{path}.{key}", out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, f"{path}[{index}]", out)
        out.append("]")
    else:
        raise AuditPayloadError(
            f"`{path}` has type {type(value).__name__}, which is not JSON; use str, int, "
            "float, bool, None, lists and string-keyed mappings (convert numpy/torch "
            "scalars with float() or int())"
        )


def _utf16_order(key: str) -> bytes:
    # RFC 8785 §3.2.3 sorts by UTF-16 code units; big-endian UTF-16 bytes sort alike.
    return key.encode("utf-16-be", "surrogatepass")


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise AuditPayloadError(
            f"`{path}` contains a lone surrogate, which is not valid Unicode text"
        ) from None


def canonical_json(value: object) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of a JSON value.

    Raises `AuditPayloadError` naming the offending field for values JSON cannot carry
    (bytes, sets, numpy scalars, NaN, lone surrogates, integers no double represents).
    """
    out: list[str] = []
    _encode(value, "$", out)
    return "".join(out).encode("utf-8")


def normalize(value: object) -> JSONValue:
    """``value`` as it reads back from its canonical encoding (tuples become lists,
    enums plain strings, integral doubles integers)."""
    decoded: JSONValue = json.loads(canonical_json(value))
    return decoded


def sha256_hex(data: bytes) -> str:
    """Lower-case hexadecimal SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def is_json_sequence(value: object) -> bool:
    """Whether ``value`` encodes as a JSON array (a list or tuple, not a string)."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)
