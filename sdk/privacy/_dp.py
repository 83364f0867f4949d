"""Opacus DP-SGD on the trainable blocks of an adapter model, given per-record losses.

Implements one DP-SGD step (Abadi et al. 2016) with Opacus 1.6 in `RecordLossStep`:
per-sample gradients (or, with ghost clipping, per-sample gradient norms) of the
trainable parameters only (``B`` of the tier's blocks and the head), flat clipping
of each example's gradient to ``max_grad_norm``, Gaussian noise of standard deviation
``noise_multiplier · max_grad_norm`` drawn from the sampler the policy chose, and
division by the *expected* batch size. Batches come from Poisson sampling: each record
is in a batch independently with probability ``q`` (the sampling the RDP/PRV/GDP
accountants assume). The task only supplies each record's loss: `PrivateStep` the
cross-entropy of a classification label, `fedhft.sdk._causal.CausalPrivateStep` the mean
response-token cross-entropy of a causal LM.

The pieces are the ones `opacus.PrivacyEngine.make_private` assembles (module
validation, grad-sample hooks, the optimizer class for the grad-sample mode, the
ghost-clipping loss), put together here so that the two things Opacus would draw from
torch's predictable generator, the Poisson batches and the noise, come from the OS
CSPRNG and from `fedhft.sdk.privacy.noise_sampler` instead.

Notes:
    PEFT is applied before Opacus attaches its hooks, and the hooks are attached after
    the tier froze everything else, so Opacus only ever sees the trainable blocks.
    A tier's row slice is enforced by zeroing the per-sample gradients of the frozen
    rows *before* clipping (so the clipping norm sees exactly the trainable
    coordinates), and the noise on those rows after noising (post-processing). Ghost
    clipping computes norms without materialising per-sample gradients, so it cannot
    honour a row slice; `PrivateStep` refuses that combination.

    Poisson sampling draws 53-bit uniforms from ``os.urandom``: the batch composition
    is part of the secret randomness of the mechanism (amplification by sampling), so
    it must not be predictable either.

    On a CUDA device the model is moved there once, before the optimizer and Opacus'
    hooks exist, and moving keeps every parameter object (only its storage moves), so
    the optimizer, the hooks and the adapter's block table all see the same tensors.
    Under ``precision: bf16`` only the forward and backward passes run under bfloat16
    autocast; the per-sample gradients are cast to float32 before clipping, so the
    clipping norm, the noise (drawn in float64 by the secure sampler, then moved to the
    device) and the update are float32, as the privacy analysis assumes.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
import torch
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer, get_optimizer_class
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn

from fedhft.model import AdapterError, MaskedAdapterModel

from ._noise import NoiseSampler, use_noise_sampler

GradSampleMode = Literal["hooks", "functorch", "ghost"]
GRAD_SAMPLE_MODES: tuple[GradSampleMode, ...] = ("hooks", "functorch", "ghost")
# Measured fastest with PEFT LoRA on the tiny model and on MiniLM (`python
# benchmarks/dp_step.py --grad-sample-modes`; DP/non-private step time at the full tier,
# two runs on a shared 2-core machine, hooks / functorch / ghost: tiny 1.24-1.29 / 1.61 /
# 1.86-1.95, MiniLM 0.99-1.09 / 1.04-1.17 / 1.48-1.56).
# Per-sample gradients of a rank-r B are small, so hooks pay one ordinary backward pass,
# while ghost clipping pays two and functorch re-runs each layer under vmap.
# Ghost clipping does not save memory either: on a sequence its norm of a linear layer
# builds batch x T x T Gram matrices, more than a rank-r B's batch x out x r per-sample
# gradients once T² > out·r (`python benchmarks/causal_memory.py`: more peak memory than
# hooks at 128 to 1024 tokens on the tiny model and on SmolLM2-135M).
DEFAULT_GRAD_SAMPLE_MODE: GradSampleMode = "hooks"

IndexArray = npt.NDArray[np.int64]

_UNIFORM_BITS = 53


Precision = Literal["fp32", "bf16"]


def training_device(setting: str) -> torch.device:
    """The torch device of a policy's ``training.device``: ``auto`` is the first CUDA
    device when one is present, else the CPU.

    Raises:
        ValueError: a CUDA device is asked for and this machine has none (or fewer).
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= available:
            raise ValueError(
                f"`training.device` is {setting!r} but this machine has {available} CUDA "
                "device(s); set `training.device: auto` or `cpu`, or run where the GPU is"
            )
    return device


def autocast_dtype(device: torch.device, precision: Precision) -> torch.dtype | None:
    """The autocast dtype of the forward and backward passes: bfloat16 for ``bf16`` on a
    CUDA device, otherwise None (float32; bf16 on a CPU gains nothing and loses bits)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.bfloat16
    return None


@contextlib.contextmanager
def forward_precision(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device`` for the block inside, or nothing for None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def per_sample_gradients_to_fp32(parameters: Iterable[nn.Parameter]) -> None:
    """Cast Opacus' per-sample gradients to float32, so clipping runs in float32."""
    for parameter in parameters:
        grad_sample = getattr(parameter, "grad_sample", None)
        if isinstance(grad_sample, torch.Tensor) and grad_sample.dtype != torch.float32:
            # Opacus reads per-sample gradients from this attribute.
            setattr(parameter, "grad_sample", grad_sample.float())  # noqa: B010


def poisson_batch(num_records: int, sample_rate: float) -> IndexArray:
    """Indices of one Poisson-sampled batch: each record in with probability `sample_rate`.

    Uniforms are 53-bit fractions from ``os.urandom`` (a CSPRNG), so the batch is
    unpredictable; the batch may be empty, as the accountant assumes.
    """
    if num_records < 1:
        raise ValueError(f"num_records must be >= 1, got {num_records}")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    raw = np.frombuffer(os.urandom(8 * num_records), dtype=np.uint64)
    uniforms = (raw >> np.uint64(64 - _UNIFORM_BITS)).astype(np.float64) * 2.0**-_UNIFORM_BITS
    return np.flatnonzero(uniforms < sample_rate).astype(np.int64)


def dp_optimizer(
    hooks: Any,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    noise_sampler: NoiseSampler,
    grad_sample_mode: GradSampleMode,
) -> DPOptimizer:
    """Opacus' flat-clipping DP optimizer over ``hooks``' module, noise from our sampler.

    On any failure the per-sample-gradient hooks are removed again, so the model is left
    as it was.
    """
    try:
        # With Poisson sampling one forward/backward is one step; accumulating would
        # change the sampling the accountant assumes.
        hooks.forbid_grad_accumulation()
        optimizer_class = get_optimizer_class(
            clipping="flat", distributed=False, grad_sample_mode=grad_sample_mode
        )
        dp: DPOptimizer = optimizer_class(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        # Never let a DP step draw noise from torch's predictable generator.
        use_noise_sampler(dp, noise_sampler)
    except BaseException:
        hooks.remove_hooks()
        raise
    return dp


def release_per_sample_state(hooks: Any, parameters: Iterable[nn.Parameter]) -> None:
    """Remove Opacus' hooks and the per-sample state it leaves on ``parameters``."""
    hooks.remove_hooks()
    for parameter in parameters:
        for attribute in ("grad_sample", "summed_grad", "_forward_counter"):
            if hasattr(parameter, attribute):
                delattr(parameter, attribute)
        parameter.grad = None


class FrozenRows:
    """The rows a tier's row slice leaves frozen in its trainable blocks.

    A DP step honours them twice: their per-sample gradients are zeroed before clipping (so
    they take no share of the clipping norm), and the noise added to them is zeroed after
    noising (so the frozen values stay exactly as they were).
    """

    def __init__(self, parameters: Iterable[tuple[nn.Parameter, npt.NDArray[np.bool_]]]) -> None:
        self._masks: list[tuple[nn.Parameter, torch.Tensor]] = [
            (parameter, torch.from_numpy(mask).to(parameter.device))
            for parameter, mask in parameters
            if not mask.all()
        ]

    def __bool__(self) -> bool:
        return bool(self._masks)

    def zero_per_sample_gradients(self) -> None:
        """Zero the frozen rows of every per-sample gradient (before clipping)."""
        for parameter, mask in self._masks:
            grad_sample = getattr(parameter, "grad_sample", None)
            if isinstance(grad_sample, torch.Tensor):
                grad_sample.mul_(
                    mask.to(grad_sample.dtype).view(1, -1, *([1] * (grad_sample.dim() - 2)))
                )

    def zero_noise(self, _optimizer: object) -> None:
        """Zero the frozen rows of the noised gradient (an optimizer step hook)."""
        for parameter, mask in self._masks:
            if parameter.grad is not None:
                parameter.grad[~mask] = 0.0


def check_grad_sample_mode(
    grad_sample_mode: str, *, row_slice: bool, autocast: torch.dtype | None = None
) -> GradSampleMode:
    """``grad_sample_mode`` if a DP step can use it with this tier and precision.

    A trainer calls this when it is built, so that a combination no step can run is
    refused before any round is admitted against the ledger.

    Raises:
        AdapterError: an unknown mode, or ghost clipping with a tier's row slice or with
            bf16 autocast.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise AdapterError(
            f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}"
        )
    if row_slice and grad_sample_mode == "ghost":
        raise AdapterError(
            "ghost clipping cannot honour a tier's row slice (row_fraction < 1); "
            "use grad_sample_mode 'hooks'"
        )
    if autocast is not None and grad_sample_mode == "ghost":
        raise AdapterError(
            "ghost clipping computes its norms inside the backward pass, in the "
            "autocast dtype; use grad_sample_mode 'hooks' with precision bf16"
        )
    return grad_sample_mode


class RecordLossStep:
    """DP-SGD steps on some trainable parameters of a module, given per-record losses.

    The part of a DP step that does not depend on the task: Opacus' hooks for the chosen
    grad-sample mode, the DP optimizer with the policy's noise, the tier's frozen rows and
    the empty Poisson batch. `PrivateStep` (classification) and the causal LM's step
    subclass it and supply the loss: a function returning one loss per record of the
    batch, whose mean is the batch loss.

    With ``hooks`` or ``functorch``, one backward pass of the mean gives Opacus each
    record's gradient, which the optimizer clips. With ``ghost``, the vector of
    per-record losses is what ghost clipping needs (Opacus' `DPTensorFastGradientClipping`):
    a first backward pass computes each record's gradient norm without materialising
    the gradient, a second one the gradient of ``Σ_i c_i · loss_i`` with each record's
    clipping factor ``c_i``, which is the sum of the clipped gradients.

    Use as a context manager (or call `close`): the hooks are removed on exit, so the
    same model can train again next round.
    """

    def __init__(
        self,
        module: nn.Module,
        parameters: Sequence[nn.Parameter],
        frozen_rows: FrozenRows,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        noise_sampler: NoiseSampler,
        grad_sample_mode: GradSampleMode = DEFAULT_GRAD_SAMPLE_MODE,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.mode = check_grad_sample_mode(
            grad_sample_mode, row_slice=bool(frozen_rows), autocast=autocast
        )
        if noise_multiplier < 0 or max_grad_norm <= 0 or expected_batch_size <= 0:
            raise ValueError(
                "noise_multiplier must be >= 0, max_grad_norm and expected_batch_size > 0"
            )
        if not parameters:
            raise ValueError("the model's tier trains no block; apply a tier first")
        self._module = module
        self._parameters = list(parameters)
        self._frozen_rows = frozen_rows
        self._autocast = autocast
        self._device = self._parameters[0].device
        module.train()
        # Opacus' own compatibility check (BatchNorm and the like) before any hook.
        ModuleValidator.validate(module, strict=True)
        extra: dict[str, Any] = (
            {"max_grad_norm": max_grad_norm} if grad_sample_mode == "ghost" else {}
        )
        self._hooks = prepare_module(
            module,
            grad_sample_mode,
            wrap_model=False,
            batch_first=True,
            loss_reduction="mean",
            **extra,
        )
        self.optimizer = dp_optimizer(
            self._hooks,
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            noise_sampler=noise_sampler,
            grad_sample_mode=grad_sample_mode,
        )
        if self._frozen_rows:
            self.optimizer.attach_step_hook(self._frozen_rows.zero_noise)
        self._closed = False

    def step_on(self, record_losses: Callable[[], torch.Tensor], batch_size: int) -> float:
        """One DP-SGD step on one Poisson batch of ``batch_size`` records (possibly none);
        ``record_losses`` runs the forward pass and returns one loss per record. Returns
        the batch's mean loss (NaN for an empty batch)."""
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        self._module.train()
        self.optimizer.zero_grad(set_to_none=True)
        if batch_size == 0:
            self._empty_batch()
            self.optimizer.step()
            return float("nan")
        with warnings.catch_warnings():
            # Opacus' full backward hooks sit on modules whose inputs need no gradient
            # (the frozen-A LoRA path); torch warns that the hook then sees only output
            # gradients, which is all per-sample gradients of B and the head need.
            warnings.filterwarnings(
                "ignore", message="Full backward hook is firing", category=UserWarning
            )
            with forward_precision(self._device, self._autocast):
                losses = record_losses().float()
            if losses.shape != (batch_size,):
                raise ValueError(
                    f"expected one loss per record ({batch_size}), got shape {tuple(losses.shape)}"
                )
            if self.mode == "ghost":
                ghost = DPTensorFastGradientClipping(self._hooks, self.optimizer, losses, "mean")
                ghost.backward()
            else:
                torch.autograd.backward(losses.mean())
        if self.mode != "ghost":
            per_sample_gradients_to_fp32(self._parameters)
            self._frozen_rows.zero_per_sample_gradients()
        self.optimizer.step()
        return float(losses.detach().mean().item())

    def _empty_batch(self) -> None:
        # An empty Poisson batch still costs a step and still gets its noise: the sum of
        # no clipped gradients is zero.
        for parameter in self._parameters:
            if self.mode == "ghost":
                parameter.grad = torch.zeros_like(parameter)
            else:
                # Opacus reads per-sample gradients from this attribute.
                setattr(  # noqa: B010
                    parameter,
                    "grad_sample",
                    torch.zeros(
                        (0, *parameter.shape), dtype=parameter.dtype, device=parameter.device
                    ),
                )

    def close(self) -> None:
        """Remove the Opacus hooks and per-sample state from the model."""
        if self._closed:
            return
        release_per_sample_state(self._hooks, self._module.parameters())
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrivateStep(RecordLossStep):
    """DP-SGD steps on a `MaskedAdapterModel` whose tier is already applied; a record's
    loss is the cross-entropy of its label.

    Use as a context manager (or call `close`): it attaches Opacus hooks to the model
    and removes them on exit, so the same model can train again next round.
    """

    def __init__(
        self,
        model: MaskedAdapterModel,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        noise_sampler: NoiseSampler,
        grad_sample_mode: GradSampleMode = DEFAULT_GRAD_SAMPLE_MODE,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.model = model
        super().__init__(
            model.peft_model,
            model.trainable_parameters(),
            FrozenRows((model.parameter(b), mask) for b, mask in model.row_masks.items()),
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            noise_sampler=noise_sampler,
            grad_sample_mode=grad_sample_mode,
            autocast=autocast,
        )

    def step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> float:
        """One DP-SGD step on one Poisson batch (possibly empty); returns its mean loss."""

        def record_losses() -> torch.Tensor:
            logits = self.model.logits(input_ids, attention_mask)
            return nn.functional.cross_entropy(logits.float(), labels, reduction="none")

        return self.step_on(record_losses, int(labels.numel()))
