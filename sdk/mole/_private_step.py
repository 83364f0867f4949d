"""One DP-SGD step of a FedAMoLE organization's `MoLEModel` (Opacus, secure noise)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from opacus.grad_sample.utils import prepare_module
from opacus.validators import ModuleValidator
from torch import nn

from fedhft.model import MoLEModel

from ..privacy._dp import dp_optimizer, release_per_sample_state
from ..privacy._noise import NoiseSampler

FloatArray = npt.NDArray[np.float64]


class MoLEPrivateStep:
    """DP-SGD steps on a `MoLEModel` with Opacus per-sample gradients.

    Loss per example: cross-entropy plus ``balance_weight`` times its balancing loss.
    Flat clipping to ``max_grad_norm``, noise ``noise_multiplier · max_grad_norm`` from
    `noise_sampler`, division by the expected batch size — as `PrivateStep` does for
    frozen-A LoRA. Use as a context manager; the hooks are removed on exit.
    """

    def __init__(
        self,
        model: MoLEModel,
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
        self._criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.CrossEntropyLoss(
            reduction="mean"
        )
        self._closed = False

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over examples of cross-entropy plus the weighted balancing loss."""
        return (
            self._criterion(logits, labels) + self.balance_weight * self.model.balance_loss().mean()
        )

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
            loss = self.loss(self.model.logits(input_ids, attention_mask), labels)
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
