"""Tests of the CKKS parameter choice and key ceremony (public server context, sealed keys)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as seal
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedhft.protocol.ckks._scheme import (
    CKKSCeremony,
    CKKSKeyring,
    CKKSParameters,
    CKKSServerContext,
    _frame,
    _unframe,
)
from fedhft.protocol.errors import CKKSParametersError, DecryptionError, MalformedMessageError

OPAQUE = r"^sealed payload could not be opened$"
ORGS = ("bank-a", "clinic-b", "insurer-c")


@pytest.fixture(scope="module")
def sealing_keys() -> dict[str, X25519PrivateKey]:
    """Each organization's X25519 sealing key pair."""
    return {org: X25519PrivateKey.generate() for org in ORGS}


@pytest.fixture(scope="module")
def parameters() -> CKKSParameters:
    """Small parameters: up to 8 clients with values in ±1."""
    return CKKSParameters.choose(max_clients=8, value_bound=1.0, scale_bits=30)


@pytest.fixture(scope="module")
def ceremony(sealing_keys: dict[str, X25519PrivateKey], parameters: CKKSParameters) -> CKKSCeremony:
    """One key ceremony for the three organizations."""
    return CKKSCeremony.create(
        consortium="consortium-a",
        sealing_keys={org: key.public_key() for org, key in sealing_keys.items()},
        parameters=parameters,
    )


def _keyring(
    ceremony: CKKSCeremony, sealing_keys: dict[str, X25519PrivateKey], org: str
) -> CKKSKeyring:
    return CKKSKeyring.open(
        ceremony.sealed_keys[org],
        private_key=sealing_keys[org],
        consortium="consortium-a",
        organization=org,
    )


# --------------------------------------------------------------------------- parameters


def test_default_choice_is_the_documented_set() -> None:
    """100 clients in ±1 at scale 2^36 get N = 4096 and a 45-bit data prime (128-bit)."""
    chosen = CKKSParameters.choose(max_clients=100, value_bound=1.0)
    assert (chosen.poly_modulus_degree, chosen.data_prime_bits) == (4096, 45)
    assert chosen.log_q <= 109  # HE standard, Table 1: N = 4096, 128-bit classical.
    assert chosen.slots == 2048
    assert chosen.typical_error_bound(100) < 2e-7


@given(
    max_clients=st.integers(1, 5000),
    value_bound=st.floats(1e-3, 1e3),
    scale_bits=st.integers(8, 56),
)
# Found by Hypothesis: a one-client sum of values ≤ 1e-3 asked for a prime smaller than
# the scale, at which SEAL cannot encode.
@example(max_clients=1, value_bound=1e-3, scale_bits=20)
@settings(max_examples=60, deadline=None)
def test_choice_is_secure_and_cannot_wrap(
    max_clients: int, value_bound: float, scale_bits: int
) -> None:
    """Every chosen set is 128-bit secure and keeps a full sum's coefficients below q/4."""
    try:
        chosen = CKKSParameters.choose(
            max_clients=max_clients, value_bound=value_bound, scale_bits=scale_bits
        )
    except CKKSParametersError:
        # Only refused when the sum truly needs a prime above SEAL's 60 bits.
        needed = CKKSParameters.required_data_prime_bits(
            scale_bits=scale_bits, max_clients=max_clients, value_bound=value_bound
        )
        assert needed > 60
        return
    max_log_q = seal.CoeffModulus.MaxBitCount(chosen.poly_modulus_degree, seal.SEC_LEVEL_TYPE.TC128)
    assert chosen.log_q <= max_log_q
    largest = chosen.scale * max_clients * value_bound + max_clients * 21.5
    assert largest < 2.0 ** (chosen.data_prime_bits - 2)
    assert chosen.scale_bits < chosen.data_prime_bits <= 60


def test_insecure_modulus_rejected() -> None:
    """A coefficient modulus above the 128-bit bound for its ring degree is refused."""
    with pytest.raises(CKKSParametersError, match="128-bit"):
        CKKSParameters(
            poly_modulus_degree=2048,
            data_prime_bits=40,
            special_prime_bits=20,
            scale_bits=30,
            max_clients=4,
            value_bound=1.0,
        )


def test_data_prime_without_headroom_rejected() -> None:
    """A data prime too small for max_clients · value_bound · scale is refused, not wrapped."""
    with pytest.raises(CKKSParametersError, match="no room"):
        CKKSParameters(
            poly_modulus_degree=4096,
            data_prime_bits=40,
            special_prime_bits=40,
            scale_bits=38,
            max_clients=100,
            value_bound=1.0,
        )


def test_sum_needing_a_huge_prime_rejected() -> None:
    """A precision/bound combination needing a prime above 60 bits is refused by name."""
    with pytest.raises(CKKSParametersError, match="scale_bits"):
        CKKSParameters.choose(max_clients=1000, value_bound=1000.0, scale_bits=50)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_clients", 0), ("value_bound", math.nan), ("value_bound", -1.0), ("scale_bits", 4)],
)
def test_bad_choice_arguments_rejected(field: str, value: float) -> None:
    """Non-positive counts, NaN or negative bounds and absurd scales are refused by name."""
    arguments: dict[str, float] = {"max_clients": 10, "value_bound": 1.0, "scale_bits": 36}
    arguments[field] = value
    with pytest.raises(CKKSParametersError, match=field):
        CKKSParameters.choose(**arguments)  # type: ignore[arg-type]


def test_parameters_json_round_trip(parameters: CKKSParameters) -> None:
    """Parameters survive JSON exactly; unknown fields are refused."""
    assert CKKSParameters.from_json(parameters.to_json()) == parameters
    with pytest.raises(CKKSParametersError, match="exactly the fields"):
        CKKSParameters.from_json({**parameters.to_json(), "extra": 1})


def test_error_bounds_are_ordered_and_grow_with_clients(parameters: CKKSParameters) -> None:
    """The average-case bound is below the guaranteed one; both grow with the cohort."""
    for n in (1, 4, 8):
        assert 0 < parameters.typical_error_bound(n) < parameters.error_bound(n)
    assert parameters.error_bound(8) > parameters.error_bound(4)
    with pytest.raises(CKKSParametersError):
        parameters.error_bound(9)


# --------------------------------------------------------------------------- ceremony


def test_server_context_has_no_key(ceremony: CKKSCeremony) -> None:
    """The server's context holds no secret, relinearization or Galois key and is public."""
    server = CKKSServerContext.from_bytes(ceremony.public_context)
    context = server.tenseal_context
    assert not context.is_private()
    assert context.is_public()
    assert not context.has_secret_key()
    assert not context.has_relin_keys()
    assert not context.has_galois_keys()
    # Parameters only: far smaller than one secret key (N coefficients per prime).
    assert len(ceremony.public_context) < 1024


def test_server_cannot_decrypt_or_encrypt(
    ceremony: CKKSCeremony, sealing_keys: dict[str, X25519PrivateKey]
) -> None:
    """A ciphertext loaded under the server's context cannot be decrypted, nor can it encrypt."""
    keyring = _keyring(ceremony, sealing_keys, "bank-a")
    data = ts.ckks_vector(keyring.tenseal_context, [0.25, -0.5]).serialize()
    server = CKKSServerContext.from_bytes(ceremony.public_context)
    loaded = ts.ckks_vector_from(server.tenseal_context, data)
    with pytest.raises(ValueError, match="secret"):
        loaded.decrypt()
    with pytest.raises(ValueError, match="encryption"):
        ts.ckks_vector(server.tenseal_context, [1.0])


def test_organizations_share_one_secret_key(
    ceremony: CKKSCeremony, sealing_keys: dict[str, X25519PrivateKey]
) -> None:
    """What one organization encrypts another decrypts (to within the error bound)."""
    alice = _keyring(ceremony, sealing_keys, "bank-a")
    bob = _keyring(ceremony, sealing_keys, "clinic-b")
    values = np.linspace(-1, 1, 100)
    data = ts.ckks_vector(alice.tenseal_context, values).serialize()
    decrypted = np.array(ts.ckks_vector_from(bob.tenseal_context, data).decrypt())
    assert np.max(np.abs(decrypted - values)) <= ceremony.parameters.typical_error_bound(1)
    assert alice.key_id == bob.key_id == ceremony.key_id


def test_each_ceremony_makes_a_new_key(
    ceremony: CKKSCeremony,
    sealing_keys: dict[str, X25519PrivateKey],
    parameters: CKKSParameters,
) -> None:
    """A second ceremony's key does not decrypt the first one's ciphertexts."""
    other = CKKSCeremony.create(
        consortium="consortium-a",
        sealing_keys={org: key.public_key() for org, key in sealing_keys.items()},
        parameters=parameters,
    )
    assert other.key_id != ceremony.key_id
    first = _keyring(ceremony, sealing_keys, "bank-a")
    second = _keyring(other, sealing_keys, "bank-a")
    values = np.full(64, 0.5)
    data = ts.ckks_vector(first.tenseal_context, values).serialize()
    wrong = np.array(ts.ckks_vector_from(second.tenseal_context, data).decrypt())
    assert np.max(np.abs(wrong - values)) > 1.0


def test_sealed_key_opens_only_for_its_organization(
    ceremony: CKKSCeremony, sealing_keys: dict[str, X25519PrivateKey]
) -> None:
    """Another organization's private key, or another organization name, fails opaquely."""
    sealed = ceremony.sealed_keys["bank-a"]
    attempts = [
        {"private_key": sealing_keys["clinic-b"], "organization": "bank-a"},
        {"private_key": sealing_keys["bank-a"], "organization": "clinic-b"},
        {"private_key": X25519PrivateKey.generate(), "organization": "bank-a"},
    ]
    for attempt in attempts:
        with pytest.raises(DecryptionError, match=OPAQUE):
            CKKSKeyring.open(sealed, consortium="consortium-a", **attempt)  # type: ignore[arg-type]
    with pytest.raises(DecryptionError, match=OPAQUE):
        CKKSKeyring.open(
            sealed,
            private_key=sealing_keys["bank-a"],
            consortium="consortium-b",
            organization="bank-a",
        )


@pytest.mark.parametrize("position", [0, 6, 40, 1000, -17, -1])
def test_flipped_bit_in_sealed_key_fails(
    ceremony: CKKSCeremony, sealing_keys: dict[str, X25519PrivateKey], position: int
) -> None:
    """A flipped bit anywhere in the sealed secret context fails with the one opaque error."""
    tampered = bytearray(ceremony.sealed_keys["insurer-c"])
    tampered[position] ^= 0x10
    with pytest.raises(DecryptionError, match=OPAQUE):
        CKKSKeyring.open(
            bytes(tampered),
            private_key=sealing_keys["insurer-c"],
            consortium="consortium-a",
            organization="insurer-c",
        )


def test_keyring_repr_has_no_secret(
    ceremony: CKKSCeremony, sealing_keys: dict[str, X25519PrivateKey]
) -> None:
    """A keyring's repr names the organization and key id, and nothing else."""
    keyring = _keyring(ceremony, sealing_keys, "bank-a")
    assert repr(keyring) == (
        f"CKKSKeyring(consortium='consortium-a', organization='bank-a', key_id='{ceremony.key_id}')"
    )


def test_public_context_with_secret_key_rejected(
    ceremony: CKKSCeremony, sealing_keys: dict[str, X25519PrivateKey]
) -> None:
    """A "public" context that smuggles the secret key in is refused by the server."""
    keyring = _keyring(ceremony, sealing_keys, "bank-a")
    header = {
        "consortium": "consortium-a",
        "key_id": ceremony.key_id,
        "parameters": ceremony.parameters.to_json(),
    }
    leaky = _frame(
        b"FHCP\x01",
        header,
        keyring.tenseal_context.serialize(save_secret_key=True, save_relin_keys=False),
    )
    with pytest.raises(MalformedMessageError, match="secret key"):
        CKKSServerContext.from_bytes(leaky)


def test_public_context_with_other_parameters_rejected(ceremony: CKKSCeremony) -> None:
    """A public context whose header disagrees with its TenSEAL parameters is refused."""
    header, body = _unframe(b"FHCP\x01", ceremony.public_context, "public CKKS context")
    other = CKKSParameters.choose(max_clients=8, value_bound=1.0, scale_bits=36)
    assert other.poly_modulus_degree != ceremony.parameters.poly_modulus_degree
    forged = _frame(b"FHCP\x01", {**header, "parameters": other.to_json()}, body)
    with pytest.raises(MalformedMessageError, match="does not match"):
        CKKSServerContext.from_bytes(forged)


@pytest.mark.parametrize("garbage", [b"", b"FHCP\x01", b"FHCP\x01\x00\x00\x00\x02{}", b"xx" * 40])
def test_garbage_public_context_rejected(garbage: bytes) -> None:
    """Truncated or foreign bytes are a typed MalformedMessageError, never a crash."""
    with pytest.raises(MalformedMessageError):
        CKKSServerContext.from_bytes(garbage)


def test_ceremony_rejects_bad_sealing_key(parameters: CKKSParameters) -> None:
    """A sealing key that is not an X25519 public key is refused, naming the organization."""
    with pytest.raises(CKKSParametersError, match="bank-a"):
        CKKSCeremony.create(
            consortium="consortium-a",
            sealing_keys={"bank-a": b"not a key"},  # type: ignore[dict-item]
            parameters=parameters,
        )
