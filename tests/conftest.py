"""Shared fixtures: where the example policy files are."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The example policy files shipped inside `fedhft.policies`."""
    return Path(str(files("fedhft.policies") / "examples"))
