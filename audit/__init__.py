"""Signed, hash-chained audit logs and their independent verification (ARCHITECTURE.md §6).

Each party appends events to its own log with `AuditLog`; the aggregation server signs a
`Receipt` for every accepted upload; an auditor runs `verify_log` (or `fedhft audit
verify`) on the exported logs and `fedhft audit report` for a compliance report. The
log format is specified in `audit/FORMAT.md` so that others can verify without fedhft.
"""

from ._canonical import canonical_json as canonical_json
from ._canonical import sha256_hex as sha256_hex
from ._chain import ChainResult as ChainResult
from ._chain import check_chain as check_chain
from ._events import EventType as EventType
from ._events import is_secret_name as is_secret_name
from ._events import payload_problems as payload_problems
from ._events import prepare_payload as prepare_payload
from ._findings import Check as Check
from ._findings import EpsilonPoint as EpsilonPoint
from ._findings import Finding as Finding
from ._findings import Severity as Severity
from ._findings import VerificationReport as VerificationReport
from ._keys import PartyKey as PartyKey
from ._keys import find_party_key as find_party_key
from ._keys import find_server_key as find_server_key
from ._keys import key_fingerprint as key_fingerprint
from ._keys import load_public_key as load_public_key
from ._log import AuditLog as AuditLog
from ._payloads import MechanismRecordLike as MechanismRecordLike
from ._payloads import aggregation_receipt_payload as aggregation_receipt_payload
from ._payloads import key_event_payload as key_event_payload
from ._payloads import log_repaired_payload as log_repaired_payload
from ._payloads import policy_loaded_payload as policy_loaded_payload
from ._payloads import privacy_spend_payload as privacy_spend_payload
from ._payloads import refusal_payload as refusal_payload
from ._payloads import round_aggregated_payload as round_aggregated_payload
from ._payloads import round_joined_payload as round_joined_payload
from ._payloads import sum_rejected_payload as sum_rejected_payload
from ._payloads import update_committed_payload as update_committed_payload
from ._payloads import upload_accepted_payload as upload_accepted_payload
from ._payloads import upload_sha256 as upload_sha256
from ._recompute import MechanismUse as MechanismUse
from ._recompute import epsilon_tolerance as epsilon_tolerance
from ._recompute import recompute_epsilon as recompute_epsilon
from ._record import GENESIS_PREV as GENESIS_PREV
from ._record import Record as Record
from ._record import parse_time as parse_time
from ._record import sign_record as sign_record
from ._report import build_report as build_report
from ._report import write_report as write_report
from ._verify import verify_log as verify_log
from .errors import AuditError as AuditError
from .errors import AuditLogError as AuditLogError
from .errors import AuditPayloadError as AuditPayloadError
from .errors import AuditVerificationError as AuditVerificationError
from .errors import KeyLoadError as KeyLoadError
from .errors import ReceiptError as ReceiptError
from .errors import SecretPayloadError as SecretPayloadError
from .errors import TornTailError as TornTailError
from .receipts import Receipt as Receipt
from .receipts import aggregation_receipt_from_wire as aggregation_receipt_from_wire
from .receipts import sign_receipt as sign_receipt
from .receipts import upload_accepted_from_wire as upload_accepted_from_wire
from .receipts import verify_receipt as verify_receipt
from .receipts import verify_receipt_payload as verify_receipt_payload

__all__ = [
    "GENESIS_PREV",
    "AuditError",
    "AuditLog",
    "AuditLogError",
    "AuditPayloadError",
    "AuditVerificationError",
    "ChainResult",
    "Check",
    "EpsilonPoint",
    "EventType",
    "Finding",
    "KeyLoadError",
    "MechanismRecordLike",
    "MechanismUse",
    "PartyKey",
    "Receipt",
    "ReceiptError",
    "Record",
    "SecretPayloadError",
    "Severity",
    "TornTailError",
    "VerificationReport",
    "aggregation_receipt_from_wire",
    "aggregation_receipt_payload",
    "build_report",
    "canonical_json",
    "check_chain",
    "epsilon_tolerance",
    "find_party_key",
    "find_server_key",
    "is_secret_name",
    "key_event_payload",
    "key_fingerprint",
    "load_public_key",
    "log_repaired_payload",
    "parse_time",
    "payload_problems",
    "policy_loaded_payload",
    "prepare_payload",
    "privacy_spend_payload",
    "recompute_epsilon",
    "refusal_payload",
    "round_aggregated_payload",
    "round_joined_payload",
    "sha256_hex",
    "sign_receipt",
    "sign_record",
    "sum_rejected_payload",
    "update_committed_payload",
    "upload_accepted_from_wire",
    "upload_accepted_payload",
    "upload_sha256",
    "verify_log",
    "verify_receipt",
    "verify_receipt_payload",
    "write_report",
]
