"""Ways to damage a server's SQLite state file, shared by the store and fault tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path


def sql_damage(statement: str) -> Callable[[Path], None]:
    """A damage that runs one SQL statement on the state file."""

    def damage(path: Path) -> None:
        with sqlite3.connect(path) as db:
            db.execute(statement)
        db.close()

    return damage


def truncate_half(path: Path) -> None:
    """Cut the file to its first half, as a copy interrupted mid-way would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def torn_page(path: Path) -> None:
    """Zero a b-tree page's cells, as a torn write would."""
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page + 8 : 3 * page] = bytes(page - 8)
    path.write_bytes(bytes(data))
