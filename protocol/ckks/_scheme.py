"""CKKS parameters and the key ceremony of the homomorphic secure-aggregation mode.

Implements the key material of ARCHITECTURE.md §4.2 with TenSEAL (Microsoft SEAL's CKKS scheme,
Cheon, Kim, Kim and Song, ASIACRYPT 2017): a consortium-wide CKKS context built for
*additions only*, a public copy for the aggregation server that holds the parameters and
no key at all, and the secret context sealed to each organization's X25519 sealing key
(:mod:`fedhft.protocol._sealing`).

Parameter choice. Aggregation adds fresh ciphertexts and never multiplies, so one data
prime suffices (no rescaling, no multiplicative depth), and no relinearization or Galois
key is ever shipped. TenSEAL insists on a second, "special" prime for key switching; it
only counts towards the modulus ``Q`` that sets the security level. Clients hold the
secret key anyway, so they encrypt *symmetrically* (SEAL ``encrypt_symmetric``): the
server's context needs no public key, and fresh noise is just the error polynomial.
The expansion over float32 is ``8 · (compressed size of one d-bit coefficient) / 64``
bytes per slot, independent of the ring degree ``N``: a smaller data prime ``d`` costs
fewer bytes, so :meth:`CKKSParameters.choose` picks the smallest ``d`` with room for
``max_clients · value_bound`` at the requested precision, and the smallest ``N`` whose
128-bit bound on ``log Q`` (HE security standard, Albrecht et al. 2018, Table 1, as
returned by SEAL's ``CoeffModulus::MaxBitCount``) fits ``d`` plus a special prime.

Error bound. Decrypting a sum of ``n`` fresh ciphertexts at scale ``Δ = 2^scale_bits``
returns each coordinate off by at most (worst case, guaranteed)
``n · N · (e_max + 1/2) / Δ``, where ``e_max = 21`` bounds SEAL's centered-binomial error
(and its older clipped Gaussian, 6σ = 19.2) and ``1/2`` bounds the encoder's rounding of
each coefficient; the canonical embedding sums ``N`` such terms per slot. Treating the
coefficients as independent (the usual average-case analysis, Costache et al. 2020),
the real part of a slot is sub-Gaussian with variance ``n · N/2 · (10.5 + 1/4)`` over
``Δ²``, which gives the much tighter :meth:`CKKSParameters.typical_error_bound`, exceeded
with probability below ``2^-40`` per coordinate. Sums never wrap modulo the data prime
``q``: every coefficient stays below ``q/4`` by construction of ``d``.

Assumption: the ceremony runs on a trusted machine (one organization's, or the consortium
operator's, offline) that forgets the secret context once the sealed copies are made.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import tenseal as ts
import tenseal.sealapi as seal
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .._sealing import open_sealed, seal_to
from ..errors import CKKSParametersError, DecryptionError, MalformedMessageError

SEALING_PURPOSE = "fedhft/ckks-secret-context/v1"
_PUBLIC_MAGIC = b"FHCP\x01"  # fedhft CKKS public context, format version 1
_SECRET_MAGIC = b"FHCS\x01"  # fedhft CKKS secret context (inside a sealed box), version 1
_MAX_HEADER_BYTES = 1 << 16

#: Largest error of one coefficient of SEAL's fresh-encryption noise: its centered
#: binomial sampler returns a difference of two 21-bit Hamming weights.
NOISE_MAX = 21
#: Variance of that centered binomial distribution (21 / 2).
NOISE_VARIANCE = 10.5
#: Ring degrees tried, smallest first.
_RING_DEGREES = (2048, 4096, 8192, 16384, 32768)
#: SEAL does not accept primes above 60 bits.
_MAX_PRIME_BITS = 60
#: ``sqrt(2 ln(2^41))``: a sub-Gaussian tail with two-sided probability below 2^-40.
_TAIL_FACTOR = math.sqrt(2.0 * 41.0 * math.log(2.0))


def _max_log_q(ring_degree: int) -> int:
    """The largest ``log2 Q`` for 128-bit classical security (HE standard, Table 1)."""
    return int(seal.CoeffModulus.MaxBitCount(ring_degree, seal.SEC_LEVEL_TYPE.TC128))


def _primes_exist(ring_degree: int, bit_sizes: tuple[int, ...]) -> bool:
    """Whether SEAL finds distinct NTT-friendly primes (``p ≡ 1 mod 2N``) of these sizes."""
    try:
        seal.CoeffModulus.Create(ring_degree, list(bit_sizes))
    except (RuntimeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class CKKSParameters:
    """One CKKS parameter set for additions of up to ``max_clients`` bounded vectors.

    Build it with :meth:`choose` unless you need an exact set; the constructor checks
    that the set is 128-bit secure and that a sum of ``max_clients`` inputs bounded by
    ``value_bound`` in absolute value cannot wrap around the data prime.
    """

    poly_modulus_degree: int
    data_prime_bits: int
    special_prime_bits: int
    scale_bits: int
    max_clients: int
    value_bound: float

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in _RING_DEGREES:
            raise CKKSParametersError(
                f"`poly_modulus_degree` must be one of {_RING_DEGREES}, got {n}"
            )
        for name in ("data_prime_bits", "special_prime_bits", "scale_bits", "max_clients"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CKKSParametersError(f"`{name}` must be a positive integer, got {value!r}")
        if not (math.isfinite(self.value_bound) and self.value_bound > 0):
            raise CKKSParametersError(
                f"`value_bound` must be a finite number > 0, got {self.value_bound!r}"
            )
        if max(self.data_prime_bits, self.special_prime_bits) > _MAX_PRIME_BITS:
            raise CKKSParametersError(f"prime sizes must be at most {_MAX_PRIME_BITS} bits")
        if self.log_q > _max_log_q(n):
            raise CKKSParametersError(
                f"log2 Q = {self.log_q} exceeds {_max_log_q(n)}, the 128-bit bound for "
                f"N = {n}; use fewer prime bits or a larger `poly_modulus_degree`"
            )
        if self.data_prime_bits < self.required_data_prime_bits(
            scale_bits=self.scale_bits, max_clients=self.max_clients, value_bound=self.value_bound
        ):
            raise CKKSParametersError(
                f"`data_prime_bits` = {self.data_prime_bits} leaves no room for sums of "
                f"{self.max_clients} values bounded by {self.value_bound} at scale "
                f"2^{self.scale_bits}; lower `scale_bits` or raise `data_prime_bits`"
            )
        if not _primes_exist(n, self.coeff_mod_bit_sizes):
            raise CKKSParametersError(
                f"no NTT-friendly primes of {self.coeff_mod_bit_sizes} bits exist for N = {n}"
            )

    @staticmethod
    def required_data_prime_bits(*, scale_bits: int, max_clients: int, value_bound: float) -> int:
        """Smallest data prime size keeping every coefficient of a sum below ``q/4``.

        A coefficient of the encoded sum is at most ``Δ·n·B`` (the inverse canonical
        embedding does not grow the infinity norm) plus ``n·(e_max + 1/2)`` of noise, and
        a ``d``-bit prime is at least ``2^(d-1)``; requiring ``2^(d-2)`` leaves one bit for
        the sign and one of margin. The prime also needs more bits than the scale, or SEAL
        refuses to encode at that scale (small sums of small values would otherwise ask for
        fewer).
        """
        largest = 2.0**scale_bits * max_clients * value_bound + max_clients * (NOISE_MAX + 0.5)
        return max(math.ceil(math.log2(largest)) + 2, scale_bits + 1)

    @classmethod
    def choose(
        cls, *, max_clients: int, value_bound: float, scale_bits: int = 36
    ) -> CKKSParameters:
        """The cheapest 128-bit secure set for sums of ``max_clients`` values in ±``value_bound``.

        ``scale_bits`` sets the precision: see :meth:`error_bound`. The default, 2^36,
        keeps the typical error of a 100-client sum below 2·10⁻⁷ per coordinate, under
        float32's resolution at 1.0.
        """
        if not isinstance(scale_bits, int) or not 8 <= scale_bits <= 56:
            raise CKKSParametersError(
                f"`scale_bits` must be an integer in [8, 56], got {scale_bits}"
            )
        if not isinstance(max_clients, int) or max_clients < 1:
            raise CKKSParametersError(
                f"`max_clients` must be a positive integer, got {max_clients}"
            )
        if not (math.isfinite(value_bound) and value_bound > 0):
            raise CKKSParametersError(
                f"`value_bound` must be a finite number > 0, got {value_bound}"
            )
        data_bits = cls.required_data_prime_bits(
            scale_bits=scale_bits, max_clients=max_clients, value_bound=value_bound
        )
        if data_bits > _MAX_PRIME_BITS:
            raise CKKSParametersError(
                f"sums of {max_clients} values bounded by {value_bound} at scale "
                f"2^{scale_bits} need a {data_bits}-bit prime (SEAL allows {_MAX_PRIME_BITS}); "
                f"lower `scale_bits`"
            )
        for ring_degree in _RING_DEGREES:
            # Very small sizes have no prime p ≡ 1 (mod 2N); a larger data prime only adds
            # headroom. The special prime is never used (no key switching): take the
            # largest the security budget allows, down to the smallest SEAL finds.
            for data_prime_bits in range(data_bits, _MAX_PRIME_BITS + 1):
                budget = _max_log_q(ring_degree) - data_prime_bits
                for special_bits in range(min(_MAX_PRIME_BITS, budget), 0, -1):
                    if _primes_exist(ring_degree, (data_prime_bits, special_bits)):
                        return cls(
                            poly_modulus_degree=ring_degree,
                            data_prime_bits=data_prime_bits,
                            special_prime_bits=special_bits,
                            scale_bits=scale_bits,
                            max_clients=max_clients,
                            value_bound=float(value_bound),
                        )
        raise CKKSParametersError("no 128-bit secure CKKS parameter set fits")  # unreachable

    @property
    def slots(self) -> int:
        """Values packed into one ciphertext (``N/2``)."""
        return self.poly_modulus_degree // 2

    @property
    def coeff_mod_bit_sizes(self) -> tuple[int, int]:
        """Sizes of the data prime and the special prime, in bits."""
        return (self.data_prime_bits, self.special_prime_bits)

    @property
    def log_q(self) -> int:
        """``log2 Q`` of the whole coefficient modulus (what the security level depends on)."""
        return self.data_prime_bits + self.special_prime_bits

    @property
    def security_bits(self) -> int:
        """Classical security level per the HE standard: 128 (checked at construction)."""
        return 128

    @property
    def scale(self) -> float:
        """The CKKS scale ``Δ``."""
        return float(2**self.scale_bits)

    def _check_contributors(self, contributors: int) -> None:
        if not 1 <= contributors <= self.max_clients:
            raise CKKSParametersError(
                f"`contributors` must be in [1, {self.max_clients}], got {contributors}"
            )

    def error_bound(self, contributors: int) -> float:
        """Guaranteed bound on ``|decrypted sum − true sum|`` per coordinate.

        ``n·N·(e_max + 1/2)/Δ`` plus a float64 decoding allowance ``n·B·2^-40``.
        """
        self._check_contributors(contributors)
        n = contributors
        noise = n * self.poly_modulus_degree * (NOISE_MAX + 0.5) / self.scale
        return noise + n * self.value_bound * 2.0**-40

    def typical_error_bound(self, contributors: int) -> float:
        """Bound exceeded with probability below ``2^-40`` per coordinate (average case)."""
        self._check_contributors(contributors)
        n = contributors
        deviation = math.sqrt(n * self.poly_modulus_degree / 2 * (NOISE_VARIANCE + 0.25))
        return _TAIL_FACTOR * deviation / self.scale + n * self.value_bound * 2.0**-40

    def to_json(self) -> dict[str, Any]:
        """The parameters as a JSON object (``value_bound`` round-trips exactly)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CKKSParameters:
        """Inverse of :meth:`to_json`; rejects unknown or missing fields."""
        expected = {
            "poly_modulus_degree",
            "data_prime_bits",
            "special_prime_bits",
            "scale_bits",
            "max_clients",
            "value_bound",
        }
        if not isinstance(data, Mapping) or set(data) != expected:
            raise CKKSParametersError(
                f"CKKS parameters must have exactly the fields {sorted(expected)}"
            )
        return cls(
            poly_modulus_degree=data["poly_modulus_degree"],
            data_prime_bits=data["data_prime_bits"],
            special_prime_bits=data["special_prime_bits"],
            scale_bits=data["scale_bits"],
            max_clients=data["max_clients"],
            value_bound=float(data["value_bound"]),
        )


def _build_context(parameters: CKKSParameters) -> ts.Context:
    """A fresh secret CKKS context: symmetric encryption, no Galois keys."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=parameters.poly_modulus_degree,
        coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        n_threads=1,
    )
    context.global_scale = parameters.scale
    return context


def _frame(magic: bytes, header: Mapping[str, Any], body: bytes) -> bytes:
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return magic + struct.pack(">I", len(encoded)) + encoded + body


def _unframe(magic: bytes, data: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    start = len(magic) + 4
    if not isinstance(data, bytes) or len(data) < start or data[: len(magic)] != magic:
        raise MalformedMessageError(f"{what} does not start with its format marker")
    (size,) = struct.unpack(">I", data[len(magic) : start])
    if size > _MAX_HEADER_BYTES or len(data) < start + size:
        raise MalformedMessageError(f"{what} has a truncated or oversized header")
    try:
        header = json.loads(data[start : start + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedMessageError(f"{what} has a header that is not JSON") from None
    if not isinstance(header, dict):
        raise MalformedMessageError(f"{what} header must be a JSON object")
    return header, data[start + size :]


def _header_fields(header: Mapping[str, Any], what: str) -> tuple[str, str, CKKSParameters]:
    consortium, key_id = header.get("consortium"), header.get("key_id")
    if not isinstance(consortium, str) or not isinstance(key_id, str) or len(key_id) != 32:
        raise MalformedMessageError(f"{what} header lacks a valid consortium or key id")
    try:
        parameters = CKKSParameters.from_json(header.get("parameters", {}))
    except (CKKSParametersError, TypeError, KeyError) as error:
        raise MalformedMessageError(f"{what} carries invalid parameters: {error}") from None
    return consortium, key_id, parameters


def _load_context(data: bytes, what: str) -> ts.Context:
    try:
        return ts.context_from(data, n_threads=1)
    except (ValueError, RuntimeError, TypeError):
        raise MalformedMessageError(f"{what} is not a serialized TenSEAL context") from None


def _matches(context: ts.Context, parameters: CKKSParameters) -> bool:
    """Whether a loaded context has exactly the ring degree and primes of ``parameters``."""
    seal_context = context.seal_context().data
    key_level, data_level = seal_context.key_context_data(), seal_context.first_context_data()
    return bool(
        key_level.parms().poly_modulus_degree() == parameters.poly_modulus_degree
        and data_level.chain_index() == 0
        and data_level.total_coeff_modulus_bit_count() == parameters.data_prime_bits
        and key_level.total_coeff_modulus_bit_count() == parameters.log_q
        and context.global_scale == parameters.scale
    )


class CKKSServerContext:
    """The aggregation server's CKKS context: parameters only, provably without any key.

    It can load and add ciphertexts, and nothing else: it holds no secret key (so it
    cannot decrypt), no public key (so it cannot encrypt), and no relinearization or
    Galois keys.
    """

    def __init__(
        self, *, consortium: str, key_id: str, parameters: CKKSParameters, context: ts.Context
    ) -> None:
        self.consortium = consortium
        self.key_id = key_id
        self.parameters = parameters
        self.tenseal_context = context

    @classmethod
    def from_bytes(cls, data: bytes) -> CKKSServerContext:
        """Load the public context published by :class:`CKKSCeremony`, checking it is keyless."""
        header, body = _unframe(_PUBLIC_MAGIC, data, "public CKKS context")
        consortium, key_id, parameters = _header_fields(header, "public CKKS context")
        context = _load_context(body, "public CKKS context")
        if context.is_private() or context.has_secret_key():
            raise MalformedMessageError("a public CKKS context must not contain the secret key")
        if context.has_relin_keys() or context.has_galois_keys():
            raise MalformedMessageError(
                "a public CKKS context must not contain relinearization or Galois keys"
            )
        if not _matches(context, parameters):
            raise MalformedMessageError("public CKKS context does not match its parameters")
        return cls(consortium=consortium, key_id=key_id, parameters=parameters, context=context)

    def __repr__(self) -> str:
        return f"CKKSServerContext(consortium={self.consortium!r}, key_id={self.key_id!r})"


class CKKSKeyring:
    """One organization's opened copy of the consortium's CKKS secret context.

    Notes:
        Whoever holds this object can decrypt every ciphertext of the consortium, and
        the aggregation server sees every organization's ciphertexts: the server plus
        one colluding organization learn every individual update. That is the price of
        the mode's non-interactivity; the masking mode does not have it.
    """

    def __init__(
        self,
        *,
        consortium: str,
        organization: str,
        key_id: str,
        parameters: CKKSParameters,
        context: ts.Context,
    ) -> None:
        self.consortium = consortium
        self.organization = organization
        self.key_id = key_id
        self.parameters = parameters
        self.tenseal_context = context

    @classmethod
    def open(
        cls,
        sealed: bytes,
        *,
        private_key: X25519PrivateKey,
        consortium: str,
        organization: str,
    ) -> CKKSKeyring:
        """Open this organization's sealed secret context (one opaque error on any failure)."""
        payload = open_sealed(
            private_key,
            sealed,
            purpose=SEALING_PURPOSE,
            consortium=consortium,
            organization=organization,
        )
        # The payload was authenticated by the AEAD, so a malformed one means the ceremony
        # itself was faulty; still, report it without detail.
        try:
            header, body = _unframe(_SECRET_MAGIC, payload, "sealed CKKS context")
            sealed_consortium, key_id, parameters = _header_fields(header, "sealed CKKS context")
            context = _load_context(body, "sealed CKKS context")
        except MalformedMessageError:
            raise DecryptionError("sealed payload could not be opened") from None
        if (
            sealed_consortium != consortium
            or header.get("organization") != organization
            or not context.is_private()
            or not _matches(context, parameters)
        ):
            raise DecryptionError("sealed payload could not be opened")
        return cls(
            consortium=consortium,
            organization=organization,
            key_id=key_id,
            parameters=parameters,
            context=context,
        )

    def __repr__(self) -> str:
        return (
            f"CKKSKeyring(consortium={self.consortium!r}, organization={self.organization!r}, "
            f"key_id={self.key_id!r})"
        )


@dataclass(frozen=True)
class CKKSCeremony:
    """The output of the consortium's CKKS key ceremony: one public context, sealed keys.

    ``public_context`` goes to the aggregation server; ``sealed_keys[org]`` to organization
    ``org``, which opens it with :meth:`CKKSKeyring.open` and its sealing private key.
    ``key_id`` (random, public) names this key generation in every session.
    """

    consortium: str
    key_id: str
    parameters: CKKSParameters
    public_context: bytes
    sealed_keys: Mapping[str, bytes]

    @classmethod
    def create(
        cls,
        *,
        consortium: str,
        sealing_keys: Mapping[str, X25519PublicKey],
        parameters: CKKSParameters,
    ) -> CKKSCeremony:
        """Generate a fresh secret context and seal it to every organization's sealing key.

        ``sealing_keys`` maps organization ids to X25519 public keys obtained
        authentically (enrollment). The secret context exists only inside this call.
        """
        if not isinstance(consortium, str) or not consortium:
            raise CKKSParametersError("`consortium` must be a non-empty string")
        if not sealing_keys:
            raise CKKSParametersError("`sealing_keys` must name at least one organization")
        for organization, key in sealing_keys.items():
            if not isinstance(organization, str) or not organization:
                raise CKKSParametersError("organization ids must be non-empty strings")
            if not isinstance(key, X25519PublicKey):
                raise CKKSParametersError(
                    f"sealing key of {organization!r} must be an X25519PublicKey, "
                    f"got {type(key).__name__}"
                )
        key_id = os.urandom(16).hex()
        context = _build_context(parameters)
        header = {"consortium": consortium, "key_id": key_id, "parameters": parameters.to_json()}
        public = _frame(
            _PUBLIC_MAGIC,
            header,
            context.serialize(
                save_public_key=False,
                save_secret_key=False,
                save_galois_keys=False,
                save_relin_keys=False,
            ),
        )
        secret_body = context.serialize(
            save_public_key=False,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        sealed = {
            organization: seal_to(
                key,
                _frame(_SECRET_MAGIC, {**header, "organization": organization}, secret_body),
                purpose=SEALING_PURPOSE,
                consortium=consortium,
                organization=organization,
            )
            for organization, key in sorted(sealing_keys.items())
        }
        return cls(
            consortium=consortium,
            key_id=key_id,
            parameters=parameters,
            public_context=public,
            sealed_keys=MappingProxyType(sealed),
        )
