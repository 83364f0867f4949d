"""Per-record sensitivity of every trainer's DP-SGD step: a record's per-sample gradient,
as Opacus hands it to clipping, is a function of that record alone, whatever its
Poisson batch-mates (fedhft.sdk.privacy._accounted_trainer, _dp, _mole)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.optimizers import DPOptimizer
from trainer_helpers import ORG, tiny_consortium, tiny_policy

from fedhft.policies import ConsortiumConfig, NoiseSource
from fedhft.sdk import LocalTrainer, MaskedAdapterModel, TextDataset, build_base_model
from fedhft.sdk.mole._private_step import MoLEPrivateStep
from fedhft.sdk.mole._trainer import MoLETrainer
from fedhft.sdk.privacy._accounted_trainer import AccountedTrainer, Encoded
from fedhft.sdk.privacy._dp import PrivateStep
from fedhft.sdk.privacy._noise import noise_sampler

MAX_SEQ_LENGTH = 32
# Per-sample gradients of one record in batches of other shapes differ only by float32
# rounding of reductions over a different number of padded positions.
RELATIVE_TOLERANCE = 1e-6
WORDS = ("patient", "reports", "chest", "pain", "after", "exercise", "and", "was", "admitted")
TEXTS = (
    "patient reports mild chest pain",  # The target record.
    " ".join(WORDS * 4),  # A long batch-mate: fills max_seq_length.
    "ok",  # A short batch-mate.
    "admitted",
    " ".join(WORDS[:8]),
    " ".join(WORDS * 2),
)
TARGET, LONG, SHORT = 0, 1, 2

StepFactory = Callable[[], AbstractContextManager[Any]]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _dataset() -> TextDataset:
    return TextDataset(
        texts=TEXTS,
        labels=tuple(i % 4 for i in range(len(TEXTS))),
        label_names=("a", "b", "c", "d"),
    )


def _mole_consortium() -> ConsortiumConfig:
    return tiny_consortium(
        method="fedamole",
        tiers={"full": {"min_experts": 1, "max_experts": 3}},
        fedamole={"num_experts": 4, "holders_per_expert": 3, "affinity_noise_multiplier": 2.0},
        enrollment=[{"organization": o} for o in (ORG, "org-b", "org-c", "org-d")],
    )


def _randomized(state: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {block: 0.5 * rng.normal(size=np.shape(values)) for block, values in state.items()}


def _local_trainer(tmp_path: Path, mode: Any) -> tuple[AccountedTrainer, StepFactory]:
    consortium = tiny_consortium()
    model = MaskedAdapterModel.from_consortium(consortium)
    model.set_block_state(_randomized(model.get_block_state(), seed=1))
    trainer = LocalTrainer(
        model,
        tiny_policy(tmp_path, max_seq_length=MAX_SEQ_LENGTH),
        consortium,
        grad_sample_mode=mode,
    )

    def step() -> PrivateStep:
        return PrivateStep(
            trainer.model,
            torch.optim.SGD(trainer.model.trainable_parameters(), lr=0.0),
            noise_multiplier=0.0,
            max_grad_norm=1.0,
            expected_batch_size=2.0,
            noise_sampler=noise_sampler(NoiseSource.SECURE),
            grad_sample_mode=mode,
        )

    return trainer, step


def _mole_trainer(tmp_path: Path) -> tuple[AccountedTrainer, StepFactory]:
    consortium = _mole_consortium()
    trainer = MoLETrainer(
        tiny_policy(tmp_path, max_seq_length=MAX_SEQ_LENGTH),
        consortium,
        base_factory=lambda: build_base_model(consortium.model),
        # A weight large enough that a padding-dependent balancing loss would show.
        balance_weight=1.0,
    )
    model = trainer.set_experts([0, 1, 3])
    model.set_state(_randomized(model.get_state(), seed=2))
    with torch.no_grad():
        for module in model.modules.values():
            module.router.projection.mul_(5.0)  # Sharp routing: top-k varies by token.

    def step() -> MoLEPrivateStep:
        return MoLEPrivateStep(
            model,
            torch.optim.SGD(model.trainable_parameters(), lr=0.0),
            noise_multiplier=0.0,
            max_grad_norm=1.0,
            expected_batch_size=2.0,
            noise_sampler=noise_sampler(NoiseSource.SECURE),
            balance_weight=trainer.balance_weight,
        )

    return trainer, step


TRAINERS = ["fedhft-hooks", "fedhft-functorch", "fedamole"]


@pytest.fixture(params=TRAINERS)
def trainer_and_step(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Encoded, StepFactory]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    if request.param == "fedamole":
        trainer, step = _mole_trainer(tmp_path)
    else:
        trainer, step = _local_trainer(tmp_path, request.param.removeprefix("fedhft-"))
    # The trainers' own tokenization and batching (padding to max_seq_length, then
    # trimming each batch to its longest record).
    return trainer._encode(_dataset()), step


def _per_sample_gradient(step: StepFactory, encoded: Encoded, batch: list[int]) -> torch.Tensor:
    """The flat per-sample gradient of the TARGET record in ``batch``, exactly as Opacus
    hands it to clipping (read in the optimizer's step hook, before the update)."""
    captured: list[torch.Tensor] = []
    position = batch.index(TARGET)

    def capture(optimizer: DPOptimizer) -> None:
        captured.append(torch.cat([g[position].flatten() for g in optimizer.grad_samples]))

    with step() as private:
        private.optimizer.attach_step_hook(capture)
        private.step(*encoded.batch(torch.tensor(batch)))
    (gradient,) = captured
    return gradient.to(torch.float64)


def _assert_same(gradient: torch.Tensor, alone: torch.Tensor) -> None:
    assert float(alone.norm()) > 1e-3  # The record does have a gradient to compare.
    difference = float((gradient - alone).norm() / alone.norm())
    assert difference <= RELATIVE_TOLERANCE, f"relative change {difference:.3g}"


def test_per_sample_gradient_ignores_long_and_short_batch_mates(
    trainer_and_step: tuple[Encoded, StepFactory],
) -> None:
    """A record's per-sample gradient alone = with a long batch-mate = with a short one."""
    encoded, step = trainer_and_step
    alone = _per_sample_gradient(step, encoded, [TARGET])
    _assert_same(_per_sample_gradient(step, encoded, [TARGET, LONG]), alone)
    _assert_same(_per_sample_gradient(step, encoded, [SHORT, TARGET]), alone)


def test_per_sample_gradient_ignores_any_batch_composition(
    trainer_and_step: tuple[Encoded, StepFactory],
) -> None:
    """For any set and order of batch-mates, the record's per-sample gradient is the one
    it has alone."""
    encoded, step = trainer_and_step
    alone = _per_sample_gradient(step, encoded, [TARGET])

    @settings(
        max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        mates=st.lists(st.integers(1, len(TEXTS) - 1), min_size=1, max_size=6),
        position=st.integers(0, 6),
    )
    def check(mates: list[int], position: int) -> None:
        batch = list(mates)
        batch.insert(min(position, len(batch)), TARGET)
        _assert_same(_per_sample_gradient(step, encoded, batch), alone)

    check()
