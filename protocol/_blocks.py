"""The layout of one block inside a secure sum: weighted rows followed by their weights.

A client contributes, for block ``b`` of cluster ``j``, the rows ``π_j·m⊙Δ`` (shape
``rows × cols``) and the per-row weights ``π_j·m`` (length ``rows``). Both travel in one
flat vector so that a single secure sum yields numerator and denominator together, and
the server computes per-row averages ``Σ π·m⊙Δ / Σ π·m`` from sums alone (DESIGN §2.2).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def pack_block(weighted_rows: FloatArray, row_weights: FloatArray) -> FloatArray:
    """Flatten ``weighted_rows`` (rows × cols) and append ``row_weights`` (rows)."""
    weighted_rows = np.asarray(weighted_rows, dtype=np.float64)
    row_weights = np.asarray(row_weights, dtype=np.float64)
    if weighted_rows.ndim != 2 or row_weights.shape != (weighted_rows.shape[0],):
        raise ValueError(
            f"expected rows × cols values and one weight per row, got shapes "
            f"{weighted_rows.shape} and {row_weights.shape}"
        )
    return np.concatenate([weighted_rows.ravel(), row_weights])


def packed_length(rows: int, cols: int) -> int:
    """Length of a packed block of ``rows × cols`` values."""
    return rows * cols + rows


def unpack_block(packed: FloatArray, rows: int, cols: int) -> tuple[FloatArray, FloatArray]:
    """Split a packed (possibly summed) block into ``(weighted_rows, row_weights)``."""
    packed = np.asarray(packed, dtype=np.float64)
    if packed.shape != (packed_length(rows, cols),):
        raise ValueError(
            f"packed block has {packed.shape} values, expected {packed_length(rows, cols)}"
        )
    return packed[: rows * cols].reshape(rows, cols), packed[rows * cols :]


def row_average(
    summed: FloatArray, rows: int, cols: int, min_weight: float = 1e-6
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Per-row averages from a summed packed block, and which rows had any weight.

    Rows whose total weight is below ``min_weight`` received no contribution; they are
    returned as zeros and flagged ``False`` so the caller keeps its previous value.
    """
    weighted, weights = unpack_block(summed, rows, cols)
    has_weight = weights >= min_weight
    safe = np.where(has_weight, weights, 1.0)
    average = np.where(has_weight[:, None], weighted / safe[:, None], 0.0)
    return average, has_weight
