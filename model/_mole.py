"""FedAMoLE's mixture of LoRA experts (MoLE) on frozen-A LoRA, trainable with DP-SGD.

Implements the client model of FedAMoLE (Zhang et al., 2024; ARCHITECTURE.md §2.3): every LoRA
target ``nn.Linear`` of a Hugging Face model is replaced by a `MoLELinear` whose output is

    base(x) + s·B_s A_s x + s·Σ_{e ∈ top-k(x)} g_e(x) · B_e A_e x

where ``s = alpha / rank``, the shared expert ``(A_s, B_s)`` is held by every client, and
the domain experts ``e`` are the ones this client holds out of a global pool of ``E``.
Every ``A`` is drawn from the consortium's public seed and frozen (FFA-LoRA); ``B``
starts at zero. The router has no per-expert parameters: the token embedding is
``P x`` (one trainable ``rank × in`` projection ``P``), expert ``e``'s embedding is its
own frozen ``A_e x``, the score is ``⟨A_e x, P x⟩ / √rank``, softmax runs over the held
experts only and the top-k gates are renormalized. So a client may hold any number of
experts with the same ``P``, and ``P`` is averaged over all clients.

Two models share this machinery (`MoLEBase`): `MoLEModel`, a sequence classifier with a
trainable head, and `CausalMoLEModel`, a decoder LLM (``model.task: causal-lm``) with MoLE
modules on the consortium's causal targets (the attention projections by default) and no
trainable head, offering `CausalAdapterModel`'s contracts for training and scoring
(`response_logits`, greedy `generate`, `adapters_disabled`). Both save to one safetensors
file that records the task.

A Switch-style load-balancing loss (Fedus et al. 2021), ``E_h · Σ_e f_e · p̄_e`` over the
``E_h`` held experts, is computed **per example over its own real tokens** (``f_e``:
fraction of the example's unpadded tokens whose top-k contains ``e``, divided by k;
``p̄_e``: the example's mean router probability over those tokens), so the training loss
stays a sum of terms each of which depends on one example alone.

Notes:
    *DP-SGD.* Opacus computes per-sample gradients layer by layer from the layer's input
    and the gradient of the loss with respect to its output. The router, the shared
    expert and the expert pool are therefore separate modules, each with one input
    tensor and no buffers (the frozen ``A`` are plain tensor attributes, rebuilt from
    the public seed, never state), so Opacus' functorch path handles them. The router
    *outputs* the full probability vector, from which both the gates and the balancing
    loss are computed, so the gradient reaching the router's output carries the
    balancing loss too and its per-sample gradient of ``P`` is exact. A batch-level
    balancing loss (product of batch means, as in Switch) would couple examples and
    break per-sample clipping, which is why it is per example here: each example is
    pushed towards balancing its own tokens, and the batch's loss is the mean of these
    terms. That is a different regularizer from Switch's batch-level one (a batch can be
    balanced while each example is not), chosen because DP-SGD's sensitivity analysis
    needs every example's gradient to be a function of that example alone.

    *Padding.* A DP-SGD batch is padded to its longest record, so the number of padding
    positions an example carries depends on its batch-mates. Padding must therefore
    contribute nothing: `MoLEModel.logits` and `CausalMoLEModel.response_logits` hand the
    attention mask to every MoLE module for the duration of the forward pass
    (`MoLEBase.token_masks`), and the balancing loss averages over real tokens only.
    Routing still runs on padding positions, but their outputs reach nothing (attention
    masks them as keys; the pooling skips them, and a causal LM computes no logit there),
    so their gradient is exactly zero.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, Self

import numpy as np
import numpy.typing as npt
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from torch import nn
from transformers import PreTrainedModel

from fedhft.files import atomic_write
from fedhft.policies import AdapterSpec

from ._adapters import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    Block,
    _seed_for,
    adapter_layout,
    blocks_on_layers,
    causal_layout,
    frozen_a,
    with_causal_targets,
)
from ._architectures import head_linear
from ._causal import greedy_generate, position_ids, response_logits
from ._codec import safetensors_metadata
from .errors import AdapterError

FloatArray = npt.NDArray[np.float64]

SHARED = "shared"
ROUTER = "router"


def expert_block_id(block_id: str, expert: int) -> str:
    """Id of expert `expert`'s ``B`` on the target module of `block_id`."""
    return f"{block_id}.expert{expert}"


def shared_block_id(block_id: str) -> str:
    """Id of the shared expert's ``B`` on the target module of `block_id`."""
    return f"{block_id}.{SHARED}"


def router_block_id(block_id: str) -> str:
    """Id of the router projection ``P`` on the target module of `block_id`."""
    return f"{block_id}.{ROUTER}"


def expert_a(a_seed: int, block_id: str, expert: int, rank: int, in_features: int) -> torch.Tensor:
    """The frozen ``A`` of pool expert `expert` on `block_id` (public, from the seed)."""
    return frozen_a(a_seed, expert_block_id(block_id, expert), rank, in_features)


class MoLERouter(nn.Module):
    """Router probabilities over the held experts: softmax of ``⟨A_e x, P x⟩ / √r``."""

    def __init__(self, projection: torch.Tensor, expert_as: torch.Tensor) -> None:
        super().__init__()
        self.projection = nn.Parameter(projection.clone())
        # A plain attribute, not a buffer: Opacus' functorch path refuses buffers, and
        # the frozen A are rebuilt from the public seed, so they are not state.
        self.expert_as = expert_as
        self.rank = projection.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., held)`` probabilities for inputs ``(..., in_features)``."""
        token = x @ self.projection.t()
        experts = torch.einsum("...i,eri->...er", x, self.expert_as)
        scores = torch.einsum("...er,...r->...e", experts, token) / math.sqrt(self.rank)
        return torch.softmax(scores, dim=-1)


class FrozenALoRA(nn.Module):
    """``s·B A x`` with ``A`` frozen (plain attribute) and ``B`` trainable."""

    def __init__(self, lora_a: torch.Tensor, out_features: int, scaling: float) -> None:
        super().__init__()
        self.lora_a = lora_a
        self.lora_b = nn.Parameter(torch.zeros(out_features, lora_a.shape[0]))
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank update of ``x``."""
        return ((x @ self.lora_a.t()) @ self.lora_b.t()) * self.scaling


class ExpertPool(nn.Module):
    """``s·Σ_e g_e B_e A_e x`` over the held experts.

    Takes one tensor, ``x`` and the gates concatenated on the last axis, because Opacus
    hands a layer only its first input when it computes per-sample gradients.
    """

    def __init__(self, expert_as: torch.Tensor, out_features: int, scaling: float) -> None:
        super().__init__()
        self.expert_as = expert_as
        held, rank, self.in_features = expert_as.shape
        self.lora_b = nn.Parameter(torch.zeros(held, out_features, rank))
        self.scaling = scaling

    def forward(self, x_and_gates: torch.Tensor) -> torch.Tensor:
        """The gated sum of the experts' low-rank updates."""
        x = x_and_gates[..., : self.in_features]
        gates = x_and_gates[..., self.in_features :]
        low = torch.einsum("...i,eri->...er", x, self.expert_as)
        out = torch.einsum("...er,eor->...eo", low, self.lora_b)
        return torch.einsum("...eo,...e->...o", out, gates) * self.scaling


class MoLELinear(nn.Module):
    """A frozen `nn.Linear` plus the shared expert and a routed mixture of held experts."""

    def __init__(
        self,
        base: nn.Linear,
        *,
        block_id: str,
        adapter: AdapterSpec,
        expert_ids: Sequence[int],
        top_k: int,
    ) -> None:
        super().__init__()
        if not expert_ids:
            raise AdapterError("a MoLE module needs at least one held expert")
        if top_k < 1:
            raise AdapterError(f"top_k must be >= 1, got {top_k}")
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        rank, in_features = adapter.rank, base.in_features
        scaling = adapter.alpha / adapter.rank
        self.block_id = block_id
        self.expert_ids = tuple(expert_ids)
        self.top_k = min(top_k, len(self.expert_ids))
        expert_as = torch.stack(
            [expert_a(adapter.a_seed, block_id, e, rank, in_features) for e in self.expert_ids]
        )
        projection = frozen_a(adapter.a_seed, router_block_id(block_id), rank, in_features)
        self.router = MoLERouter(projection, expert_as)
        self.shared = FrozenALoRA(
            frozen_a(adapter.a_seed, shared_block_id(block_id), rank, in_features),
            base.out_features,
            scaling,
        )
        self.experts = ExpertPool(expert_as, base.out_features, scaling)
        self.last_gates: torch.Tensor | None = None
        self.last_balance: torch.Tensor | None = None
        # ``(batch, tokens)``, 1 for real tokens: set by `MoLEModel.logits` for one
        # forward pass, so the balancing loss ignores padding; None means all are real.
        self.token_mask: torch.Tensor | None = None
        # False inside `MoLEBase.adapters_disabled`: the base layer alone (zero-shot).
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the shared expert plus the top-k gated held experts."""
        if not self.enabled:
            self.last_gates = self.last_balance = None
            base_only: torch.Tensor = self.base(x)
            return base_only
        probabilities = self.router(x)
        chosen = torch.topk(probabilities, self.top_k, dim=-1).indices
        selected = torch.zeros_like(probabilities).scatter_(-1, chosen, 1.0)
        kept = probabilities * selected
        gates = kept / kept.sum(dim=-1, keepdim=True)
        self.last_gates = gates.detach()
        self.last_balance = _balance_per_example(
            probabilities, selected, self.top_k, self.token_mask
        )
        mixture = self.experts(torch.cat([x, gates.to(x.dtype)], dim=-1))
        output: torch.Tensor = self.base(x) + self.shared(x) + mixture
        return output


def _balance_per_example(
    probabilities: torch.Tensor,
    selected: torch.Tensor,
    top_k: int,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Switch-style balancing loss of each example, ``E_h · Σ_e f_e · p̄_e``, with ``f_e``
    and ``p̄_e`` averaged over the example's real tokens (``token_mask`` 1) only."""
    held = probabilities.shape[-1]
    if probabilities.dim() == 2:  # (tokens, held): a batch of one example.
        probabilities, selected = probabilities[None], selected[None]
        token_mask = None if token_mask is None else token_mask.reshape(1, -1)
    if token_mask is None:
        weights = torch.ones(probabilities.shape[:-1], dtype=probabilities.dtype)
    else:
        if tuple(token_mask.shape) != tuple(probabilities.shape[:-1]):
            raise AdapterError(
                f"the attention mask has shape {tuple(token_mask.shape)}, the MoLE input "
                f"{tuple(probabilities.shape[:-1])} (records × tokens)"
            )
        weights = token_mask.to(probabilities.dtype)
    weights = weights.unsqueeze(-1)
    tokens_axes = tuple(range(1, probabilities.dim() - 1))
    # An example with no real token (never produced by the tokenizer) gets loss 0.
    real_tokens = weights.sum(dim=tokens_axes).clamp(min=1.0)
    fraction = (selected * weights).sum(dim=tokens_axes) / real_tokens / top_k
    mean_probability = (probabilities * weights).sum(dim=tokens_axes) / real_tokens
    return held * (fraction * mean_probability).sum(dim=-1)


def install_mole(
    model: nn.Module,
    adapter: AdapterSpec,
    *,
    expert_ids: Sequence[int],
    top_k: int = 2,
    blocks: Sequence[Block] | None = None,
) -> dict[str, MoLELinear]:
    """Replace each target `nn.Linear` of `model` by a `MoLELinear` holding `expert_ids`.

    Returns the installed modules by block id, in block order. Targets are ``blocks``
    (default: the adapter rule of `adapter_layout`, last path component in
    ``target_modules``; a causal LM passes its `causal_layout`).
    """
    if len(set(expert_ids)) != len(expert_ids) or any(e < 0 for e in expert_ids):
        raise AdapterError(f"expert_ids must be distinct non-negative ids, got {expert_ids}")
    if blocks is None:
        blocks = [b for b in adapter_layout(model, adapter) if b.layer is not None]
    installed: dict[str, MoLELinear] = {}
    for block in blocks:
        parent_path, _, name = block.path.rpartition(".")
        parent = model.get_submodule(parent_path)
        base = getattr(parent, name)
        if not isinstance(base, nn.Linear):
            raise AdapterError(f"{block.path} is not an nn.Linear (is MoLE installed twice?)")
        module = MoLELinear(
            base, block_id=block.block_id, adapter=adapter, expert_ids=expert_ids, top_k=top_k
        )
        setattr(parent, name, module)
        installed[block.block_id] = module
    return installed


class MoLEBase:
    """What both MoLE models share: the MoLE modules on the adapter's targets, their
    blocks and state, the attention mask during a forward pass, the balancing loss, the
    zero-shot switch and the export file.

    Trainable: every shared ``B``, router ``P`` and held expert ``B`` (and a subclass's
    head). State is exchanged per *MoLE block*: ``<block>.shared`` (out × r),
    ``<block>.router`` (r × in), ``<block>.expert<e>`` (out × r) for each held ``e``, in
    the order of ``adapter_blocks``; a subclass may append head blocks.
    """

    TASK = "classification"
    """The consortium task (`ModelSpec.task`) this model serves; recorded in its export."""

    def __init__(
        self,
        base: PreTrainedModel,
        adapter: AdapterSpec,
        *,
        expert_ids: Sequence[int],
        top_k: int = 2,
        layers: Literal["all"] | Sequence[int] = "all",
    ) -> None:
        adapter, adapter_blocks = self._layout(base, adapter)
        self.adapter = adapter
        self.expert_ids = tuple(sorted(expert_ids))
        self.top_k = top_k
        self.layers: Literal["all"] | tuple[int, ...] = "all" if layers == "all" else tuple(layers)
        self.adapter_blocks: tuple[Block, ...] = blocks_on_layers(
            adapter_blocks, self.layers, what="fedamole.layers entry"
        )
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.model = base
        self.modules = install_mole(
            base, adapter, expert_ids=self.expert_ids, top_k=top_k, blocks=self.adapter_blocks
        )
        self._expert_index = {e: i for i, e in enumerate(self.expert_ids)}

    @classmethod
    def _layout(
        cls, base: PreTrainedModel, adapter: AdapterSpec
    ) -> tuple[AdapterSpec, tuple[Block, ...]]:
        """The adapter spec the model uses and its target blocks on ``base``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ structure

    @property
    def network(self) -> nn.Module:
        """The module whose forward pass runs the model (train/eval mode is set on it)."""
        return self.model

    @property
    def mixture_block_ids(self) -> tuple[str, ...]:
        """The MoLE blocks this client holds (shared, router, held experts), in order."""
        ids: list[str] = []
        for block in self.adapter_blocks:
            ids.append(shared_block_id(block.block_id))
            ids.append(router_block_id(block.block_id))
            ids.extend(expert_block_id(block.block_id, e) for e in self.expert_ids)
        return tuple(ids)

    @property
    def block_ids(self) -> tuple[str, ...]:
        """Every block id this client holds, in the fixed order."""
        return self.mixture_block_ids

    def block_shapes(self) -> dict[str, tuple[int, int]]:
        """``rows × cols`` of every held MoLE block."""
        shapes: dict[str, tuple[int, int]] = {}
        for block_id in self.block_ids:
            rows, cols = self._tensor(block_id).shape
            shapes[block_id] = (int(rows), int(cols))
        return shapes

    def mixture_parameters(self) -> list[nn.Parameter]:
        """Per module: the shared ``B``, the router's ``P``, the held experts' ``B``."""
        parameters: list[nn.Parameter] = []
        for module in self.modules.values():
            parameters += [module.shared.lora_b, module.router.projection, module.experts.lora_b]
        return parameters

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable head's parameters (none here)."""
        return []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters DP-SGD trains: the mixture's, then the head's."""
        return [*self.mixture_parameters(), *self.head_parameters()]

    def _tensor(self, block_id: str) -> torch.Tensor:
        block, _, part = block_id.rpartition(".")
        module = self.modules.get(block)
        if module is None:
            raise AdapterError(f"unknown MoLE block {block_id!r}")
        if part == SHARED:
            return module.shared.lora_b
        if part == ROUTER:
            return module.router.projection
        if part.startswith("expert") and part[6:].isdigit():
            index = self._expert_index.get(int(part[6:]))
            if index is not None:
                return module.experts.lora_b[index]
        raise AdapterError(
            f"unknown MoLE block {block_id!r}; this client holds experts {self.expert_ids}"
        )

    # ------------------------------------------------------------------ state

    def get_state(self, block_ids: Sequence[str] | None = None) -> dict[str, FloatArray]:
        """Copies of the named (default: all held) blocks as float64 2-D arrays."""
        chosen = self.block_ids if block_ids is None else block_ids
        return {b: self._tensor(b).detach().to(torch.float64).numpy().copy() for b in chosen}

    def set_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Overwrite the named blocks; shapes must match, nothing is written on error."""
        checked: list[tuple[torch.Tensor, torch.Tensor]] = []
        for block_id, values in state.items():
            target = self._tensor(block_id)
            array = np.asarray(values, dtype=np.float64)
            if array.shape != tuple(target.shape):
                raise AdapterError(
                    f"block {block_id!r} has shape {tuple(target.shape)}, got {array.shape}"
                )
            if not np.all(np.isfinite(array)):
                raise AdapterError(f"block {block_id!r} contains NaN or infinite values")
            checked.append((target, torch.from_numpy(array).to(target.dtype)))
        with torch.no_grad():
            for target, tensor in checked:
                target.copy_(tensor)

    # ------------------------------------------------------------------ export

    def save(self, path: str | Path) -> None:
        """Write the personalized model (every held block, expert ids, adapter spec, task)
        as one safetensors file; the class's `load` rebuilds it on the same base model.

        Only the trained blocks are written: the frozen ``A`` of every expert and the
        router's expert embeddings come back from the adapter spec's public seed.
        """
        metadata = {
            "format": "fedhft-mole/v1",
            "task": self.TASK,
            "adapter": self.adapter.model_dump_json(),
            "expert_ids": json.dumps(list(self.expert_ids)),
            "top_k": str(self.top_k),
        }
        if self.layers != "all":
            metadata["layers"] = json.dumps(list(self.layers))
        atomic_write(Path(path), bytes(save_arrays(self.get_state(), metadata=metadata)))

    @classmethod
    def load(cls, path: str | Path, base: PreTrainedModel) -> Self:
        """The personalized model saved by `save`, installed into ``base`` (the
        consortium's base model, e.g. from `build_base_model`: a sequence classifier for
        `MoLEModel`, an `AutoModelForCausalLM` for `CausalMoLEModel`).

        Raises:
            AdapterError: the file is not a fedhft MoLE export, was saved for the other
                task, or its blocks do not fit ``base``.
        """
        data = Path(path).read_bytes()
        metadata = safetensors_metadata(data)
        if metadata.get("format") != "fedhft-mole/v1":
            raise AdapterError(f"{path} is not a fedhft MoLE export (format fedhft-mole/v1)")
        # Files written before the task was recorded are classification models.
        task = metadata.get("task", "classification")
        if task != cls.TASK:
            raise AdapterError(
                f"{path} is a MoLE model for task {task!r}; `{cls.__name__}.load` reads "
                f"task {cls.TASK!r} (use "
                f"`{'CausalMoLEModel' if task == 'causal-lm' else 'MoLEModel'}.load`)"
            )
        model = cls(
            base,
            AdapterSpec.model_validate_json(metadata["adapter"]),
            expert_ids=json.loads(metadata["expert_ids"]),
            top_k=int(metadata["top_k"]),
            # Files written before `fedamole.layers` existed carry every layer.
            layers=json.loads(metadata.get("layers", '"all"')),
        )
        state = load_arrays(data)
        if set(state) != set(model.block_ids):
            raise AdapterError(f"{path} does not carry exactly the blocks of its experts")
        model.set_state(state)
        return model

    def save_for_inference(self, path: str | Path) -> None:
        """Write every tensor the mixture computes with, frozen ``A`` included, keyed by
        the target module's path in the base model, so that a program without fedhft
        (plain PyTorch, e.g. ``examples/bank_assistant/chat.py``) can rebuild it.

        Per target module ``<path>``: ``<path>.shared.A`` (r × in) and ``.shared.B``
        (out × r), ``<path>.router.P`` (r × in), ``<path>.experts.A`` (held × r × in) and
        ``.experts.B`` (held × out × r). Metadata: ``format``
        (``fedhft-mole-inference/v1``), ``scaling`` (alpha / r), ``top_k`` and
        ``modules`` (the paths, JSON). A module's output is ``base(x) + s·B_s A_s x +
        s·Σ_e g_e(x) B_e A_e x`` with ``g`` the router's softmax over the held experts of
        ``⟨A_e x, P x⟩ / √r``, kept on its top-k and renormalized.
        """
        tensors: dict[str, npt.NDArray[np.float32]] = {}
        paths: list[str] = []
        for block in self.adapter_blocks:
            module = self.modules[block.block_id]
            paths.append(block.path)
            parts = {
                "shared.A": module.shared.lora_a,
                "shared.B": module.shared.lora_b,
                "router.P": module.router.projection,
                "experts.A": module.experts.expert_as,
                "experts.B": module.experts.lora_b,
            }
            for name, tensor in parts.items():
                tensors[f"{block.path}.{name}"] = tensor.detach().to(torch.float32).numpy()
        metadata = {
            "format": "fedhft-mole-inference/v1",
            "scaling": repr(self.adapter.alpha / self.adapter.rank),
            "top_k": str(min(self.top_k, len(self.expert_ids))),
            "modules": json.dumps(paths),
        }
        atomic_write(Path(path), bytes(save_arrays(tensors, metadata=metadata)))

    # ------------------------------------------------------------------ use

    @contextlib.contextmanager
    def token_masks(self, attention_mask: torch.Tensor) -> Iterator[None]:
        """Hand ``attention_mask`` to every MoLE module for a forward pass, so that the
        balancing loss it leaves (`balance_loss`) counts each record's real tokens only."""
        for module in self.modules.values():
            module.token_mask = attention_mask
        try:
            yield
        finally:
            for module in self.modules.values():
                module.token_mask = None

    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """One forward pass through every MoLE module with ``attention_mask`` handed to
        them (what routing statistics hook into); the output is not needed."""
        raise NotImplementedError

    def balance_loss(self) -> torch.Tensor:
        """Per-example balancing loss of the last forward (over each example's real
        tokens), averaged over MoLE modules."""
        losses = [m.last_balance for m in self.modules.values() if m.last_balance is not None]
        if not losses:
            raise RuntimeError("balance_loss needs a forward pass first")
        return torch.stack(losses).mean(dim=0)

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The base model alone (the zero-shot baseline) for the duration of the block:
        every MoLE module returns its base layer's output only."""
        for module in self.modules.values():
            module.enabled = False
        try:
            yield
        finally:
            for module in self.modules.values():
                module.enabled = True


class MoLEModel(MoLEBase):
    """A sequence-classification model whose LoRA targets are MoLE modules.

    Trainable: the mixture (`MoLEBase`) and the head; its blocks ``head.weight`` and
    ``head.bias`` follow the MoLE blocks.
    """

    TASK = "classification"

    def __init__(
        self,
        base: PreTrainedModel,
        adapter: AdapterSpec,
        *,
        expert_ids: Sequence[int],
        top_k: int = 2,
        layers: Literal["all"] | Sequence[int] = "all",
    ) -> None:
        _, head = head_linear(base)
        super().__init__(base, adapter, expert_ids=expert_ids, top_k=top_k, layers=layers)
        head_weight, head_bias = head.weight, head.bias
        if not isinstance(head_weight, nn.Parameter) or not isinstance(head_bias, nn.Parameter):
            raise AdapterError(
                f"FedAMoLE needs a classification head with a bias; the "
                f"{base.config.model_type!r} head has none: use `method: fedhft`"
            )
        self._head_weight: nn.Parameter = head_weight
        self._head_bias: nn.Parameter = head_bias
        generator = torch.Generator().manual_seed(_seed_for(adapter.a_seed, "head"))
        std = float(getattr(base.config, "initializer_range", 0.02))
        with torch.no_grad():
            values = torch.randn(head.weight.shape, generator=generator, dtype=torch.float64)
            head.weight.copy_((values * std).to(head.weight.dtype))
            head_bias.zero_()
        head.weight.requires_grad_(True)
        head_bias.requires_grad_(True)

    @classmethod
    def _layout(
        cls, base: PreTrainedModel, adapter: AdapterSpec
    ) -> tuple[AdapterSpec, tuple[Block, ...]]:
        """The adapter's targets (`adapter_layout`), without the head blocks."""
        return adapter, tuple(b for b in adapter_layout(base, adapter) if b.layer is not None)

    @property
    def block_ids(self) -> tuple[str, ...]:
        """Every MoLE block id this client holds, then the head's, in the fixed order."""
        return (*self.mixture_block_ids, HEAD_WEIGHT, HEAD_BIAS)

    def head_parameters(self) -> list[nn.Parameter]:
        """The classification head's weight and bias."""
        return [self._head_weight, self._head_bias]

    def _tensor(self, block_id: str) -> torch.Tensor:
        if block_id == HEAD_WEIGHT:
            return self._head_weight
        if block_id == HEAD_BIAS:
            return self._head_bias.view(-1, 1)
        return super()._tensor(block_id)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Classification logits for a tokenized batch (padding counts in no loss term)."""
        with self.token_masks(attention_mask):
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        logits: torch.Tensor = output.logits
        return logits

    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """A forward pass of the classifier (`logits`)."""
        self.logits(input_ids, attention_mask)


class CausalMoLEModel(MoLEBase):
    """A causal LM whose attention projections (the consortium's causal targets) are MoLE
    modules; no head: the language-model head stays the base model's, frozen.

    Offers what training and scoring need with `CausalAdapterModel`'s contracts:
    `response_logits` (the output layer only at response positions, positions from the
    attention mask), greedy `generate` of left-padded prompts and `adapters_disabled`.

    Notes:
        The MoLE modules see the attention mask during `response_logits`, so a record's
        balancing loss averages over its own real tokens. A right-padded position is
        never attended to by a real one and no logit is computed there, so, as for
        `CausalAdapterModel`, a record's loss and its gradient depend on that record
        alone, whatever its batch-mates.
    """

    TASK = "causal-lm"

    @classmethod
    def _layout(
        cls, base: PreTrainedModel, adapter: AdapterSpec
    ) -> tuple[AdapterSpec, tuple[Block, ...]]:
        """The consortium's causal targets (`with_causal_targets`, `causal_layout`)."""
        adapter = with_causal_targets(adapter)
        return adapter, causal_layout(base, adapter)

    def response_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at the positions that predict a response token, what they predict and
        their record (`fedhft.model.CausalAdapterModel.response_logits`' contract)."""
        with self.token_masks(attention_mask):
            return response_logits(self.model, input_ids, attention_mask, labels)

    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """A forward pass of the decoder (no output layer)."""
        decoder = self.model.get_decoder()  # type: ignore[no-untyped-call]
        with self.token_masks(attention_mask):
            decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids(attention_mask),
                use_cache=False,
            )

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
    ) -> torch.Tensor:
        """Greedy continuations of a LEFT-padded batch of prompts (`greedy_generate`)."""
        return greedy_generate(
            self.model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
