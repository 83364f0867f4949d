"""`model.task: causal-lm` in the consortium file: defaults, refusals, an unchanged hash."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedhft.policies import ConsortiumConfig, PolicyError, consortium_hash, parse_policy


def _consortium(examples_dir: Path) -> dict[str, Any]:
    data = yaml.safe_load((examples_dir / "consortium.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _causal(examples_dir: Path) -> dict[str, Any]:
    data = _consortium(examples_dir)
    model = {"source": "huggingface", "name": "/models/tiny-llama", "task": "causal-lm"}
    data["model"] = {**model, "tokenizer_sha256": "0" * 64}
    data["adapter"].pop("target_modules", None)
    for tier in data["tiers"].values():
        tier.pop("modules", None)
    data["personalization"] = {"head": "personal"}
    data["clustering"] = {"clusters": 2, "warmup_rounds": 1}
    return data


def _problems(data: dict[str, Any]) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, ConsortiumConfig, "consortium.yaml")
    return "; ".join(caught.value.problems)


def test_the_default_task_leaves_the_canonical_json_and_hash_unchanged(
    examples_dir: Path,
) -> None:
    """Writing `task: classification` out gives the same configuration hash as leaving
    it out: the default is not part of the canonical JSON."""
    plain = parse_policy(_consortium(examples_dir), ConsortiumConfig, "c.yaml")
    explicit_data = _consortium(examples_dir)
    explicit_data["model"]["task"] = "classification"
    explicit = parse_policy(explicit_data, ConsortiumConfig, "c.yaml")
    assert "task" not in plain.model_dump(mode="json")["model"]
    assert consortium_hash(plain) == consortium_hash(explicit)


def test_causal_lm_defaults_to_attention_targets_and_has_no_head(examples_dir: Path) -> None:
    config = parse_policy(_causal(examples_dir), ConsortiumConfig, "c.yaml")
    assert config.model.task == "causal-lm"
    assert config.adapter.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert not config.shares_head
    dumped = config.model_dump(mode="json")["model"]
    assert dumped["task"] == "causal-lm"
    assert "num_labels" not in dumped and "pooling" not in dumped
    # The causal hash differs from the same file as a classification task.
    assert consortium_hash(config) != consortium_hash(
        parse_policy(_consortium(examples_dir), ConsortiumConfig, "c.yaml")
    )


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["model"].update(num_labels=3), "`model.num_labels` does not apply"),
        (lambda d: d["model"].update(pooling="cls"), "`model.pooling` does not apply"),
        (
            lambda d: d["personalization"].update(label_prior="dp"),
            "label_prior: dp does not apply to model.task: causal-lm",
        ),
        (
            lambda d: d["personalization"].update(head="shared"),
            "personalization.head: shared does not apply",
        ),
        (
            lambda d: next(iter(d["tiers"].values())).update(modules=["dense"]),
            "not among adapter.target_modules",
        ),
    ],
)
def test_what_causal_lm_does_not_support_is_refused(
    examples_dir: Path, mutate: Any, needle: str
) -> None:
    data = copy.deepcopy(_causal(examples_dir))
    mutate(data)
    assert needle in _problems(data)


def test_classification_still_requires_num_labels(examples_dir: Path) -> None:
    data = _consortium(examples_dir)
    del data["model"]["num_labels"]
    assert "`model.num_labels` is required for `model.task: classification`" in _problems(data)
