"""The SecAgg+ neighbour graph: complete or k-regular, symmetric, fixed by the session id."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.protocol.secagg.graph import (
    effective_degree,
    holder_graph,
    is_connected,
    neighbour_graph,
)

SID = b"\x11" * 32


def _roster(n: int) -> list[str]:
    return [f"org-{i:03d}" for i in range(n)]


def test_complete_graph_by_default() -> None:
    """Without a degree every organization neighbours every other one."""
    roster = _roster(6)
    graph = neighbour_graph(SID, roster, None)
    assert all(graph[org] == set(roster) - {org} for org in roster)


def test_degree_at_least_n_minus_one_is_complete() -> None:
    """A degree of n − 1 or more gives the complete graph."""
    roster = _roster(5)
    assert neighbour_graph(SID, roster, 9) == neighbour_graph(SID, roster, None)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 60), k=st.integers(2, 59), sid=st.binary(min_size=32, max_size=32))
def test_graph_is_regular_symmetric_and_loop_free(n: int, k: int, sid: bytes) -> None:
    """Every vertex has the effective degree, edges are symmetric, nobody neighbours itself."""
    roster = _roster(n)
    graph = neighbour_graph(sid, roster, k)
    degree = effective_degree(n, k)
    assert degree in {min(k, n - 1), k + 1}
    for org in roster:
        assert len(graph[org]) == degree
        assert org not in graph[org]
        assert all(org in graph[peer] for peer in graph[org])


def test_odd_degree_with_odd_roster_is_raised_by_one() -> None:
    """n·k odd has no k-regular graph, so the degree becomes k + 1."""
    assert effective_degree(11, 3) == 4
    assert effective_degree(12, 3) == 3


def test_graph_is_a_function_of_the_session_id() -> None:
    """The same sid gives the same graph; another sid (another round) gives another one."""
    roster = _roster(40)
    assert neighbour_graph(SID, roster, 6) == neighbour_graph(SID, roster, 6)
    assert neighbour_graph(SID, roster, 6) != neighbour_graph(b"\x12" * 32, roster, 6)


def test_degree_below_two_is_refused() -> None:
    """A degree of 1 cannot keep the graph connected and is refused."""
    with pytest.raises(ValueError, match="at least 2"):
        effective_degree(10, 1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 40),
    k=st.integers(2, 8),
    data=st.data(),
    sid=st.binary(min_size=32, max_size=32),
)
def test_holder_graph_is_connected_regular_on_exactly_the_holders(
    n: int, k: int, data: st.DataObject, sid: bytes
) -> None:
    """A block's graph has its holders as vertices, neighbours among them only, the
    effective degree for their number, and one component: no holder is left alone."""
    roster = _roster(n)
    holders = data.draw(st.sets(st.sampled_from(roster), min_size=3, max_size=n))
    graph = holder_graph(sid, roster, holders, k)
    assert set(graph) == holders
    degree = effective_degree(len(holders), k)
    for org, peers in graph.items():
        assert len(peers) == degree and peers <= holders - {org}
        assert all(org in graph[peer] for peer in peers)
    assert is_connected(graph, holders)


def test_holder_graph_of_the_whole_roster_is_the_roster_graph() -> None:
    """A block every member holds keeps the roster-wide graph (same cost as before)."""
    roster = _roster(30)
    assert holder_graph(SID, roster, set(roster), 6) == neighbour_graph(SID, roster, 6)


def test_holder_graph_follows_the_holder_set() -> None:
    """Two holder sets of one session get independent orderings."""
    roster = _roster(40)
    first = holder_graph(SID, roster, roster[:20], 4)
    second = holder_graph(SID, roster, roster[1:21], 4)
    shared = set(roster[1:20])
    assert any(first[org] & shared != second[org] & shared for org in shared)
    assert holder_graph(SID, roster, roster[:20], 4) == first


def test_is_connected_detects_a_split_and_an_isolated_vertex() -> None:
    """Two separate edges are two components; a vertex with no edge is isolated."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}, "e": set()}
    assert is_connected(graph, {"a", "b"})
    assert not is_connected(graph, {"a", "b", "c", "d"})
    assert not is_connected(graph, {"a", "b", "e"})
    assert not is_connected(graph, set())
