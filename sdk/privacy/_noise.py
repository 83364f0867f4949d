"""Gaussian noise for DP-SGD from a cryptographically secure source.

Implements a Gaussian sampler fed by a ChaCha20 keystream (RFC 8439, through
`cryptography`) keyed with 256 bits from the operating system, and a hook that makes an
Opacus ``DPOptimizer`` draw its noise from it instead of torch's default generator.

Opacus's own ``secure_mode`` needs `torchcsprng`, which most users cannot install, and
torch's default Mersenne-Twister generator is predictable from its outputs: an adversary
who learns its state can subtract the noise from a released update. The assumption here
is the one every DP-SGD proof makes: the noise is independent of everything the adversary
sees, which a CSPRNG with a secret key provides and a seeded PRNG does not.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedhft.errors import SecurityWarning
from fedhft.policies import NoiseSource

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

NoiseSampler = Callable[[torch.Size, float, torch.dtype], torch.Tensor]
"""Draws a tensor of the given shape of i.i.d. N(0, std²) values in the given dtype."""

_KEY_BYTES = 32
# Normals produced per keystream request: bounds the temporary float64 arrays to a few MB
# and keeps each request far below ChaCha20's 2^32-block counter limit.
_CHUNK = 1 << 16
# Each output normal sums four standard normals (see `SecureGaussian` Notes); Box-Muller
# turns two 64-bit words into two normals, so one output costs four words.
_WORDS_PER_OUTPUT = 4
_TWO_POW_MINUS_53 = 2.0**-53


class SecureGaussian:
    """Gaussian sampler fed by a ChaCha20 keystream, keyed from ``os.urandom(32)``.

    Every instance has its own 256-bit key, so two samplers never share noise; after a
    fork, an (unseeded) sampler rekeys from the OS in the child on its next draw. The key
    never appears in ``repr``, and the sampler refuses to be pickled (a copy would replay
    its noise).

    Args:
        seed: a 32-byte key, **for tests only**: it makes the noise reproducible, which is
            exactly what production noise must not be.

    Notes:
        *Uniforms.* Each 64-bit keystream word gives a 53-bit uniform, the full precision
        of a float64 mantissa: ``u = k · 2⁻⁵³`` for the angle (in [0, 1)) and
        ``u = (k + 1) · 2⁻⁵³`` for the radius (in (0, 1], so ``log u`` is finite).

        *Normals.* Box-Muller: ``r = sqrt(-2 ln u₁)``, ``z₀ = r cos 2πu₂``,
        ``z₁ = r sin 2πu₂``, two independent standard normals per pair of uniforms.

        *Floating-point attacks.* A single Box-Muller or polar sample can be inverted:
        the set of floats it can produce is sparse and uneven, so a released
        ``gradient + noise`` leaks which uniforms (and hence which gradient) were
        possible (Jin et al., arXiv:2112.05307; Mironov 2012 for the Laplace case).
        Following §5.1 of Holohan & Braghin (arXiv:2107.10138), as Opacus's
        ``secure_mode`` does, each output is ``(z₁ + z₂ + z₃ + z₄) / 2`` — still
        N(0, 1) — where the four independent normals are the cosine and sine halves of
        two Box-Muller pairs, i.e. a function of four independent 53-bit uniforms.
        Inverting it means enumerating three of them, 2^(53·3) candidates, where one
        sample (or a sum of two, n = 1 in the paper) takes 2^53 work, within reach. All
        arithmetic is in float64, rounded to the requested dtype once, at the end.

        *Keystream.* Each request uses a fresh 96-bit ChaCha20 nonce (a 64-bit request
        counter), starting at block 0, and asks for at most 2^15 blocks, so no
        (key, nonce, counter) triple is ever reused and the 32-bit block counter never
        wraps.
    """

    def __init__(self, *, seed: bytes | None = None) -> None:
        if seed is not None and len(seed) != _KEY_BYTES:
            raise ValueError(f"`seed` must be {_KEY_BYTES} bytes, got {len(seed)}")
        self._seeded = seed is not None
        self._lock = threading.Lock()
        self._key = seed if seed is not None else os.urandom(_KEY_BYTES)
        self._pid = os.getpid()
        self._requests = 0

    def __repr__(self) -> str:
        return f"SecureGaussian(seeded={self._seeded})"

    def __getstate__(self) -> NoReturn:
        raise TypeError(
            "SecureGaussian cannot be pickled: a copy would replay the same noise; "
            "create a new sampler in each process"
        )

    def __call__(self, shape: torch.Size, std: float, dtype: torch.dtype) -> torch.Tensor:
        """`NoiseSampler` form of :meth:`normal`."""
        return self.normal(shape, std=std, dtype=dtype)

    def normal(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        std: float,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """A CPU tensor of ``shape`` with i.i.d. N(0, std²) entries.

        Raises:
            ValueError: ``std`` is negative or not finite, ``dtype`` is not a floating
                point type, or ``shape`` has a negative size.
        """
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"`std` must be a finite number >= 0, got {std!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"`dtype` must be a floating-point dtype, got {dtype}")
        if any(int(d) < 0 for d in shape):
            raise ValueError(f"`shape` must have sizes >= 0, got {tuple(shape)}")
        count = math.prod(int(d) for d in shape)
        if std == 0 or count == 0:
            return torch.zeros(tuple(shape), dtype=dtype)
        values = self._standard_normals(count).mul_(std)
        return values.view(tuple(int(d) for d in shape)).to(dtype)

    # ------------------------------------------------------------------ internals

    def _next_nonce(self) -> bytes:
        """The next 16-byte ChaCha20 nonce: block counter 0, then a 96-bit request id."""
        with self._lock:
            if not self._seeded and os.getpid() != self._pid:
                # A forked child must not replay its parent's keystream.
                self._key = os.urandom(_KEY_BYTES)
                self._pid = os.getpid()
                self._requests = 0
            request = self._requests
            self._requests += 1
        return struct.pack("<IQI", 0, request, 0)

    def _uniform_mantissas(self, words: int) -> torch.Tensor:
        """``words`` independent uniform 53-bit integers (int64) from the keystream."""
        encryptor = Cipher(
            algorithms.ChaCha20(self._key, self._next_nonce()), mode=None
        ).encryptor()
        stream = np.frombuffer(encryptor.update(bytes(8 * words)), dtype="<u8")
        # Below 2^53, so the same bits read as int64 (which torch supports) are the value.
        mantissas: npt.NDArray[np.int64] = (stream >> np.uint64(11)).view(np.int64)
        return torch.from_numpy(mantissas)

    def _standard_normals(self, count: int) -> torch.Tensor:
        """``count`` float64 N(0, 1) values, each the scaled sum of four Box-Muller draws."""
        out = torch.empty(count, dtype=torch.float64)
        for start in range(0, count, _CHUNK):
            n = min(_CHUNK, count - start)
            mantissas = self._uniform_mantissas(_WORDS_PER_OUTPUT * n)
            # Radius uniforms in (0, 1] so the logarithm is finite; angle uniforms in [0, 1).
            radius = (mantissas[: 2 * n] + 1).to(torch.float64).mul_(_TWO_POW_MINUS_53)
            radius.log_().mul_(-2.0).sqrt_()
            angle = mantissas[2 * n :].to(torch.float64).mul_(2.0 * math.pi * _TWO_POW_MINUS_53)
            # 2n pairs give 4n independent normals: n outputs of four each.
            normals = torch.cat((radius * torch.cos(angle), radius.mul_(torch.sin(angle))))
            out[start : start + n] = normals.view(4, n).sum(dim=0).mul_(0.5)
        return out


def _pseudo_normal(shape: torch.Size, std: float, dtype: torch.dtype) -> torch.Tensor:
    """N(0, std²) from torch's default (predictable) generator."""
    return torch.normal(0.0, std, size=tuple(shape), dtype=dtype)


def noise_sampler(source: NoiseSource) -> NoiseSampler:
    """The noise sampler a policy's ``privacy.noise_source`` asks for.

    ``secure`` gives a fresh :class:`SecureGaussian`. ``pseudo`` gives torch's default
    generator and warns with a :class:`~fedhft.SecurityWarning`: its noise is predictable,
    so the DP guarantee holds only against an adversary who cannot learn its state.
    """
    source = NoiseSource(source)
    if source is NoiseSource.SECURE:
        return SecureGaussian()
    warnings.warn(
        "privacy.noise_source is `pseudo`: DP noise comes from torch's predictable "
        "generator, so the privacy guarantee does not hold against an adversary who can "
        "reconstruct its state; use `secure` outside experiments",
        SecurityWarning,
        stacklevel=2,
    )
    return _pseudo_normal


def use_noise_sampler(optimizer: DPOptimizer, sampler: NoiseSampler) -> None:
    """Make an Opacus ``DPOptimizer`` draw its DP noise from ``sampler``.

    Replaces the instance's ``add_noise`` with one that does exactly what Opacus 1.6's
    does (noise of std ``noise_multiplier · max_grad_norm`` added to each parameter's
    clipped ``summed_grad``, stored in ``p.grad``, ``summed_grad`` marked processed so a
    missing ``zero_grad`` is caught) except for the source of the noise. Opacus's
    ``scale_grad`` (division by the expected batch size), its accountant hook and its
    ``noise_multiplier`` attribute are untouched, so accounting is unchanged.

    Works for ``DPOptimizer``, its per-layer variant and the ghost-clipping
    ``DPOptimizerFastGradientClipping``, whose noise step is the same.

    Raises:
        TypeError: ``optimizer`` is not a ``DPOptimizer``, or a subclass whose noise
            step differs (distributed, adaptive clipping), which this hook would change.
    """
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    if not isinstance(optimizer, DPOptimizer):
        raise TypeError(
            f"use_noise_sampler needs an opacus DPOptimizer, got {type(optimizer).__name__}"
        )
    supported = (DPOptimizer.add_noise, DPOptimizerFastGradientClipping.add_noise)
    if type(optimizer).add_noise not in supported:
        raise TypeError(
            f"{type(optimizer).__name__} has its own noise step (distributed or adaptive "
            "clipping); use DPOptimizer, DPPerLayerOptimizer or "
            "DPOptimizerFastGradientClipping"
        )

    def add_noise() -> None:
        # Ghost clipping keeps an adjusted multiplier apart from the accounted one.
        multiplier = getattr(optimizer, "_adjusted_noise_multiplier", optimizer.noise_multiplier)
        std = float(multiplier) * float(optimizer.max_grad_norm)
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            reference: torch.Tensor = p.summed_grad
            noise = sampler(reference.shape, std, reference.dtype).to(reference.device)
            p.grad = (reference + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    instance: Any = optimizer
    instance.add_noise = add_noise
    instance.fedhft_noise_sampler = sampler
