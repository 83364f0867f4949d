"""The aggregator's modules import one another in one direction only."""

from __future__ import annotations

import itertools

import grimp


def test_no_aggregator_module_imports_itself_back() -> None:
    """No two modules of fedhft.aggregator reach each other by imports, counting
    function-local and TYPE_CHECKING imports (which is how a cycle is usually hidden)."""
    graph = grimp.build_graph("fedhft")
    modules = sorted(m for m in graph.modules if m.startswith("fedhft.aggregator."))
    cycles = [
        (a, b)
        for a, b in itertools.combinations(modules, 2)
        if graph.find_shortest_chain(a, b) and graph.find_shortest_chain(b, a)
    ]
    assert cycles == []
