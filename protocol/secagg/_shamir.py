"""Shamir t-of-n secret sharing over the prime field of the Mersenne prime 2^521 − 1.

A secret ``s`` is the constant term of a polynomial ``f`` of degree ``t − 1`` whose other
coefficients are drawn uniformly from the field with :mod:`secrets`; holder ``x`` (an
integer in ``1..65535``, here a roster index plus one) receives ``f(x)``. Any ``t`` shares
determine ``f`` and so ``s`` by Lagrange interpolation at 0 (Shamir, "How to share a
secret", CACM 1979).

Notes:
    Any ``t − 1`` shares are uniformly distributed whatever the secret: for each candidate
    secret there is exactly one polynomial of degree ``t − 1`` through those shares and
    ``(0, secret)``, and all polynomials are equally likely. This is the property the
    masking protocol relies on when fewer than ``t`` parties reveal shares of a secret.
    The field is larger than the 256-bit secrets shared here, so every secret embeds
    without reduction and a reconstruction from inconsistent shares is detected with
    overwhelming probability (it lands outside ``[0, 2^256)``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import MalformedMessageError, ThresholdError

MERSENNE_521 = 2**521 - 1
"""The field modulus: a Mersenne prime, so shares of 256-bit secrets never wrap."""

SHARE_VALUE_BYTES = 66
"""Bytes of one encoded share value (521 bits round up to 66 bytes)."""

MAX_HOLDER = 2**16 - 1
"""Largest holder coordinate; coordinates travel as 16-bit integers."""


@dataclass(frozen=True, repr=False)
class Share:
    """One holder's share ``(x, f(x))``; ``repr`` hides the value."""

    x: int
    y: int

    def __repr__(self) -> str:
        return f"Share(x={self.x}, y=<hidden>)"


def share_from_coefficients(
    coefficients: Sequence[int], holders: Sequence[int], prime: int = MERSENNE_521
) -> list[Share]:
    """Evaluate the polynomial ``coefficients[0] + coefficients[1]·x + ...`` at each holder.

    This is the deterministic half of :func:`split_secret`, public so that tests can
    enumerate every polynomial over a small field.
    """
    _check_holders(holders, prime)
    shares = []
    for x in holders:
        y = 0
        for coefficient in reversed(coefficients):  # Horner's rule.
            y = (y * x + coefficient) % prime
        shares.append(Share(x, y))
    return shares


def split_secret(
    secret: int, *, threshold: int, holders: Sequence[int], prime: int = MERSENNE_521
) -> list[Share]:
    """Split ``secret`` into one share per holder; any ``threshold`` of them recover it."""
    if not 0 <= secret < prime:
        raise ValueError("the secret must be an integer in [0, prime)")
    if not 1 <= threshold <= len(holders):
        raise ValueError(
            f"threshold must be between 1 and the number of holders ({len(holders)}), "
            f"got {threshold}"
        )
    coefficients = [secret] + [secrets.randbelow(prime) for _ in range(threshold - 1)]
    return share_from_coefficients(coefficients, holders, prime)


def lagrange_at_zero(xs: Sequence[int], prime: int = MERSENNE_521) -> list[int]:
    """The Lagrange coefficients ``λ_i = Π_{j≠i} x_j / (x_j − x_i)`` for evaluation at 0.

    Holder coordinates are small integers, so numerators and denominators are exact
    integer products, reduced once; the denominators are inverted together with one
    modular inversion (Montgomery's trick) instead of one per coefficient. In SecAgg+
    every owner has its own holder set, so the server computes one set per owner.
    """
    _check_holders(xs, prime)
    everything = math.prod(xs)
    denominators = [
        math.prod(xj - xi for j, xj in enumerate(xs) if j != i) % prime for i, xi in enumerate(xs)
    ]
    prefix = [1]
    for denominator in denominators:
        prefix.append(prefix[-1] * denominator % prime)
    inverse = pow(prefix[-1], -1, prime)  # of the product of all denominators
    coefficients = [0] * len(xs)
    for i in reversed(range(len(xs))):
        # inverse is now 1 / (d_0 ⋯ d_i); prefix[i] = d_0 ⋯ d_{i−1}, so this is 1 / d_i.
        coefficients[i] = (everything // xs[i]) % prime * (inverse * prefix[i] % prime) % prime
        inverse = inverse * denominators[i] % prime
    return coefficients


def interpolate_at_zero(shares: Sequence[Share], prime: int = MERSENNE_521) -> int:
    """The value at 0 of the polynomial of lowest degree through ``shares``.

    With at least ``t`` shares of a degree ``t − 1`` polynomial this is the secret; with
    fewer it is a value unrelated to the secret.
    """
    weights = lagrange_at_zero([share.x for share in shares], prime)
    return sum(w * share.y for w, share in zip(weights, shares, strict=True)) % prime


def reconstruct_secret(
    shares: Sequence[Share], *, threshold: int, prime: int = MERSENNE_521
) -> int:
    """Recover the secret from at least ``threshold`` shares (the first ``threshold`` used).

    Raises:
        ThresholdError: fewer than ``threshold`` shares were given.
        MalformedMessageError: two shares have the same holder, or a coordinate is invalid.
    """
    if len(shares) < threshold:
        raise ThresholdError(
            f"{len(shares)} shares cannot reconstruct a secret shared with threshold "
            f"{threshold}; at least {threshold} are needed"
        )
    return interpolate_at_zero(list(shares)[:threshold], prime)


def encode_share_value(y: int) -> bytes:
    """The 66-byte big-endian encoding of a share value."""
    return y.to_bytes(SHARE_VALUE_BYTES, "big")


def decode_share_value(data: bytes) -> int:
    """Decode a share value, rejecting wrong lengths and values outside the field."""
    if len(data) != SHARE_VALUE_BYTES:
        raise MalformedMessageError(f"a share value has {SHARE_VALUE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= MERSENNE_521:
        raise MalformedMessageError("a share value lies outside the field 2^521 − 1")
    return y


def _check_holders(xs: Sequence[int], prime: int) -> None:
    if len(set(xs)) != len(xs):
        raise MalformedMessageError("two shares name the same holder coordinate")
    for x in xs:
        if not 1 <= x <= MAX_HOLDER or x % prime == 0:
            raise MalformedMessageError(
                f"a holder coordinate must be in 1..{MAX_HOLDER} and nonzero in the field"
            )
