"""The secure-sum clip derived from what one honest round of Adam training can reach."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.policies import load_consortium_config
from fedhft.policies._clip import CLIP_MARGIN, adam_step_bound, honest_update_bound


def test_first_step_and_limit_of_the_step_bound() -> None:
    """Adam's first step moves a coordinate by at most lr; the bound tends to
    (1−β₁)/√(1−β₂)/√(1−β₁²/β₂) ≈ 7.27 (Cauchy–Schwarz, see `_clip`)."""
    assert adam_step_bound(1) == pytest.approx(1.0)
    limit = 0.1 / math.sqrt(0.001) / math.sqrt(1 - 0.81 / 0.999)
    assert adam_step_bound(100_000) == pytest.approx(limit, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    gradients=st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=40
    ),
    lr=st.floats(1e-4, 1.0),
)
def test_real_adam_never_moves_a_coordinate_beyond_the_bound(
    gradients: list[float], lr: float
) -> None:
    """Any gradient sequence (DP noise included: nothing is assumed about it) moves a
    parameter under torch's Adam by at most lr · Σ_t bound(t)."""
    parameter = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([parameter], lr=lr)
    for gradient in gradients:
        parameter.grad = torch.tensor([gradient], dtype=torch.float64)
        optimizer.step()
    bound = lr * math.fsum(adam_step_bound(t) for t in range(1, len(gradients) + 1))
    assert abs(float(parameter.detach()[0])) <= bound * (1 + 1e-9)
    assert bound * CLIP_MARGIN == pytest.approx(
        honest_update_bound(learning_rate=lr, steps=len(gradients))
    )


def test_adversarial_gradients_come_close_to_the_bound() -> None:
    """The bound is not loose by orders of magnitude: gradients that grow as fast as the
    Cauchy–Schwarz equality case asks for reach most of it."""
    steps, lr = 50, 1e-3
    parameter = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([parameter], lr=lr, eps=0.0)
    for t in range(steps):
        parameter.grad = torch.tensor([-((0.999 / 0.9) ** t)], dtype=torch.float64)
        optimizer.step()
    bound = honest_update_bound(learning_rate=lr, steps=steps) / CLIP_MARGIN
    assert 0.5 * bound < float(parameter.detach()[0]) <= bound


def test_consortium_without_clip_derives_it_and_an_explicit_clip_overrides() -> None:
    """The example consortium omits `secure_aggregation.clip`: it is derived from the
    learning rate and `training.max_local_steps`, and part of the configuration; a
    file that gives it keeps it."""
    config = load_consortium_config("policies/examples/consortium.yaml")
    training = config.training
    expected = honest_update_bound(
        learning_rate=training.learning_rate, steps=training.max_local_steps
    )
    assert config.secure_aggregation.clip == pytest.approx(expected)
    assert config.secure_aggregation.clip < 1.0
    dumped = config.model_dump(mode="json")
    assert dumped["secure_aggregation"]["clip"] == pytest.approx(expected)
    dumped["secure_aggregation"]["clip"] = 2.5
    assert type(config).model_validate(dumped).secure_aggregation.clip == 2.5
