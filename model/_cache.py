"""A user cache of GGUF models dequantized to float32 `transformers` folders.

Dequantizing a GGUF file with `transformers` (through the `gguf` package) takes about
20 s for a 135M-parameter model on two cores, and every process that loads the model
would pay it again. The first load therefore saves the dequantized weights
(``model.safetensors``), the configuration and the tokenizer read from the GGUF file as
an ordinary `transformers` folder under the cache root, named by the GGUF file's
SHA-256; later loads read that folder.

The cache root is ``$FEDHFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedhft``, else
``~/.cache/fedhft``.

Notes:
    A cache entry is only used when it is the one for this file's content (its folder
    name is the file's SHA-256) and every file in it still has the SHA-256 its manifest
    recorded when it was written, so a truncated or altered entry is rebuilt from the
    GGUF file instead of silently training another model. The entry is built in a
    temporary folder beside it and renamed into place, so a crash or a concurrent build
    never leaves a half-written entry under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from fedhft.files import atomic_write, fsync_folder

from .errors import ModelSourceError

MANIFEST = "fedhft-cache.json"
"""The file in a cache entry that records the GGUF's SHA-256 and every file's SHA-256."""

_GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20

_log = logging.getLogger("fedhft.model")


def cache_root() -> Path:
    """The folder of fedhft's user cache (``$FEDHFT_CACHE_DIR`` wins)."""
    explicit = os.environ.get("FEDHFT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedhft"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_gguf_file(path: Path) -> None:
    """Raise `ModelSourceError` unless ``path`` is a readable file starting as GGUF does."""
    if not path.is_file():
        raise ModelSourceError(
            f"the GGUF file {str(path)!r} (`model.name`) does not exist; give the path of "
            "a `.gguf` model file"
        )
    with path.open("rb") as handle:
        magic = handle.read(len(_GGUF_MAGIC))
    if magic != _GGUF_MAGIC:
        raise ModelSourceError(
            f"{str(path)!r} (`model.name`) is not a GGUF file (it does not start with "
            f"{_GGUF_MAGIC!r}); give the path of a `.gguf` model file"
        )


def dequantized_folder(gguf: Path) -> Path:
    """The cached `transformers` folder of ``gguf``, built on first use.

    Raises:
        ModelSourceError: the file is missing, not GGUF, or not a model `transformers`
            can dequantize.
    """
    check_gguf_file(gguf)
    digest = file_sha256(gguf)
    entries = cache_root() / "gguf"
    folder = entries / digest
    if folder.is_dir():
        if _entry_is_intact(folder, digest):
            return folder
        _log.warning("fedhft: the cached copy of %s in %s is damaged; rebuilding it", gguf, folder)
        shutil.rmtree(folder, ignore_errors=True)
    entries.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=entries, prefix=f".{digest}.", suffix=".tmp"))
    try:
        _dequantize(gguf, building)
        files = {
            path.name: file_sha256(path) for path in sorted(building.iterdir()) if path.is_file()
        }
        manifest = {"gguf_sha256": digest, "gguf_name": gguf.name, "files": files}
        atomic_write(building / MANIFEST, json.dumps(manifest, indent=1).encode())
        try:
            building.rename(folder)
        except OSError:
            # Another process finished the same entry first; theirs is as good as ours.
            if not _entry_is_intact(folder, digest):
                raise
        fsync_folder(entries)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(building)
    return folder


def _entry_is_intact(folder: Path, digest: str) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
        if manifest["gguf_sha256"] != digest or not files:
            return False
        return all(file_sha256(folder / name) == expected for name, expected in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _dequantize(gguf: Path, target: Path) -> None:
    """Save the float32 model and the tokenizer of ``gguf`` into ``target``."""
    # Imported here: only a GGUF source needs them, and they are slow to import.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log.warning(
        "fedhft: dequantizing %s to float32 once (about 20 s for 135M parameters); cached in %s",
        gguf,
        target.parent,
    )
    location, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(location, gguf_file=name, dtype=torch.float32)
    except ImportError as error:
        raise ModelSourceError(
            f"reading {str(gguf)!r} needs the `gguf` package: pip install 'fedhft[gguf]' ({error})"
        ) from error
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        raise ModelSourceError(
            f"{str(gguf)!r} (`model.name`) is not a GGUF model `transformers` can "
            f"dequantize: {error}"
        ) from error
    # The weights are float32 now; only the record of where they came from marks the
    # model as quantized, and transformers refuses to save a quantized model.
    # `hf_quantizer` is a plain attribute that nn.Module's annotations do not know.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
