"""The public initial block state of a consortium's adapters, computed without weights.

Every organization starts a run from the same adapter values (ARCHITECTURE.md §2.1): every
``B`` is zero, the classification head is drawn from the consortium's public adapter
seed and its bias is zero; FedAMoLE's router projections ``P`` are drawn from the same
seed (ARCHITECTURE.md §2.3). None of these values depends on the base model's weights, only on
its structure (which modules, their shapes) and on the consortium file. So the server,
which only moves block values, reads the structure from a weightless (meta-device)
skeleton of the base model (`base_skeleton`) and never loads, or holds, the weights.

`initial_block_state` equals ``MaskedAdapterModel.from_consortium(c).get_block_state()``
and `initial_mole_state` equals the state of a `MoLEModel` holding the whole expert pool,
bit for bit (``tests/model/test_initial.py`` pins both).

Notes:
    The draws reproduce the models' own seeded initialization: the head from a
    `torch.Generator` seeded with the adapter seed and the purpose ``"head"``, scaled by
    the base configuration's ``initializer_range`` and rounded to the head's dtype; a
    router ``P`` is `frozen_a` of its router block id. Neither touches torch's global
    generator.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedhft.policies import ConsortiumConfig

from ._adapters import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    _seed_for,
    blocks_on_layers,
    consortium_layout,
    frozen_a,
)
from ._architectures import head_linear
from ._base import base_skeleton
from ._mole import expert_block_id, router_block_id, shared_block_id
from .errors import AdapterError

FloatArray = npt.NDArray[np.float64]


def _initial_head(
    consortium: ConsortiumConfig, skeleton: nn.Module, head: nn.Linear
) -> dict[str, FloatArray]:
    """The head's starting weight (seeded normal · initializer_range) and zero bias, for a
    head that has one."""
    std = float(getattr(getattr(skeleton, "config", None), "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(_seed_for(consortium.adapter.a_seed, "head"))
    shape = (head.out_features, head.in_features)
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight = (values * std).to(head.weight.dtype).to(torch.float64).numpy()
    state = {HEAD_WEIGHT: weight}
    if head.bias is not None:
        state[HEAD_BIAS] = np.zeros((head.out_features, 1))
    return state


def initial_block_state(consortium: ConsortiumConfig) -> dict[str, FloatArray]:
    """Every FedHFT block's starting value, in block order, as float64 ``rows × cols``
    arrays: each ``B`` zero, the head from the consortium's public adapter seed (a causal
    LM has no head blocks: only the zero ``B`` of `causal_layout`).

    Reads the base model's structure only (no weights are loaded).
    """
    skeleton = base_skeleton(consortium.model)
    blocks = consortium_layout(consortium, skeleton)
    state = {b.block_id: np.zeros(b.shape) for b in blocks if b.layer is not None}
    if consortium.model.task != "causal-lm":
        state.update(_initial_head(consortium, skeleton, head_linear(skeleton)[1]))
    return state


def sketch_dimension(consortium: ConsortiumConfig) -> int:
    """Length of an organization's sketch (``clustering.signal: sketch``): the width of
    the base model's last hidden state, which the classification head reads, or a causal
    LM's output embeddings.

    Reads the base model's structure only (no weights are loaded).
    """
    skeleton = base_skeleton(consortium.model)
    if consortium.model.task == "causal-lm":
        # transformers leaves it untyped.
        head = skeleton.get_output_embeddings()  # type: ignore[no-untyped-call]
        if not isinstance(head, nn.Linear):
            raise AdapterError("the causal LM exposes no linear output embeddings")
        return int(head.in_features)
    return int(head_linear(skeleton)[1].in_features)


def initial_mole_state(consortium: ConsortiumConfig) -> dict[str, FloatArray]:
    """Every FedAMoLE block's starting value for the whole expert pool, in block order:
    per target module its shared ``B`` (zero), router ``P`` (from the public seed) and
    each pool expert's ``B`` (zero); then the head, as for FedHFT (a causal LM has none:
    its MoLE modules sit on `causal_layout`'s targets).

    Reads the base model's structure only (no weights are loaded).
    """
    skeleton = base_skeleton(consortium.model)
    blocks = blocks_on_layers(
        consortium_layout(consortium, skeleton),
        consortium.fedamole.layers,
        what="fedamole.layers entry",
    )
    adapter = consortium.adapter
    state: dict[str, FloatArray] = {}
    for block in blocks:
        linear = skeleton.get_submodule(block.path)
        if not isinstance(linear, nn.Linear):
            raise AdapterError(f"MoLE target {block.path!r} is not an nn.Linear")
        state[shared_block_id(block.block_id)] = np.zeros(block.shape)
        router = router_block_id(block.block_id)
        projection = frozen_a(adapter.a_seed, router, adapter.rank, linear.in_features)
        state[router] = projection.to(torch.float64).numpy()
        for expert in range(consortium.fedamole.num_experts):
            state[expert_block_id(block.block_id, expert)] = np.zeros(block.shape)
    if consortium.model.task != "causal-lm":
        state.update(_initial_head(consortium, skeleton, head_linear(skeleton)[1]))
    return state
