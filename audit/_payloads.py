"""Builders of event payloads from the objects the SDK and the server already hold.

They spare callers from spelling field names by hand and keep the payloads identical
across the trainer, the server and the tests. Each returns a plain dict that
`AuditLog.append` accepts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

from fedhft.policies import OrganizationPolicy, policy_hash

from .receipts import Receipt


class MechanismRecordLike(Protocol):
    """What `privacy_spend_payload` reads (the SDK's `MechanismRecord` has it)."""

    @property
    def round(self) -> int: ...
    @property
    def mechanism(self) -> str: ...
    @property
    def noise_multiplier(self) -> float: ...
    @property
    def sample_rate(self) -> float: ...
    @property
    def steps(self) -> int: ...
    @property
    def max_grad_norm(self) -> float | None: ...
    @property
    def noise_source(self) -> str: ...


def policy_loaded_payload(policy: OrganizationPolicy) -> dict[str, object]:
    """`policy_loaded`: the policy's hash (`fedhft.policies.policy_hash`) and its budget."""
    privacy = policy.privacy
    return {
        "policy_sha256": policy_hash(policy),
        "organization": policy.organization,
        "consortium": policy.consortium,
        "epsilon_budget": privacy.epsilon,
        "delta": privacy.delta,
        "accountant": privacy.accountant.value,
        "planned_rounds": privacy.planned_rounds,
    }


def round_joined_payload(round_number: int, clusters: Iterable[int]) -> dict[str, object]:
    """`round_joined`: the round and the clusters the organization contributes to."""
    return {"round": round_number, "clusters": sorted(set(clusters))}


def privacy_spend_payload(
    record: MechanismRecordLike, *, accountant: str, epsilon_after: float, delta: float
) -> dict[str, object]:
    """`privacy_spend`: one accounted release with every parameter an auditor needs.

    ``epsilon_after`` is the cumulative ε at ``delta`` after this release, under
    ``accountant``; `verify_log` recomputes it from all logged releases.
    """
    return {
        "round": record.round,
        "mechanism": str(record.mechanism),
        "accountant": str(accountant),
        "noise_multiplier": float(record.noise_multiplier),
        "sample_rate": float(record.sample_rate),
        "steps": int(record.steps),
        "max_grad_norm": None if record.max_grad_norm is None else float(record.max_grad_norm),
        "epsilon_after": float(epsilon_after),
        "delta": float(delta),
        "noise_source": str(record.noise_source),
    }


def upload_sha256(upload: bytes) -> str:
    """Hex SHA-256 of a serialized (masked) upload, as committed and receipted."""
    return hashlib.sha256(upload).hexdigest()


def update_committed_payload(
    round_number: int, cluster: int, upload_digest: str
) -> dict[str, object]:
    """`update_committed`: the hash of the masked upload about to leave."""
    return {"round": round_number, "cluster": cluster, "upload_sha256": upload_digest}


def upload_accepted_payload(receipt: Receipt) -> dict[str, object]:
    """`upload_accepted` (server log) for an upload the server has just receipted."""
    return {
        "round": receipt.round,
        "cluster": receipt.cluster,
        "organization": receipt.organization,
        "upload_sha256": receipt.upload_sha256,
        "receipt_sig": receipt.sig,
        **receipt.bound_history(),
    }


def refusal_payload(round_number: int, reason: str, **details: object) -> dict[str, object]:
    """`refusal`: why the organization did not take part (budget, incompatible config)."""
    return {"round": round_number, "reason": reason, **details}
