"""Frozen-A LoRA blocks on tiny causal LMs: layout, A from the seed, tiers, block state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_causal import TinyCausal

from fedhft.model import AdapterError, frozen_a
from fedhft.policies import TierSpec


def test_blocks_are_the_attention_b_matrices_with_seeded_a(tiny_causal: TinyCausal) -> None:
    """Blocks are every layer's q/k/v/o B (zero), in module order; A is `frozen_a`."""
    model = tiny_causal.adapted(rank=4)
    expected = [
        f"layers.{layer}.self_attn.{name}"
        for layer in range(2)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj")
    ]
    assert list(model.block_ids) == expected
    for block in model.blocks:
        assert block.cols == 4
        np.testing.assert_array_equal(model.get_block_state([block.block_id])[block.block_id], 0.0)
        a = model.lora_a(block.block_id)
        np.testing.assert_array_equal(
            a, frozen_a(1234, block.block_id, 4, a.shape[1]).to(torch.float64).numpy()
        )


def test_tiers_pick_layers_modules_and_rows_as_for_classification(tiny_causal: TinyCausal) -> None:
    """A tier trains only its layers' named modules (negative layers count from the top),
    with a leading row slice; every other parameter, A included, is frozen."""
    model = tiny_causal.adapted(targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"))
    assert "layers.0.mlp.up_proj" in model.block_ids
    trained = model.apply_tier(
        TierSpec(layers=[-1], modules=["v_proj", "up_proj"], row_fraction=0.5)
    )
    assert trained == ("layers.1.self_attn.v_proj", "layers.1.mlp.up_proj")
    requires_grad = [p for p in model.peft_model.parameters() if p.requires_grad]
    assert [id(p) for p in requires_grad] == [id(p) for p in model.trainable_parameters()]
    for block_id in trained:
        rows = model.block(block_id).rows
        assert model.row_masks[block_id].tolist() == [True] * (rows // 2) + [False] * (
            rows - rows // 2
        )


def test_set_block_state_validates_everything_before_writing(tiny_causal: TinyCausal) -> None:
    """A state with one bad block (shape, NaN, unknown id) raises AdapterError and changes
    no block; a good state round-trips exactly."""
    model = tiny_causal.adapted()
    first, second = model.blocks[0], model.blocks[1]
    good = np.full(first.shape, 0.25)
    for bad in (
        {second.block_id: np.zeros((second.rows + 1, second.cols))},
        {second.block_id: np.full(second.shape, np.nan)},
        {"layers.9.self_attn.q_proj": np.zeros(first.shape)},
    ):
        with pytest.raises(AdapterError):
            model.set_block_state({first.block_id: good, **bad})
        np.testing.assert_array_equal(model.get_block_state([first.block_id])[first.block_id], 0.0)
    model.set_block_state({first.block_id: good})
    np.testing.assert_array_equal(model.get_block_state([first.block_id])[first.block_id], good)
