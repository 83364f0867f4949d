"""Canonical encoding (RFC 8785, JCS) of audit records: known answers and laws."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhft.audit import AuditPayloadError, canonical_json
from fedhft.audit._canonical import format_number


def _double(bits: int) -> float:
    value: float = struct.unpack(">d", bits.to_bytes(8, "big"))[0]
    return value


# RFC 8785, Appendix B ("Number Serialization Samples"): IEEE-754 bit patterns and the
# text ECMAScript (and therefore JCS) writes for them.
RFC8785_NUMBERS = [
    (0x0000000000000000, "0"),
    (0x8000000000000000, "0"),
    (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"),
    (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
    (0xFFEFFFFFFFFFFFFF, "-1.7976931348623157e+308"),
    (0x4340000000000000, "9007199254740992"),
    (0xC340000000000000, "-9007199254740992"),
    (0x4430000000000000, "295147905179352830000"),
    (0x44B52D02C7E14AF5, "9.999999999999997e+22"),
    (0x44B52D02C7E14AF6, "1e+23"),
    (0x44B52D02C7E14AF7, "1.0000000000000001e+23"),
    (0x444B1AE4D6E2EF4E, "999999999999999700000"),
    (0x444B1AE4D6E2EF4F, "999999999999999900000"),
    (0x444B1AE4D6E2EF50, "1e+21"),
    (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"),
    (0x3EB0C6F7A0B5ED8D, "0.000001"),
    (0x41B3DE4355555553, "333333333.3333332"),
    (0x41B3DE4355555554, "333333333.33333325"),
    (0x41B3DE4355555555, "333333333.3333333"),
    (0x41B3DE4355555556, "333333333.3333334"),
    (0x41B3DE4355555557, "333333333.33333343"),
    (0xBECBF647612F3696, "-0.0000033333333333333333"),
    (0x43143FF3C1CB0959, "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), RFC8785_NUMBERS)
def test_numbers_match_rfc8785_appendix_b(bits: int, expected: str) -> None:
    """Doubles are written exactly as RFC 8785 Appendix B lists them."""
    assert format_number(_double(bits)) == expected


@pytest.mark.parametrize("bits", [0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000, 0xFFF0000000000000])
def test_nan_and_infinity_are_refused(bits: int) -> None:
    """NaN and ±Infinity have no JSON form and are refused, as RFC 8785 requires."""
    with pytest.raises(AuditPayloadError):
        canonical_json({"epsilon_after": _double(bits)})


def test_rfc8785_section_3_2_2_example() -> None:
    """The worked example of RFC 8785 §3.2.2 (literals, numbers, escapes) encodes exactly."""
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(source)) == expected.encode("utf-8")


def test_rfc8785_section_3_2_3_key_order() -> None:
    """Keys sort by UTF-16 code units (RFC 8785 §3.2.3): the emoji sorts before U+FB33."""
    source = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = list(json.loads(canonical_json(source)).keys())
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_integral_floats_lose_their_fraction_and_read_back_as_integers() -> None:
    """`1.0` is written `1` (JCS), so a record read back re-encodes to the same bytes."""
    encoded = canonical_json({"max_grad_norm": 1.0, "delta": 1e-5})
    assert encoded == b'{"delta":0.00001,"max_grad_norm":1}'
    assert canonical_json(json.loads(encoded)) == encoded


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"upload": b"\x00\x01"}, "$.upload"),
        ({"clusters": {1, 2}}, "$.clusters"),
        ({"sigma": np.float32(1.5)}, "$.sigma"),
        ({"deep": {"x": object()}}, "$.deep.x"),
        ({"text": "\ud800"}, "$.text"),
        ({1: "not a string key"}, "$"),
    ],
)
def test_values_json_cannot_carry_are_refused_naming_the_field(value: object, field: str) -> None:
    """Bytes, sets, numpy float32, objects, lone surrogates and non-string keys are
    refused with an error naming the field."""
    with pytest.raises(AuditPayloadError, match=field.replace("$", r"\$").replace(".", r"\.")):
        canonical_json(value)


def test_numpy_float64_and_enums_encode_as_their_plain_values() -> None:
    """Subclasses of float/str (numpy.float64, StrEnum) encode as the plain value."""
    from fedhft.policies import Accountant

    assert canonical_json({"a": np.float64(0.5), "b": Accountant.RDP}) == b'{"a":0.5,"b":"rdp"}'


def test_large_integers_stand_for_the_nearest_double() -> None:
    """A number like 56447966544000930 (how JCS writes 5.644796654400093e16) re-encodes
    to itself: every JSON number is read as a double, as RFC 8785 §3.2.2.3 requires."""
    assert canonical_json([56447966544000930, 2**60]) == b"[56447966544000930,1152921504606847000]"


finite_doubles = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | finite_doubles
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


@given(finite_doubles)
def test_number_text_round_trips_to_the_same_double(value: float) -> None:
    """Law: parsing the written number gives back the same double (shortest round trip)."""
    text = format_number(value)
    assert float(text) == value
    assert not text.endswith(".0")
    assert len(text.lstrip("-").replace(".", "").split("e")[0].strip("0")) <= 17


@given(json_values)
def test_canonical_encoding_is_a_fixed_point(value: object) -> None:
    """Law: decoding a canonical encoding and encoding again gives the same bytes, and
    the decoded value equals the original (numbers as doubles)."""
    encoded = canonical_json(value)
    decoded = json.loads(encoded)
    assert canonical_json(decoded) == encoded
    assert json.loads(json.dumps(value)) == decoded or _numbers_equal(value, decoded)


def _numbers_equal(left: object, right: object) -> bool:
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_numbers_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_numbers_equal, left, right))
    if isinstance(left, int | float) and isinstance(right, int | float):
        return float(left) == float(right)
    return left == right
