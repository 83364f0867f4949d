"""The exported PEFT adapter reproduces fedhft's own generations without fedhft."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from causal_helpers import batch_of, encoded, examples
from peft import PeftModel
from tiny_causal import TinyCausal
from transformers import AutoModelForCausalLM

from fedhft.sdk._causal import CausalPrivateStep
from fedhft.sdk._generation import generate_responses, left_pad
from fedhft.sdk._instructions import prompt_ids
from fedhft.sdk.privacy import SecureGaussian

# PEFT's loader calls a transformers method deprecated in v5; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def test_exported_adapter_generates_the_same_tokens(
    tiny_causal: TinyCausal, tmp_path: Path
) -> None:
    """After a DP step changed B, `PeftModel.from_pretrained(AutoModelForCausalLM.
    from_pretrained(base), export)` generates fedhft's tokens, token for token, and those
    differ from the base model's."""
    model = tiny_causal.adapted()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=20.0)
    with CausalPrivateStep(
        model,
        optimizer,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        expected_batch_size=4.0,
        noise_sampler=SecureGaussian(),
    ) as step:
        step.step(batch_of(tiny_causal, encoded(tiny_causal, examples(4))))
    assert all(np.abs(v).max() > 0 for v in model.get_block_state().values())
    export = model.export_peft(tmp_path / "adapter")

    tokenizer = tiny_causal.tokenizer
    pad, eos = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
    prompts = [prompt_ids(tokenizer, e.prompt) for e in examples(6, organization=1)]
    ours = generate_responses(model, tokenizer, prompts, max_new_tokens=8)
    with model.adapters_disabled():
        base_answers = generate_responses(model, tokenizer, prompts, max_new_tokens=8)
    assert ours != base_answers

    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_causal.folder)), str(export)
    )
    loaded.eval()
    input_ids, attention_mask = left_pad(prompts, pad)
    with torch.no_grad():
        output = loaded.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    theirs = [
        row[: row.index(eos)] if eos in row else row
        for row in output[:, input_ids.shape[1] :].tolist()
    ]
    assert theirs == ours
