"""Frozen-A LoRA blocks on a causal language model (instruction tuning of a decoder).

The causal-LM counterpart of `MaskedAdapterModel`: an `AutoModelForCausalLM` is wrapped
with PEFT LoRA on the decoder's attention projections (``q_proj``, ``k_proj``,
``v_proj``, ``o_proj`` by default; MLP projections if the adapter names them). Every
``A`` is drawn from the consortium's ``a_seed`` with the same `frozen_a` as the
classification adapters and frozen (FFA-LoRA, Sun et al. 2024), every ``B`` starts at
zero, and there is no head: the language-model head stays the base model's, frozen. So
``ΔW = B·A`` is linear in ``B`` and averaging ``B`` inside a secure sum is exact.

Blocks are the ``B`` matrices (``rows × cols`` = output features × rank), with ids from
their module paths as `adapter_layout` derives them (``model.layers.1.self_attn.q_proj``
→ ``layers.1.self_attn.q_proj``), in module order; a tier (`TierSpec`) picks layers,
modules and a row slice exactly as for classification (`tier_blocks`, `tier_rows`).

`response_logits` computes the output layer only where the loss needs it: the final
hidden state of each position whose NEXT token is a response token (labels other than
``IGNORE_INDEX``) is gathered first and only those rows go through ``lm_head``. For a
small model with a large vocabulary the output layer is a large share of a step.

Notes:
    Position ids are derived from the attention mask (``cumsum − 1``), so a record gets
    the same positions, and therefore the same hidden states, whether it is padded on
    the left (generation) or on the right (training), alone or in a batch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from fedhft.policies import AdapterSpec, TierSpec

from ._adapters import (
    Block,
    causal_layout,
    frozen_a,
    tier_blocks,
    tier_rows,
    unit_mean_embeddings,
    with_causal_targets,
)
from .errors import AdapterError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

IGNORE_INDEX = -100
"""The label of a position the loss skips (prompt and padding), as in `fedhft.sdk`."""

_ADAPTER_NAME = "default"


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions ``0, 1, …`` of each row's real tokens (padding gets 0), whatever side the
    padding is on."""
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.clamp_min(0)


def response_logits(
    causal_lm: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a response token, and what they predict.

    Returns ``(logits, targets, record)``: one row per response token of the batch
    (``logits`` is tokens × vocabulary), the token it must predict, and the index of the
    record it belongs to. ``labels`` are aligned with ``input_ids`` (Hugging Face's
    convention); position ``t`` predicts label ``t + 1``. Only those positions' final
    hidden states go through the output layer; positions come from the attention mask.
    """
    # transformers leaves these two untyped.
    decoder = causal_lm.get_decoder()  # type: ignore[no-untyped-call]
    head = causal_lm.get_output_embeddings()  # type: ignore[no-untyped-call]
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module):
        raise AdapterError("the causal LM exposes no decoder or output embeddings")
    hidden = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
    ).last_hidden_state
    predicts = labels[:, 1:] != IGNORE_INDEX
    record, position = predicts.nonzero(as_tuple=True)
    logits: torch.Tensor = head(hidden[record, position])
    return logits, labels[record, position + 1], record


@torch.no_grad()
def greedy_generate(
    network: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
) -> torch.Tensor:
    """Greedy continuations of a LEFT-padded batch of prompts: ``batch × ≤ max_new_tokens``.

    ``network`` is a module with Hugging Face's ``generate`` (a causal LM, or PEFT's
    wrapper of one). A row stops at its first ``eos_token_id`` (kept) and is filled with
    ``pad_token_id`` afterwards; generation ends when every row has stopped.
    """
    if max_new_tokens < 1:
        raise AdapterError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if bool((attention_mask[:, -1] == 0).any()):
        raise AdapterError("generation needs left padding (every row's last token real)")
    was_training = network.training
    network.eval()
    try:
        output: torch.Tensor = network.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
    finally:
        network.train(was_training)
    return output[:, input_ids.shape[1] :]


class CausalAdapterModel:
    """A causal LM with frozen-A LoRA ``B`` blocks and a tier mask; no trainable head.

    The base model is wrapped in place by PEFT (`peft_model`). After construction every
    ``B`` is trainable (the "all blocks" tier); `apply_tier` narrows that down.
    """

    def __init__(self, base: PreTrainedModel, adapter: AdapterSpec) -> None:
        adapter = with_causal_targets(adapter)
        self.adapter = adapter
        self.blocks = causal_layout(base, adapter)
        self._by_id = {b.block_id: b for b in self.blocks}
        self.num_layers = len({b.layer for b in self.blocks})
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=adapter.rank,
            # PEFT annotates `lora_alpha` as int but only ever computes alpha / r.
            lora_alpha=adapter.alpha,  # type: ignore[arg-type]
            target_modules=list(adapter.target_modules or ()),
            lora_dropout=0.0,
            bias="none",
        )
        # PEFT draws its own A from the global generator; fork it so wrapping leaves the
        # caller's random state alone (our A overwrites PEFT's just below).
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            self.peft_model: PeftModel = get_peft_model(base, config)
        self._b: dict[str, nn.Parameter] = {}
        self._a: dict[str, nn.Parameter] = {}
        modules = dict(self.inner_model.named_modules())
        for block in self.blocks:
            lora = modules[block.path]
            a_param = lora.lora_A[_ADAPTER_NAME].weight
            b_param = lora.lora_B[_ADAPTER_NAME].weight
            with torch.no_grad():
                a_param.copy_(
                    frozen_a(adapter.a_seed, block.block_id, adapter.rank, a_param.shape[1])
                )
                b_param.zero_()
            self._a[block.block_id] = a_param
            self._b[block.block_id] = b_param
        self.trainable: tuple[str, ...] = ()
        self.row_masks: dict[str, BoolArray] = {}
        self.apply_tier(TierSpec())

    # ------------------------------------------------------------------ structure

    @property
    def inner_model(self) -> PreTrainedModel:
        """The wrapped `AutoModelForCausalLM` (with PEFT's LoRA layers inside)."""
        inner = self.peft_model.base_model.model
        if not isinstance(inner, PreTrainedModel):
            raise AdapterError("unexpected PEFT model structure: no wrapped causal LM")
        return inner

    @property
    def network(self) -> nn.Module:
        """The module whose forward pass runs the model (train/eval mode is set on it)."""
        return self.peft_model

    @property
    def block_ids(self) -> tuple[str, ...]:
        """Every block id, in the fixed order."""
        return tuple(b.block_id for b in self.blocks)

    def block(self, block_id: str) -> Block:
        """The `Block` of `block_id`."""
        try:
            return self._by_id[block_id]
        except KeyError:
            raise AdapterError(f"unknown block {block_id!r}") from None

    def parameter(self, block_id: str) -> nn.Parameter:
        """The trainable ``B`` behind `block_id`."""
        self.block(block_id)
        return self._b[block_id]

    def lora_a(self, block_id: str) -> FloatArray:
        """The frozen ``A`` (rank × in_features) of a block."""
        self.block(block_id)
        return self._a[block_id].detach().to(torch.float64).numpy().copy()

    def apply_tier(self, tier: TierSpec) -> tuple[str, ...]:
        """Freeze everything, then unfreeze the tier's ``B`` blocks; returns their ids.

        Row slices are recorded in `row_masks` (True = trainable row); the DP step zeroes
        the per-sample gradients of the other rows before clipping.
        """
        trained = tier_blocks(self.blocks, tier, head=False)
        for parameter in self.peft_model.parameters():
            parameter.requires_grad_(False)
        self.row_masks = {}
        for block_id in trained:
            self._b[block_id].requires_grad_(True)
            rows = self._by_id[block_id].rows
            mask = np.zeros(rows, dtype=np.bool_)
            mask[: tier_rows(tier, rows)] = True
            self.row_masks[block_id] = mask
        self.trainable = trained
        return trained

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train under the current tier, in block order."""
        return [self._b[block_id] for block_id in self.trainable]

    # ------------------------------------------------------------------ state

    def get_block_state(self, block_ids: Sequence[str] | None = None) -> dict[str, FloatArray]:
        """Copies of the blocks' values as float64 ``rows × cols`` arrays."""
        chosen = self.block_ids if block_ids is None else block_ids
        state: dict[str, FloatArray] = {}
        for block_id in chosen:
            self.block(block_id)
            state[block_id] = self._b[block_id].detach().to(torch.float64).numpy().copy()
        return state

    def set_block_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Overwrite the named blocks (others keep their values); shapes must match.

        Raises:
            AdapterError: an unknown block, a wrong shape or a non-finite value; nothing
                is written then.
        """
        checked: list[tuple[nn.Parameter, torch.Tensor]] = []
        for block_id, values in state.items():
            block = self.block(block_id)
            array = np.asarray(values, dtype=np.float64)
            if array.shape != block.shape:
                raise AdapterError(f"block {block_id!r} has shape {block.shape}, got {array.shape}")
            if not np.all(np.isfinite(array)):
                raise AdapterError(f"block {block_id!r} contains NaN or infinite values")
            parameter = self._b[block_id]
            checked.append((parameter, torch.from_numpy(array).to(parameter.dtype)))
        with torch.no_grad():
            for parameter, tensor in checked:
                parameter.copy_(tensor)

    # ------------------------------------------------------------------ use

    def response_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at the positions that predict a response token, and what they predict
        (`response_logits`)."""
        return response_logits(self.inner_model, input_ids, attention_mask, labels)

    @property
    def sketch_dimension(self) -> int:
        """Length of a sketch: the width of the decoder's last hidden state."""
        head = self.inner_model.get_output_embeddings()  # type: ignore[no-untyped-call]
        if not isinstance(head, nn.Linear):
            raise AdapterError("the causal LM exposes no linear output embeddings")
        return int(head.in_features)

    @torch.no_grad()
    def prompt_embedding_sum(
        self, prompts: Sequence[Sequence[int]], *, pad_token_id: int, batch_size: int = 32
    ) -> torch.Tensor:
        """Σ over the records of each one's prompt embedding scaled to unit L2 norm.

        A prompt's embedding is the mean of the decoder's last hidden states over the
        prompt's tokens with every adapter disabled (``B = 0``: the public initial
        model), so it depends on the record alone, and one record moves the sum by at
        most 1 in L2. The response is not read: the sketch describes what an
        organization asks, not what it answers. Plaintext: it leaves the organization
        only through the Gaussian mechanism.

        Raises:
            AdapterError: a prompt without tokens.
        """
        if any(len(prompt) == 0 for prompt in prompts):
            raise AdapterError("a sketch needs every prompt to have at least one token")
        decoder = self.inner_model.get_decoder()  # type: ignore[no-untyped-call]
        if not isinstance(decoder, nn.Module):
            raise AdapterError("the causal LM exposes no decoder")
        total = torch.zeros(self.sketch_dimension, dtype=torch.float64)
        was_training = self.peft_model.training
        self.peft_model.eval()
        try:
            with self.adapters_disabled():
                for start in range(0, len(prompts), batch_size):
                    chunk = prompts[start : start + batch_size]
                    length = max(len(prompt) for prompt in chunk)
                    input_ids = torch.full((len(chunk), length), pad_token_id, dtype=torch.long)
                    attention_mask = torch.zeros((len(chunk), length), dtype=torch.long)
                    for row, prompt in enumerate(chunk):
                        input_ids[row, : len(prompt)] = torch.tensor(list(prompt))
                        attention_mask[row, : len(prompt)] = 1
                    hidden = decoder(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        position_ids=position_ids(attention_mask),
                        use_cache=False,
                    ).last_hidden_state
                    total += unit_mean_embeddings(hidden, attention_mask).sum(0).cpu()
        finally:
            self.peft_model.train(was_training)
        return total

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The base model alone (the zero-shot baseline) for the duration of the block."""
        # PEFT's `disable_adapter` marks every LoRA parameter trainable on exit (frozen A
        # and other tiers' B included): restore what the tier set.
        trainable = [(p, p.requires_grad) for p in self.peft_model.parameters()]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                with self.peft_model.disable_adapter():
                    yield
        finally:
            for parameter, requires_grad in trainable:
                parameter.requires_grad_(requires_grad)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
    ) -> torch.Tensor:
        """Greedy continuations of a LEFT-padded batch of prompts (`greedy_generate`)."""
        return greedy_generate(
            self.peft_model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )

    def export_peft(self, path: str | Path) -> Path:
        """Save the adapter (A and B) in standard PEFT format.

        ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path)``
        loads it without fedhft, where ``base`` holds the same base model.
        """
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        self.peft_model.save_pretrained(str(target))
        return target
