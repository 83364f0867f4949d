"""Frozen-A LoRA adapters cut into blocks, and the tier masks that say which blocks train.

A Hugging Face sequence-classification model is wrapped with PEFT LoRA on the
consortium's target modules (ARCHITECTURE.md §2.1). Every ``A`` is drawn from the consortium's
``a_seed`` and frozen (FFA-LoRA, Sun et al. 2024), so ``ΔW = B·A`` is linear in ``B`` and
averaging ``B`` inside a secure sum is exact. Only ``B`` and the classification head
train.

A *block* is one ``B`` matrix (``rows × cols`` = output features × rank) of one target
module in one layer, with a stable id derived from its module path, e.g.
``"layer.3.attention.self.value"``. The head travels as two more blocks, ``"head.weight"``
(labels × hidden) and ``"head.bias"`` (labels × 1). Blocks have a fixed order: adapter
blocks in module order, then the head.

A *tier* (`TierSpec`) trains the blocks of some layers and modules, optionally only a
fixed slice of their rows (the first ``ceil(row_fraction · rows)`` rows). Everything
else is frozen; the rows outside the slice are held still by a row mask that the
trainer applies to per-sample gradients before clipping.

Notes:
    ``A`` comes from a `torch.Generator` seeded with SHA-256 of the adapter seed and the
    block id, never from torch's global generator: every organization must build the
    same ``A`` whatever else it did with torch before. The same holds for the initial
    head. The ``A`` seed is public (it is in the consortium file); it is not a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from fedhft.policies import CAUSAL_TARGETS, AdapterSpec, ConsortiumConfig, TierSpec

from ._architectures import (
    check_trainable,
    head_linear,
    model_type_of,
    saved_modules,
    target_modules,
)
from ._base import base_skeleton, build_base_model
from .errors import AdapterError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

HEAD_WEIGHT = "head.weight"
HEAD_BIAS = "head.bias"
HEAD_BLOCKS = (HEAD_WEIGHT, HEAD_BIAS)
_ADAPTER_NAME = "default"
_LAYER_INDEX = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Block:
    """One unit of masking, upload and secure summation."""

    block_id: str
    rows: int
    cols: int
    layer: int | None  # None for the head blocks.
    module: str  # The target module name, or "head".
    path: str = ""  # Module path inside the base model (adapter blocks only).

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the block's 2-D state."""
        return (self.rows, self.cols)


def _seed_for(a_seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"fedhft.adapter|{a_seed}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def frozen_a(a_seed: int, block_id: str, rank: int, in_features: int) -> torch.Tensor:
    """The frozen ``A`` (rank × in_features) of `block_id`: uniform in ±1/√in_features.

    The range is PEFT's default (Kaiming-uniform with a = √5), drawn from a generator
    seeded by the adapter seed and the block id only.
    """
    generator = torch.Generator().manual_seed(_seed_for(a_seed, f"A|{block_id}"))
    bound = 1.0 / math.sqrt(in_features)
    values = torch.rand((rank, in_features), generator=generator, dtype=torch.float64)
    return ((values * 2.0 - 1.0) * bound).to(torch.float32)


def adapter_layout(
    base: nn.Module, adapter: AdapterSpec, *, head_shape: tuple[int, int] | None = None
) -> tuple[Block, ...]:
    """The blocks of `base` for `adapter`, in their fixed order (adapter blocks, head).

    A module is a target when its last path component is one of the adapter's target
    modules (PEFT's rule; the architecture's default targets when
    ``adapter.target_modules`` is omitted). Its block id is its path from the layer list
    onwards (``encoder.layer.3.attention.self.value`` → ``layer.3.attention.self.value``,
    ``model.layers.3.self_attn.v_proj`` → ``layers.3.self_attn.v_proj``). The head is
    ``head.weight`` and, when the head's linear layer has one, ``head.bias``.

    Raises:
        ModelError: an architecture fedhft does not know.
        AdapterError: a target that is not an `nn.Linear` (Opacus has no per-sample
            gradient for it), a target no module of the model has, or no linear head.
    """
    targets = target_modules(base, adapter.target_modules)
    blocks: list[Block] = []
    found: set[str] = set()
    for path, module in base.named_modules():
        parts = path.split(".")
        if parts[-1] not in targets:
            continue
        check_trainable(path, module)
        index = next((i for i, part in enumerate(parts) if _LAYER_INDEX.match(part)), None)
        if index is None or index == 0:
            raise AdapterError(
                f"target module {path!r} is not inside a numbered layer list; "
                "adapter.target_modules must name per-layer modules"
            )
        found.add(parts[-1])
        blocks.append(
            Block(
                block_id=".".join(parts[index - 1 :]),
                rows=module.out_features,
                cols=adapter.rank,
                layer=int(parts[index]),
                module=parts[-1],
                path=path,
            )
        )
    missing = sorted(set(targets) - found)
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)}
        )
        raise AdapterError(
            f"adapter.target_modules {missing} match no linear layer of the "
            f"{model_type_of(base)!r} model; its linear modules are {linear}"
        )
    if head_shape is None:
        _, head = head_linear(base)
        head_shape = (head.out_features, head.in_features)
        has_bias = head.bias is not None
    else:
        has_bias = True
    blocks.append(Block(HEAD_WEIGHT, head_shape[0], head_shape[1], None, "head"))
    if has_bias:
        blocks.append(Block(HEAD_BIAS, head_shape[0], 1, None, "head"))
    return tuple(blocks)


def _inner_model(peft_model: PeftModel) -> nn.Module:
    inner = peft_model.base_model.model
    if not isinstance(inner, nn.Module):
        raise AdapterError("unexpected PEFT model structure: no wrapped base model")
    return inner


@contextlib.contextmanager
def _adapters_disabled(peft_model: PeftModel) -> Iterator[None]:
    """PEFT's `disable_adapter`, without the transformers deprecation warning PEFT
    triggers inside it (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        with peft_model.disable_adapter():
            yield


def unit_mean_embeddings(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's mean hidden state over its real tokens (``mask`` 1), scaled to unit L2
    norm, in float64: one record's sketch embedding, which can move a sum of them by at
    most 1 (the sketch's sensitivity)."""
    weights = mask.to(torch.float64).unsqueeze(-1)
    pooled = (states.to(torch.float64) * weights).sum(dim=1)
    pooled = pooled / weights.sum(dim=1).clamp_min(1.0)
    unit: torch.Tensor = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit


def tier_layers(tier: TierSpec, num_layers: int) -> tuple[int, ...]:
    """The layer indices a tier trains (negative indices count from the top)."""
    return resolve_layers(tier.layers, num_layers, what="tier layer")


def resolve_layers(
    layers: Literal["all"] | Sequence[int], num_layers: int, *, what: str
) -> tuple[int, ...]:
    """``all`` or layer indices (negative count from the top) as sorted indices into
    ``0..num_layers-1``; ``what`` names the setting in the error."""
    if layers == "all":
        return tuple(range(num_layers))
    resolved: list[int] = []
    for index in layers:
        layer = index + num_layers if index < 0 else index
        if not 0 <= layer < num_layers:
            raise AdapterError(
                f"{what} {index} does not exist in a model of {num_layers} layers "
                f"(allowed: {-num_layers}..{num_layers - 1})"
            )
        resolved.append(layer)
    return tuple(sorted(set(resolved)))


def blocks_on_layers(
    blocks: Sequence[Block], layers: Literal["all"] | Sequence[int], *, what: str
) -> tuple[Block, ...]:
    """The per-layer blocks of `blocks` on ``layers`` (indices into the layers the blocks
    sit on, negative from the top), in their order."""
    present = sorted({b.layer for b in blocks if b.layer is not None})
    chosen = {present[i] for i in resolve_layers(layers, len(present), what=what)}
    return tuple(b for b in blocks if b.layer in chosen)


DEFAULT_CAUSAL_TARGETS: tuple[str, ...] = CAUSAL_TARGETS
"""The attention projections of Llama-family decoders (Llama, Qwen2, SmolLM2, Mistral)."""


def causal_layout(base: nn.Module, adapter: AdapterSpec) -> tuple[Block, ...]:
    """The ``B`` blocks of a causal LM for `adapter`, in module order (no head blocks).

    Block ids follow `adapter_layout`'s rule, so a block id means the same module in
    both tasks.
    """
    # A causal LM has no classification head; `head_shape` only satisfies the shared
    # rule, and the head blocks it appends are dropped.
    blocks = adapter_layout(base, with_causal_targets(adapter), head_shape=(1, 1))
    return tuple(b for b in blocks if b.layer is not None)


def with_causal_targets(adapter: AdapterSpec) -> AdapterSpec:
    """`adapter` with `DEFAULT_CAUSAL_TARGETS` when it names no target modules."""
    if adapter.target_modules is not None:
        return adapter
    return adapter.model_copy(update={"target_modules": tuple(DEFAULT_CAUSAL_TARGETS)})


def tier_blocks(blocks: Sequence[Block], tier: TierSpec, *, head: bool = True) -> tuple[str, ...]:
    """Ids of the blocks `tier` trains among `blocks` (the head always trains; ``head=False``
    leaves the head blocks out, as for the blocks a tier uploads with a personal head)."""
    layers_present = sorted({b.layer for b in blocks if b.layer is not None})
    layers = set(tier_layers(tier, len(layers_present)))
    modules = set(tier.modules) if tier.modules is not None else None
    targets = {b.module for b in blocks if b.layer is not None}
    if modules is not None and not modules <= targets:
        raise AdapterError(
            f"tier modules {sorted(modules - targets)} are not adapter targets of the model "
            f"(its targets: {sorted(targets)}); name some of those, or omit `modules`"
        )
    chosen = [
        b.block_id
        for b in blocks
        if (b.layer is None and head)
        or (
            b.layer is not None
            and layers_present.index(b.layer) in layers
            and (modules is None or b.module in modules)
        )
    ]
    return tuple(chosen)


def tier_rows(tier: TierSpec, rows: int) -> int:
    """How many leading rows of a block the tier trains (its fixed row slice)."""
    return max(1, math.ceil(tier.row_fraction * rows - 1e-9))


def _tier_named(consortium: ConsortiumConfig, tier_name: str) -> TierSpec:
    try:
        return consortium.tiers[tier_name]
    except KeyError:
        raise AdapterError(
            f"unknown tier {tier_name!r}; the consortium defines {sorted(consortium.tiers)}"
        ) from None


def tier_mask(
    consortium: ConsortiumConfig,
    tier_name: str,
    *,
    tiny_config: Mapping[str, Any] | None = None,
) -> tuple[str, ...]:
    """Block ids the tier `tier_name` uploads, in the fixed block order: the blocks it
    trains, without the head when heads are personal (`ConsortiumConfig.shares_head`).

    The model's structure is read from a weightless (meta-device) copy of the
    consortium's base model, so this is cheap and public.
    """
    tier = _tier_named(consortium, tier_name)
    skeleton = base_skeleton(consortium.model, tiny_config=tiny_config)
    return tier_blocks(consortium_layout(consortium, skeleton), tier, head=consortium.shares_head)


def consortium_layout(consortium: ConsortiumConfig, skeleton: nn.Module) -> tuple[Block, ...]:
    """The blocks of the consortium's base model (`skeleton`) for its task: the adapter
    blocks and the head for classification, the ``B`` blocks only for a causal LM."""
    if consortium.model.task == "causal-lm":
        return causal_layout(skeleton, consortium.adapter)
    return adapter_layout(skeleton, consortium.adapter)


class MaskedAdapterModel:
    """A sequence-classification model with frozen-A LoRA blocks and a tier mask.

    The base model is wrapped in place by PEFT; use `peft_model` for forward passes.
    After construction every ``B`` and the head are trainable (the "all blocks"
    tier); `apply_tier` narrows that down.
    """

    def __init__(self, base: PreTrainedModel, adapter: AdapterSpec) -> None:
        self.adapter = adapter
        self.blocks = adapter_layout(base, adapter)
        self._by_id = {b.block_id: b for b in self.blocks}
        self.num_layers = len({b.layer for b in self.blocks if b.layer is not None})
        self.target_modules = target_modules(base, adapter.target_modules)
        head_path, _ = head_linear(base)
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=adapter.rank,
            # PEFT annotates `lora_alpha` as int but only ever computes alpha / r.
            lora_alpha=adapter.alpha,  # type: ignore[arg-type]
            target_modules=list(self.target_modules),
            lora_dropout=0.0,
            bias="none",
            modules_to_save=list(saved_modules(base)) or None,
        )
        # PEFT draws its own A from the global generator; fork it so wrapping leaves the
        # caller's random state alone (our A overwrites PEFT's just below).
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # PEFT still calls a transformers method deprecated in v5; not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            self.peft_model: PeftModel = get_peft_model(base, config)
        self._b: dict[str, nn.Parameter] = {}
        self._a: dict[str, nn.Parameter] = {}
        inner = _inner_model(self.peft_model)
        modules = dict(inner.named_modules())
        for block in self.blocks:
            if block.layer is None:
                continue
            lora = modules[block.path]
            a_param = lora.lora_A[_ADAPTER_NAME].weight
            with torch.no_grad():
                a_param.copy_(
                    frozen_a(adapter.a_seed, block.block_id, adapter.rank, a_param.shape[1])
                )
            self._a[block.block_id] = a_param
            self._b[block.block_id] = lora.lora_B[_ADAPTER_NAME].weight
        # PEFT wraps the head module in a ModulesToSaveWrapper and trains (and saves) a
        # copy; the head's output linear layer is in that copy (RoBERTa's
        # `classifier.out_proj`, most others' `classifier` or `score` itself).
        top, _, rest = head_path.partition(".")
        saved = getattr(getattr(inner, top, None), "modules_to_save", None)
        if not isinstance(saved, nn.ModuleDict):
            raise AdapterError(f"PEFT did not wrap the head {top!r} for training")
        self._head: nn.Module = saved[_ADAPTER_NAME]
        linear = self._head.get_submodule(rest) if rest else self._head
        if not isinstance(linear, nn.Linear) or not isinstance(linear.weight, nn.Parameter):
            raise AdapterError(f"the head {head_path!r} is not a linear layer")
        self._head_linear = linear
        self._b[HEAD_WEIGHT] = linear.weight
        if isinstance(linear.bias, nn.Parameter):
            self._b[HEAD_BIAS] = linear.bias
        self._init_head(base)
        self.trainable: tuple[str, ...] = ()
        self.row_masks: dict[str, BoolArray] = {}
        self.label_log_prior: torch.Tensor | None = None
        self.apply_tier(TierSpec())

    @classmethod
    def from_consortium(
        cls, consortium: ConsortiumConfig, *, tiny_config: Mapping[str, Any] | None = None
    ) -> MaskedAdapterModel:
        """Build the consortium's base model offline and wrap it."""
        return cls(build_base_model(consortium.model, tiny_config=tiny_config), consortium.adapter)

    def _init_head(self, base: PreTrainedModel) -> None:
        """Every head parameter from the adapter seed: weights N(0, initializer_range²),
        biases zero. The output layer's are the head blocks; a head with more layers
        (RoBERTa's dense + out_proj) keeps the others frozen at their seeded values, so
        every organization starts from one head whatever torch drew before."""
        std = float(getattr(base.config, "initializer_range", 0.02))
        with torch.no_grad():
            for name, parameter in self._head.named_parameters():
                if parameter.dim() < 2:
                    parameter.zero_()
                    continue
                purpose = "head" if parameter is self._head_linear.weight else f"head|{name}"
                generator = torch.Generator().manual_seed(_seed_for(self.adapter.a_seed, purpose))
                values = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.copy_((values * std).to(parameter.dtype))

    # ------------------------------------------------------------------ structure

    @property
    def block_ids(self) -> tuple[str, ...]:
        """Every block id, in the fixed order."""
        return tuple(b.block_id for b in self.blocks)

    def block(self, block_id: str) -> Block:
        """The `Block` of `block_id`."""
        try:
            return self._by_id[block_id]
        except KeyError:
            raise AdapterError(f"unknown block {block_id!r}") from None

    def parameter(self, block_id: str) -> nn.Parameter:
        """The trainable tensor behind `block_id` (a ``B`` or a head tensor)."""
        self.block(block_id)
        return self._b[block_id]

    def lora_a(self, block_id: str) -> FloatArray:
        """The frozen ``A`` (rank × in_features) of an adapter block."""
        if block_id not in self._a:
            raise AdapterError(f"block {block_id!r} has no LoRA A (is it a head block?)")
        return self._a[block_id].detach().cpu().to(torch.float64).numpy().copy()

    def apply_tier(self, tier: TierSpec) -> tuple[str, ...]:
        """Freeze everything, then unfreeze the tier's ``B`` blocks and the head.

        Returns the trained block ids. Row slices are recorded in `row_masks` (True =
        trainable row); the trainer zeroes the gradient of the other rows.
        """
        trained = tier_blocks(self.blocks, tier)
        for parameter in self.peft_model.parameters():
            parameter.requires_grad_(False)
        self.row_masks = {}
        for block_id in trained:
            self._b[block_id].requires_grad_(True)
            block = self._by_id[block_id]
            mask = np.zeros(block.rows, dtype=np.bool_)
            mask[: tier_rows(tier, block.rows) if block.layer is not None else block.rows] = True
            self.row_masks[block_id] = mask
        self.trainable = trained
        return trained

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train under the current tier, in block order."""
        return [self._b[block_id] for block_id in self.trainable]

    def num_trainable(self) -> int:
        """Number of trainable coordinates (rows outside a row slice excluded)."""
        return sum(int(self.row_masks[b].sum()) * self._by_id[b].cols for b in self.trainable)

    # ------------------------------------------------------------------ state

    def get_block_state(self, block_ids: Sequence[str] | None = None) -> dict[str, FloatArray]:
        """Copies of the blocks' values as float64 ``rows × cols`` arrays."""
        chosen = self.block_ids if block_ids is None else block_ids
        state: dict[str, FloatArray] = {}
        for block_id in chosen:
            block = self.block(block_id)
            values = self._b[block_id].detach().cpu().to(torch.float64).numpy()
            state[block_id] = values.reshape(block.shape).copy()
        return state

    def set_block_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Overwrite the named blocks (others keep their values); shapes must match."""
        checked: list[tuple[nn.Parameter, torch.Tensor]] = []
        for block_id, values in state.items():
            block = self.block(block_id)
            # A copy: the values may be a read-only view (released cluster adapters).
            array = np.array(values, dtype=np.float64)
            if array.shape != block.shape:
                raise AdapterError(f"block {block_id!r} has shape {block.shape}, got {array.shape}")
            if not np.all(np.isfinite(array)):
                raise AdapterError(f"block {block_id!r} contains NaN or infinite values")
            parameter = self._b[block_id]
            tensor = torch.from_numpy(array).to(parameter.device, parameter.dtype)
            tensor = tensor.reshape(parameter.shape)
            checked.append((parameter, tensor))
        # All blocks are validated before any is written, so a bad state changes nothing.
        with torch.no_grad():
            for parameter, tensor in checked:
                parameter.copy_(tensor)

    # ------------------------------------------------------------------ use

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Classification logits for a tokenized batch, plus `label_log_prior` if set."""
        output = self.peft_model(input_ids=input_ids, attention_mask=attention_mask)
        logits: torch.Tensor = output.logits
        if self.label_log_prior is None:
            return logits
        return logits + self.label_log_prior.to(logits.device, logits.dtype)

    def set_label_prior(self, log_prior: npt.ArrayLike | None) -> None:
        """Add ``log_prior`` (one value per label) to every logit, in training and use
        (logit adjustment); None removes it.

        Raises:
            AdapterError: not one finite value per label.
        """
        if log_prior is None:
            self.label_log_prior = None
            return
        values = np.asarray(log_prior, dtype=np.float64)
        labels = self.block(HEAD_WEIGHT).rows
        if values.shape != (labels,) or not np.all(np.isfinite(values)):
            raise AdapterError(f"a label prior needs {labels} finite values, got {values.shape}")
        self.label_log_prior = torch.from_numpy(values).to(torch.float32)

    def sentence_embedding_sum(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, batch_size: int = 64
    ) -> torch.Tensor:
        """Σ over the records of each one's sentence embedding scaled to unit L2 norm.

        The embedding is the mean of the base encoder's last hidden states over the
        record's tokens with every adapter disabled (the public initial model), so it
        depends on the record alone, and one record moves the sum by at most 1 in L2.
        Plaintext: it leaves the organization only through the Gaussian mechanism.
        """
        encoder = _inner_model(self.peft_model).base_model
        if not isinstance(encoder, nn.Module):
            raise AdapterError("the base model exposes no encoder (`base_model`)")
        total = torch.zeros(self.block(HEAD_WEIGHT).cols, dtype=torch.float64)
        was_training = self.peft_model.training
        # PEFT's `disable_adapter` re-enables the adapters on exit by marking every LoRA
        # parameter trainable, frozen A and other tiers' B included: restore the tier.
        trainable = [(p, p.requires_grad) for p in self.peft_model.parameters()]
        nn.Module.eval(self.peft_model)
        try:
            with torch.no_grad(), _adapters_disabled(self.peft_model):
                for start in range(0, input_ids.shape[0], batch_size):
                    ids = input_ids[start : start + batch_size]
                    mask = attention_mask[start : start + batch_size]
                    hidden = encoder(input_ids=ids, attention_mask=mask.to(ids.dtype))
                    unit = unit_mean_embeddings(hidden.last_hidden_state, mask)
                    total += unit.sum(0).cpu()
        finally:
            self.peft_model.train(was_training)
            for parameter, requires_grad in trainable:
                parameter.requires_grad_(requires_grad)
        return total

    def export_peft(self, path: str | Path) -> Path:
        """Save the personalized adapter (A, B and head) in standard PEFT format.

        `peft.PeftModel.from_pretrained(base, path)` loads it without fedhft, where
        ``base`` is the same base model (e.g. from `build_base_model`). A label prior
        (`set_label_prior`) is saved folded into the head's bias, so the loaded model
        gives the same logits.

        Raises:
            AdapterError: a label prior is set and the head has no bias to fold it into.
        """
        target = Path(path)
        if HEAD_BIAS not in self._b:
            if self.label_log_prior is not None:
                raise AdapterError(
                    "the head has no bias to fold the label prior into; export without "
                    "it (`set_label_prior(None)`) and add it to the logits when serving"
                )
            target.mkdir(parents=True, exist_ok=True)
            self.peft_model.save_pretrained(str(target))
            return target
        target.mkdir(parents=True, exist_ok=True)
        bias = self._b[HEAD_BIAS]
        saved = bias.detach().clone()
        try:
            if self.label_log_prior is not None:
                with torch.no_grad():
                    bias.add_(self.label_log_prior.to(bias.device, bias.dtype).reshape(bias.shape))
            self.peft_model.save_pretrained(str(target))
        finally:
            with torch.no_grad():
                bias.copy_(saved)
        return target


def get_block_state(
    model: MaskedAdapterModel, block_ids: Sequence[str] | None = None
) -> dict[str, FloatArray]:
    """Flat per-block state of `model` (see `MaskedAdapterModel.get_block_state`)."""
    return model.get_block_state(block_ids)


def set_block_state(model: MaskedAdapterModel, state: Mapping[str, npt.ArrayLike]) -> None:
    """Apply a per-block state to `model` (see `MaskedAdapterModel.set_block_state`)."""
    model.set_block_state(state)


def export_peft(model: MaskedAdapterModel, path: str | Path) -> Path:
    """Save `model`'s adapter in standard PEFT format (see `MaskedAdapterModel.export_peft`)."""
    return model.export_peft(path)
