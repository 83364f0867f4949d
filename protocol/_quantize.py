"""Signed fixed-point quantization with stochastic rounding into Z_{2^32} or Z_{2^64}.

A value ``x`` with ``|x| ≤ clip`` becomes the integer level ``⌊x·scale⌋`` or that plus
one, the latter with probability equal to the fractional part, so the level is an
unbiased estimate of ``x·scale`` and off by less than one step (``1/scale``). Levels are
stored as two's-complement words modulo ``2^bits``; a sum of ``n`` levels decodes
correctly as long as ``n·⌈clip·scale⌉ < 2^(bits−1)``, which :meth:`FixedPoint.for_sum`
checks once for the whole session (Bonawitz et al., CCS 2017, §3; Kairouz et al., ICML
2021, §4 for the stochastic rounding).

Notes:
    The rounding coins are the ChaCha20 keystream under a fresh 256-bit key from
    ``os.urandom`` per call, read as 64-bit words whose top 53 bits make a uniform float
    in [0, 1) (the distribution of numpy's ``Generator.random``), so a server cannot
    predict them and learn which way a value was rounded. :meth:`FixedPoint.quantize_all`
    draws the coins of many vectors as one stream. Values outside ``[−clip, clip]`` are
    refused rather than clipped or wrapped: clipping is the caller's (privacy-relevant) decision.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from ._crypto import mask_words
from ._encoding import Words
from .errors import InvalidInputError, QuantizationOverflowError, SessionParamsError

PACKED_WEIGHT_BOUND = 1.0
"""The largest row weight ``π·m`` a packed block carries; the encoded range covers it."""

_FLOAT_EXACT = 2**53
"""Sums of levels stay below this, so they convert to float64 without rounding."""


@dataclass(frozen=True)
class FixedPoint:
    """A fixed-point encoding: ``clip`` bounds each coordinate, ``scale`` levels per unit."""

    clip: float
    scale: float
    bits: Literal[32, 64]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise SessionParamsError(f"`clip` must be a finite number > 0, got {self.clip}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise SessionParamsError(f"`scale` must be a finite number > 0, got {self.scale}")
        if self.bits not in (32, 64):
            raise SessionParamsError(f"`bits` must be 32 or 64, got {self.bits}")

    @classmethod
    def for_sum(cls, *, clip: float, scale: float, max_contributors: int) -> FixedPoint:
        """The narrowest modulus (2^32, else 2^64) in which a sum of that many values fits.

        The encoded range is ``±max(clip, PACKED_WEIGHT_BOUND)``: a session's inputs are
        packed blocks (`_blocks`) whose row weights lie in ``[0, 1]`` whatever the clip
        of the weighted values, which may be smaller.

        Raises:
            QuantizationOverflowError: even 64-bit words (or float64 decoding) cannot hold
                ``max_contributors · ⌈clip·scale⌉``; lower the scale or the clip bound.
        """
        if not (math.isfinite(clip) and clip > 0):
            raise SessionParamsError(f"`clip` must be a finite number > 0, got {clip}")
        clip = max(clip, PACKED_WEIGHT_BOUND)
        probe = cls(clip=clip, scale=scale, bits=64)
        bound = max_contributors * probe.max_level
        if bound < 2**31:
            return cls(clip=clip, scale=scale, bits=32)
        if bound < _FLOAT_EXACT:
            return probe
        raise QuantizationOverflowError(
            f"a sum of {max_contributors} values of at most {clip} at scale {scale} needs "
            f"{bound.bit_length() + 1} bits, more than the 54 a float64 decodes exactly; "
            "lower `scale` or `clip`"
        )

    @property
    def max_level(self) -> int:
        """The largest absolute level a single value can take, ``⌈clip·scale⌉``."""
        return math.ceil(self.clip * self.scale)

    @property
    def step(self) -> float:
        """One quantization step, ``1/scale``."""
        return 1.0 / self.scale

    @property
    def word_dtype(self) -> type[np.uint32] | type[np.uint64]:
        """The numpy dtype of one word modulo ``2^bits``."""
        return np.uint32 if self.bits == 32 else np.uint64

    def quantize(self, values: npt.ArrayLike) -> Words:
        """Stochastically round ``values`` to levels, as words modulo ``2^bits``.

        Raises:
            InvalidInputError: a value is NaN or infinite.
            QuantizationOverflowError: a value lies outside ``[−clip, clip]``.
        """
        x = np.asarray(values, dtype=np.float64)
        if x.size:
            # Two reductions instead of element-wise masks: NaN and ±inf propagate into
            # the extremes, so they are caught without allocating a boolean array.
            high, low = float(x.max()), float(x.min())
            if not (math.isfinite(high) and math.isfinite(low)):
                raise InvalidInputError("an input contains NaN or infinite values")
            if high > self.clip or low < -self.clip:
                outside = int(np.count_nonzero(np.abs(x) > self.clip))
                raise QuantizationOverflowError(
                    f"{outside} input values lie outside the clip bound ±{self.clip}; clip "
                    "the update to the session's bound before secure aggregation"
                )
        # Round up with probability equal to the fractional part. Comparing the coin with
        # the fraction (rather than flooring x·scale + U) is exact: the sum x·scale + U
        # can round up to the next integer in floating point and bias the level.
        flat = x.reshape(-1)
        signed = np.empty(flat.size, dtype=np.int32 if self.bits == 32 else np.int64)
        coins = mask_words(os.urandom(32), flat.size, 64)
        coins >>= np.uint64(11)  # K, uniform on [0, 2^53): the coin is U = K·2^-53
        # Chunks that stay in cache: each pass over the whole vector would cost a trip
        # through memory, and the passes (not the coins) dominated the cost.
        size = min(flat.size, _CHUNK)
        scaled, levels = np.empty(size), np.empty(size)
        up = np.empty(size, dtype=bool)
        for start in range(0, flat.size, _CHUNK):
            stop = min(start + _CHUNK, flat.size)
            n = stop - start
            np.multiply(flat[start:stop], self.scale, out=scaled[:n])
            np.floor(scaled[:n], out=levels[:n])
            scaled[:n] -= levels[:n]  # the fractional part f, exactly
            # U < f  ⇔  K < f·2^53 (f·2^53 is exact, K < 2^53 converts exactly).
            scaled[:n] *= 2.0**53
            np.less(coins[start:stop], scaled[:n], out=up[:n])
            levels[:n] += up[:n]
            signed[start:stop] = levels[:n]
        unsigned = np.uint32 if self.bits == 32 else np.uint64
        return cast(Words, signed.view(unsigned).reshape(x.shape))

    def quantize_all(self, vectors: Sequence[npt.ArrayLike]) -> list[Words]:
        """:meth:`quantize` of each vector, with one coin stream for all of them.

        Raises:
            InvalidInputError: a value is NaN or infinite.
            QuantizationOverflowError: a value lies outside ``[−clip, clip]``.
        """
        arrays = [np.asarray(v, dtype=np.float64).ravel() for v in vectors]
        if not arrays:
            return []
        words = self.quantize(np.concatenate(arrays))
        bounds = np.cumsum([a.size for a in arrays])[:-1]
        parts = np.split(words, bounds)
        return [
            cast(Words, part.reshape(np.shape(v))) for part, v in zip(parts, vectors, strict=True)
        ]

    def signed_levels(self, words: Words, *, contributors: int) -> npt.NDArray[np.int64]:
        """Decode a sum of ``contributors`` encoded values to signed integer levels.

        Raises:
            QuantizationOverflowError: a decoded level lies outside the range that
                ``contributors`` honest values can reach, which means the masks did not
                cancel (inconsistent shares or a forged input).
        """
        signed_dtype = np.int32 if self.bits == 32 else np.int64
        levels = np.asarray(words).view(signed_dtype).astype(np.int64)
        bound = contributors * self.max_level
        if levels.size and int(np.max(np.abs(levels))) > bound:
            raise QuantizationOverflowError(
                f"a decoded sum exceeds ±{bound} levels, the most {contributors} values can "
                "reach; the masks did not cancel"
            )
        return levels

    def dequantize_sum(self, words: Words, *, contributors: int) -> npt.NDArray[np.float64]:
        """The float64 sum encoded by ``words`` (within ``contributors`` steps of the truth)."""
        levels = self.signed_levels(words, contributors=contributors)
        return levels.astype(np.float64) / self.scale


_CHUNK = 16_384
"""Values quantized per pass: the pass's scratch (about 400 KB) stays in a core's L2 cache."""
