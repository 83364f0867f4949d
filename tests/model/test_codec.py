"""Released cluster adapters: exact decoding as views of the bytes, refusal of any blob
that is not a well-formed float64 safetensors release, and immutability kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhft.model import ClusterAdapters, ReleaseFormatError, decode_clusters, encode_clusters


def _clusters() -> ClusterAdapters:
    rng = np.random.default_rng(3)
    shapes = {"layer0.q": (5, 2), "layer0.v": (3, 2), "head": (2, 7)}
    states = tuple({b: rng.standard_normal(s) for b, s in shapes.items()} for _ in range(2))
    update = {b: rng.standard_normal(s) for b, s in shapes.items()}
    return ClusterAdapters(
        states=states,
        last_updates=(None, update),
        centroids=(rng.standard_normal(4), rng.standard_normal(4)),
    )


def _split(blob: bytes) -> tuple[dict[str, object], bytes]:
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def _join(header: dict[str, object], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


def test_decoding_gives_back_every_array_as_views_of_the_bytes() -> None:
    clusters = _clusters()
    blob = encode_clusters(clusters)
    decoded = decode_clusters(blob)
    for j in range(clusters.k):
        for block_id, values in clusters.states[j].items():
            np.testing.assert_array_equal(decoded.states[j][block_id], values)
    assert decoded.last_updates[0] is None
    update = decoded.last_updates[1]
    assert update is not None and update.keys() == clusters.states[0].keys()
    np.testing.assert_array_equal(decoded.centroids[1], clusters.centroids[1])
    assert encode_clusters(decoded) == blob
    # Held once: the decoded model shares the downloaded bytes instead of copying them.
    whole = np.frombuffer(blob, dtype=np.uint8)
    assert all(np.shares_memory(v, whole) for v in decoded.states[0].values())


def test_decoded_arrays_cannot_be_changed() -> None:
    decoded = decode_clusters(encode_clusters(_clusters()))
    with pytest.raises(ValueError, match="read-only"):
        decoded.states[0]["head"][0, 0] = 1.0


def test_a_read_only_view_of_a_writable_array_is_still_copied() -> None:
    """Only views of immutable bytes are kept as they are: a caller holding a writable
    array behind a read-only view must not be able to change the cluster adapters."""
    writable = np.zeros((2, 3))
    view = writable.view()
    view.flags.writeable = False
    clusters = ClusterAdapters(states=({"head": view},))
    writable[0, 0] = 5.0
    assert clusters.states[0]["head"][0, 0] == 0.0


def _retyped(blob: bytes) -> bytes:
    header, body = _split(blob)
    entry = header[next(k for k in header if k != "__metadata__")]
    assert isinstance(entry, dict)
    entry["dtype"] = "F32"
    return _join(header, body)


def _overlapping(blob: bytes) -> bytes:
    header, body = _split(blob)
    entries = [v for k, v in header.items() if k != "__metadata__"]
    first, second = sorted(entries, key=lambda entry: entry["data_offsets"])[:2]  # type: ignore[index]
    assert isinstance(first, dict) and isinstance(second, dict)
    second["data_offsets"] = first["data_offsets"]
    second["shape"] = first["shape"]
    return _join(header, body)


def _reshaped(blob: bytes) -> bytes:
    header, body = _split(blob)
    name = next(k for k in header if k != "__metadata__")
    entry = header[name]
    assert isinstance(entry, dict)
    entry["shape"] = [entry["shape"][0] + 1, *entry["shape"][1:]]
    return _join(header, body)


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[:4],  # shorter than the length prefix
        lambda blob: (10**9).to_bytes(8, "little") + blob[8:],  # header past the end
        lambda blob: blob[:8] + b"x" + blob[9:],  # header not JSON
        lambda blob: blob[:-8],  # data section short
        lambda blob: blob + bytes(8),  # bytes no tensor covers
        _retyped,
        _overlapping,
        _reshaped,
    ],
    ids=[
        "short",
        "header-past-end",
        "not-json",
        "truncated",
        "trailing",
        "dtype",
        "overlap",
        "shape",
    ],
)
def test_malformed_blobs_are_refused(damage: object) -> None:
    blob = encode_clusters(_clusters())
    with pytest.raises(ReleaseFormatError):
        decode_clusters(damage(blob))  # type: ignore[operator]
