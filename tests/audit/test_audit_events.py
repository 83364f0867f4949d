"""Payload hygiene and event schemas: nothing secret, nothing non-JSON, nothing missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedhft.audit import AuditPayloadError, EventType, SecretPayloadError, is_secret_name
from fedhft.audit._events import prepare_payload

SPEND = {
    "round": 0,
    "mechanism": "dp-sgd",
    "accountant": "rdp",
    "noise_multiplier": 1.1,
    "sample_rate": 0.01,
    "steps": 20,
    "max_grad_norm": 1.0,
    "epsilon_after": 0.85,
    "delta": 1e-5,
    "noise_source": "secure",
}


@pytest.mark.parametrize(
    "name",
    [
        "signing_key",
        "privateKey",
        "mask-seed",
        "self_mask_share",
        "shares",
        "secret",
        "gradients",
        "per_sample_gradient",
        "private_data",
        "password",
        "aead_nonce",
        "plaintext",
        "raw_records",
        "KEY",
    ],
)
def test_secret_looking_field_names_are_refused(name: str) -> None:
    """A field named like a key, share, seed, gradient or raw data is refused, and the
    error names the field but never echoes its value."""
    secret_value = "c2VjcmV0LWJ5dGVz-do-not-log"  # noqa: S105 - a marker, not a credential
    with pytest.raises(SecretPayloadError) as caught:
        prepare_payload("refusal", {"round": 1, "reason": "x", name: secret_value})
    assert name in str(caught.value)
    assert secret_value not in str(caught.value)


def test_secret_names_are_refused_in_nested_objects_too() -> None:
    """Nested objects and lists of objects are searched for secret-looking names."""
    with pytest.raises(SecretPayloadError, match=r"payload\.details\[0\]\.share"):
        prepare_payload("refusal", {"round": 1, "reason": "x", "details": [{"share": 3}]})


@pytest.mark.parametrize("name", ["fingerprint", "key_fingerprint", "server_key_fingerprint"])
def test_fingerprints_are_allowed(name: str) -> None:
    """A public-key fingerprint is a hash, not a secret: names with `fingerprint` pass."""
    assert not is_secret_name(name)
    prepare_payload("key_event", {"kind": "rotated", "fingerprint": "a" * 64, name: "b" * 64})


def test_public_names_used_by_fedhft_are_not_flagged() -> None:
    """Every field of fedhft's own events passes the secret-name rule."""
    for name in [*SPEND, "upload_sha256", "receipt_sig", "policy_sha256", "clusters", "server"]:
        assert not is_secret_name(name), name


def test_tensor_like_arrays_are_refused() -> None:
    """A long array of numbers looks like a gradient or an update and is refused."""
    with pytest.raises(SecretPayloadError, match="looks like a tensor"):
        prepare_payload("refusal", {"round": 1, "reason": "x", "values": list(range(65))})
    prepare_payload("refusal", {"round": 1, "reason": "x", "values": list(range(64))})


@pytest.mark.parametrize(
    "value",
    [b"bytes", {1, 2}, np.zeros(3), torch.zeros(2), np.float32(1.0), float("nan"), 2**53 + 1],
)
def test_values_that_are_not_plain_json_are_refused(value: object) -> None:
    """Bytes, sets, arrays, tensors, float32, NaN and integers beyond 2**53 are refused
    with a typed error naming the field."""
    with pytest.raises(AuditPayloadError, match="extra"):
        prepare_payload("refusal", {"round": 1, "reason": "x", "extra": value})


def test_oversized_strings_are_refused() -> None:
    """Strings over 2048 characters are refused (log a hash of large content)."""
    with pytest.raises(AuditPayloadError, match="2048"):
        prepare_payload("refusal", {"round": 1, "reason": "x" * 2049})


@pytest.mark.parametrize("missing", sorted(SPEND))
def test_privacy_spend_requires_every_mechanism_parameter(missing: str) -> None:
    """A privacy_spend without any one of its parameters is refused, naming it."""
    payload = {k: v for k, v in SPEND.items() if k != missing}
    with pytest.raises(AuditPayloadError, match=f"`{missing}`"):
        prepare_payload(EventType.PRIVACY_SPEND, payload)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
        ("noise_multiplier", -1.0),
        ("steps", 0),
        ("steps", 2.5),
        ("delta", 1.0),
        ("mechanism", "laplace"),
        ("accountant", "moments"),
        ("noise_source", "urandom"),
        ("epsilon_after", -0.1),
        ("round", -1),
    ],
)
def test_privacy_spend_parameters_out_of_range_are_refused(field: str, value: object) -> None:
    """Out-of-range mechanism parameters are refused with the allowed range."""
    with pytest.raises(AuditPayloadError, match=f"`{field}` must be"):
        prepare_payload(EventType.PRIVACY_SPEND, {**SPEND, field: value})


def test_gaussian_release_may_omit_the_clipping_norm_but_dp_sgd_may_not() -> None:
    """`max_grad_norm: null` is allowed for a Gaussian release and refused for DP-SGD."""
    gaussian = {**SPEND, "mechanism": "gaussian", "sample_rate": 1.0, "steps": 1}
    prepare_payload(EventType.PRIVACY_SPEND, {**gaussian, "max_grad_norm": None})
    with pytest.raises(AuditPayloadError, match="max_grad_norm"):
        prepare_payload(EventType.PRIVACY_SPEND, {**SPEND, "max_grad_norm": None})


@pytest.mark.parametrize("event", ["Round Joined", "", "1st", "a" * 64, "x-y"])
def test_malformed_event_types_are_refused(event: str) -> None:
    """Event types must be short snake_case names."""
    with pytest.raises(AuditPayloadError, match="event type"):
        prepare_payload(event, {})


def test_payload_comes_back_as_it_will_read_from_disk() -> None:
    """Tuples become lists, enums plain strings, 1.0 becomes 1: what is signed is what
    an auditor will read."""
    from fedhft.policies import NoiseSource

    plain = prepare_payload(
        EventType.PRIVACY_SPEND, {**SPEND, "noise_source": NoiseSource.SECURE, "max_grad_norm": 1.0}
    )
    assert plain["noise_source"] == "secure" and type(plain["noise_source"]) is str
    assert plain["max_grad_norm"] == 1 and type(plain["max_grad_norm"]) is int
    clusters = prepare_payload(EventType.ROUND_JOINED, {"round": 0, "clusters": (0, 2)})["clusters"]
    assert clusters == [0, 2]


@given(st.text(min_size=1, max_size=20))
def test_names_containing_key_are_always_refused_unless_fingerprints(name: str) -> None:
    """Law: any name containing `key` (any case, any separators) is secret unless it
    contains `fingerprint`."""
    candidate = f"{name}_Key"
    assert is_secret_name(candidate) or "fingerprint" in candidate.lower()
