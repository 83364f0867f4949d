"""Who masks with whom: the complete graph, or a k-regular graph derived from H(sid).

SecAgg+ (Bell et al., CCS 2020) replaces the complete graph of SecAgg by a sparse random
graph, so each client exchanges keys, shares and pairwise masks with ``k`` neighbours
only and its cost is O(k·L) instead of O(n·L). Here the graph is a circulant (Harary)
graph on a pseudo-random ordering of the roster: each client is joined to the ``⌊k/2⌋``
clients on either side of it, plus the opposite client when ``k`` is odd.

Notes:
    The ordering is a Fisher–Yates shuffle driven by a ChaCha20 keystream keyed with
    ``HKDF(sid)``. The session id binds the roster, round and cluster, so neither the
    server nor any client chooses the neighbourhoods, and they change every session.
    A k-regular graph on n vertices needs ``n·k`` even; when it is odd the degree is
    raised to ``k + 1`` (see :func:`effective_degree`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._crypto import derive_key, mask_words

_GRAPH_PURPOSE = b"fedhft/secagg/v1/neighbour-graph"


def effective_degree(roster_size: int, degree: int | None) -> int:
    """The degree actually used: ``n − 1`` for the complete graph, else ``k`` or ``k + 1``."""
    if degree is None or degree >= roster_size - 1:
        return roster_size - 1
    if degree < 2:
        raise ValueError(f"a neighbour degree must be at least 2, got {degree}")
    return degree + 1 if (roster_size * degree) % 2 else degree


def neighbour_graph(
    sid: bytes, roster: Sequence[str], degree: int | None
) -> Mapping[str, frozenset[str]]:
    """Each roster member's neighbours (never itself), symmetric and regular."""
    n = len(roster)
    k = effective_degree(n, degree)
    if k == n - 1:
        everyone = frozenset(roster)
        return {org: everyone - {org} for org in roster}
    order = _shuffled(sid, list(roster))
    position = {org: index for index, org in enumerate(order)}
    offsets = set(range(1, k // 2 + 1)) | {n - d for d in range(1, k // 2 + 1)}
    if k % 2:
        offsets.add(n // 2)
    return {
        org: frozenset(order[(position[org] + offset) % n] for offset in offsets) for org in roster
    }


def _shuffled(sid: bytes, items: list[str]) -> list[str]:
    """Fisher–Yates shuffle with unbiased draws (rejection sampling) from a ChaCha20 PRG."""
    key = derive_key(sid, purpose=_GRAPH_PURPOSE, sid=sid)
    # Rejection discards less than half of the draws, so 8 words per item is plenty;
    # more are generated in the (astronomically unlikely) case they run out.
    words = mask_words(key, 8 * len(items) + 64, 32)
    cursor = 0
    for i in range(len(items) - 1, 0, -1):
        bound = i + 1
        limit = (2**32 // bound) * bound
        while True:
            if cursor == len(words):
                key = derive_key(key, purpose=_GRAPH_PURPOSE, sid=sid)
                words = mask_words(key, 8 * len(items) + 64, 32)
                cursor = 0
            draw = int(np.uint64(words[cursor]))
            cursor += 1
            if draw < limit:
                break
        j = draw % bound
        items[i], items[j] = items[j], items[i]
    return items
