"""Cluster centroids from the organizations' DP sketches (``clustering.signal: sketch``).

Each organization releases once, through an accounted Gaussian mechanism, the sum of its
records' unit-norm sentence embeddings, scaled to unit norm (`fedhft.sdk.privacy._releases`).
When the clusters split, the server groups these releases with k-means (Lloyd's
algorithm, k-means++ seeding; `scipy.cluster.vq.kmeans2`) and publishes the K centroids
with the cluster adapters; each organization then computes its own membership from its
release and the centroids (`sketch_membership` in `sdk/_mixture.py`).

Notes:
    Everything here is post-processing of DP releases, so it costs no further privacy.
    The server does learn which centroid each release is closest to, hence each
    organization's cluster: a function of the release that its ledger accounts for.
    The restarts are seeded from the run id, so a restarted server computes the same
    centroids from the same sketches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from scipy.cluster.vq import ClusterError, kmeans2

FloatArray = npt.NDArray[np.float64]

_RESTARTS = 16
_SEED_TAG = b"fedhft/sketch-centroids/v1"


def sketch_centroids(
    sketches: Mapping[str, npt.ArrayLike], k: int, *, run_id: str
) -> tuple[FloatArray, ...]:
    """K centroids of the sketches: the best of several seeded k-means runs.

    "Best" is the smallest within-cluster sum of squares among the runs that leave no
    cluster empty. Centroids are ordered by their first member in organization order,
    so the result does not depend on the seeds' labelling.

    Raises:
        ValueError: fewer sketches than clusters, or sketches of different lengths.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(sketches) < k:
        raise ValueError(f"{k} clusters need at least {k} sketches, got {len(sketches)}")
    organizations = sorted(sketches)
    lengths = {np.shape(sketches[org]) for org in organizations}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError("sketches must be vectors of one length")
    points = np.stack([np.asarray(sketches[org], dtype=np.float64) for org in organizations])
    seed = hashlib.sha256(_SEED_TAG + run_id.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(seed, "big"))
    best: tuple[float, FloatArray, npt.NDArray[np.int64]] | None = None
    for _ in range(_RESTARTS):
        try:
            centroids, labels = kmeans2(points, k, minit="++", seed=rng, missing="raise")
        except ClusterError:
            continue
        if len(set(labels.tolist())) < k:
            continue
        inertia = float(((points - centroids[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, centroids, labels)
    if best is None:
        # Every run left a cluster empty (duplicate sketches): one sketch per centroid.
        return tuple(points[i].copy() for i in range(k))
    _, centroids, labels = best
    order = sorted(range(k), key=lambda j: int(np.flatnonzero(labels == j)[0]))
    return tuple(np.asarray(centroids[j], dtype=np.float64) for j in order)
