"""Errors raised by the protocol layer: secure aggregation, provisioning and transport.

Every error derives from :class:`ProtocolError`; leaf errors also subclass the fitting
built-in. Messages never contain secret values (keys, shares, masked vectors).
"""

from __future__ import annotations

from fedhft.errors import FedHFTError


class ProtocolError(FedHFTError):
    """Base class of every error raised by `fedhft.protocol`."""


# --------------------------------------------------------------------------- provisioning


class CredentialsError(ProtocolError, ValueError):
    """A credentials or CA folder is missing, malformed, inconsistent or unsafe.

    Raised, for instance, when a private key file is readable by group or others, when a
    key does not match its certificate, or when issuing would overwrite existing files.
    """


class CertificateVerificationError(ProtocolError, ValueError):
    """A certificate is not valid for the identity or purpose it is presented for."""


# --------------------------------------------------------------------------- transport


class UnauthenticatedPeerError(ProtocolError, PermissionError):
    """The caller presented no verified client certificate (gRPC UNAUTHENTICATED)."""


class PeerNotEnrolledError(ProtocolError, PermissionError):
    """The caller's organization is not enrolled in the consortium (PERMISSION_DENIED)."""


class MessageTooLargeError(ProtocolError, ValueError):
    """A message or chunked payload exceeds its size cap (RESOURCE_EXHAUSTED)."""


class ChunkIntegrityError(ProtocolError, ValueError):
    """A chunked payload is out of order, truncated or fails its SHA-256 (DATA_LOSS)."""


class InvalidEnvelopeError(ProtocolError, ValueError):
    """A wire envelope has a missing, malformed or out-of-range field (INVALID_ARGUMENT)."""


class WrongRoundError(ProtocolError, ValueError):
    """A message names another round, cluster or session than expected (FAILED_PRECONDITION)."""


class UnsupportedProtocolError(ProtocolError, ValueError):
    """The peer speaks another protocol version (FAILED_PRECONDITION)."""


class ForgedReceiptError(ProtocolError, ValueError):
    """A receipt's signature does not verify under the server's identity key."""


class RemoteError(ProtocolError, RuntimeError):
    """The peer refused a call; ``code`` is the gRPC status name (e.g. ``"UNAVAILABLE"``).

    ``retryable`` is true for the statuses a client should retry with backoff
    (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED); every other status is final.
    """

    def __init__(self, code: str, details: str, *, retryable: bool) -> None:
        self.code = code
        self.details = details
        self.retryable = retryable
        super().__init__(f"{code}: {details}")
