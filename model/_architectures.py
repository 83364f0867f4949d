"""What fedhft knows about each `transformers` architecture, by ``config.model_type``.

One row per architecture: the default LoRA targets (used when ``adapter.target_modules``
is omitted), the path of the classification head's output linear layer, and whether it
is a decoder. Everything else is read from module paths and works the same for every
architecture: the layer of a module is the first numbered component of its path, a
block id is its path from the layer list onwards, tiers count layers from 0 (negative
from the top).

Pooling (``model.pooling: cls``, the architecture's own head): an encoder classifies
its first token; a decoder its last non-padding token, found by `transformers` from
``config.pad_token_id`` (the rightmost token that is not padding, so left and right
padding both work), which `fedhft.model.build_base_model` sets from the model's own
tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .errors import AdapterError, ModelError


@dataclass(frozen=True)
class Architecture:
    """How fedhft adapts one ``model_type``."""

    targets: tuple[str, ...]
    """Default ``adapter.target_modules``: the attention query and value projections."""
    head: str = "classifier"
    """Path of the head's output `nn.Linear` (labels × hidden) in the model."""
    decoder: bool = False
    """A causal decoder: its head reads the last non-padding token."""
    saved: tuple[str, ...] = ()
    """Modules between the encoder and the head that a pretrained checkpoint may lack
    (freshly initialised, frozen): saved with the adapter (PEFT ``modules_to_save``) so
    that the export reloads with the same logits on any copy of the base model."""


_LLAMA_LIKE = Architecture(("q_proj", "v_proj"), head="score", decoder=True)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(("query", "value")),
    "roberta": Architecture(("query", "value"), head="classifier.out_proj"),
    "xlm-roberta": Architecture(("query", "value"), head="classifier.out_proj"),
    "distilbert": Architecture(("q_lin", "v_lin"), saved=("pre_classifier",)),
    "deberta-v2": Architecture(("query_proj", "value_proj"), saved=("pooler",)),
    "modernbert": Architecture(("Wqkv",), saved=("head",)),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi": _LLAMA_LIKE,
    "phi3": Architecture(("qkv_proj",), head="score", decoder=True),
    "gpt_neox": Architecture(("query_key_value",), head="score", decoder=True),
}
"""Architectures with a known head and default targets; each is tested end to end on a
tiny random checkpoint (DP-SGD round, secure sum, PEFT export), except xlm-roberta,
gemma2 and phi3 (RoBERTa's, Gemma's and a fused-qkv layout)."""


def architecture(model_type: str) -> Architecture:
    """The row of `model_type`.

    Raises:
        ModelError: an architecture fedhft does not know.
    """
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ModelError(
            f"unknown architecture {model_type!r} (the model's config.json `model_type`); "
            f"fedhft supports {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def model_type_of(model: nn.Module) -> str:
    """``config.model_type`` of a `transformers` model."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise ModelError(
            f"{type(model).__name__} has no `config.model_type`; use a transformers "
            "sequence-classification model"
        )
    return model_type


def default_target_modules(model_type: str) -> tuple[str, ...]:
    """The LoRA targets of `model_type` when ``adapter.target_modules`` is omitted."""
    return architecture(model_type).targets


def saved_modules(model: nn.Module) -> tuple[str, ...]:
    """The frozen modules saved with the adapter besides the head (`Architecture.saved`)."""
    return architecture(model_type_of(model)).saved


def target_modules(model: nn.Module, configured: Sequence[str] | None) -> tuple[str, ...]:
    """``adapter.target_modules``, or the architecture's default when it is omitted."""
    if configured is not None:
        return tuple(configured)
    return default_target_modules(model_type_of(model))


def head_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The path and module of the head's output linear layer (labels × hidden).

    Raises:
        AdapterError: the model has no such linear layer.
    """
    path = architecture(model_type_of(model)).head
    module = dict(model.named_modules()).get(path)
    if not isinstance(module, nn.Linear):
        raise AdapterError(
            f"the base model has no linear head at {path!r} (found "
            f"{type(module).__name__ if module is not None else 'nothing'}); use a "
            "sequence-classification model"
        )
    return path, module


def check_trainable(path: str, module: nn.Module) -> None:
    """Refuse a module LoRA would wrap that is not an `nn.Linear`.

    fedhft's LoRA blocks and Opacus's per-sample gradients both need `nn.Linear`; GPT-2's
    `Conv1D`, for one, has no per-sample gradient in Opacus, which would otherwise
    surface in the middle of a round.

    Raises:
        AdapterError: naming the module, its class and what to do.
    """
    if not isinstance(module, nn.Linear):
        raise AdapterError(
            f"adapter.target_modules: {path!r} is a {type(module).__module__}."
            f"{type(module).__name__}, not torch.nn.Linear; Opacus cannot compute "
            "per-sample gradients of LoRA on it, so DP-SGD cannot train it. Choose linear "
            "modules, or an architecture built from nn.Linear"
        )
