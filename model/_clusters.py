"""The K cluster adapters of a round: what the server releases and organizations start from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import MixtureError

FloatArray = npt.NDArray[np.float64]


def _readonly(
    array: npt.ArrayLike, dtype: type[np.generic] = np.float64
) -> npt.NDArray[np.generic]:
    """``array`` as an array nobody can change: a read-only copy, or ``array`` itself
    when it is already a view of immutable `bytes` (a decoded download: copying it
    would hold the model twice)."""
    if _views_bytes(array) and array.dtype == dtype:  # type: ignore[union-attr]
        return array  # type: ignore[return-value]
    copy = np.array(array, dtype=dtype, copy=True)
    copy.flags.writeable = False
    return copy


def _views_bytes(array: object) -> bool:
    """Whether ``array`` is a read-only array over a `bytes` object (no writable base)."""
    while isinstance(array, np.ndarray):
        if array.flags.writeable:
            return False
        array = array.base
    return isinstance(array, bytes)


@dataclass(frozen=True)
class ClusterAdapters:
    """The K cluster adapters of a round, as the server released them.

    Attributes:
        states: per cluster, every block's value (``rows × cols``), head included.
        last_updates: per cluster, its last aggregate update per block (the secure-sum
            average it moved by), or None before its first aggregation.
        centroids: per cluster, the centroid of the organizations' released sketches
            (``clustering.signal: sketch``, from the split on), or empty.
    """

    states: tuple[Mapping[str, FloatArray], ...]
    last_updates: tuple[Mapping[str, FloatArray] | None, ...] = ()
    centroids: tuple[FloatArray, ...] = ()

    def __post_init__(self) -> None:
        if not self.states:
            raise MixtureError("cluster adapters need at least one cluster")
        if not self.last_updates:
            object.__setattr__(self, "last_updates", (None,) * len(self.states))
        if len(self.last_updates) != len(self.states):
            raise MixtureError(
                f"{len(self.states)} clusters but {len(self.last_updates)} last updates"
            )
        reference = {b: np.shape(v) for b, v in self.states[0].items()}
        for j, state in enumerate(self.states):
            if {b: np.shape(v) for b, v in state.items()} != reference:
                raise MixtureError(f"cluster {j} does not have the blocks and shapes of cluster 0")
        for j, update in enumerate(self.last_updates):
            if update is None:
                continue
            for block_id, values in update.items():
                if block_id not in reference or np.shape(values) != reference[block_id]:
                    raise MixtureError(
                        f"last update of cluster {j}: block {block_id!r} is not a "
                        "cluster block of the same shape"
                    )
        if self.centroids:
            shapes = {np.shape(c) for c in self.centroids}
            vectors = len(shapes) == 1 and len(next(iter(shapes))) == 1
            if len(self.centroids) != len(self.states) or not vectors:
                raise MixtureError(
                    f"{len(self.states)} clusters need as many sketch centroids, all vectors "
                    "of one length"
                )
        object.__setattr__(
            self,
            "states",
            tuple({b: _readonly(v) for b, v in state.items()} for state in self.states),
        )
        object.__setattr__(self, "centroids", tuple(_readonly(c) for c in self.centroids))

    @classmethod
    def initial(cls, state: Mapping[str, FloatArray], clusters: int = 1) -> ClusterAdapters:
        """``clusters`` identical copies of ``state`` with no previous update."""
        if clusters < 1:
            raise MixtureError(f"clusters must be >= 1, got {clusters}")
        return cls(states=tuple(dict(state) for _ in range(clusters)))

    @property
    def k(self) -> int:
        """Number of clusters."""
        return len(self.states)

    @property
    def block_ids(self) -> tuple[str, ...]:
        """Blocks every cluster carries."""
        return tuple(self.states[0])
