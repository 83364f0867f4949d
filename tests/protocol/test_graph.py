"""The SecAgg+ neighbour graph: complete or k-regular, symmetric, fixed by the session id."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.protocol._graph import effective_degree, neighbour_graph

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
