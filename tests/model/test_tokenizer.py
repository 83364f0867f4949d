"""Each model's own tokenizer and its fingerprint in the consortium configuration."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import models
from transformers import AutoTokenizer

from fedhft.model import (
    MaskedAdapterModel,
    TokenizerMismatchError,
    load_tokenizer,
    minilm_path,
    tokenizer_fingerprint,
)
from fedhft.policies import ConsortiumConfig, ModelSpec, consortium_hash, load_consortium_config
from fedhft.sdk import LocalTrainer

sys.path.insert(0, str(Path(__file__).parent))
from test_architectures import _consortium, _policy
from tiny_architectures import build_checkpoint

Checkpoint = Callable[[str], Path]


def _fingerprint(folder: Path) -> str:
    return tokenizer_fingerprint(folder)


def test_a_huggingface_model_trains_on_its_own_tokenizer_not_minilms(
    checkpoint: Checkpoint, tmp_path: Path
) -> None:
    """The trainer of a `huggingface` consortium tokenizes with the folder's tokenizer:
    ids within the model's 300-token vocabulary, as the folder's tokenizer gives them."""
    folder = checkpoint("roberta")
    config = _consortium(folder, _fingerprint(folder))
    trainer = LocalTrainer(
        MaskedAdapterModel.from_consortium(config), _policy("org-a", tmp_path), config
    )
    own = AutoTokenizer.from_pretrained(str(folder))
    text = "unexpected chest pain overnight"
    assert trainer.tokenizer(text)["input_ids"] == own(text)["input_ids"]
    assert max(trainer.tokenizer(text)["input_ids"]) < len(own) < 1000
    assert tokenizer_fingerprint(trainer.tokenizer) == config.model.tokenizer_sha256


def test_minilm_and_tiny_keep_minilms_tokenizer() -> None:
    """`minilm` and `tiny` read MiniLM's local wordpiece tokenizer, as before."""
    minilm = AutoTokenizer.from_pretrained(str(minilm_path()))
    for source in ("minilm", "tiny"):
        tokenizer = load_tokenizer(ModelSpec(source=source, num_labels=2))
        assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(minilm)


def test_organizations_with_different_tokenizers_for_one_name_are_refused(
    checkpoint: Checkpoint, tmp_path: Path
) -> None:
    """Two organizations install `model.name` with the same weights but another tokenizer
    (here: trained on the same text with a different padding side, then a different
    vocabulary): the second one's trainer refuses to start, whether it loads the
    tokenizer itself or is handed one. Had each pinned its own fingerprint, their
    configuration hashes (checked on every round announcement) would differ."""
    folder = tmp_path / "shared-name"
    shutil.copytree(checkpoint("qwen2"), folder)
    config = _consortium(folder, _fingerprint(folder))
    LocalTrainer(MaskedAdapterModel.from_consortium(config), _policy("org-a", tmp_path), config)

    # Organization B's copy of the same name: right padding instead of left.
    other = AutoTokenizer.from_pretrained(str(folder))
    other.padding_side = "right"
    other.save_pretrained(folder)
    with pytest.raises(TokenizerMismatchError, match=r"model.tokenizer_sha256: the consortium"):
        LocalTrainer(MaskedAdapterModel.from_consortium(config), _policy("org-b", tmp_path), config)
    with pytest.raises(TokenizerMismatchError, match=str(config.model.tokenizer_sha256)):
        LocalTrainer(
            MaskedAdapterModel.from_consortium(config),
            _policy("org-b", tmp_path),
            config,
            tokenizer=other,
        )
    # Organization C's copy: another vocabulary (a Llama tokenizer) under the same name.
    shutil.copytree(checkpoint("llama"), folder, dirs_exist_ok=True)
    with pytest.raises(TokenizerMismatchError):
        load_tokenizer(config.model)
    pinned_by_b = _consortium(folder, _fingerprint(folder))
    assert consortium_hash(pinned_by_b) != consortium_hash(config)


def test_a_huggingface_consortium_must_pin_its_tokenizer(checkpoint: Checkpoint) -> None:
    """Without `model.tokenizer_sha256` the error gives the fingerprint to pin."""
    folder = checkpoint("bert")
    spec = ModelSpec(source="huggingface", name=str(folder), num_labels=4, pooling="cls")
    with pytest.raises(TokenizerMismatchError, match=_fingerprint(folder)):
        load_tokenizer(spec)


def test_the_fingerprint_is_what_decides_token_ids(tmp_path: Path) -> None:
    """Reloading or tokenizing (which sets the backend's padding and truncation) keeps
    the fingerprint; another vocabulary, special token or padding side changes it."""
    folder = build_checkpoint("bert", tmp_path / "bert")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    first = tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c", "d"], padding="max_length", truncation=True, max_length=9)
    assert tokenizer_fingerprint(tokenizer) == first
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(folder))) == first
    tokenizer.padding_side = "left"
    assert tokenizer_fingerprint(tokenizer) != first
    changed = AutoTokenizer.from_pretrained(str(folder))
    changed.add_special_tokens({"additional_special_tokens": ["[NEW]"]})
    assert tokenizer_fingerprint(changed) != first
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(tmp_path / "copy")
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tmp_path / "copy"))) == first
    swapped = AutoTokenizer.from_pretrained(str(folder))
    vocabulary = swapped.get_vocab()
    swapped.backend_tokenizer.model = models.WordPiece(
        {**vocabulary, "a": vocabulary["b"], "b": vocabulary["a"]},
        unk_token="[UNK]",  # noqa: S106  (a special token, not a password)
    )
    assert swapped("a b")["input_ids"] != tokenizer("a b")["input_ids"]
    assert tokenizer_fingerprint(swapped) != first
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(minilm_path()))) != first


def test_existing_consortium_files_keep_their_configuration_hash(examples_dir: Path) -> None:
    """The fingerprint field is left out of the canonical JSON when unset, so a `minilm`
    or `tiny` consortium file hashes as before (the value pinned here is the hash of the
    hospital example before the field existed); setting it changes the hash."""
    path = Path(__file__).parents[2] / "examples/hospital_triage/policies/consortium.yaml"
    config = load_consortium_config(path)
    assert consortium_hash(config) == (
        "400f27f854ce003f962e2692471687199bddec0be6b3cb6c1717c4b6abffd495"
    )
    assert "tokenizer_sha256" not in config.model_dump_json(round_trip=True)
    pinned = ConsortiumConfig.model_validate(
        {
            **config.model_dump(mode="json"),
            "model": {**config.model.model_dump(mode="json"), "tokenizer_sha256": "0" * 64},
        }
    )
    assert consortium_hash(pinned) != consortium_hash(config)
    assert load_consortium_config(examples_dir / "consortium.yaml").model.tokenizer_sha256 is None
