"""Ask Harbour Bank's assistant: `transformers` and PyTorch only, no fedhft.

Loads the base model the bank trained on (``export/base``), puts the bank's mixture of
LoRA experts (``export/mixture.safetensors``, written by `train.py`) onto the modules it
adapts, and answers each prompt with greedy decoding.

    python chat.py --export export/harbour-bank \
        "Which team should handle this case?
    Case: unrecognised card purchase on retail client through the mobile app, overnight activity"

Without prompts it reads one per line from standard input (an empty line ends the chat).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer


class MixtureOfLoRAExperts(nn.Module):
    """A frozen linear layer plus a shared LoRA expert and a routed mixture of experts.

    ``y = W x + s·B_s A_s x + s·Σ_e g_e(x) B_e A_e x``: the router scores expert ``e`` by
    ``⟨A_e x, P x⟩ / √r``, the softmax over the bank's experts is kept on its top-k and
    renormalized (``g``), ``s = alpha / r``. The same computation as fedhft's own model.
    """

    def __init__(
        self, base: nn.Linear, tensors: dict[str, torch.Tensor], scaling: float, top_k: int
    ):
        super().__init__()
        self.base = base
        self.shared_a, self.shared_b = tensors["shared.A"], tensors["shared.B"]
        self.router_p = tensors["router.P"]
        self.expert_a, self.expert_b = tensors["experts.A"], tensors["experts.B"]
        self.scaling, self.top_k = scaling, top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token = x @ self.router_p.t()
        low = torch.einsum("...i,eri->...er", x, self.expert_a)
        scores = torch.einsum("...er,...r->...e", low, token) / math.sqrt(self.router_p.shape[0])
        probabilities = torch.softmax(scores, dim=-1)
        chosen = torch.topk(probabilities, self.top_k, dim=-1).indices
        kept = probabilities * torch.zeros_like(probabilities).scatter_(-1, chosen, 1.0)
        gates = kept / kept.sum(dim=-1, keepdim=True)
        out = torch.einsum("...er,eor->...eo", low, self.expert_b)
        mixture = torch.einsum("...eo,...e->...o", out, gates) * self.scaling
        shared = ((x @ self.shared_a.t()) @ self.shared_b.t()) * self.scaling
        return self.base(x) + shared + mixture


def load_assistant(export: Path) -> tuple[nn.Module, object, int]:
    """The base model with the mixture in place, its tokenizer, and max_new_tokens."""
    model = AutoModelForCausalLM.from_pretrained(export / "base", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(export / "base")
    with safe_open(str(export / "mixture.safetensors"), framework="pt") as mixture:
        metadata = mixture.metadata()
        if metadata.get("format") != "fedhft-mole-inference/v1":
            raise SystemExit(f"{export}/mixture.safetensors is not a mixture export of train.py")
        scaling, top_k = float(metadata["scaling"]), int(metadata["top_k"])
        for path in json.loads(metadata["modules"]):
            parts = ("shared.A", "shared.B", "router.P", "experts.A", "experts.B")
            tensors = {part: mixture.get_tensor(f"{path}.{part}") for part in parts}
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            setattr(
                parent, name, MixtureOfLoRAExperts(getattr(parent, name), tensors, scaling, top_k)
            )
    model.eval()
    settings = json.loads((export / "inference.json").read_text())
    return model, tokenizer, int(settings["max_new_tokens"])


@torch.no_grad()
def answer(model: nn.Module, tokenizer: object, prompt: str, max_new_tokens: int) -> list[int]:
    """The greedy answer's token ids (without the end token)."""
    inputs = tokenizer(prompt, return_tensors="pt")  # type: ignore[operator]
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos  # type: ignore[attr-defined]
    output = model.generate(  # type: ignore[operator]
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad
    )
    tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="train.py's export folder")
    parser.add_argument("--json", action="store_true", help="print answers and token ids as JSON")
    parser.add_argument("prompts", nargs="*", help="questions; default: one per line from stdin")
    args = parser.parse_args(argv)
    model, tokenizer, max_new_tokens = load_assistant(args.export)
    if args.prompts:
        prompts = list(args.prompts)
    else:
        prompts = []
        for line in sys.stdin:
            if not line.strip():
                break
            prompts.append(line.rstrip("\n").replace("\\n", "\n"))
    tokens = [answer(model, tokenizer, prompt, max_new_tokens) for prompt in prompts]
    texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps({"answers": texts, "tokens": tokens}))
        return
    for prompt, text in zip(prompts, texts, strict=True):
        print(f"> {prompt}\n{text}\n")


if __name__ == "__main__":
    main()
