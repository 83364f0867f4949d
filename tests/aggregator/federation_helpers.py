"""Helpers: a tiny consortium of four organizations on two tiers, for federation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedhft.policies import ConsortiumConfig, OrganizationPolicy

TINY: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 2, "seed": 7}
ORGS = {"clin-a": "full", "clin-b": "edge", "bank-a": "full", "bank-b": "edge"}


def consortium(**overrides: Any) -> ConsortiumConfig:
    """A fedhft consortium on the tiny model: 2 clusters, no warm-up, masking mode."""
    data: dict[str, Any] = {
        "consortium": "tiny-test",
        "model": {"source": "tiny", "num_labels": 4},
        "adapter": {"target_modules": ["query", "value"], "rank": 4, "alpha": 8, "a_seed": 3},
        "tiers": {
            "edge": {"layers": [-1], "modules": ["value"], "keep_ratio": 0.5},
            "full": {"layers": "all", "keep_ratio": 0.5},
        },
        "method": "fedhft",
        "rounds": 2,
        "clustering": {"clusters": 2, "warmup_rounds": 0, "membership": "hard"},
        "training": {"learning_rate": 0.05},
        "secure_aggregation": {"threshold_fraction": 0.75, "max_dropout_fraction": 0.25},
        "enrollment": [{"organization": org} for org in ORGS],
    }
    data.update(overrides)
    return ConsortiumConfig.model_validate(data)


def policy(org: str, state: Path, *, tier: str | None = None, **privacy: Any) -> OrganizationPolicy:
    """An organization policy with its ledger and audit log under ``state`` (its tier
    from `ORGS` unless given)."""
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "tiny-test",
            "privacy": {
                "epsilon": 50.0,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
                "noise_multiplier": 0.8,
                "planned_rounds": 4,
                "ledger_path": str(state / org / "ledger.json"),
                **privacy,
            },
            "training": {"tier": tier or ORGS[org], "batch_size": 8, "local_steps": 3},
            "audit": {"log_path": str(state / org / "audit.jsonl")},
        }
    )
