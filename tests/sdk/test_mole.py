"""Mixture of LoRA experts: routing, plain-LoRA equivalence, DP-SGD (fedhft.model._mole)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from torch import nn

from fedhft.model import (
    AdapterError,
    MoLELinear,
    MoLEModel,
    expert_a,
    expert_block_id,
    frozen_a,
    install_mole,
    router_block_id,
    safetensors_metadata,
    shared_block_id,
)
from fedhft.policies import AdapterSpec, ModelSpec
from fedhft.sdk import MaskedAdapterModel, build_base_model
from fedhft.sdk.mole._private_step import MoLEPrivateStep
from fedhft.sdk.privacy import SecureGaussian

ADAPTER = AdapterSpec(target_modules=["query", "value"], rank=4, alpha=8, a_seed=5)
TINY = ModelSpec(source="tiny", num_labels=3)
BLOCK = "layer.1.attention.self.value"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _mole(expert_ids: list[int], top_k: int = 2) -> MoLEModel:
    return MoLEModel(build_base_model(TINY), ADAPTER, expert_ids=expert_ids, top_k=top_k)


def _randomize(model: MoLEModel, seed: int = 0, std: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules.values():
            for parameter in (module.shared.lora_b, module.experts.lora_b):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            module.router.projection.mul_(5.0)


def _batch(size: int = 4, length: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 900, (size, length), generator=generator)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, length - 2 :] = 0
    labels = torch.arange(size) % 3
    return ids, mask, labels


def _module(expert_ids: list[int], top_k: int) -> MoLELinear:
    base = nn.Linear(16, 8)
    return MoLELinear(base, block_id=BLOCK, adapter=ADAPTER, expert_ids=expert_ids, top_k=top_k)


def test_one_expert_k1_equals_plain_lora_module() -> None:
    """One held expert, k = 1 and a zero shared expert give ``base(x) + s·B A x``."""
    module = _module([3], top_k=1)
    b = torch.randn(8, 4)
    with torch.no_grad():
        module.experts.lora_b[0].copy_(b)
    x = torch.randn(2, 5, 16)
    a = expert_a(ADAPTER.a_seed, BLOCK, 3, 4, 16)
    expected = module.base(x) + (ADAPTER.alpha / ADAPTER.rank) * (x @ a.t() @ b.t())
    torch.testing.assert_close(module(x), expected)


def test_one_expert_k1_model_equals_peft_lora_model() -> None:
    """A MoLE model with one expert equals PEFT frozen-A LoRA with the same A, B and head."""
    mole = _mole([0], top_k=1)
    _randomize(mole)
    for module in mole.modules.values():
        with torch.no_grad():
            module.shared.lora_b.zero_()
    lora = MaskedAdapterModel(build_base_model(TINY), ADAPTER)
    peft_modules = dict(lora.peft_model.base_model.model.named_modules())
    for block in lora.blocks:
        if block.layer is None:
            continue
        with torch.no_grad():
            peft_modules[block.path].lora_A["default"].weight.copy_(
                expert_a(ADAPTER.a_seed, block.block_id, 0, 4, 32)
            )
    lora.set_block_state(
        {
            b.block_id: mole.get_state([expert_block_id(b.block_id, 0)]).popitem()[1]
            for b in lora.blocks
            if b.layer is not None
        }
    )
    lora.set_block_state(mole.get_state(["head.weight", "head.bias"]))
    ids, mask, _ = _batch()
    mole.model.eval()
    lora.peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(mole.logits(ids, mask), lora.logits(ids, mask))


def test_gates_sum_to_one_over_top_k_held_experts() -> None:
    """Gates are non-negative, sum to 1, and exactly k of the held experts are non-zero."""
    module = _module([1, 4, 6, 7], top_k=2)
    with torch.no_grad():
        module.router.projection.mul_(10.0)
    module(torch.randn(3, 9, 16))
    gates = module.last_gates
    assert gates is not None and gates.shape == (3, 9, 4)
    torch.testing.assert_close(gates.sum(dim=-1), torch.ones(3, 9))
    assert bool((gates >= 0).all())
    assert bool(((gates > 0).sum(dim=-1) == 2).all())


def test_top_k_is_capped_by_held_experts() -> None:
    """k larger than the held experts uses all of them (the router shape never changes)."""
    module = _module([2], top_k=2)
    module(torch.randn(2, 3, 16))
    assert module.top_k == 1
    assert module.last_gates is not None
    torch.testing.assert_close(module.last_gates, torch.ones(2, 3, 1))


def test_router_score_is_scaled_dot_product_of_expert_and_token_embeddings() -> None:
    """Router probabilities are softmax over held e of ⟨A_e x, P x⟩/√r."""
    module = _module([0, 5], top_k=2)
    x = torch.randn(4, 16)
    a0, a5 = (expert_a(ADAPTER.a_seed, BLOCK, e, 4, 16) for e in (0, 5))
    p = module.router.projection.detach()
    scores = torch.stack([((x @ a.t()) * (x @ p.t())).sum(-1) for a in (a0, a5)], dim=-1) / 2.0
    torch.testing.assert_close(module.router(x), torch.softmax(scores, dim=-1))


def test_only_held_experts_exist_and_get_gradients() -> None:
    """State holds exactly the held experts; an expert outside every top-k gets no gradient."""
    model = _mole([1, 3, 6], top_k=1)
    _randomize(model)
    expert_ids = {b for b in model.block_ids if ".expert" in b}
    assert {b.rsplit(".expert", 1)[1] for b in expert_ids} == {"1", "3", "6"}
    with pytest.raises(AdapterError, match="holds experts"):
        model.get_state([expert_block_id(BLOCK, 2)])
    ids, mask, labels = _batch()
    loss = nn.functional.cross_entropy(model.logits(ids, mask), labels)
    loss.backward()
    # Value projections of unpadded tokens all reach the logits (a query does not: the
    # last layer only uses the first token's query).
    for block_id, module in model.modules.items():
        gates = module.last_gates
        assert gates is not None and module.experts.lora_b.grad is not None
        if not block_id.endswith("value"):
            continue
        used = (gates[mask.bool()] > 0).any(dim=0)
        grad_norms = module.experts.lora_b.grad.flatten(1).norm(dim=1)
        assert bool((grad_norms[~used] == 0).all())
        assert bool((grad_norms[used] > 0).all())
    # One token with k = 1 uses exactly one held expert: the others get no gradient.
    module = _module([0, 4, 9], top_k=1)
    with torch.no_grad():
        module.experts.lora_b.normal_()
    module(torch.randn(1, 16)).sum().backward()
    assert module.experts.lora_b.grad is not None and module.last_gates is not None
    has_grad = module.experts.lora_b.grad.flatten(1).norm(dim=1) > 0
    assert has_grad.tolist() == (module.last_gates[0] > 0).tolist()
    assert int(has_grad.sum()) == 1


def test_balance_loss_is_per_example() -> None:
    """An example's balancing loss does not depend on the other examples of its batch."""
    model = _mole([0, 1, 2], top_k=2)
    _randomize(model)
    ids, mask, _ = _batch()
    model.logits(ids, mask)
    batched = model.balance_loss()
    model.logits(ids[2:3], mask[2:3])
    torch.testing.assert_close(batched[2:3], model.balance_loss())
    assert bool((batched >= 1.0 - 1e-6).all())  # E·Σ f·p ≥ 1 is the balanced optimum.


def test_dp_step_clips_per_sample_gradients_like_by_hand() -> None:
    """With σ = 0 the DP gradient is Σ_i clip(∇ℓ_i, C) / B, ℓ_i including the balancing loss."""
    model = _mole([0, 2, 3], top_k=2)
    _randomize(model)
    ids, mask, labels = _batch()
    weight, clip, size = 0.5, 0.05, labels.numel()
    params = model.trainable_parameters()
    expected = [torch.zeros_like(p) for p in params]
    for i in range(size):
        logits = model.logits(ids[i : i + 1], mask[i : i + 1])
        loss = nn.functional.cross_entropy(logits, labels[i : i + 1])
        loss = loss + weight * model.balance_loss().mean()
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        assert float(norm) > clip  # The test exercises clipping.
        for total, grad in zip(expected, grads, strict=True):
            total += grad * min(1.0, clip / (float(norm) + 1e-6))
    optimizer = torch.optim.SGD(params, lr=0.0)
    with MoLEPrivateStep(
        model,
        optimizer,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=size,
        noise_sampler=SecureGaussian(),
        balance_weight=weight,
    ) as step:
        step.step(ids, mask, labels)
        for parameter, total in zip(params, expected, strict=True):
            assert parameter.grad is not None
            torch.testing.assert_close(parameter.grad, total / size, rtol=1e-4, atol=1e-7)


def test_dp_step_trains_and_leaves_model_clean() -> None:
    """A noisy DP step changes the trainable blocks and removes Opacus state on exit."""
    model = _mole([0, 1], top_k=2)
    before = model.get_state()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    ids, mask, labels = _batch()
    with MoLEPrivateStep(
        model,
        optimizer,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
        noise_sampler=SecureGaussian(),
    ) as step:
        assert np.isfinite(step.step(ids, mask, labels))
        step.step(ids[:0], mask[:0], labels[:0])
    after = model.get_state()
    assert all(not np.array_equal(before[b], after[b]) for b in before)
    assert not any(hasattr(p, "grad_sample") for p in model.model.parameters())


def test_shared_and_router_use_their_own_seeded_a() -> None:
    """Shared A, initial P and each expert's A come from the public seed and differ."""
    module = _module([0, 1], top_k=2)
    shared = frozen_a(ADAPTER.a_seed, shared_block_id(BLOCK), 4, 16)
    router = frozen_a(ADAPTER.a_seed, router_block_id(BLOCK), 4, 16)
    torch.testing.assert_close(module.shared.lora_a, shared)
    torch.testing.assert_close(module.router.projection.detach(), router)
    assert not torch.equal(module.experts.expert_as[0], module.experts.expert_as[1])


def test_state_round_trips_and_rejects_bad_shapes() -> None:
    """set_state then get_state returns the values; a wrong shape writes nothing."""
    model = _mole([2, 5])
    block = expert_block_id(BLOCK, 5)
    values = np.arange(32 * 4, dtype=np.float64).reshape(32, 4) / 100
    model.set_state({block: values})
    np.testing.assert_allclose(model.get_state([block])[block], values, rtol=1e-6)
    with pytest.raises(AdapterError, match="shape"):
        model.set_state({shared_block_id(BLOCK): values, block: np.zeros((4, 32))})
    np.testing.assert_allclose(model.get_state([shared_block_id(BLOCK)])[shared_block_id(BLOCK)], 0)
    with pytest.raises(AdapterError, match="NaN"):
        model.set_state({block: np.full((32, 4), np.nan)})


def test_an_exported_personalized_model_loads_with_identical_logits(tmp_path: Path) -> None:
    """`MoLEModel.save` then `MoLEModel.load` on a fresh base gives the same experts and
    the same logits; a file that is not an export is refused."""
    model = _mole([1, 3], top_k=1)
    _randomize(model, seed=4)
    path = tmp_path / "personal-mole.safetensors"
    model.save(path)
    loaded = MoLEModel.load(path, build_base_model(TINY))
    assert loaded.expert_ids == (1, 3) and loaded.top_k == 1
    ids, mask, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(ids, mask), model.logits(ids, mask))
    other = tmp_path / "other.safetensors"
    other.write_bytes(path.read_bytes().replace(b"fedhft-mole/v1", b"fedhft-xxxx/v1"))
    with pytest.raises(AdapterError, match="not a fedhft MoLE export"):
        MoLEModel.load(other, build_base_model(TINY))
    # A file saved before the export recorded its task is a classification model.
    assert safetensors_metadata(path.read_bytes())["task"] == "classification"
    metadata = safetensors_metadata(path.read_bytes())
    del metadata["task"]
    older = tmp_path / "older.safetensors"
    older.write_bytes(save_arrays(load_arrays(path.read_bytes()), metadata=metadata))
    assert MoLEModel.load(older, build_base_model(TINY)).get_state().keys() == (
        model.get_state().keys()
    )


@pytest.mark.parametrize(
    ("expert_ids", "top_k", "message"),
    [([], 2, "at least one"), ([1, 1], 2, "distinct"), ([-1], 1, "distinct"), ([0], 0, "top_k")],
)
def test_bad_expert_sets_are_rejected(expert_ids: list[int], top_k: int, message: str) -> None:
    """Empty, repeated or negative expert ids and k < 1 raise AdapterError."""
    with pytest.raises(AdapterError, match=message):
        install_mole(build_base_model(TINY), ADAPTER, expert_ids=expert_ids, top_k=top_k)


def test_installing_twice_is_refused() -> None:
    """install_mole on a model that already has MoLE modules raises AdapterError."""
    base = build_base_model(TINY)
    install_mole(base, ADAPTER, expert_ids=[0])
    with pytest.raises(AdapterError):
        install_mole(base, ADAPTER, expert_ids=[0])
