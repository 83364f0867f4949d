"""Tiny random Llama and Qwen2 causal LMs with a BPE tokenizer trained offline.

The tokenizer is a small byte-level BPE trained with `tokenizers` on the synthetic
clinical/banking instruction federation's own text (prompts and answers), with ``<pad>``
and ``</s>`` special tokens; each model is saved with it by ``save_pretrained`` into a
session-scoped folder, so tests load them as any local Hugging Face model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from fedhft.model import CausalAdapterModel, tokenizer_fingerprint
from fedhft.policies import AdapterSpec, ConsortiumConfig
from fedhft.sdk._instructions import (
    InstructionOrganization,
    render_prompt,
    synthetic_instruction_federation,
)

ARCHITECTURES = ("llama", "qwen2")


@dataclass(frozen=True)
class TinyCausal:
    """A saved tiny causal LM: its folder, its tokenizer and the architecture's name."""

    kind: str
    folder: Path
    tokenizer: PreTrainedTokenizerFast

    def base(self) -> PreTrainedModel:
        """A fresh copy of the saved base model."""
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(self.folder))
        return model

    def adapted(
        self, *, rank: int = 4, targets: tuple[str, ...] | None = None
    ) -> CausalAdapterModel:
        """The base wrapped with frozen-A LoRA (attention projections by default)."""
        spec = AdapterSpec(
            target_modules=list(targets or ("q_proj", "k_proj", "v_proj", "o_proj")),
            rank=rank,
            alpha=8.0,
            a_seed=1234,
        )
        return CausalAdapterModel(self.base(), spec)


def causal_consortium(
    tiny: TinyCausal,
    *,
    organizations: tuple[str, ...] = ("a", "b", "c"),
    tiers: dict[str, Any] | None = None,
    **fields: Any,
) -> ConsortiumConfig:
    """A FedHFT `causal-lm` consortium on the saved tiny model (q/k/v/o targets by
    default); ``fields`` override top-level entries of the file."""
    data: dict[str, Any] = {
        "consortium": "instruct",
        "model": {
            "source": "huggingface",
            "name": str(tiny.folder),
            "task": "causal-lm",
            "tokenizer_sha256": tokenizer_fingerprint(tiny.tokenizer),
        },
        "adapter": {"rank": 4, "alpha": 8, "a_seed": 1234},
        "tiers": tiers or {"full": {}},
        "rounds": 2,
        "enrollment": [{"organization": o} for o in organizations],
        **fields,
    }
    return ConsortiumConfig.model_validate(data)


def federation() -> list[InstructionOrganization]:
    """Four seeded clinical/banking organizations with short answers."""
    return synthetic_instruction_federation(
        num_organizations=4, alpha=1.0, samples_per_org=24, seed=5
    )


def _tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    texts = []
    for org in federation():
        for example in (*org.train, *org.test):
            texts.append(render_prompt(plain, example.prompt) + example.response)
    bpe.train_from_iterator(texts, trainer=trainer)
    # Special-token names, not secrets (ruff's S106 reads `*_token` as a password).
    special = {"pad_token": "<pad>", "eos_token": "</s>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, padding_side="left", **special)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _config(kind: str, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig | Qwen2Config:
    shared = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": kind == "qwen2",
    }
    return LlamaConfig(**shared) if kind == "llama" else Qwen2Config(**shared)


@pytest.fixture(scope="session")
def tiny_causal_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyCausal]:
    """Both tiny architectures, saved once per session."""
    root = tmp_path_factory.mktemp("tiny-causal")
    saved = {}
    for kind in ARCHITECTURES:
        folder = root / kind
        tokenizer = _tokenizer(folder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            model = AutoModelForCausalLM.from_config(_config(kind, tokenizer))
        model.save_pretrained(str(folder))
        saved[kind] = TinyCausal(kind, folder, tokenizer)
    return saved


@pytest.fixture(params=ARCHITECTURES)
def tiny_causal(
    request: pytest.FixtureRequest, tiny_causal_models: dict[str, TinyCausal]
) -> TinyCausal:
    """Each tiny architecture in turn."""
    return tiny_causal_models[request.param]
