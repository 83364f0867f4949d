"""Serve triage predictions from the exported adapter with plain transformers + peft.

Nothing here imports fedhft: the inference server needs only `torch`, `transformers`
and `peft`, and the folder `train.py` exported.

    python predict.py --export export/st-mary-hospital "chest pain radiating to left arm"

With ``model.pooling: mean`` (fedhft's default, how all-MiniLM-L6-v2 was trained) the
classifier reads the mean of the encoder's last hidden states over a note's tokens.
`transformers` has no such head (its `BertForSequenceClassification` reads the [CLS]
pooler), so `logits` below computes it in five lines of PyTorch from the adapted
encoder and the adapted head. With ``model.pooling: cls`` the plain forward pass is it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer, BertForSequenceClassification


class TriageModel:
    """The base model with the hospital's adapter, its tokenizer and label names."""

    def __init__(self, export: Path) -> None:
        self.info: dict[str, Any] = json.loads((export / "inference.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(export / "base", local_files_only=True)
        # With mean pooling the saved base has no [CLS] pooler; transformers initialises
        # one (and says so), and `logits` never uses it.
        base = BertForSequenceClassification.from_pretrained(export / "base", local_files_only=True)
        self.model = PeftModel.from_pretrained(base, export / "adapter").eval()

    @torch.no_grad()
    def logits(self, notes: Sequence[str]) -> torch.Tensor:
        """One row of class scores per note."""
        batch = self.tokenizer(
            list(notes),
            padding=True,
            truncation=True,
            max_length=self.info["max_length"],
            return_tensors="pt",
        )
        if self.info["pooling"] == "cls":
            plain: torch.Tensor = self.model(**batch).logits
            return plain
        # Mean pooling: the LoRA layers are injected into `bert` and the trained head
        # replaces `classifier`, so the adapted modules are used directly.
        classifier: Any = self.model.base_model.model
        hidden = classifier.bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = classifier.classifier(pooled)
        return logits

    def predict(self, notes: Sequence[str]) -> list[str]:
        """The triage level of each note."""
        return [self.info["labels"][i] for i in self.logits(notes).argmax(dim=-1).tolist()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="the folder train.py wrote")
    parser.add_argument("--json", action="store_true", help="print logits and labels as JSON")
    parser.add_argument("notes", nargs="+", help="triage notes to classify")
    args = parser.parse_args(argv)
    model = TriageModel(args.export)
    if args.json:
        logits = model.logits(args.notes)
        print(json.dumps({"logits": logits.tolist(), "labels": model.predict(args.notes)}))
        return
    for note, level in zip(args.notes, model.predict(args.notes), strict=True):
        print(f"{level:>8}  {note}")


if __name__ == "__main__":
    main()
