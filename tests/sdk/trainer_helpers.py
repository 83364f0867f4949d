"""Consortium, policy and audit sink of the tiny-model trainer tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedhft.policies import ConsortiumConfig, OrganizationPolicy

ORG = "org-a"


def tiny_consortium(**changes: Any) -> ConsortiumConfig:
    """A consortium on the tiny random BERT (2 layers) with four tiers."""
    data: dict[str, Any] = {
        "consortium": "test-consortium",
        "model": {"source": "tiny", "num_labels": 4},
        "adapter": {"target_modules": ["query", "value"], "rank": 4, "alpha": 8, "a_seed": 11},
        "tiers": {
            "edge": {"layers": [-1], "modules": ["value"]},
            "standard": {"layers": [-1]},
            "full": {"layers": "all"},
            "sliced": {"layers": "all", "row_fraction": 0.5},
        },
        "rounds": 3,
        "clustering": {"clusters": 2, "warmup_rounds": 1, "temperature": 0.1},
        "training": {"learning_rate": 0.05},
        "enrollment": [{"organization": ORG}],
    }
    data.update(changes)
    return ConsortiumConfig.model_validate(data)


def tiny_policy(
    tmp_path: Path, *, privacy: Mapping[str, Any] | None = None, **training: Any
) -> OrganizationPolicy:
    """A policy of org-a with a fixed σ, small steps and its ledger under tmp_path."""
    return OrganizationPolicy.model_validate(
        {
            "organization": ORG,
            "consortium": "test-consortium",
            "privacy": {
                "epsilon": 50.0,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.0,
                "planned_rounds": 3,
                "ledger_path": str(tmp_path / "ledger.json"),
                **(privacy or {}),
            },
            "training": {
                "tier": "full",
                "batch_size": 16,
                "local_steps": 4,
                "max_seq_length": 32,
                **training,
            },
        }
    )


class RecordingAudit:
    """An AuditSink that keeps the events in memory."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def append(self, event_type: str, payload: Mapping[str, object]) -> object:
        self.events.append((event_type, dict(payload)))
        return None
