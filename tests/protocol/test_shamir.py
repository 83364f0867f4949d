"""Shamir secret sharing over 2^521 − 1: a hand-computed vector, laws, and bad input."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.protocol.errors import MalformedMessageError, ThresholdError
from fedhft.protocol.secagg._shamir import (
    MERSENNE_521,
    SHARE_VALUE_BYTES,
    Share,
    decode_share_value,
    encode_share_value,
    interpolate_at_zero,
    lagrange_at_zero,
    reconstruct_secret,
    share_from_coefficients,
    split_secret,
)

# A vector computed by hand. Secret 1234, threshold 3, f(x) = 1234 + 166·x + 94·x²:
#   f(1) = 1234 + 166 + 94       = 1494
#   f(2) = 1234 + 332 + 376      = 1942
#   f(3) = 1234 + 498 + 846      = 2578
#   f(4) = 1234 + 664 + 1504     = 3402
#   f(5) = 1234 + 830 + 2350     = 4414
# From holders {1, 2, 3} the Lagrange weights at 0 are 3, −3, 1:
#   3·1494 − 3·1942 + 2578 = 1234.
# From holders {2, 4, 5} they are 10/3, −5, 8/3:
#   (10·1942 + 8·4414)/3 − 5·3402 = 18244 − 17010 = 1234.
# From only two shares {1, 2}, the line through them meets 0 at 1494 − 448 = 1046 ≠ 1234.
HAND_SHARES = {1: 1494, 2: 1942, 3: 2578, 4: 3402, 5: 4414}


def test_hand_computed_shares() -> None:
    """Evaluating 1234 + 166x + 94x² at 1..5 gives the shares derived by hand above."""
    shares = share_from_coefficients([1234, 166, 94], [1, 2, 3, 4, 5])
    assert {s.x: s.y for s in shares} == HAND_SHARES


def test_hand_computed_lagrange_weights() -> None:
    """The weights for holders {1, 2, 3} are 3, −3, 1 in the field, as derived by hand."""
    assert lagrange_at_zero([1, 2, 3]) == [3, MERSENNE_521 - 3, 1]


@pytest.mark.parametrize("holders", [(1, 2, 3), (2, 4, 5), (5, 3, 1)])
def test_hand_computed_reconstruction(holders: tuple[int, ...]) -> None:
    """Any three of the hand-computed shares reconstruct 1234."""
    shares = [Share(x, HAND_SHARES[x]) for x in holders]
    assert reconstruct_secret(shares, threshold=3) == 1234


def test_hand_computed_two_shares_give_the_wrong_value() -> None:
    """Interpolating only two shares gives 1046, not the secret (the vector must fail)."""
    assert interpolate_at_zero([Share(1, 1494), Share(2, 1942)]) == 1046


def test_hand_computed_vector_with_field_reduction() -> None:
    """Secret p − 1 with f(x) = (p − 1) + x wraps: f(1) = 0, f(2) = 1, and back to p − 1."""
    shares = share_from_coefficients([MERSENNE_521 - 1, 1], [1, 2])
    assert [(s.x, s.y) for s in shares] == [(1, 0), (2, 1)]
    assert reconstruct_secret(shares, threshold=2) == MERSENNE_521 - 1


def test_mersenne_prime_value() -> None:
    """The modulus is 2^521 − 1 and a share value takes 66 bytes."""
    assert MERSENNE_521 == (1 << 521) - 1
    assert SHARE_VALUE_BYTES == 66


@settings(max_examples=40, deadline=None)
@given(
    secret=st.integers(0, 2**256 - 1),
    threshold=st.integers(1, 6),
    extra=st.integers(0, 4),
    data=st.data(),
)
def test_any_t_shares_recover_the_secret(
    secret: int, threshold: int, extra: int, data: st.DataObject
) -> None:
    """Every subset of at least t shares (in any order) reconstructs the secret."""
    holders = list(range(1, threshold + extra + 1))
    shares = split_secret(secret, threshold=threshold, holders=holders)
    subset = data.draw(
        st.lists(st.sampled_from(shares), min_size=threshold, unique_by=lambda s: s.x)
    )
    assert reconstruct_secret(subset, threshold=threshold) == secret


@settings(max_examples=40, deadline=None)
@given(secret=st.integers(0, 2**256 - 1), threshold=st.integers(2, 6), data=st.data())
def test_fewer_than_t_shares_give_a_wrong_value(
    secret: int, threshold: int, data: st.DataObject
) -> None:
    """Interpolating t − 1 shares misses the secret, and reconstruct refuses outright."""
    shares = split_secret(secret, threshold=threshold, holders=range(1, threshold + 3))
    subset = data.draw(
        st.lists(
            st.sampled_from(shares),
            min_size=threshold - 1,
            max_size=threshold - 1,
            unique_by=lambda s: s.x,
        )
    )
    # A random polynomial hits the secret from t − 1 points with probability 2^-521.
    assert interpolate_at_zero(subset) != secret
    with pytest.raises(ThresholdError):
        reconstruct_secret(subset, threshold=threshold)


@pytest.mark.parametrize("threshold", [2, 3])
def test_t_minus_one_shares_are_independent_of_the_secret(threshold: int) -> None:
    """Over a small field, any t − 1 shares are uniform whatever the secret.

    Enumerating every polynomial over GF(11) shows each value of the t − 1 shares arises
    from exactly one polynomial per secret, so those shares carry no information about
    it; the code under test is the same evaluation used over 2^521 − 1.
    """
    prime = 11
    holders = [1, 2, 3, 4]
    for subset in itertools.combinations(holders, threshold - 1):
        for secret in range(prime):
            counts: Counter[tuple[int, ...]] = Counter()
            for tail in itertools.product(range(prime), repeat=threshold - 1):
                shares = share_from_coefficients([secret, *tail], subset, prime)
                counts[tuple(s.y for s in shares)] += 1
            assert len(counts) == prime ** (threshold - 1)
            assert set(counts.values()) == {1}


def test_share_repr_hides_value() -> None:
    """A share's repr shows its holder but never its value."""
    share = split_secret(123456789, threshold=2, holders=[1, 2])[0]
    assert str(share.y) not in repr(share) and "hidden" in repr(share)


def test_split_rejects_out_of_range_secret_and_threshold() -> None:
    """Secrets outside the field and thresholds outside 1..n are refused."""
    with pytest.raises(ValueError, match="secret"):
        split_secret(MERSENNE_521, threshold=2, holders=[1, 2])
    with pytest.raises(ValueError, match="threshold"):
        split_secret(5, threshold=3, holders=[1, 2])
    with pytest.raises(ValueError, match="threshold"):
        split_secret(5, threshold=0, holders=[1, 2])


@pytest.mark.parametrize("holders", [[0, 1], [1, 1], [1, 2**16]])
def test_invalid_holder_coordinates_are_refused(holders: list[int]) -> None:
    """Coordinate 0 (the secret itself), repeats and out-of-range coordinates are refused."""
    with pytest.raises(MalformedMessageError):
        split_secret(5, threshold=2, holders=holders)
    with pytest.raises(MalformedMessageError):
        interpolate_at_zero([Share(x, 1) for x in holders])


def test_share_value_encoding_round_trip_and_bounds() -> None:
    """Share values round-trip through 66 bytes; wrong lengths and values ≥ p are refused."""
    value = MERSENNE_521 - 2
    assert decode_share_value(encode_share_value(value)) == value
    with pytest.raises(MalformedMessageError):
        decode_share_value(b"\x00" * 65)
    with pytest.raises(MalformedMessageError):
        decode_share_value(MERSENNE_521.to_bytes(66, "big"))
