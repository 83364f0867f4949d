"""How far one honest round of local training can move a coordinate: the secure-sum clip.

Organizations train with Adam (Kingma & Ba, ICLR 2015; ``torch.optim.Adam`` with its
default β₁ = 0.9, β₂ = 0.999, no weight decay) on DP-SGD's noisy gradients. Adam's step
on one coordinate, ``lr · m̂_t / (√v̂_t + ε)``, is bounded whatever the gradients are:
by Cauchy–Schwarz on ``m_t = (1−β₁) Σ β₁^(t−i) g_i`` against
``v_t = (1−β₂) Σ β₂^(t−i) g_i²``,

``|m̂_t| / √v̂_t ≤ (1−β₁)/(1−β₁^t) · √((1−β₂^t)/(1−β₂)) · √(Σ_{k<t} (β₁²/β₂)^k)``,

which is 1 at ``t = 1``, 1.16 at ``t = 20`` and tends to 7.27. The sum of these bounds
over ``T`` steps, times the learning rate, bounds every coordinate of the round's update
``Δ``, with no assumption on the data, the clipping norm or the Gaussian noise: Adam
normalizes the noise away, so no tail bound is needed (unlike plain SGD, whose step
``lr·(C·Σ + N(0, σ²C²))/B`` is unbounded).

Notes:
    The bound is deterministic; `CLIP_MARGIN` only absorbs float32 rounding in the
    trainer. An organization that trains longer than ``training.max_local_steps`` (or
    with other optimizer settings) is clipped to the bound before masking: that is
    post-processing of the DP output and costs no privacy, only accuracy.
"""

from __future__ import annotations

import math
from typing import Final

ADAM_BETAS: Final = (0.9, 0.999)
"""Adam's (β₁, β₂) as the organizations' trainers use them (torch's defaults)."""

CLIP_MARGIN: Final = 1.05
"""Relative allowance on top of the deterministic bound, for float32 arithmetic."""


def adam_step_bound(t: int, *, betas: tuple[float, float] = ADAM_BETAS) -> float:
    """The most Adam's ``t``-th step (1-based) moves a coordinate, in units of ``lr``."""
    if t < 1:
        raise ValueError(f"`t` must be >= 1, got {t}")
    beta1, beta2 = betas
    ratio = beta1 * beta1 / beta2
    geometric = float(t) if ratio == 1 else (1 - ratio**t) / (1 - ratio)
    return (
        (1 - beta1)
        / (1 - beta1**t)
        * math.sqrt((1 - beta2**t) / (1 - beta2))
        * math.sqrt(geometric)
    )


def honest_update_bound(*, learning_rate: float, steps: int) -> float:
    """The clip: how far ``steps`` Adam steps at ``learning_rate`` can move a coordinate,
    times `CLIP_MARGIN`."""
    if not (learning_rate > 0 and steps >= 1):
        raise ValueError(
            f"`learning_rate` must be > 0 and `steps` >= 1, got {learning_rate} and {steps}"
        )
    total = math.fsum(adam_step_bound(t) for t in range(1, steps + 1))
    return CLIP_MARGIN * learning_rate * total
