"""Session parameters as the server announces them: exact round trips, strict decoding."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_helpers import make_params, roster_of

from fedhft.protocol import CKKSSession, SessionParams
from fedhft.protocol.errors import MalformedMessageError
from fedhft.protocol.session_codec import (
    MAX_ENCODED_BYTES,
    decode_block_sums,
    decode_session,
    encode_block_sums,
    encode_session,
    released_model_hash,
)


def _ckks_session(**changes: Any) -> CKKSSession:
    roster = tuple(roster_of(4))
    fields: dict[str, Any] = {
        "run_id": "run-1.a2",
        "round": 3,
        "cluster": 1,
        "roster": roster,
        "key_id": "0" * 32,
        "min_cohort": 3,
        "block_lengths": {"layer.0.value": 40, "head.weight": 12},
        "block_supports": {
            "layer.0.value": frozenset(roster),
            "head.weight": frozenset(roster[1:]),
        },
        "config_hash": hashlib.sha256(b"config").hexdigest(),
        "model_hash": hashlib.sha256(b"model").hexdigest(),
    }
    fields.update(changes)
    return CKKSSession(**fields)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=3, max_value=9),
    neighbours=st.one_of(st.none(), st.integers(min_value=2, max_value=4)),
    clip=st.floats(min_value=1e-3, max_value=64.0, allow_nan=False),
    scale=st.sampled_from([2.0**10, 2.0**16, 1000.0]),
    round_number=st.integers(min_value=0, max_value=10**6),
)
def test_masking_parameters_round_trip_exactly(
    n: int, neighbours: int | None, clip: float, scale: float, round_number: int
) -> None:
    """Decoding an encoded `SessionParams` gives the same session id and fields."""
    params = make_params(n, neighbours=neighbours, clip=clip, scale=scale, round=round_number)
    decoded = decode_session(encode_session(params))
    assert isinstance(decoded, SessionParams)
    assert decoded.sid == params.sid
    assert (decoded.clip, decoded.scale, decoded.threshold) == (
        params.clip,
        params.scale,
        params.threshold,
    )
    assert dict(decoded.block_supports) == dict(params.block_supports)


def test_ckks_session_round_trips() -> None:
    """A `CKKSSession` survives the codec with the same session id."""
    session = _ckks_session()
    decoded = decode_session(encode_session(session))
    assert isinstance(decoded, CKKSSession)
    assert decoded.sid == session.sid
    assert decoded.roster == session.roster


def test_encoding_is_canonical() -> None:
    """Equal parameters encode to equal bytes (sorted keys, no whitespace)."""
    assert encode_session(make_params(5)) == encode_session(make_params(5))
    assert b" " not in encode_session(make_params(5))


def _document(**changes: Any) -> bytes:
    document = json.loads(encode_session(make_params(5)))
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "UTF-8 JSON"),
        (b"[1, 2]", "JSON object"),
        (_document(mode="plain"), "mode"),
        (_document(extra=1), "exactly the members"),
        (_document(round="1"), "round"),
        (_document(round=-1), "round"),
        (_document(config_hash="zz" * 32), "hex"),
        (_document(model_hash="00" * 31), "32-byte"),
        (_document(clip=float("inf")), "finite"),
        (_document(roster="org-000"), "roster"),
        (_document(blocks=[["b", 4, ["org-000"]], ["b", 4, ["org-000"]]]), "twice"),
        (_document(blocks=[["b", 4]]), "blocks"),
        (_document(threshold=1), "invalid session parameters"),
        (_document(min_cohort=2), "invalid session parameters"),
    ],
)
def test_malformed_parameters_are_refused(data: bytes, message: str) -> None:
    """Every malformed or inconsistent description is one `MalformedMessageError`."""
    with pytest.raises(MalformedMessageError, match=message):
        decode_session(data)


def test_oversized_parameters_are_refused_before_parsing() -> None:
    """A description above the cap is refused without being parsed."""
    with pytest.raises(MalformedMessageError, match="above the cap"):
        decode_session(b" " * (MAX_ENCODED_BYTES + 1))


def test_block_sums_round_trip_and_are_checked() -> None:
    """Decrypted sums decode exactly, and only for exactly the expected blocks."""
    sums = {"a": np.linspace(-1, 1, 5), "b": np.arange(3, dtype=np.float64)}
    lengths = {"a": 5, "b": 3}
    decoded = decode_block_sums(encode_block_sums(sums), lengths)
    for block, values in sums.items():
        np.testing.assert_array_equal(decoded[block], values)
    with pytest.raises(MalformedMessageError, match="exactly the released blocks"):
        decode_block_sums(encode_block_sums({"a": sums["a"]}), lengths)
    with pytest.raises(MalformedMessageError, match="5 float64 values"):
        decode_block_sums(encode_block_sums({"a": np.zeros(4), "b": sums["b"]}), lengths)
    with pytest.raises(MalformedMessageError, match="not finite"):
        decode_block_sums(encode_block_sums({"a": np.full(5, np.nan), "b": sums["b"]}), lengths)
    with pytest.raises(MalformedMessageError, match="safetensors"):
        decode_block_sums(b"garbage", lengths)


def test_released_model_hash_binds_every_cluster_in_order() -> None:
    """The announced model hash changes with any cluster's payload or their order."""
    first, second = hashlib.sha256(b"0").digest(), hashlib.sha256(b"1").digest()
    assert released_model_hash([first, second]) != released_model_hash([second, first])
    assert released_model_hash([first]) != released_model_hash([first, first])
