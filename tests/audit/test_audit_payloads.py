"""Payload builders (`_payloads.py`): the one spelling of every event's fields."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_audit_log import KAT_FILE_SHA256, KAT_LINES, KAT_SEED

from fedhft.accounting import MechanismRecord
from fedhft.audit import (
    AuditLog,
    EventType,
    aggregation_receipt_payload,
    key_event_payload,
    log_repaired_payload,
    policy_loaded_payload,
    prepare_payload,
    privacy_spend_payload,
    refusal_payload,
    round_aggregated_payload,
    round_joined_payload,
    sum_rejected_payload,
    update_committed_payload,
    upload_accepted_payload,
)
from fedhft.audit import sign_receipt as sign_json_receipt
from fedhft.policies import load_organization_policy

HEX64 = "ab" * 32


def test_builders_write_the_known_answer_log_byte_for_byte(tmp_path: Path) -> None:
    """The builders, fed the known-answer values, give exactly the committed known-answer
    lines: building a payload through them changes no byte of the log."""
    key = Ed25519PrivateKey.from_private_bytes(KAT_SEED)
    times = iter(
        [
            datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC),
            datetime(2025, 1, 1, 0, 0, 1, 500000, tzinfo=UTC),
            datetime(2025, 1, 1, 0, 0, 2, tzinfo=UTC),
        ]
    )
    record = MechanismRecord(
        round=0,
        mechanism="dp-sgd",
        noise_multiplier=1.1,
        sample_rate=0.01,
        steps=20,
        max_grad_norm=1.0,
        noise_source="secure",
    )
    path = tmp_path / "kat.jsonl"
    with AuditLog.open(path, party_id="kat-org", signing_key=key, clock=lambda: next(times)) as log:
        log.append(EventType.ROUND_JOINED, round_joined_payload(0, [0]))
        log.append(
            EventType.PRIVACY_SPEND,
            privacy_spend_payload(
                record, accountant="rdp", epsilon_after=0.8535025542436351, delta=1e-5
            ),
        )
        log.append(EventType.REFUSAL, refusal_payload(1, "budget: ε would reach 4.2 > 4"))
    data = path.read_bytes()
    assert data.split(b"\n") == [*KAT_LINES, b""]
    assert hashlib.sha256(data).hexdigest() == KAT_FILE_SHA256


def _builders() -> dict[str, Callable[[], dict[str, object]]]:
    server_key = Ed25519PrivateKey.generate()
    receipt = sign_json_receipt(
        server_key, round=3, cluster=1, organization="st-mary", upload_sha256=HEX64
    )
    record = MechanismRecord(
        round=3,
        mechanism="gaussian",
        noise_multiplier=6.0,
        sample_rate=1.0,
        steps=1,
        noise_source="pseudo",
    )
    return {
        EventType.POLICY_LOADED: lambda: policy_loaded_payload(
            load_organization_policy(_example_policy())
        ),
        EventType.ROUND_JOINED: lambda: round_joined_payload(3, [1, 0, 1]),
        EventType.PRIVACY_SPEND: lambda: privacy_spend_payload(
            record, accountant="prv", epsilon_after=0.5, delta=1e-6
        ),
        EventType.UPDATE_COMMITTED: lambda: update_committed_payload(3, 1, HEX64),
        EventType.AGGREGATION_RECEIPT: lambda: aggregation_receipt_payload(
            round_number=3,
            cluster=1,
            organization="st-mary",
            upload_sha256=HEX64,
            server=HEX64,
            receipt_sig="cd" * 64,
            sid="00ff",
        ),
        EventType.REFUSAL: lambda: refusal_payload(3, "privacy budget exhausted", spent=1.0),
        EventType.KEY_EVENT: lambda: key_event_payload(
            "organization_enrolled", HEX64, organization="st-mary"
        ),
        EventType.LOG_REPAIRED: lambda: log_repaired_payload(
            truncated_bytes=17, truncated_sha256=HEX64, offset=4096
        ),
        EventType.UPLOAD_ACCEPTED: lambda: upload_accepted_payload(receipt),
        EventType.ROUND_AGGREGATED: lambda: round_aggregated_payload(3, 1, attempt=0, survivors=4),
        EventType.SUM_REJECTED: lambda: sum_rejected_payload(
            3, 1, attempt=0, block="lora.B", bound="n·clip"
        ),
    }


def _example_policy() -> Path:
    import fedhft.policies

    return Path(fedhft.policies.__file__).parent / "examples" / "glen-clinic.yaml"


def test_every_event_type_has_a_builder() -> None:
    """Each event type fedhft writes is built by a builder, not spelled at a call site."""
    assert set(_builders()) == set(EventType)


@pytest.mark.parametrize("event", sorted(EventType))
def test_each_builder_gives_a_payload_its_event_accepts(event: EventType) -> None:
    """A builder's payload carries every field its event requires, of the right kind."""
    prepare_payload(event, _builders()[event]())
