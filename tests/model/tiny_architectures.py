# ruff: noqa: S106  # the "*_token" arguments are tokenizer special tokens, not passwords
"""Tiny random checkpoints of several architectures, each with its own offline tokenizer.

Every folder holds what `save_pretrained` writes for a random `transformers` model
(config, safetensors weights) and for a tokenizer trained here with `tokenizers` on
synthetic text: WordPiece for the BERT family, byte-level BPE for RoBERTa and the
decoders. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    GemmaConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    ModernBertConfig,
    PhiConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    RobertaConfig,
)

from fedhft.sdk import synthetic_federation

VOCAB = 300
LABELS = 4


@dataclass(frozen=True)
class Tiny:
    """How one architecture's tiny checkpoint is made."""

    config: Callable[[dict[str, int | None]], PretrainedConfig]
    wordpiece: bool
    pad: bool = True
    """Whether the tokenizer has a padding token (decoders often have none)."""
    padding_side: str = "right"


def _texts() -> list[str]:
    data = synthetic_federation(num_organizations=2, alpha=1.0, samples_per_org=80, seed=0)
    return [text for org in data for text in org.train.texts]


def _wordpiece(texts: list[str]) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))  # type: ignore[call-arg]
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # type: ignore[assignment]
    tokenizer.decoder = decoders.WordPiece()  # type: ignore[assignment]
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials)
    )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _bpe(texts: list[str], *, pad: bool, padding_side: str) -> PreTrainedTokenizerFast:
    specials = ["<s>", "</s>", "<unk>", *(["<pad>"] if pad else [])]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # type: ignore[assignment]
    tokenizer.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    tokenizer.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side=padding_side,
        **({"pad_token": "<pad>"} if pad else {}),
    )


_SMALL: dict[str, Any] = {"num_labels": LABELS}
_DECODER: dict[str, Any] = {
    **_SMALL,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 128,
}
_ENCODER: dict[str, Any] = {
    **_DECODER,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def _ids(ids: dict[str, int | None]) -> dict[str, Any]:
    return {"vocab_size": ids["vocab"], "pad_token_id": ids["pad"]}


ARCHITECTURES: dict[str, Tiny] = {
    "bert": Tiny(lambda i: BertConfig(**_ENCODER, **_ids(i)), wordpiece=True),
    "roberta": Tiny(
        lambda i: RobertaConfig(
            **{**_ENCODER, "max_position_embeddings": 160},
            **_ids(i),
            bos_token_id=i["bos"],
            eos_token_id=i["eos"],
        ),
        wordpiece=False,
    ),
    "distilbert": Tiny(
        lambda i: DistilBertConfig(
            **_SMALL, **_ids(i), dim=32, n_layers=2, n_heads=2, hidden_dim=64, dropout=0.0
        ),
        wordpiece=True,
    ),
    # No padding token: fedhft pads with the end-of-sequence token.
    "llama": Tiny(
        lambda i: LlamaConfig(**_DECODER, **_ids(i), num_key_value_heads=1),
        wordpiece=False,
        pad=False,
    ),
    "qwen2": Tiny(
        lambda i: Qwen2Config(**_DECODER, **_ids(i), num_key_value_heads=1),
        wordpiece=False,
        padding_side="left",
    ),
    "gpt_neox": Tiny(
        lambda i: GPTNeoXConfig(**_DECODER, **_ids(i), rotary_pct=0.5),
        wordpiece=False,
        pad=False,
    ),
    "deberta-v2": Tiny(lambda i: DebertaV2Config(**_ENCODER, **_ids(i)), wordpiece=True),
    "modernbert": Tiny(
        lambda i: ModernBertConfig(
            **_DECODER,
            **_ids(i),
            cls_token_id=i["cls"],
            sep_token_id=i["sep"],
            bos_token_id=i["cls"],
            eos_token_id=i["sep"],
            global_attn_every_n_layers=1,
        ),
        wordpiece=True,
    ),
    "mistral": Tiny(
        lambda i: MistralConfig(**_DECODER, **_ids(i), num_key_value_heads=1), wordpiece=False
    ),
    "qwen3": Tiny(
        lambda i: Qwen3Config(**_DECODER, **_ids(i), num_key_value_heads=1, head_dim=16),
        wordpiece=False,
        pad=False,
    ),
    "gemma": Tiny(
        lambda i: GemmaConfig(**_DECODER, **_ids(i), num_key_value_heads=1, head_dim=16),
        wordpiece=False,
    ),
    "phi": Tiny(lambda i: PhiConfig(**_DECODER, **_ids(i)), wordpiece=False, pad=False),
}
"""Every architecture of `fedhft.model`'s table but three variants; the acceptance list
(BERT, RoBERTa, DistilBERT, Llama, Qwen2, GPT-NeoX) comes first."""


def build_checkpoint(name: str, folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny random `name` model and its own trained tokenizer into `folder`."""
    tiny = ARCHITECTURES[name]
    texts = _texts()
    tokenizer = (
        _wordpiece(texts)
        if tiny.wordpiece
        else _bpe(texts, pad=tiny.pad, padding_side=tiny.padding_side)
    )
    ids: dict[str, int | None] = {
        "vocab": len(tokenizer),
        # A config without a pad id, as decoder checkpoints without one have.
        "pad": tokenizer.pad_token_id if tiny.pad else None,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "cls": tokenizer.cls_token_id,
        "sep": tokenizer.sep_token_id,
    }
    config = tiny.config(ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # `from_config` is not annotated in transformers.
        model = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
