"""Fixed-point quantization: modulus choice, error bounds, unbiasedness, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedhft.protocol._quantize import FixedPoint
from fedhft.protocol.errors import (
    InvalidInputError,
    QuantizationOverflowError,
    SessionParamsError,
)


def test_modulus_is_32_bits_when_the_sum_fits() -> None:
    """n·⌈clip·scale⌉ below 2^31 selects 32-bit words."""
    fixed = FixedPoint.for_sum(clip=1.0, scale=2.0**20, max_contributors=2047)
    assert fixed.bits == 32 and fixed.max_level == 2**20


def test_modulus_switches_to_64_bits_at_the_boundary() -> None:
    """Once n·⌈clip·scale⌉ reaches 2^31, 64-bit words are used instead of wrapping."""
    fixed = FixedPoint.for_sum(clip=1.0, scale=2.0**20, max_contributors=2048)
    assert fixed.bits == 64


def test_modulus_beyond_float_precision_is_refused() -> None:
    """A bound float64 cannot decode exactly raises instead of losing precision."""
    with pytest.raises(QuantizationOverflowError, match="lower `scale`"):
        FixedPoint.for_sum(clip=1.0, scale=2.0**50, max_contributors=16)


@pytest.mark.parametrize(
    ("clip", "scale"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (float("inf"), 1.0), (1.0, np.nan)]
)
def test_invalid_clip_or_scale_is_refused(clip: float, scale: float) -> None:
    """Non-positive or non-finite clip bounds and scales are parameter errors."""
    with pytest.raises(SessionParamsError):
        FixedPoint.for_sum(clip=clip, scale=scale, max_contributors=3)


@settings(max_examples=50, deadline=None)
@given(
    values=hnp.arrays(
        np.float64, st.integers(1, 200), elements=st.floats(-3.0, 3.0, allow_nan=False)
    ),
    scale_bits=st.integers(0, 24),
)
def test_each_value_is_within_one_step(values: np.ndarray, scale_bits: int) -> None:
    """Every quantized coordinate is within one step (1/scale) of its value."""
    fixed = FixedPoint.for_sum(clip=3.0, scale=2.0**scale_bits, max_contributors=5)
    decoded = fixed.dequantize_sum(fixed.quantize(values), contributors=1)
    assert np.all(np.abs(decoded - values) < fixed.step)


@settings(max_examples=30, deadline=None)
@given(
    inputs=st.integers(3, 8).flatmap(
        lambda n: hnp.arrays(np.float64, (n, 17), elements=st.floats(-1.0, 1.0))
    ),
)
def test_sum_of_words_decodes_within_n_steps(inputs: np.ndarray) -> None:
    """Adding n encodings modulo 2^32 decodes to the plain sum within n steps."""
    n = inputs.shape[0]
    fixed = FixedPoint.for_sum(clip=1.0, scale=1000.0, max_contributors=n)
    total = np.zeros(inputs.shape[1], dtype=np.uint32)
    for row in inputs:
        np.add(total, fixed.quantize(row), out=total)
    decoded = fixed.dequantize_sum(total, contributors=n)
    assert np.all(np.abs(decoded - inputs.sum(axis=0)) < n * fixed.step)


@pytest.mark.parametrize("bits_contributors", [2, 4096], ids=["32-bit", "64-bit"])
def test_grid_values_quantize_exactly(bits_contributors: int) -> None:
    """Values on the grid (multiples of 1/scale), negative ones too, encode exactly."""
    fixed = FixedPoint.for_sum(clip=8.0, scale=2.0**20, max_contributors=bits_contributors)
    values = np.array([-8.0, -1.5, -(2.0**-20), 0.0, 2.0**-20, 3.25, 8.0])
    levels = fixed.signed_levels(fixed.quantize(values), contributors=1)
    np.testing.assert_array_equal(levels, np.round(values * 2**20).astype(np.int64))


def test_stochastic_rounding_is_unbiased() -> None:
    """A value 0.3 steps above a level rounds up about 30% of the time (mean preserved)."""
    fixed = FixedPoint.for_sum(clip=1.0, scale=10.0, max_contributors=3)
    values = np.full(200_000, 0.13)
    levels = fixed.signed_levels(fixed.quantize(values), contributors=1)
    assert set(np.unique(levels)) == {1, 2}
    # Binomial(200000, 0.3): the standard error of the mean level is about 0.001.
    assert abs(levels.mean() - 1.3) < 0.006


def test_rounding_coins_are_fresh_each_call() -> None:
    """Two quantizations of the same off-grid values round differently (fresh randomness)."""
    fixed = FixedPoint.for_sum(clip=1.0, scale=10.0, max_contributors=3)
    values = np.full(4096, 0.05)
    assert not np.array_equal(fixed.quantize(values), fixed.quantize(values))


def test_values_outside_clip_are_refused_not_wrapped() -> None:
    """A value beyond ±clip raises QuantizationOverflowError without echoing the value."""
    fixed = FixedPoint.for_sum(clip=1.0, scale=10.0, max_contributors=3)
    with pytest.raises(QuantizationOverflowError, match="2 input values") as caught:
        fixed.quantize(np.array([0.5, 1.2345678, -7.654321]))
    assert "1.2345678" not in str(caught.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    """NaN and infinities are invalid input."""
    fixed = FixedPoint.for_sum(clip=1.0, scale=10.0, max_contributors=3)
    with pytest.raises(InvalidInputError):
        fixed.quantize(np.array([0.0, bad]))


def test_sum_out_of_range_is_detected() -> None:
    """A decoded sum beyond what n honest values reach (masks not cancelled) raises."""
    fixed = FixedPoint.for_sum(clip=1.0, scale=10.0, max_contributors=3)
    garbage = np.array([123_456_789], dtype=np.uint32)
    with pytest.raises(QuantizationOverflowError, match="did not cancel"):
        fixed.dequantize_sum(garbage, contributors=3)


def test_a_clip_below_one_still_encodes_the_row_weights() -> None:
    """Packed blocks carry row weights up to 1 whatever the clip of their values, so the
    encoded range is at least ±1: a weight of 1 at clip 0.25 round-trips."""
    fixed = FixedPoint.for_sum(clip=0.25, scale=2.0**20, max_contributors=3)
    assert fixed.clip == 1.0
    words = fixed.quantize(np.array([1.0, 0.25, -0.25]))
    np.testing.assert_allclose(
        fixed.dequantize_sum(words, contributors=1), [1.0, 0.25, -0.25], atol=fixed.step
    )
