"""Training device and precision (`training.device`, `training.precision`; sdk/privacy/_dp.py).

The DP-step tests compare one Opacus step's update of every ``B`` and of the head with
a clip-noise-average computed by hand from per-example autograd gradients of the same
batch: they catch an update that Opacus computes on other tensors than the ones the
adapter trains (a model moved after its parameters were captured) and per-sample
gradients that break under a device or autocast. They run on every device this machine
has (CPU here; CUDA too when present, e.g. by `benchmarks/gpu_check.sh`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from trainer_helpers import tiny_consortium, tiny_policy

from fedhft.policies import TrainingLimits, policy_hash
from fedhft.sdk import LocalTrainer, MaskedAdapterModel, SdkError
from fedhft.sdk.privacy._dp import PrivateStep, autocast_dtype, training_device
from fedhft.sdk.privacy._noise import SecureGaussian

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MAX_GRAD_NORM = 0.05
NOISE_MULTIPLIER = 0.7
EXPECTED_BATCH = 5.0
LEARNING_RATE = 0.5


class RecordingSampler:
    """The secure sampler (seeded, for a reproducible test) that keeps what it drew."""

    def __init__(self) -> None:
        self._secure = SecureGaussian(seed=bytes(32))
        self.drawn: list[torch.Tensor] = []

    def __call__(self, shape: torch.Size, std: float, dtype: torch.dtype) -> torch.Tensor:
        noise = self._secure(shape, std, dtype)
        assert noise.device.type == "cpu" and dtype == torch.float32
        self.drawn.append(noise.clone())
        return noise


def _trainer(tmp_path: Path, device: str) -> LocalTrainer:
    """A tiny-model trainer on ``device`` (the trainer moves the model there)."""
    consortium = tiny_consortium()
    return LocalTrainer(
        MaskedAdapterModel.from_consortium(consortium),
        tiny_policy(tmp_path, device=device),
        consortium,
    )


def _batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 20000, (4, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 4:] = 0
    labels = torch.tensor([0, 3, 1, 3])
    return ids.to(device), mask.to(device), labels.to(device)


def _hand_computed_update(
    trainer: LocalTrainer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    noise: list[torch.Tensor],
    autocast: torch.dtype | None,
) -> list[torch.Tensor]:
    """-lr · (Σ_i clip(g_i) + noise) / expected batch, g_i by plain autograd per example."""
    model = trainer.model
    parameters = model.trainable_parameters()
    ids, mask, labels = batch
    per_example: list[list[torch.Tensor]] = []
    model.peft_model.train()
    for i in range(labels.shape[0]):
        with torch.autocast(
            ids.device.type, dtype=autocast or torch.float32, enabled=autocast is not None
        ):
            logits = model.logits(ids[i : i + 1], mask[i : i + 1])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[i : i + 1])
        grads = torch.autograd.grad(loss, parameters)
        per_example.append([g.detach().double().cpu() for g in grads])
    total = [torch.zeros_like(g) for g in per_example[0]]
    for grads in per_example:
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, MAX_GRAD_NORM / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    assert len(noise) == len(total)
    return [
        -LEARNING_RATE * (t + n.double().reshape(t.shape)) / EXPECTED_BATCH
        for t, n in zip(total, noise, strict=True)
    ]


def _one_dp_step(
    trainer: LocalTrainer,
    device: torch.device,
    autocast: torch.dtype | None,
    clipped_dtypes: set[torch.dtype] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The update of one DP step with plain SGD, and the hand-computed one; the dtypes
    of the per-sample gradients Opacus clips go into ``clipped_dtypes``."""
    parameters = trainer.model.trainable_parameters()
    before = [p.detach().double().cpu().clone() for p in parameters]
    batch = _batch(device)
    sampler = RecordingSampler()
    with PrivateStep(
        trainer.model,
        torch.optim.SGD(parameters, lr=LEARNING_RATE),
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
        expected_batch_size=EXPECTED_BATCH,
        noise_sampler=sampler,
        autocast=autocast,
    ) as private:
        clip_and_accumulate = private.optimizer.clip_and_accumulate

        def recording_clip() -> None:
            for p in private.optimizer.params:
                (clipped_dtypes if clipped_dtypes is not None else set()).add(p.grad_sample.dtype)
            clip_and_accumulate()

        private.optimizer.clip_and_accumulate = recording_clip  # type: ignore[method-assign]
        private.step(*batch)
    update = [p.detach().double().cpu() - b for p, b in zip(parameters, before, strict=True)]
    # The same parameters, back at their start, for the hand computation.
    with torch.no_grad():
        for p, b in zip(parameters, before, strict=True):
            p.copy_(b.to(p.device, p.dtype))
    return update, _hand_computed_update(trainer, batch, sampler.drawn, autocast)


@pytest.mark.parametrize("device", DEVICES)
def test_one_dp_step_updates_b_by_the_clipped_noised_average(tmp_path: Path, device: str) -> None:
    """B and head move by exactly -lr·(Σ clip(g_i) + secure noise)/E[|batch|] on the device."""
    trainer = _trainer(tmp_path, device)
    target = torch.device(device)
    assert {p.device.type for p in trainer.model.peft_model.parameters()} == {target.type}
    update, expected = _one_dp_step(trainer, target, None)
    assert any(u.abs().max() > 0 for u in update[:-2])  # an adapter B moved, not only the head
    for got, want in zip(update, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_clips_and_noises_in_fp32(tmp_path: Path) -> None:
    """Under bf16 autocast the step still equals the hand-computed fp32 clip-noise-average
    (to bf16 precision of the gradients), and the parameters stay float32."""
    device = torch.device(DEVICES[-1])
    trainer = _trainer(tmp_path, DEVICES[-1])
    clipped: set[torch.dtype] = set()
    update, expected = _one_dp_step(trainer, device, torch.bfloat16, clipped)
    assert clipped == {torch.float32}
    assert {p.dtype for p in trainer.model.trainable_parameters()} == {torch.float32}
    for got, want in zip(update, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-4)


def test_device_and_precision_defaults_leave_the_policy_hash_unchanged(tmp_path: Path) -> None:
    """A policy that omits device/precision, or gives their defaults, keeps its old JSON."""
    implicit = tiny_policy(tmp_path)
    explicit = tiny_policy(tmp_path, device="auto", precision="fp32")
    assert policy_hash(implicit) == policy_hash(explicit)
    dumped = implicit.model_dump_json(round_trip=True)
    assert '"device"' not in dumped and '"precision"' not in dumped
    gpu = tiny_policy(tmp_path, device="cuda:1", precision="bf16")
    assert policy_hash(gpu) != policy_hash(implicit)
    assert '"device":"cuda:1"' in gpu.model_dump_json(round_trip=True)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device": "gpu"}, "should match pattern"),
        ({"device": "cuda:x"}, "should match pattern"),
        ({"precision": "fp16"}, "'fp32' or 'bf16'"),
        ({"device": "cpu", "precision": "bf16"}, "`training.precision: bf16` needs a CUDA"),
    ],
)
def test_bad_device_or_precision_is_refused(changes: dict[str, str], message: str) -> None:
    """Unknown devices and precisions, and bf16 on an explicit CPU, are refused at load."""
    with pytest.raises(ValidationError, match=message):
        TrainingLimits.model_validate(
            {"tier": "full", "batch_size": 4, "local_steps": 1, **changes}
        )


def test_a_cuda_device_this_machine_lacks_is_refused(tmp_path: Path) -> None:
    """`device: cuda:N` beyond this machine's GPUs fails at trainer start, naming the field."""
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    with pytest.raises(SdkError, match=r"`training.device` is 'cuda:\d+' but this machine"):
        _trainer(tmp_path, missing)
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype(torch.device("cpu"), "bf16") is None
    assert autocast_dtype(torch.device("cuda"), "bf16") is torch.bfloat16
