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
    """A message names another run, round, cluster, session or stage than the current one.

    Mapped to FAILED_PRECONDITION: the message may be valid, just not now.
    """


class UnsupportedProtocolError(ProtocolError, ValueError):
    """The peer speaks another protocol version (FAILED_PRECONDITION)."""


class ConsortiumMismatchError(ProtocolError, ValueError):
    """The peer holds another consortium configuration (hash) (FAILED_PRECONDITION)."""


class PeerQuotaError(ProtocolError, RuntimeError):
    """The caller already has as many calls in flight as one organization may hold
    (RESOURCE_EXHAUSTED)."""


class IdleStreamError(ProtocolError, TimeoutError):
    """A stream moved no message for longer than the server's idle deadline; the server
    cancelled it (logged as DEADLINE_EXCEEDED; the caller sees CANCELLED)."""


class CallCancelledError(ProtocolError, ConnectionError):
    """The caller cancelled the call, or went away, while the server was serving it
    (CANCELLED)."""


class UndecodableRequestError(ProtocolError, ValueError):
    """A request message does not parse as the method's request type (INVALID_ARGUMENT)."""


class TransportError(ProtocolError, OSError):
    """A server cannot listen on its address, or a channel cannot be set up."""


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


# --------------------------------------------------------------------------- secure aggregation


class SessionParamsError(ProtocolError, ValueError):
    """Secure-aggregation session parameters are inconsistent (threshold, roster, supports)."""


class MalformedMessageError(ProtocolError, ValueError):
    """A protocol message does not decode, or its sizes, ids or fields break the stage's rules."""


class InvalidInputError(ProtocolError, ValueError):
    """A client's own input does not match the session (missing block, wrong length, NaN)."""


class StageError(ProtocolError, RuntimeError):
    """A state machine was driven out of order: a stage ran twice, early or after an abort."""


class ForgedMessageError(ProtocolError, ValueError):
    """A signature does not verify, or a message claims a sender outside the roster."""


class ReplayError(ProtocolError, ValueError):
    """A message belongs to another session, round or cluster, or was already received."""


class DuplicateMessageError(ReplayError):
    """A party sent a second message in one stage, or copied another party's public key."""


class EquivocationError(ProtocolError, ValueError):
    """The server told different clients different things (survivor or dropout sets)."""


class ThresholdError(ProtocolError, RuntimeError):
    """Fewer than t parties remain, so the session aborts and nothing is unmasked."""


class CohortTooSmallError(ProtocolError, ValueError):
    """A block, cluster or round has fewer contributors than the minimum cohort.

    ``blocks`` names the blocks concerned (empty when the whole session is too small), so
    a caller can rebuild the session without them.
    """

    def __init__(self, message: str, *, blocks: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.blocks = blocks


class UnmaskRuleError(ProtocolError, PermissionError):
    """An unmask request asks for both secrets of one peer, or for one it may not have."""


class DecryptionError(ProtocolError, ValueError):
    """An encrypted share failed to decrypt; deliberately says nothing about why."""


class ReconstructionError(ProtocolError, ValueError):
    """Revealed shares are inconsistent: a reconstructed secret does not match its key."""


class QuantizationOverflowError(ProtocolError, OverflowError):
    """A value or a sum does not fit the fixed-point range; it is never wrapped silently."""


# --------------------------------------------------------------------------- homomorphic mode


class SumOutOfBoundsError(ProtocolError, ValueError):
    """A secure sum lies outside what its contributors' clipped inputs can reach.

    Honest inputs cannot produce it: some contributor sent an out-of-range input (the
    masked ring wraps around, so a flipped byte becomes a large value). The sum must not
    be applied. The message names the block and the bound, never a value.
    """

    def __init__(self, message: str, *, block: str, bound: str, cluster: int | None = None) -> None:
        super().__init__(message)
        self.block = block
        self.bound = bound
        self.cluster = cluster


class CKKSParametersError(ProtocolError, ValueError):
    """No 128-bit secure CKKS parameter set meets the request, or a given set is unsafe."""
