"""Tests of the CSPRNG Gaussian sampler and its hook into Opacus's DPOptimizer."""

from __future__ import annotations

import math
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from opacus import GradSampleModule
from opacus.optimizers import (
    AdaClipDPOptimizer,
    DPOptimizer,
    DPOptimizerFastGradientClipping,
    DPPerLayerOptimizer,
)
from scipy import stats

from fedhft import SecurityWarning
from fedhft.policies import NoiseSource
from fedhft.sdk.privacy import SecureGaussian, noise_sampler, use_noise_sampler

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))


# --------------------------------------------------------------------------- distribution


def test_mean_and_variance_match_the_requested_std() -> None:
    """200k draws at std 2.5 have mean 0 and variance 6.25 within 5 standard errors."""
    n, std = 200_000, 2.5
    sample = SecureGaussian(seed=SEED).normal((n,), std=std, dtype=torch.float64).numpy()
    assert abs(sample.mean()) < 5 * std / math.sqrt(n)
    # The variance of the sample variance of a normal is 2σ⁴/(n−1).
    assert abs(sample.var(ddof=1) - std**2) < 5 * math.sqrt(2 * std**4 / (n - 1))


def test_distribution_passes_normality_tests() -> None:
    """Kolmogorov-Smirnov and D'Agostino-Pearson do not reject N(0, σ²); tails are right."""
    std = 0.7
    sample = SecureGaussian(seed=SEED).normal((100_000,), std=std, dtype=torch.float64).numpy()
    assert stats.kstest(sample, stats.norm(scale=std).cdf).pvalue > 1e-3
    assert stats.normaltest(sample).pvalue > 1e-3
    # P(|Z| > 3) = 0.0027: 270 expected, binomial sd ≈ 16.
    beyond = int(np.count_nonzero(np.abs(sample) > 3 * std))
    assert 270 - 5 * 16 < beyond < 270 + 5 * 16


def test_normals_are_the_specified_function_of_the_chacha20_keystream() -> None:
    """Known answer: output i is (Box-Muller of keystream words)/2, keystream per RFC 8439."""
    n = 5
    nonce = struct.pack("<IQI", 0, 0, 0)  # block counter 0, first request.
    stream = Cipher(algorithms.ChaCha20(SEED, nonce), mode=None).encryptor().update(bytes(32 * n))
    words = np.frombuffer(stream, dtype="<u8") >> np.uint64(11)
    radius_u = (words[: 2 * n] + np.uint64(1)).astype(np.float64) * 2.0**-53
    angle = 2 * math.pi * words[2 * n :].astype(np.float64) * 2.0**-53
    radius = np.sqrt(-2 * np.log(radius_u))
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)]).reshape(4, n)
    expected = z.sum(axis=0) / 2
    got = SecureGaussian(seed=SEED).normal((n,), std=1.0, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_shape_and_dtype_follow_the_request() -> None:
    """The tensor has the requested shape and dtype; std 0 and empty shapes give zeros."""
    sampler = SecureGaussian(seed=SEED)
    assert sampler.normal((3, 4, 5), std=1.0).shape == (3, 4, 5)
    assert sampler.normal(torch.Size([7]), std=1.0).dtype == torch.float32
    assert sampler.normal((2,), std=1.0, dtype=torch.float64).dtype == torch.float64
    assert sampler.normal((2,), std=1.0, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(sampler.normal((4,), std=0.0), torch.zeros(4))
    assert sampler.normal((0, 3), std=1.0).shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"std": -1.0}, "std"),
        ({"std": math.nan}, "std"),
        ({"std": math.inf}, "std"),
        ({"std": 1.0, "dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    """A negative or non-finite std, or an integer dtype, raises ValueError."""
    with pytest.raises(ValueError, match=message):
        SecureGaussian(seed=SEED).normal((3,), **kwargs)  # type: ignore[arg-type]


def test_seed_must_be_a_256_bit_key() -> None:
    """A test seed that is not 32 bytes is refused."""
    with pytest.raises(ValueError, match="32 bytes"):
        SecureGaussian(seed=b"short")


# --------------------------------------------------------------------------- independence


def test_seeded_sampler_is_deterministic() -> None:
    """Two samplers with the same test seed produce the same stream, call by call."""
    first, second = SecureGaussian(seed=SEED), SecureGaussian(seed=SEED)
    for shape in [(10,), (70_000,), (3, 3)]:
        assert torch.equal(first.normal(shape, std=1.0), second.normal(shape, std=1.0))
    assert not torch.equal(
        SecureGaussian(seed=SEED).normal((10,), std=1.0),
        SecureGaussian(seed=OTHER_SEED).normal((10,), std=1.0),
    )


def test_two_samplers_never_share_noise() -> None:
    """Unseeded samplers (and successive draws of one) are uncorrelated and never equal."""
    first, second = SecureGaussian(), SecureGaussian()
    a = first.normal((50_000,), std=1.0, dtype=torch.float64).numpy()
    b = second.normal((50_000,), std=1.0, dtype=torch.float64).numpy()
    c = first.normal((50_000,), std=1.0, dtype=torch.float64).numpy()
    for x, y in [(a, b), (a, c)]:
        assert np.count_nonzero(x == y) == 0
        assert abs(np.corrcoef(x, y)[0, 1]) < 5 / math.sqrt(len(x))


def test_draws_longer_than_one_keystream_request_do_not_repeat() -> None:
    """A draw spanning several internal keystream requests has no repeated block."""
    sample = SecureGaussian(seed=SEED).normal((3 * 65_536,), std=1.0, dtype=torch.float64)
    chunks = sample.view(3, 65_536)
    assert not torch.equal(chunks[0], chunks[1])
    assert not torch.equal(chunks[1], chunks[2])


@pytest.mark.skipif(sys.platform == "win32", reason="needs os.fork")
def test_forked_child_draws_different_noise_than_its_parent() -> None:
    """After fork, parent and child draws differ: the child rekeys from the OS."""
    sampler = SecureGaussian()
    sampler.normal((1,), std=1.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        os.write(write_end, sampler.normal((16,), std=1.0, dtype=torch.float64).numpy().tobytes())
        os._exit(0)
    os.close(write_end)
    child_bytes = b""
    while chunk := os.read(read_end, 4096):
        child_bytes += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = sampler.normal((16,), std=1.0, dtype=torch.float64).numpy()
    child = np.frombuffer(child_bytes, dtype=np.float64)
    assert child.shape == (16,)
    assert np.count_nonzero(parent == child) == 0


def test_sampler_refuses_pickling_and_hides_its_key() -> None:
    """Pickling (which would copy the key, and so the noise) raises; repr shows no key."""
    sampler = SecureGaussian(seed=SEED)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(sampler)
    assert SEED.hex() not in repr(sampler)
    assert repr(sampler) == "SecureGaussian(seeded=True)"


# --------------------------------------------------------------------------- policy source


def test_secure_source_gives_a_secure_sampler_silently() -> None:
    """`secure` gives a fresh SecureGaussian and no warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler = noise_sampler(NoiseSource.SECURE)
    assert isinstance(sampler, SecureGaussian)


def test_pseudo_source_warns_loudly_and_still_samples_gaussians() -> None:
    """`pseudo` warns with SecurityWarning and samples from torch's generator."""
    with pytest.warns(SecurityWarning, match="predictable"):
        sampler = noise_sampler(NoiseSource.PSEUDO)
    torch.manual_seed(0)
    first = sampler(torch.Size([20_000]), 3.0, torch.float64)
    assert first.dtype == torch.float64
    assert abs(float(first.std()) - 3.0) < 0.1
    torch.manual_seed(0)
    # Predictable: the same torch seed replays the same noise, which is the weakness.
    assert torch.equal(first, sampler(torch.Size([20_000]), 3.0, torch.float64))


# --------------------------------------------------------------------------- opacus hook


def _per_example_clipped_sum(
    model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, max_norm: float
) -> list[torch.Tensor]:
    """Σ_i clip(∇ℓ_i) computed by hand, one example at a time."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(x)):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = min(1.0, max_norm / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return total


def test_dp_optimizer_adds_exactly_our_seeded_noise() -> None:
    """p.grad = (hand-clipped sum + noise of std σC from our sampler) / expected batch."""
    torch.manual_seed(0)
    inner = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    clipped_sum = _per_example_clipped_sum(inner, x, y, max_norm=0.5)
    model = GradSampleModule(inner)
    sigma, max_norm, expected_batch = 1.3, 0.5, 10
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=sigma,
        max_grad_norm=max_norm,
        expected_batch_size=expected_batch,
    )
    use_noise_sampler(optimizer, SecureGaussian(seed=SEED))
    optimizer.zero_grad()
    # Opacus's "mean" reduction: the loss is averaged over the batch as it came.
    torch.nn.functional.mse_loss(model(x), y, reduction="sum").div(len(x)).backward()
    optimizer.pre_step()

    reference = SecureGaussian(seed=SEED)
    for p, summed in zip(model.parameters(), clipped_sum, strict=True):
        noise = reference.normal(p.shape, std=sigma * max_norm, dtype=p.dtype)
        assert p.grad is not None
        torch.testing.assert_close(p.grad, (summed + noise) / expected_batch)


def test_two_optimizers_with_one_seed_give_identical_noisy_gradients() -> None:
    """A seeded sampler makes the whole noisy step reproducible; another seed changes it."""

    def noisy_gradient(seed: bytes) -> torch.Tensor:
        torch.manual_seed(1)
        model = GradSampleModule(torch.nn.Linear(5, 2))
        optimizer = DPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=4,
        )
        use_noise_sampler(optimizer, SecureGaussian(seed=seed))
        model(torch.randn(4, 5)).sum().backward()
        optimizer.pre_step()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    assert torch.equal(noisy_gradient(SEED), noisy_gradient(SEED))
    assert not torch.equal(noisy_gradient(SEED), noisy_gradient(OTHER_SEED))


def test_hook_keeps_opacus_guard_against_reusing_gradients() -> None:
    """A second noise step without zero_grad still raises Opacus's ValueError."""
    model = GradSampleModule(torch.nn.Linear(3, 1))
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=2,
    )
    use_noise_sampler(optimizer, SecureGaussian(seed=SEED))
    model(torch.randn(2, 3)).sum().backward()
    optimizer.pre_step()
    with pytest.raises(ValueError, match="zero_grad"):
        optimizer.add_noise()


@pytest.mark.parametrize("optimizer_class", [DPOptimizerFastGradientClipping, DPPerLayerOptimizer])
def test_hook_supports_ghost_clipping_and_per_layer_optimizers(optimizer_class: type) -> None:
    """The variants whose noise step equals DPOptimizer's get our noise on summed_grad."""
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]
    norm: float | list[float] = [0.6, 0.8] if optimizer_class is DPPerLayerOptimizer else 1.0
    optimizer = optimizer_class(
        torch.optim.SGD(params, lr=0.1),
        noise_multiplier=2.0,
        max_grad_norm=norm,
        expected_batch_size=4,
    )
    use_noise_sampler(optimizer, SecureGaussian(seed=SEED))
    for p in params:
        p.summed_grad = torch.ones_like(p)
    optimizer.add_noise()
    reference = SecureGaussian(seed=SEED)
    std = 2.0 * float(optimizer.max_grad_norm)  # per layer: the norm of the layer norms.
    for p in params:
        expected = torch.ones_like(p) + reference.normal(p.shape, std=std, dtype=p.dtype)
        torch.testing.assert_close(p.grad, expected)


def test_hook_refuses_optimizers_it_would_change() -> None:
    """A plain torch optimizer or an adaptive-clipping DPOptimizer raises TypeError."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(TypeError, match="DPOptimizer"):
        use_noise_sampler(torch.optim.SGD(params, lr=0.1), SecureGaussian(seed=SEED))
    adaptive = AdaClipDPOptimizer(
        torch.optim.SGD(params, lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=2,
        target_unclipped_quantile=0.5,
        clipbound_learning_rate=0.2,
        max_clipbound=10.0,
        min_clipbound=0.1,
        unclipped_num_std=1.0,
    )
    with pytest.raises(TypeError, match="own noise step"):
        use_noise_sampler(adaptive, SecureGaussian(seed=SEED))
