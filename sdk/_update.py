"""The masked update an organization contributes to each cluster's secure sum.

For cluster ``j`` and block ``b`` the organization contributes the packed vector
``pack_block(π_j · m ⊙ Δ, π_j · m)`` (`fedhft.protocol.blocks`): the rows of its update
it kept (data mask ``m``), weighted by its membership ``π_j``, followed by the per-row
weights. Summed over a cohort, the server divides the two halves row by row and learns
only the weighted average of each row (ARCHITECTURE.md §2.2); it learns neither the mask nor the
membership of any single organization.

A `MaskedUpdate` is immutable; its `digest` is a SHA-256 over a canonical byte encoding
(tag, round, cluster count, then every cluster's blocks in the fixed block order with
their shapes and little-endian float64 values), which the audit log records as the
commitment to what was uploaded.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedhft.protocol.blocks import pack_block, packed_length

from .errors import SdkError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_DIGEST_TAG = b"fedhft.masked-update.v1"


class UpdateError(SdkError, ValueError):
    """A masked update is inconsistent (shapes, lengths, membership)."""


def _frozen(array: FloatArray) -> FloatArray:
    copy = np.array(array, dtype=np.float64, copy=True)
    copy.flags.writeable = False
    return copy


@dataclass(frozen=True)
class MaskedUpdate:
    """Per cluster, per block packed vectors ``[π_j·m⊙Δ (row-major), π_j·m]``.

    Attributes:
        round: the federation round the update belongs to.
        block_ids: the blocks it carries, in the fixed block order.
        shapes: ``rows × cols`` of each block (the packed length is ``rows·cols + rows``).
        private: whether Δ came out of DP-SGD. A non-private update (a baseline run)
            must never be uploaded in production; the protocol can refuse it.
    """

    round: int
    block_ids: tuple[str, ...]
    shapes: Mapping[str, tuple[int, int]]
    private: bool
    _vectors: tuple[Mapping[str, FloatArray], ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self._vectors:
            raise UpdateError("a masked update needs at least one cluster")
        if set(self.shapes) != set(self.block_ids) or len(set(self.block_ids)) != len(
            self.block_ids
        ):
            raise UpdateError("block_ids and shapes must name the same distinct blocks")
        for cluster, vectors in enumerate(self._vectors):
            if set(vectors) != set(self.block_ids):
                raise UpdateError(f"cluster {cluster} does not carry exactly the update's blocks")
            for block_id, vector in vectors.items():
                rows, cols = self.shapes[block_id]
                if vector.shape != (packed_length(rows, cols),):
                    raise UpdateError(
                        f"cluster {cluster} block {block_id!r}: packed length "
                        f"{vector.shape} does not fit {rows} × {cols}"
                    )
                if not np.all(np.isfinite(vector)):
                    raise UpdateError(
                        f"cluster {cluster} block {block_id!r} has NaN or infinite values"
                    )

    @classmethod
    def build(
        cls,
        *,
        round: int,
        delta: Mapping[str, FloatArray],
        keep: Mapping[str, BoolArray],
        membership: npt.ArrayLike,
        private: bool,
        block_order: Sequence[str] | None = None,
    ) -> MaskedUpdate:
        """Pack ``π_j · m ⊙ Δ`` and ``π_j · m`` for every cluster ``j`` and block.

        Args:
            round: the round number.
            delta: Δ of each uploaded block (``rows × cols``).
            keep: the data mask ``m`` of each block (one bool per row).
            membership: π, one non-negative weight per cluster, summing to 1.
            private: whether Δ came out of DP-SGD.
            block_order: the fixed order of the blocks; defaults to ``delta``'s order.
        """
        pi = np.asarray(membership, dtype=np.float64)
        if pi.ndim != 1 or pi.size == 0 or not np.all(np.isfinite(pi)) or np.any(pi < 0):
            raise UpdateError("membership must be a non-empty vector of weights >= 0")
        if abs(float(pi.sum()) - 1.0) > 1e-9:
            raise UpdateError(f"membership must sum to 1, got {float(pi.sum())!r}")
        order = tuple(block_order) if block_order is not None else tuple(delta)
        if set(order) != set(delta) or set(keep) != set(delta):
            raise UpdateError("delta, keep and block_order must name the same blocks")
        shapes: dict[str, tuple[int, int]] = {}
        masked: dict[str, tuple[FloatArray, FloatArray]] = {}
        for block_id in order:
            values = np.asarray(delta[block_id], dtype=np.float64)
            mask = np.asarray(keep[block_id], dtype=np.bool_)
            if values.ndim != 2 or mask.shape != (values.shape[0],):
                raise UpdateError(
                    f"block {block_id!r}: Δ must be rows × cols with one mask bit per row, "
                    f"got {values.shape} and {mask.shape}"
                )
            shapes[block_id] = (int(values.shape[0]), int(values.shape[1]))
            weights = mask.astype(np.float64)
            masked[block_id] = (values * weights[:, None], weights)
        vectors = tuple(
            {
                block_id: _frozen(pack_block(float(weight) * rows, float(weight) * counts))
                for block_id, (rows, counts) in masked.items()
            }
            for weight in pi
        )
        return cls(round=round, block_ids=order, shapes=shapes, private=private, _vectors=vectors)

    @property
    def clusters(self) -> int:
        """Number of clusters (K) the update contributes to."""
        return len(self._vectors)

    def vectors(self, cluster: int) -> dict[str, FloatArray]:
        """The packed, read-only vector of every block for ``cluster`` (0-based)."""
        if not 0 <= cluster < len(self._vectors):
            raise UpdateError(f"cluster must be in 0..{len(self._vectors) - 1}, got {cluster}")
        return {block_id: self._vectors[cluster][block_id] for block_id in self.block_ids}

    def num_values(self) -> int:
        """Float64 values in one cluster's vectors (what one secure sum carries)."""
        return sum(packed_length(*self.shapes[b]) for b in self.block_ids)

    def digest(self) -> str:
        """Hex SHA-256 of the canonical encoding (stable across processes and platforms)."""
        hasher = hashlib.sha256(_DIGEST_TAG)
        hasher.update(struct.pack(">qI", self.round, len(self._vectors)))
        hasher.update(b"\x01" if self.private else b"\x00")
        for vectors in self._vectors:
            hasher.update(struct.pack(">I", len(self.block_ids)))
            for block_id in self.block_ids:
                name = block_id.encode()
                rows, cols = self.shapes[block_id]
                hasher.update(struct.pack(">I", len(name)) + name)
                hasher.update(struct.pack(">II", rows, cols))
                hasher.update(np.ascontiguousarray(vectors[block_id], dtype="<f8").tobytes())
        return hasher.hexdigest()
