"""Byte formats of SDK state: cluster adapters as released by the server, and the
metadata of any safetensors blob (no code is ever executed when loading them)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save as save_arrays

from ._clusters import ClusterAdapters
from .errors import ReleaseFormatError

FloatArray = npt.NDArray[np.float64]


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob: an 8-byte header length, then JSON."""
    header_len = int.from_bytes(data[:8], "little")
    metadata: dict[str, str] = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    return metadata


def encode_clusters(clusters: ClusterAdapters) -> bytes:
    """Serialize cluster adapters (states, last updates, sketch centroids) as safetensors
    bytes."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for j, state in enumerate(clusters.states):
        for block_id, values in state.items():
            arrays[f"state/{j}/{block_id}"] = np.ascontiguousarray(values, dtype=np.float64)
    for j, update in enumerate(clusters.last_updates):
        for block_id, values in (update or {}).items():
            arrays[f"update/{j}/{block_id}"] = np.ascontiguousarray(values, dtype=np.float64)
    for j, centroid in enumerate(clusters.centroids):
        arrays[f"centroid/{j}/sketch"] = np.ascontiguousarray(centroid, dtype=np.float64)
    metadata = {
        "clusters": str(clusters.k),
        "updates": json.dumps([u is not None for u in clusters.last_updates]),
    }
    return canonical_safetensors(bytes(save_arrays(arrays, metadata=metadata)))


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors blob) with its JSON header written in sorted key order.

    safetensors writes the ``__metadata__`` map in hash-map order, which differs from
    one call to the next: the same arrays and metadata gave different bytes, and so a
    different hash. The header is rewritten sorted and space-padded to 8 bytes as the
    format allows; the tensor data (offsets relative to the end of the header) is kept.
    """
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    canonical += b" " * (-len(canonical) % 8)
    return len(canonical).to_bytes(8, "little") + canonical + data[8 + header_len :]


def decode_clusters(data: bytes) -> ClusterAdapters:
    """Inverse of :func:`encode_clusters` (safetensors: no code is ever executed).

    The arrays are read-only views of ``data``, which `ClusterAdapters` keeps without a
    copy (immutable `bytes` cannot change under it): a downloaded model is held once, not
    as bytes and again as arrays.

    Raises:
        ReleaseFormatError: ``data`` is not a well-formed safetensors blob of float64
            arrays with the cluster metadata.
    """
    arrays, metadata = _float64_tensors(data)
    k = int(metadata["clusters"])
    has_update = json.loads(metadata["updates"])
    states: list[dict[str, FloatArray]] = [{} for _ in range(k)]
    updates: list[dict[str, FloatArray]] = [{} for _ in range(k)]
    centroids: dict[int, FloatArray] = {}
    for name, values in arrays.items():
        kind, j, block_id = name.split("/", 2)
        if kind == "centroid":
            centroids[int(j)] = values
            continue
        target = states if kind == "state" else updates
        target[int(j)][block_id] = values
    return ClusterAdapters(
        states=tuple(states),
        last_updates=tuple(u if has_update[j] else None for j, u in enumerate(updates)),
        centroids=tuple(centroids[j] for j in sorted(centroids)),
    )


def _float64_tensors(data: bytes) -> tuple[dict[str, FloatArray], dict[str, str]]:
    """The float64 tensors of a safetensors blob as views of it, and its metadata.

    The header is checked as the safetensors library checks it: JSON of named tensors
    whose ``data_offsets`` tile the data section exactly, each ``shape`` matching its size.
    """
    if len(data) < 8:
        raise ReleaseFormatError(f"a cluster adapter blob has {len(data)} bytes, fewer than 8")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise ReleaseFormatError(
            f"the safetensors header declares {header_len} bytes; the blob has {len(data)}"
        )
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except ValueError:
        raise ReleaseFormatError("the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise ReleaseFormatError("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    start = 8 + header_len
    entries = sorted(
        ((_offsets(name, entry, len(data) - start), name, entry) for name, entry in header.items()),
        key=lambda item: item[0],
    )
    arrays: dict[str, FloatArray] = {}
    end = 0
    for (begin, stop), name, entry in entries:
        if begin != end:
            raise ReleaseFormatError(f"tensor {name!r:.60} does not follow the previous one")
        end = stop
        values = np.frombuffer(data, dtype="<f8", count=(stop - begin) // 8, offset=start + begin)
        arrays[name] = values.reshape(entry["shape"])
    if end != len(data) - start:
        raise ReleaseFormatError("the safetensors data section has bytes no tensor covers")
    if not isinstance(metadata, dict) or {"clusters", "updates"} - set(metadata):
        raise ReleaseFormatError("the safetensors metadata lacks `clusters` or `updates`")
    return arrays, metadata


def _offsets(name: str, entry: object, size: int) -> tuple[int, int]:
    """``(begin, end)`` of one tensor's bytes in a data section of ``size`` bytes."""
    if not isinstance(entry, dict) or entry.get("dtype") != "F64":
        raise ReleaseFormatError(f"tensor {name!r:.60} is not float64 (dtype `F64`)")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (
        isinstance(shape, list)
        and all(isinstance(n, int) and n >= 0 for n in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(n, int) for n in offsets)
        and 0 <= offsets[0] <= offsets[1] <= size
        and offsets[1] - offsets[0] == 8 * math.prod(shape)
    ):
        raise ReleaseFormatError(
            f"tensor {name!r:.60} has a `shape` or `data_offsets` that does not fit the blob"
        )
    return offsets[0], offsets[1]
