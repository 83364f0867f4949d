"""Records, batches and a recording noise sampler for the causal-LM tests."""

from __future__ import annotations

import torch
from tiny_causal import TinyCausal, federation

from fedhft.sdk._causal import CausalBatch, collate_records
from fedhft.sdk._instructions import EncodedInstruction, InstructionExample, encode_instruction

MAX_SEQ_LENGTH = 96


def examples(count: int, organization: int = 0) -> list[InstructionExample]:
    """The first `count` training records of one synthetic organization."""
    return list(federation()[organization].train.examples[:count])


def encoded(tiny: TinyCausal, records: list[InstructionExample]) -> list[EncodedInstruction]:
    """Records encoded with response-only labels."""
    return [encode_instruction(tiny.tokenizer, r, MAX_SEQ_LENGTH) for r in records]


def batch_of(tiny: TinyCausal, records: list[EncodedInstruction]) -> CausalBatch:
    """Records right-padded with the tokenizer's pad token."""
    return collate_records(records, int(tiny.tokenizer.pad_token_id))


class RecordingNoise:
    """A seeded N(0, std²) sampler that keeps every draw, in call order (tests only)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.draws: list[torch.Tensor] = []

    def __call__(self, shape: torch.Size, std: float, dtype: torch.dtype) -> torch.Tensor:
        noise = torch.randn(tuple(shape), generator=self.generator, dtype=torch.float64) * std
        self.draws.append(noise.to(dtype))
        return self.draws[-1]
