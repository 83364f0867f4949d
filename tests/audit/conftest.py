"""Fixtures of the audit tests: fixed identity keys, a policy and an honest federation."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_helpers import Federation, fixed_key, make_policy, write_federation
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedhft.policies import OrganizationPolicy


@pytest.fixture
def client_key() -> Ed25519PrivateKey:
    """St Mary's identity key (fixed seed)."""
    return fixed_key("client:st-mary-hospital")


@pytest.fixture
def server_key() -> Ed25519PrivateKey:
    """The aggregation server's identity key (fixed seed)."""
    return fixed_key("server:aggregator")


@pytest.fixture
def policy() -> OrganizationPolicy:
    """St Mary's policy: RDP, ε = 4, δ = 1e-5."""
    return make_policy()


@pytest.fixture
def federation(
    tmp_path: Path,
    client_key: Ed25519PrivateKey,
    server_key: Ed25519PrivateKey,
    policy: OrganizationPolicy,
) -> Federation:
    """The client and server logs of an honest three-round run."""
    return write_federation(tmp_path, client_key, server_key, policy)
