"""Upload receipts: the server's signed acknowledgement of one accepted upload.

For every upload it accepts, the aggregation server signs a receipt naming the round,
the cluster, the organization and the SHA-256 of the masked upload (ARCHITECTURE.md §6). The
client logs it as an `aggregation_receipt` record and the server logs `upload_accepted`,
so an auditor holding both logs can match them one to one: an upload the client
committed to without a receipt, or a receipt for an upload the client never committed
to, shows up as a finding in `verify_log`.

A receipt comes in one of the two forms `audit/FORMAT.md` ("Receipts") specifies, and
`verify_receipt_payload` verifies both. fedhft's gRPC server signs the wire form, a
`fedhft.v1.ReceiptStatement` (`fedhft.protocol.sign_receipt`; logged through
`aggregation_receipt_from_wire` and `upload_accepted_from_wire`). `Receipt` and
`sign_receipt` here are the JSON form, signed over canonical JSON: no fedhft component
writes it today, but it stays a documented, verifiable format (an aggregator written
without protobuf can produce it, and the verifier's tests and benchmark build logs with
it).

Notes:
    The signed message is ``RECEIPT_CONTEXT || canonical(receipt fields without sig)``.
    The context string keeps a receipt signature from ever verifying as an audit-record
    signature or a key advertisement made with the same server key. Binding the
    secure-aggregation session id (`sid`), when given, ties the receipt to one session
    so it cannot be replayed into another round's bookkeeping.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._canonical import JSONValue, canonical_json
from ._keys import key_fingerprint
from ._payloads import aggregation_receipt_payload, upload_accepted_fields
from .errors import ReceiptError

RECEIPT_CONTEXT: Final = b"fedhft/upload-receipt/v1\x00"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")
_SID = re.compile(r"^[0-9a-f]{2,128}$")
_IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Receipt:
    """A server-signed acknowledgement of one accepted upload."""

    round: int
    cluster: int
    organization: str
    upload_sha256: str
    server: str
    """Fingerprint (`key_fingerprint`) of the server key that signed."""
    sig: str
    """Hex Ed25519 signature over `signing_message()`."""
    sid: str | None = None
    """Hex secure-aggregation session id, when the receipt is bound to one."""
    audit_head_sha256: str | None = None
    """Hash of the uploader's last audit record when it uploaded (its `update_committed`)."""
    spend_sha256: str | None = None
    """Hash of the uploader's DP-SGD `privacy_spend` record of the round."""

    def __post_init__(self) -> None:
        problems = _field_problems(
            round=self.round,
            cluster=self.cluster,
            organization=self.organization,
            upload_sha256=self.upload_sha256,
            server=self.server,
            sid=self.sid,
        )
        for name in ("audit_head_sha256", "spend_sha256"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _HEX64.fullmatch(value)):
                problems.append(f"`{name}` must be 64 lower-case hex digits or absent")
        if self.sig and _HEX128.fullmatch(self.sig) is None:
            problems.append("`sig` must be 128 lower-case hex digits")
        if problems:
            raise ReceiptError("invalid receipt: " + "; ".join(problems))

    def signed_fields(self) -> dict[str, JSONValue]:
        """The fields the server signs."""
        return {
            "cluster": self.cluster,
            "organization": self.organization,
            "round": self.round,
            "server": self.server,
            "sid": self.sid,
            "upload_sha256": self.upload_sha256,
            **self.bound_history(),
        }

    def bound_history(self) -> dict[str, JSONValue]:
        """The uploader's log head and round spend this receipt binds (those present).

        Absent ones are left out of the signed fields, so receipts made before these
        fields existed still verify.
        """
        bound: dict[str, JSONValue] = {}
        if self.audit_head_sha256 is not None:
            bound["audit_head_sha256"] = self.audit_head_sha256
        if self.spend_sha256 is not None:
            bound["spend_sha256"] = self.spend_sha256
        return bound

    def signing_message(self) -> bytes:
        """The exact bytes the signature covers."""
        return RECEIPT_CONTEXT + canonical_json(self.signed_fields())

    def to_payload(self) -> dict[str, JSONValue]:
        """The payload of the client's `aggregation_receipt` audit record."""
        return aggregation_receipt_payload(
            round_number=self.round,
            cluster=self.cluster,
            organization=self.organization,
            upload_sha256=self.upload_sha256,
            server=self.server,
            receipt_sig=self.sig,
            sid=self.sid,
            bound_history=self.bound_history(),
        )

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> Receipt:
        """Rebuild a receipt from an `aggregation_receipt` payload; `ReceiptError` if bad."""
        try:
            sig = payload["receipt_sig"]
            fields = {
                name: payload[name]
                for name in ("round", "cluster", "organization", "upload_sha256", "server")
            }
        except KeyError as exc:
            raise ReceiptError(f"aggregation_receipt payload lacks `{exc.args[0]}`") from None
        if not isinstance(sig, str):
            raise ReceiptError("`receipt_sig` must be a hex string")
        sid = payload.get("sid")
        return cls(
            round=fields["round"],  # type: ignore[arg-type]
            cluster=fields["cluster"],  # type: ignore[arg-type]
            organization=fields["organization"],  # type: ignore[arg-type]
            upload_sha256=fields["upload_sha256"],  # type: ignore[arg-type]
            server=fields["server"],  # type: ignore[arg-type]
            sig=sig,
            sid=sid,  # type: ignore[arg-type]
            audit_head_sha256=payload.get("audit_head_sha256"),  # type: ignore[arg-type]
            spend_sha256=payload.get("spend_sha256"),  # type: ignore[arg-type]
        )


def _field_problems(
    *,
    round: object,
    cluster: object,
    organization: object,
    upload_sha256: object,
    server: object,
    sid: object,
) -> list[str]:
    problems: list[str] = []
    if type(round) is not int or round < 0:
        problems.append(f"`round` must be an integer >= 0, got {round!r}")
    if type(cluster) is not int or cluster < 0:
        problems.append(f"`cluster` must be an integer >= 0, got {cluster!r}")
    if not isinstance(organization, str) or _IDENTIFIER.fullmatch(organization) is None:
        problems.append(f"`organization` must be an identifier, got {organization!r}")
    if not isinstance(upload_sha256, str) or _HEX64.fullmatch(upload_sha256) is None:
        problems.append("`upload_sha256` must be 64 lower-case hex digits")
    if not isinstance(server, str) or _HEX64.fullmatch(server) is None:
        problems.append("`server` must be a 64-hex-digit key fingerprint")
    if sid is not None and (not isinstance(sid, str) or _SID.fullmatch(sid) is None):
        problems.append("`sid` must be lower-case hex (2 to 128 digits) or absent")
    return problems


def sign_receipt(
    server_key: Ed25519PrivateKey,
    *,
    round: int,
    cluster: int,
    organization: str,
    upload_sha256: str,
    sid: str | bytes | None = None,
    audit_head_sha256: str | None = None,
    spend_sha256: str | None = None,
) -> Receipt:
    """Sign a receipt for one accepted upload with the server's identity key.

    ``upload_sha256`` is the hex SHA-256 of the masked upload exactly as received;
    ``sid`` (hex or bytes) binds the receipt to one secure-aggregation session;
    ``audit_head_sha256`` and ``spend_sha256``, as the uploader declared them, bind its
    audit log up to the upload.
    """
    sid_hex = sid.hex() if isinstance(sid, bytes | bytearray) else sid
    unsigned = Receipt(
        round=round,
        cluster=cluster,
        organization=organization,
        upload_sha256=upload_sha256,
        server=key_fingerprint(server_key.public_key()),
        sig="",
        sid=sid_hex,
        audit_head_sha256=audit_head_sha256,
        spend_sha256=spend_sha256,
    )
    signature = server_key.sign(unsigned.signing_message())
    return dataclasses.replace(unsigned, sig=signature.hex())


def verify_receipt(server_public_key: Ed25519PublicKey, receipt: Receipt) -> None:
    """Raise `ReceiptError` unless ``server_public_key`` signed ``receipt``.

    Checks that the receipt names this key's fingerprint and that the Ed25519 signature
    verifies over the receipt's fields; one opaque error either way.
    """
    if not isinstance(receipt, Receipt):
        raise ReceiptError(f"expected a Receipt, got {type(receipt).__name__}")
    if receipt.server != key_fingerprint(server_public_key) or not receipt.sig:
        raise ReceiptError(
            f"receipt for round {receipt.round}, cluster {receipt.cluster} was not signed "
            "by this server key"
        )
    try:
        server_public_key.verify(bytes.fromhex(receipt.sig), receipt.signing_message())
    except InvalidSignature:
        raise ReceiptError(
            f"receipt for round {receipt.round}, cluster {receipt.cluster} was not signed "
            "by this server key"
        ) from None


# ------------------------------------------------------------------------ wire receipts
#
# The gRPC server acknowledges an upload with a `fedhft.v1` protobuf `Receipt` (a
# serialized `ReceiptStatement` and its signature, `fedhft.protocol.sign_receipt`). A
# client that holds such a receipt logs it verbatim — statement bytes and signature in
# hex — next to the fields an auditor matches on, so the record proves exactly what the
# server signed, not a re-encoding of it.


def aggregation_receipt_from_wire(
    receipt: Any, *, server_public_key: Ed25519PublicKey
) -> dict[str, JSONValue]:
    """The `aggregation_receipt` payload for a `fedhft.v1` wire receipt.

    Verifies the receipt with ``server_public_key`` first (`ReceiptError` if forged), so
    a client never logs a receipt the server did not sign.
    """
    statement = _verify_wire(server_public_key, receipt.statement, receipt.signature)
    return aggregation_receipt_payload(
        round_number=int(statement.session.round),
        cluster=int(statement.session.cluster),
        organization=statement.organization,
        upload_sha256=bytes(statement.payload_sha256).hex(),
        server=key_fingerprint(server_public_key),
        receipt_sig=bytes(receipt.signature).hex(),
        receipt_statement=bytes(receipt.statement).hex(),
        sid=bytes(statement.session.session_id).hex(),
        bound_history=_bound_history(statement),
    )


def _bound_history(statement: Any) -> dict[str, JSONValue]:
    """The uploader's log head and round spend a statement binds (present ones only)."""
    bound: dict[str, JSONValue] = {}
    for name in ("audit_head_sha256", "spend_sha256"):
        value = bytes(getattr(statement, name))
        if value:
            bound[name] = value.hex()
    return bound


def upload_accepted_from_wire(receipt: Any) -> dict[str, JSONValue]:
    """The server's `upload_accepted` payload for a wire receipt it has just signed."""
    from fedhft.protocol import fedhft_pb2

    statement = fedhft_pb2.ReceiptStatement()
    statement.ParseFromString(receipt.statement)
    return upload_accepted_fields(
        round_number=int(statement.session.round),
        cluster=int(statement.session.cluster),
        organization=statement.organization,
        upload_sha256=bytes(statement.payload_sha256).hex(),
        receipt_sig=bytes(receipt.signature).hex(),
        sid=bytes(statement.session.session_id).hex(),
        bound_history=_bound_history(statement),
    )


def _verify_wire(server_public_key: Ed25519PublicKey, statement: bytes, signature: bytes) -> Any:
    from fedhft.protocol import fedhft_pb2
    from fedhft.protocol import verify_receipt as verify_wire_receipt
    from fedhft.protocol.errors import ProtocolError

    try:
        return verify_wire_receipt(
            fedhft_pb2.Receipt(statement=statement, signature=signature), server_public_key
        )
    except ProtocolError:
        raise ReceiptError("wire receipt was not signed by this server key") from None


def verify_receipt_payload(server_public_key: Ed25519PublicKey, payload: Mapping[str, Any]) -> None:
    """Verify the receipt inside an `aggregation_receipt` payload; raise `ReceiptError`.

    Handles both receipt forms: this module's `Receipt`, and a `fedhft.v1` wire receipt
    (`receipt_statement` present), whose signed statement must then agree with the
    payload's round, cluster, organization, upload hash and session id.
    """
    if payload.get("server") != key_fingerprint(server_public_key):
        raise ReceiptError(
            f"receipt for round {payload.get('round')}, cluster {payload.get('cluster')} names "
            "another server key"
        )
    if "receipt_statement" not in payload:
        verify_receipt(server_public_key, Receipt.from_payload(payload))
        return
    statement_hex, sig_hex = payload["receipt_statement"], payload.get("receipt_sig")
    if not (isinstance(statement_hex, str) and isinstance(sig_hex, str)):
        raise ReceiptError("`receipt_statement` and `receipt_sig` must be hex strings")
    try:
        statement_bytes, signature = bytes.fromhex(statement_hex), bytes.fromhex(sig_hex)
    except ValueError:
        raise ReceiptError("`receipt_statement` and `receipt_sig` must be hex strings") from None
    statement = _verify_wire(server_public_key, statement_bytes, signature)
    signed = {
        "round": int(statement.session.round),
        "cluster": int(statement.session.cluster),
        "organization": statement.organization,
        "upload_sha256": bytes(statement.payload_sha256).hex(),
        "sid": bytes(statement.session.session_id).hex(),
        **_bound_history(statement),
    }
    differing = sorted(
        name for name, value in signed.items() if name in payload and payload[name] != value
    )
    required = ("round", "cluster", "organization", "upload_sha256", *_bound_history(statement))
    differing += [name for name in required if name not in payload]
    if differing:
        raise ReceiptError(
            f"the logged receipt fields {differing} differ from what the server signed"
        )
