"""A running aggregation server's rounds, read through its store, for progress reports."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from fedhft.aggregator import AggregatorStore, StateError


def server_attempts(state_dir: Path) -> list[dict[str, Any]]:
    """Every round attempt the server at ``state_dir`` recorded so far, oldest first.

    Each is ``{round, attempt, status, seconds, summary}``; ``seconds`` is None while
    the attempt is open. Empty while the server has not created its state yet, or when
    the state cannot be read at this instant (the server is writing it): progress is
    polled, so the next poll reads it.
    """
    try:
        store = AggregatorStore(state_dir)
    except StateError:
        return []
    try:
        attempts = store.attempts()
    except sqlite3.Error:
        return []
    finally:
        store.close()
    return [
        {
            "round": a["round"],
            "attempt": a["attempt"],
            "status": a["status"],
            "seconds": (a["finished_at"] - a["started_at"])
            if a["finished_at"] is not None
            else None,
            "summary": a["summary"],
        }
        for a in attempts
    ]
