"""Frozen-A LoRA blocks, tier masks, per-block state and PEFT export (fedhft.model._adapters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from trainer_helpers import tiny_consortium

from fedhft.model import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    frozen_a,
    get_block_state,
    set_block_state,
    tier_mask,
)
from fedhft.policies import ConsortiumConfig, PersonalizationSpec, TierSpec
from fedhft.sdk import AdapterError, MaskedAdapterModel, build_base_model, export_peft

LAYER0 = ["layer.0.attention.self.query", "layer.0.attention.self.value"]
LAYER1 = ["layer.1.attention.self.query", "layer.1.attention.self.value"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def consortium() -> ConsortiumConfig:
    """The tiny test consortium."""
    return tiny_consortium()


def _model(consortium: ConsortiumConfig) -> MaskedAdapterModel:
    return MaskedAdapterModel.from_consortium(consortium)


def test_block_ids_are_stable_and_in_fixed_order(consortium: ConsortiumConfig) -> None:
    """Blocks are one B per target module per layer in module order, then the head."""
    model = _model(consortium)
    assert model.block_ids == (*LAYER0, *LAYER1, HEAD_WEIGHT, HEAD_BIAS)
    assert model.block("layer.1.attention.self.value").shape == (32, 4)
    assert model.block(HEAD_WEIGHT).shape == (4, 32)
    assert model.block(HEAD_BIAS).shape == (4, 1)


def test_frozen_a_is_deterministic_and_independent_of_global_rng(
    consortium: ConsortiumConfig,
) -> None:
    """Two organizations build bit-identical A and head whatever torch's global RNG did."""
    torch.manual_seed(1)
    first = _model(consortium)
    torch.manual_seed(2)
    torch.rand(100)
    second = _model(consortium)
    for block_id in (*LAYER0, *LAYER1):
        assert np.array_equal(first.lora_a(block_id), second.lora_a(block_id))
    assert np.array_equal(
        first.get_block_state([HEAD_WEIGHT])[HEAD_WEIGHT],
        second.get_block_state([HEAD_WEIGHT])[HEAD_WEIGHT],
    )
    assert not np.array_equal(first.lora_a(LAYER0[0]), first.lora_a(LAYER0[1]))


def test_building_a_model_leaves_global_rng_untouched(consortium: ConsortiumConfig) -> None:
    """Wrapping draws nothing from torch's global generator."""
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _model(consortium)
    assert torch.equal(torch.rand(3), expected)


def test_a_depends_on_the_adapter_seed() -> None:
    """Another consortium seed gives another A (the seed is what makes A shared)."""
    assert not torch.equal(frozen_a(1, LAYER0[0], 4, 32), frozen_a(2, LAYER0[0], 4, 32))
    assert torch.equal(frozen_a(1, LAYER0[0], 4, 32), frozen_a(1, LAYER0[0], 4, 32))


def test_b_starts_at_zero_so_the_adapter_starts_as_the_base(
    consortium: ConsortiumConfig,
) -> None:
    """Zero-initialised B: the wrapped model computes exactly the base model's features."""
    model = _model(consortium)
    state = model.get_block_state()
    assert all(not state[b].any() for b in (*LAYER0, *LAYER1))


def test_tier_mask_from_config_matches_the_model(consortium: ConsortiumConfig) -> None:
    """The public tier mask (from the config alone) equals what the model trains and
    uploads: every trained block, less the head when heads are personal."""
    model = _model(consortium)
    shared = consortium.model_copy(update={"personalization": PersonalizationSpec(head="shared")})
    assert not consortium.shares_head and shared.shares_head
    for name, tier in consortium.tiers.items():
        trained = model.apply_tier(tier)
        assert tier_mask(shared, name) == trained
        assert tier_mask(consortium, name) == tuple(b for b in trained if not b.startswith("head."))
    assert tier_mask(consortium, "edge") == ("layer.1.attention.self.value",)


def test_only_the_tiers_b_blocks_and_head_require_grad(consortium: ConsortiumConfig) -> None:
    """Everything outside the tier (base, every A, other B) is frozen."""
    model = _model(consortium)
    model.apply_tier(consortium.tiers["edge"])
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, parameter in model.peft_model.named_parameters():
        assert parameter.requires_grad == (id(parameter) in trainable), name
    assert len(trainable) == 3


def test_lower_tiers_have_strictly_fewer_trainable_parameters(
    consortium: ConsortiumConfig,
) -> None:
    """edge < standard < full in trainable parameters, counted from requires_grad."""
    model = _model(consortium)
    counts = []
    for name in ("edge", "standard", "full"):
        model.apply_tier(consortium.tiers[name])
        counted = sum(p.numel() for p in model.peft_model.parameters() if p.requires_grad)
        assert counted == model.num_trainable()
        counts.append(counted)
    assert counts[0] < counts[1] < counts[2]


def test_row_slice_trains_a_fixed_prefix_of_rows(consortium: ConsortiumConfig) -> None:
    """row_fraction 0.5 marks the first half of every B's rows trainable, all head rows."""
    model = _model(consortium)
    model.apply_tier(consortium.tiers["sliced"])
    mask = model.row_masks[LAYER0[0]]
    assert mask[:16].all() and not mask[16:].any()
    assert model.row_masks[HEAD_WEIGHT].all()
    full = sum(p.numel() for p in model.trainable_parameters())
    assert model.num_trainable() == full - 4 * 16 * 4


def test_unknown_tier_and_missing_layer_are_rejected(consortium: ConsortiumConfig) -> None:
    """A tier naming a layer the model lacks, or an unknown tier, is an AdapterError."""
    with pytest.raises(AdapterError, match="unknown tier"):
        tier_mask(consortium, "gold")
    model = _model(consortium)
    with pytest.raises(AdapterError, match="does not exist in a model of 2 layers"):
        model.apply_tier(TierSpec(layers=[-3]))


def test_targets_matching_nothing_are_rejected(consortium: ConsortiumConfig) -> None:
    """Adapter targets that name no linear layer are an error, not an empty adapter."""
    adapter = consortium.adapter.model_copy(update={"target_modules": ["nonexistent"]})
    with pytest.raises(AdapterError, match="match no linear layer"):
        MaskedAdapterModel(build_base_model(consortium.model), adapter)


def test_block_state_round_trips(consortium: ConsortiumConfig) -> None:
    """set_block_state then get_block_state returns the values (float32-exact)."""
    model = _model(consortium)
    rng = np.random.default_rng(0)
    state = {
        b: rng.normal(size=model.block(b).shape).astype(np.float32).astype(np.float64)
        for b in model.block_ids
    }
    set_block_state(model, state)
    back = get_block_state(model)
    assert set(back) == set(state)
    for block_id, values in state.items():
        assert np.array_equal(back[block_id], values)
    bias = model.parameter(HEAD_BIAS).detach().numpy()
    assert np.array_equal(bias, state[HEAD_BIAS][:, 0].astype(np.float32))


@pytest.mark.parametrize(
    "bad",
    [
        {"layer.0.attention.self.query": np.zeros((32, 5))},
        {"layer.0.attention.self.query": np.full((32, 4), np.nan)},
        {"layer.9.attention.self.query": np.zeros((32, 4))},
    ],
)
def test_bad_block_state_is_rejected_without_partial_write(
    consortium: ConsortiumConfig, bad: dict[str, np.ndarray]
) -> None:
    """A wrong shape, a NaN or an unknown block changes no block at all."""
    model = _model(consortium)
    before = model.get_block_state()
    state = {HEAD_WEIGHT: np.ones((4, 32)), **bad}
    with pytest.raises(AdapterError):
        model.set_block_state(state)
    after = model.get_block_state()
    assert all(np.array_equal(before[b], after[b]) for b in before)


# Plain PEFT calls a transformers method deprecated in v5 while loading.
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_exported_adapter_loads_with_plain_peft_and_same_logits(
    consortium: ConsortiumConfig, tmp_path: Path
) -> None:
    """PeftModel.from_pretrained(base, path) reproduces the personalized model's logits."""
    model = _model(consortium)
    rng = np.random.default_rng(3)
    model.set_block_state({b: rng.normal(size=model.block(b).shape) for b in model.block_ids})
    ids = torch.randint(1000, 20000, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    model.peft_model.eval()
    with torch.no_grad():
        expected = model.logits(ids, mask)
    export_peft(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    loaded = PeftModel.from_pretrained(build_base_model(consortium.model), tmp_path / "adapter")
    loaded.eval()
    with torch.no_grad():
        logits = loaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(logits, expected)
    saved_a = dict(loaded.named_parameters())[
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"
    ]
    assert np.array_equal(saved_a.detach().numpy(), model.lora_a(LAYER0[0]).astype(np.float32))
