"""Builders of event payloads: the one place that spells each event's fields.

Every payload fedhft writes to an audit log is built here, one function per event type,
from the objects the SDK, the server and the log already hold, so the trainer, the
server, the log writer and the tests cannot drift apart, and `audit/FORMAT.md` has one
source in code. Each returns a plain dict that `AuditLog.append` accepts:

=====================  =====================================================
event                  builder
=====================  =====================================================
`policy_loaded`        `policy_loaded_payload`
`round_joined`         `round_joined_payload`
`privacy_spend`        `privacy_spend_payload`
`update_committed`     `update_committed_payload`
`aggregation_receipt`  `aggregation_receipt_payload` (through
                       `receipts.aggregation_receipt_from_wire` and
                       `Receipt.to_payload`, which read the receipt)
`refusal`              `refusal_payload`
`key_event`            `key_event_payload`
`log_repaired`         `log_repaired_payload`
`upload_accepted`      `upload_accepted_payload` (and
                       `receipts.upload_accepted_from_wire` for a wire receipt)
`round_aggregated`     `round_aggregated_payload`
`sum_rejected`         `sum_rejected_payload`
=====================  =====================================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from fedhft.policies import OrganizationPolicy, policy_hash

from ._canonical import JSONValue

if TYPE_CHECKING:
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


def aggregation_receipt_payload(
    *,
    round_number: int,
    cluster: int,
    organization: str,
    upload_sha256: str,
    server: str,
    receipt_sig: str,
    sid: str | None = None,
    receipt_statement: str | None = None,
    bound_history: Mapping[str, JSONValue] | None = None,
) -> dict[str, JSONValue]:
    """`aggregation_receipt`: the server's receipt for one upload, as the client logs it.

    ``server`` is the fingerprint of the key that signed; ``receipt_statement`` (hex) is
    present for a wire receipt only; ``bound_history`` holds the uploader's log head and
    round spend the receipt binds (`audit_head_sha256`, `spend_sha256`, those present).
    """
    payload: dict[str, JSONValue] = {
        "round": round_number,
        "cluster": cluster,
        "organization": organization,
        "upload_sha256": upload_sha256,
        "server": server,
        "receipt_sig": receipt_sig,
    }
    if receipt_statement is not None:
        payload["receipt_statement"] = receipt_statement
    if sid is not None:
        payload["sid"] = sid
    payload.update(bound_history or {})
    return payload


def upload_accepted_payload(receipt: Receipt) -> dict[str, JSONValue]:
    """`upload_accepted` (server log) for an upload the server has just receipted."""
    return upload_accepted_fields(
        round_number=receipt.round,
        cluster=receipt.cluster,
        organization=receipt.organization,
        upload_sha256=receipt.upload_sha256,
        receipt_sig=receipt.sig,
        bound_history=receipt.bound_history(),
    )


def upload_accepted_fields(
    *,
    round_number: int,
    cluster: int,
    organization: str,
    upload_sha256: str,
    receipt_sig: str,
    sid: str | None = None,
    bound_history: Mapping[str, JSONValue] | None = None,
) -> dict[str, JSONValue]:
    """`upload_accepted` from its fields (what `upload_accepted_payload` and
    `receipts.upload_accepted_from_wire` read off their receipts)."""
    payload: dict[str, JSONValue] = {
        "round": round_number,
        "cluster": cluster,
        "organization": organization,
        "upload_sha256": upload_sha256,
        "receipt_sig": receipt_sig,
    }
    if sid is not None:
        payload["sid"] = sid
    payload.update(bound_history or {})
    return payload


def refusal_payload(round_number: int, reason: str, **details: object) -> dict[str, object]:
    """`refusal`: why the organization did not take part (budget, incompatible config)."""
    return {"round": round_number, "reason": reason, **details}


def key_event_payload(kind: str, fingerprint: str, **details: object) -> dict[str, object]:
    """`key_event`: a key was enrolled or changed; ``fingerprint`` is the key's hash
    (`key_fingerprint`), never the key."""
    return {"kind": kind, "fingerprint": fingerprint, **details}


def log_repaired_payload(
    *, truncated_bytes: int, truncated_sha256: str, offset: int
) -> dict[str, object]:
    """`log_repaired`: the torn tail the log writer cut off when it reopened the log."""
    return {
        "truncated_bytes": truncated_bytes,
        "truncated_sha256": truncated_sha256,
        "offset": offset,
    }


def round_aggregated_payload(
    round_number: int, cluster: int, *, attempt: int, survivors: int
) -> dict[str, object]:
    """`round_aggregated` (server log): one cluster's sum applied, and how many
    organizations it adds up."""
    return {"round": round_number, "cluster": cluster, "attempt": attempt, "survivors": survivors}


def sum_rejected_payload(
    round_number: int, cluster: int, *, attempt: int, block: str, bound: str
) -> dict[str, object]:
    """`sum_rejected` (server log): a sum refused by a bound; names the block and the
    bound, never a value."""
    return {
        "round": round_number,
        "cluster": cluster,
        "attempt": attempt,
        "block": block,
        "bound": bound,
    }
