"""Client and server agree on a causal LM's blocks: the server's weightless layout, tier
masks and initial state equal those of the model an organization builds with weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tiny_causal import TinyCausal, causal_consortium
from transformers import PreTrainedModel

from fedhft.model import (
    CausalAdapterModel,
    base_skeleton,
    build_base_model,
    initial_block_state,
    tier_blocks,
    tier_mask,
)


def test_build_base_model_gives_the_causal_lm(tiny_causal: TinyCausal) -> None:
    consortium = causal_consortium(tiny_causal)
    built = build_base_model(consortium.model)
    skeleton = base_skeleton(consortium.model)
    assert isinstance(built, PreTrainedModel)
    assert type(built) is type(skeleton)
    assert type(built).__name__.endswith("ForCausalLM")
    saved = tiny_causal.base().state_dict()
    for name, value in built.state_dict().items():
        assert value.equal(saved[name]), name


def test_initial_block_state_equals_the_built_model_bit_for_bit(tiny_causal: TinyCausal) -> None:
    consortium = causal_consortium(tiny_causal)
    model = CausalAdapterModel(build_base_model(consortium.model), consortium.adapter)
    built = model.get_block_state()
    weightless = initial_block_state(consortium)
    assert list(weightless) == list(built)  # Same blocks in the same order; no head.
    assert not any(block_id.startswith("head") for block_id in weightless)
    for block_id, values in built.items():
        assert weightless[block_id].dtype == np.float64
        assert weightless[block_id].tobytes() == values.tobytes(), block_id


@pytest.mark.parametrize(
    "tier",
    [{}, {"layers": [-1]}, {"modules": ["q_proj", "v_proj"], "row_fraction": 0.5}],
)
def test_tier_mask_equals_the_models_tier(tiny_causal: TinyCausal, tier: dict[str, Any]) -> None:
    consortium = causal_consortium(tiny_causal, tiers={"edge": tier})
    model = CausalAdapterModel(build_base_model(consortium.model), consortium.adapter)
    trained = model.apply_tier(consortium.tiers["edge"])
    assert tier_mask(consortium, "edge") == trained
    assert tier_mask(consortium, "edge") == tier_blocks(model.blocks, consortium.tiers["edge"])
