"""The layout of one block inside a secure sum: weighted rows followed by their weights.

A client contributes, for block ``b`` of cluster ``j``, the rows ``π_j·m⊙Δ`` (shape
``rows × cols``) and the per-row weights ``π_j·m`` (length ``rows``). Both travel in one
flat vector so that a single secure sum yields numerator and denominator together, and
the server computes per-row averages ``Σ π·m⊙Δ / Σ π·m`` from sums alone (ARCHITECTURE.md §2.2).

Bounds. Every contributor clips its block (`clip_packed`): each row weight ``w = π·m``
to ``[0, 1]`` and each weighted value to ``±clip·w`` (that is, ``|Δ| ≤ clip`` on the rows
it keeps). A sum of ``n`` such blocks, each coordinate off by at most ``error`` in total
(quantization or CKKS noise), therefore satisfies, per row ``r`` and column ``c``:

- ``−error ≤ W_r ≤ n + error``  (row weights);
- ``|S_rc| ≤ n·clip + error``   (coordinates);
- ``|S_rc| ≤ clip·(W_r + error) + error``  (coordinates against their row's weight).

`check_packed_sum` refuses any other sum. The third bound is what keeps one contributor
from moving the model far: whatever it sends, an applied average ``S_rc / W_r`` stays
within ``±clip`` up to the rounding allowance, so a malicious input can move a
coordinate at most as far as an honest one could.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .errors import SumOutOfBoundsError

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


def clip_packed(packed: FloatArray, rows: int, cols: int, clip: float) -> FloatArray:
    """Clip a packed block to what `check_packed_sum` accepts from one contributor.

    Row weights go to ``[0, 1]`` and each weighted value to ``±clip`` times its row's
    weight, which is clipping ``Δ`` to ``±clip`` on the kept rows (post-processing).
    """
    weighted, weights = unpack_block(packed, rows, cols)
    weights = np.clip(weights, 0.0, 1.0)
    bound = (clip * weights)[:, None]
    return pack_block(np.clip(weighted, -bound, bound), weights)


def check_packed_sum(
    summed: FloatArray,
    rows: int,
    cols: int,
    *,
    block: str,
    contributors: int,
    clip: float,
    error: float,
) -> None:
    """Raise unless ``summed`` is a sum ``contributors`` clipped blocks can produce.

    ``error`` bounds the total rounding error of one summed coordinate (``n`` quantization
    steps in masking mode, the CKKS error bound in CKKS mode).

    Raises:
        SumOutOfBoundsError: naming the block and the bound that failed (never a value).
    """
    weighted, weights = unpack_block(summed, rows, cols)
    n = contributors
    if not (np.all(np.isfinite(weighted)) and np.all(np.isfinite(weights))):
        raise SumOutOfBoundsError(
            f"the sum of block {block!r} holds non-finite values", block=block, bound="finite"
        )
    outside = int(np.count_nonzero((weights < -error) | (weights > n + error)))
    if outside:
        bound = f"row weights within [-{error:.3g}, {n} + {error:.3g}]"
        raise SumOutOfBoundsError(
            f"{outside} row weights of block {block!r} break the bound {bound} that "
            f"{n} contributors' weights in [0, 1] can reach",
            block=block,
            bound=bound,
        )
    coordinate_bound = n * clip + error
    outside = int(np.count_nonzero(np.abs(weighted) > coordinate_bound))
    if outside:
        bound = f"|sum| <= {n} * clip {clip:.6g} + {error:.3g}"
        raise SumOutOfBoundsError(
            f"{outside} coordinates of block {block!r} break the bound {bound}",
            block=block,
            bound=bound,
        )
    row_bound = clip * (np.maximum(weights, 0.0) + error) + error
    outside = int(np.count_nonzero(np.abs(weighted) > row_bound[:, None]))
    if outside:
        bound = f"|sum| <= clip {clip:.6g} * (row weight + {error:.3g}) + {error:.3g}"
        raise SumOutOfBoundsError(
            f"{outside} coordinates of block {block!r} break the bound {bound}",
            block=block,
            bound=bound,
        )
