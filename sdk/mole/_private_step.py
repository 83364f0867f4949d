"""One DP-SGD step of a FedAMoLE organization's MoLE model (Opacus, secure noise).

A record's loss is its task loss plus ``balance_weight`` times its own balancing loss
(`fedhft.model.MoLEBase.balance_loss`, over its real tokens): for a classifier the
cross-entropy of its label, for a causal LM (`CausalMoLEModel`) the mean cross-entropy
over its response tokens (`fedhft.sdk._causal.record_losses`). The batch loss is the mean
of the records' losses, so Opacus' per-sample gradient of each record is the gradient of
that record's loss alone.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from opacus.grad_sample.utils import prepare_module
from opacus.validators import ModuleValidator
from torch import nn

from fedhft.model import CausalMoLEModel, MoLEBase, MoLEModel

from .._causal import CausalBatch, record_losses
from ..privacy._dp import dp_optimizer, release_per_sample_state
from ..privacy._noise import NoiseSampler

FloatArray = npt.NDArray[np.float64]


def mole_record_losses(
    model: MoLEBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    balance_weight: float,
) -> torch.Tensor:
    """Each record's loss: its task loss plus ``balance_weight`` × its balancing loss.

    ``labels`` are class labels (``records``) for a `MoLEModel`, response-only token
    labels (``records × tokens``, aligned with ``input_ids``) for a `CausalMoLEModel`.
    """
    task_losses: torch.Tensor
    if isinstance(model, CausalMoLEModel):
        task_losses = record_losses(model, CausalBatch(input_ids, attention_mask, labels))
    elif isinstance(model, MoLEModel):
        logits = model.logits(input_ids, attention_mask)
        task_losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    else:
        raise TypeError(f"no task loss for {type(model).__name__}")
    return task_losses + balance_weight * model.balance_loss()


class MoLEPrivateStep:
    """DP-SGD steps on a MoLE model with Opacus per-sample gradients.

    Loss per example: `mole_record_losses` (task loss plus ``balance_weight`` times its
    balancing loss).
    Flat clipping to ``max_grad_norm``, noise ``noise_multiplier · max_grad_norm`` from
    `noise_sampler`, division by the expected batch size — as `PrivateStep` does for
    frozen-A LoRA. Use as a context manager; the hooks are removed on exit.
    """

    def __init__(
        self,
        model: MoLEBase,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        noise_sampler: NoiseSampler,
        balance_weight: float = 0.01,
    ) -> None:
        if noise_multiplier < 0 or max_grad_norm <= 0 or expected_batch_size <= 0:
            raise ValueError(
                "noise_multiplier must be >= 0, max_grad_norm and expected_batch_size > 0"
            )
        if balance_weight < 0:
            raise ValueError(f"balance_weight must be >= 0, got {balance_weight}")
        self.model = model
        self.balance_weight = balance_weight
        module = model.model
        module.train()
        ModuleValidator.validate(module, strict=True)
        # "hooks" uses Opacus' own samplers for the head and its functorch path for the
        # MoLE modules, which it has no sampler for.
        self._hooks = prepare_module(
            module, "hooks", wrap_model=False, batch_first=True, loss_reduction="mean"
        )
        self.optimizer = dp_optimizer(
            self._hooks,
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            noise_sampler=noise_sampler,
            grad_sample_mode="hooks",
        )
        self._closed = False

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean over the batch's records of `mole_record_losses`."""
        return mole_record_losses(
            self.model, input_ids, attention_mask, labels, balance_weight=self.balance_weight
        ).mean()

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> float:
        """One DP-SGD step on one Poisson batch (possibly empty); returns its mean loss."""
        if self._closed:
            raise RuntimeError("this MoLEPrivateStep is closed")
        self.model.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if labels.numel() == 0:
            for parameter in self.model.trainable_parameters():
                # The sum of no clipped gradients is zero; the step still gets its noise.
                setattr(  # noqa: B010
                    parameter,
                    "grad_sample",
                    torch.zeros((0, *parameter.shape), device=parameter.device),
                )
            self.optimizer.step()
            return float("nan")
        with warnings.catch_warnings():
            # Full backward hooks on modules whose inputs need no gradient; per-sample
            # gradients only need the output gradients the hook still receives.
            warnings.filterwarnings(
                "ignore", message="Full backward hook is firing", category=UserWarning
            )
            loss = self.loss(input_ids, attention_mask, labels)
            torch.autograd.backward(loss)
        self.optimizer.step()
        return float(loss.item())

    def close(self) -> None:
        """Remove the Opacus hooks and per-sample state from the model."""
        if self._closed:
            return
        release_per_sample_state(self._hooks, self.model.model.parameters())
        for module in self.model.modules.values():
            for layer in (module.router, module.shared, module.experts):
                if hasattr(layer, "ft_compute_sample_grad"):
                    delattr(layer, "ft_compute_sample_grad")
        self._closed = True

    def __enter__(self) -> MoLEPrivateStep:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
