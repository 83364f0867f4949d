"""Who masks with whom: the complete graph, or a k-regular graph derived from H(sid).

SecAgg+ (Bell et al., CCS 2020) replaces the complete graph of SecAgg by a sparse random
graph, so each client exchanges keys, shares and pairwise masks with ``k`` neighbours
only and its cost is O(k·L) instead of O(n·L). Here the graph is a circulant (Harary)
graph on a pseudo-random ordering of its vertices: each client is joined to the
``⌊k/2⌋`` clients on either side of it, plus the opposite client when ``k`` is odd.

A block held by part of the roster is masked on a graph of its own, built the same way
on exactly its holders (:func:`holder_graph`): a graph on the whole roster restricted to
the holders can leave a holder with no holder neighbour, and then its masked input
carries only its self mask, which the server removes for every survivor.

Notes:
    The ordering is a Fisher–Yates shuffle driven by a ChaCha20 keystream keyed with
    ``HKDF(sid)`` (and the holder set, for a holder graph). The session id binds the
    roster, round, cluster and block supports, so neither the server nor any client
    chooses the neighbourhoods, and they change every session. A k-regular graph on n
    vertices needs ``n·k`` even; when it is odd the degree is raised to ``k + 1`` (see
    :func:`effective_degree`). Every such circulant graph contains the cycle through
    the ordering (offset 1), so it is connected and no vertex is isolated.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from .._crypto import derive_key, frame, mask_words

_GRAPH_PURPOSE = b"fedhft/secagg/v1/neighbour-graph"
_HOLDER_GRAPH_PURPOSE = b"fedhft/secagg/v1/holder-graph"


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
    return _circulant(derive_key(sid, purpose=_GRAPH_PURPOSE, sid=sid), sid, roster, degree)


def holder_graph(
    sid: bytes, roster: Sequence[str], holders: Collection[str], degree: int | None
) -> Mapping[str, frozenset[str]]:
    """The masking graph of a block held by ``holders``: k-regular on exactly them.

    For a block every roster member holds it is :func:`neighbour_graph`; otherwise its
    ordering is keyed by the session id and the holder set, so blocks with the same
    holders share one graph and every other holder set gets an independent one.
    """
    members = sorted(holders)
    if set(members) == set(roster):
        return neighbour_graph(sid, roster, degree)
    key = derive_key(
        sid,
        purpose=_HOLDER_GRAPH_PURPOSE,
        sid=sid,
        context=[frame(org.encode() for org in members)],
    )
    return _circulant(key, sid, members, degree)


def is_connected(graph: Mapping[str, Collection[str]], vertices: Collection[str]) -> bool:
    """Whether ``vertices`` form one component of ``graph`` restricted to them."""
    remaining = set(vertices)
    if not remaining:
        return False
    frontier = [remaining.pop()]
    while frontier:
        reached = [peer for peer in graph[frontier.pop()] if peer in remaining]
        remaining.difference_update(reached)
        frontier.extend(reached)
    return not remaining


def _circulant(
    key: bytes, sid: bytes, members: Sequence[str], degree: int | None
) -> Mapping[str, frozenset[str]]:
    n = len(members)
    k = effective_degree(n, degree)
    if k == n - 1:
        everyone = frozenset(members)
        return {org: everyone - {org} for org in members}
    order = _shuffled(key, sid, list(members))
    position = {org: index for index, org in enumerate(order)}
    offsets = set(range(1, k // 2 + 1)) | {n - d for d in range(1, k // 2 + 1)}
    if k % 2:
        offsets.add(n // 2)
    return {
        org: frozenset(order[(position[org] + offset) % n] for offset in offsets) for org in members
    }


def _shuffled(key: bytes, sid: bytes, items: list[str]) -> list[str]:
    """Fisher–Yates shuffle with unbiased draws (rejection sampling) from a ChaCha20 PRG."""
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
