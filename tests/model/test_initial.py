"""The weightless initial block state equals the one of a model built with its weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhft.model import (
    MaskedAdapterModel,
    MoLEModel,
    build_base_model,
    initial_block_state,
    initial_mole_state,
)
from fedhft.policies import ConsortiumConfig


def _consortium(
    source: str,
    *,
    num_labels: int = 3,
    targets: tuple[str, ...] = ("query", "value"),
    rank: int = 4,
    a_seed: int = 3,
    num_experts: int = 4,
) -> ConsortiumConfig:
    data: dict[str, Any] = {
        "consortium": "initial",
        "model": {"source": source, "num_labels": num_labels},
        "adapter": {"target_modules": list(targets), "rank": rank, "alpha": 8, "a_seed": a_seed},
        "tiers": {"full": {"min_experts": 1, "max_experts": num_experts}},
        "method": "fedamole",
        "rounds": 1,
        "fedamole": {"num_experts": num_experts, "holders_per_expert": 3},
        "enrollment": [{"organization": o} for o in ("a", "b", "c")],
    }
    return ConsortiumConfig.model_validate(data)


def _assert_bit_equal(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected)  # Same blocks, same (block) order.
    for block_id, values in expected.items():
        assert actual[block_id].dtype == np.float64, block_id
        assert actual[block_id].shape == values.shape, block_id
        assert actual[block_id].tobytes() == values.tobytes(), block_id


def _check(config: ConsortiumConfig) -> None:
    built = MaskedAdapterModel.from_consortium(config).get_block_state()
    _assert_bit_equal(built, initial_block_state(config))
    mole = MoLEModel(
        build_base_model(config.model),
        config.adapter,
        expert_ids=range(config.fedamole.num_experts),
    )
    _assert_bit_equal(mole.get_state(), initial_mole_state(config))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_labels=st.integers(2, 5),
    targets=st.sampled_from([("query",), ("query", "value"), ("key", "dense")]),
    rank=st.integers(1, 8),
    a_seed=st.integers(0, 2**31),
    num_experts=st.integers(1, 4),
)
def test_tiny_initial_state_equals_the_built_models(
    num_labels: int, targets: tuple[str, ...], rank: int, a_seed: int, num_experts: int
) -> None:
    """For any tiny consortium shape, every block (head weight and bias, B, router P)
    equals, bit for bit, what MaskedAdapterModel / MoLEModel start from."""
    _check(
        _consortium(
            "tiny",
            num_labels=num_labels,
            targets=targets,
            rank=rank,
            a_seed=a_seed,
            num_experts=num_experts,
        )
    )


def test_minilm_initial_state_equals_the_built_models() -> None:
    """With the pretrained MiniLM, the weightless state equals the loaded models' bit for bit."""
    _check(_consortium("minilm", num_labels=4, a_seed=11, num_experts=3))


def test_initial_head_is_not_trivial() -> None:
    """The head starts from the seeded draw (not zero) and depends on the adapter seed."""
    one = initial_block_state(_consortium("tiny", a_seed=1))["head.weight"]
    two = initial_block_state(_consortium("tiny", a_seed=2))["head.weight"]
    assert np.any(one != 0.0)
    assert not np.array_equal(one, two)


@pytest.mark.parametrize("source", ["tiny", "minilm"])
def test_initial_state_loads_no_weights(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Computing the initial states never builds or loads the base model."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the base model was built")

    monkeypatch.setattr("fedhft.model._base.build_base_model", refuse)
    monkeypatch.setattr("transformers.PreTrainedModel.from_pretrained", refuse)
    config = _consortium(source)
    assert initial_block_state(config)
    assert initial_mole_state(config)
