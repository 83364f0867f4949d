"""Byte formats of SDK state: cluster adapters as released by the server, and the
metadata of any safetensors blob (no code is ever executed when loading them)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from ._clusters import ClusterAdapters

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
    """Inverse of :func:`encode_clusters` (safetensors: no code is ever executed)."""
    arrays = load_arrays(data)
    metadata = safetensors_metadata(data)
    k = int(metadata["clusters"])
    has_update = json.loads(metadata["updates"])
    states: list[dict[str, FloatArray]] = [{} for _ in range(k)]
    updates: list[dict[str, FloatArray]] = [{} for _ in range(k)]
    centroids: dict[int, FloatArray] = {}
    for name, values in arrays.items():
        kind, j, block_id = name.split("/", 2)
        if kind == "centroid":
            centroids[int(j)] = values.astype(np.float64)
            continue
        target = states if kind == "state" else updates
        target[int(j)][block_id] = values.astype(np.float64)
    return ClusterAdapters(
        states=tuple(states),
        last_updates=tuple(u if has_update[j] else None for j, u in enumerate(updates)),
        centroids=tuple(centroids[j] for j in sorted(centroids)),
    )
