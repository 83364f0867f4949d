"""One DP-SGD step of a FedAMoLE organization's MoLE model (Opacus, secure noise).

A record's loss is its task loss plus ``balance_weight`` times its own balancing loss
(`fedhft.model.MoLEBase.balance_loss`, over its real tokens): for a classifier the
cross-entropy of its label, for a causal LM (`CausalMoLEModel`) the mean cross-entropy
over its response tokens (`fedhft.sdk._causal.record_losses`). The batch loss is the mean
of the records' losses, so Opacus' per-sample gradient of each record is the gradient of
that record's loss alone.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedhft.model import CausalMoLEModel, MoLEBase, MoLEModel

from .._causal import CausalBatch, record_losses
from ..privacy._dp import FrozenRows, RecordLossStep
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


class MoLEPrivateStep(RecordLossStep):
    """DP-SGD steps on a MoLE model: `RecordLossStep` with `mole_record_losses` (task loss
    plus ``balance_weight`` times the record's balancing loss) as each record's loss.

    Per-sample gradients come from Opacus' ``hooks`` mode: its own samplers for a
    classifier's head and its functorch path for the MoLE modules, which it has no sampler
    for. Use as a context manager; the hooks are removed on exit.
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
        if balance_weight < 0:
            raise ValueError(f"balance_weight must be >= 0, got {balance_weight}")
        self.model = model
        self.balance_weight = balance_weight
        super().__init__(
            model.model,
            model.trainable_parameters(),
            FrozenRows(()),
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            noise_sampler=noise_sampler,
            grad_sample_mode="hooks",
        )

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> float:
        """One DP-SGD step on one Poisson batch (possibly empty); returns its mean loss."""
        return self.step_on(
            lambda: mole_record_losses(
                self.model, input_ids, attention_mask, labels, balance_weight=self.balance_weight
            ),
            int(input_ids.shape[0]),
        )

    def close(self) -> None:
        """Remove the Opacus hooks, per-sample state and functorch caches from the model."""
        if self._closed:
            return
        super().close()
        for module in self.model.modules.values():
            for layer in (module.router, module.shared, module.experts):
                if hasattr(layer, "ft_compute_sample_grad"):
                    delattr(layer, "ft_compute_sample_grad")
