"""Frozen-A LoRA blocks on tiny causal LMs: layout, A from the seed, state, response logits."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TinyCausal

from fedhft.model import frozen_a


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
