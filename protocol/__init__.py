"""Protocol code shared by client and server: secure aggregation and wire formats."""

from ._certificates import certificate_fingerprint as certificate_fingerprint
from ._certificates import organization_in_certificate as organization_in_certificate
from ._certificates import verify_identity_certificate as verify_identity_certificate
from ._certificates import verify_sealing_certificate as verify_sealing_certificate
from ._certificates import verify_server_identity_certificate as verify_server_identity_certificate
from ._certificates import verify_tls_client_certificate as verify_tls_client_certificate
from ._certificates import verify_tls_server_certificate as verify_tls_server_certificate
from ._chunks import DEFAULT_CHUNK_BYTES as DEFAULT_CHUNK_BYTES
from ._chunks import iter_chunks as iter_chunks
from ._chunks import iter_model as iter_model
from ._chunks import iter_upload as iter_upload
from ._chunks import join_chunks as join_chunks
from ._chunks import receive_model as receive_model
from ._chunks import receive_upload as receive_upload
from ._ckks import CKKSCeremony as CKKSCeremony
from ._ckks import CKKSKeyring as CKKSKeyring
from ._ckks import CKKSParameters as CKKSParameters
from ._ckks import CKKSServerContext as CKKSServerContext
from ._ckks_aggregation import CKKSAggregate as CKKSAggregate
from ._ckks_aggregation import CKKSAggregator as CKKSAggregator
from ._ckks_aggregation import CKKSClient as CKKSClient
from ._ckks_aggregation import CKKSSession as CKKSSession
from ._ckks_aggregation import run_ckks_in_process as run_ckks_in_process
from ._ckks_messages import CKKSEncryptedSum as CKKSEncryptedSum
from ._ckks_messages import CKKSUpload as CKKSUpload
from ._ckks_packing import PackingLayout as PackingLayout
from ._generated.v1 import fedhft_pb2 as fedhft_pb2
from ._generated.v1 import fedhft_pb2_grpc as fedhft_pb2_grpc
from ._inprocess import SessionStats as SessionStats
from ._inprocess import TranscriptEntry as TranscriptEntry
from ._inprocess import run_secagg_in_process as run_secagg_in_process
from ._messages import AdvertisedKeys as AdvertisedKeys
from ._messages import EncryptedShares as EncryptedShares
from ._messages import KeyAdvertisement as KeyAdvertisement
from ._messages import MaskedInput as MaskedInput
from ._messages import RelayedShares as RelayedShares
from ._messages import Stage as Stage
from ._messages import SurvivorAnnouncement as SurvivorAnnouncement
from ._messages import SurvivorSignature as SurvivorSignature
from ._messages import UnmaskRequest as UnmaskRequest
from ._messages import UnmaskResponse as UnmaskResponse
from ._messages import decode_message as decode_message
from ._pki import CertificateAuthority as CertificateAuthority
from ._pki import Credentials as Credentials
from ._pki import Role as Role
from ._pki import init_ca as init_ca
from ._pki import issue_organization as issue_organization
from ._pki import issue_server as issue_server
from ._pki import load_ca as load_ca
from ._pki import load_credentials as load_credentials
from ._quantize import FixedPoint as FixedPoint
from ._sealing import open_sealed as open_sealed
from ._sealing import seal_to as seal_to
from ._secagg_client import SecAggClient as SecAggClient
from ._secagg_params import SessionParams as SessionParams
from ._secagg_params import default_threshold as default_threshold
from ._secagg_server import AggregateResult as AggregateResult
from ._secagg_server import BlockSum as BlockSum
from ._secagg_server import SecAggServer as SecAggServer
from ._transport import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from ._transport import BoundServer as BoundServer
from ._transport import EnrollmentInterceptor as EnrollmentInterceptor
from ._transport import abort_with as abort_with
from ._transport import create_channel as create_channel
from ._transport import create_server as create_server
from ._transport import peer_certificate as peer_certificate
from ._transport import peer_organization as peer_organization
from ._transport import remote_error as remote_error
from ._transport import status_code_for as status_code_for
from ._transport import translate_errors as translate_errors
from ._wire import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._wire import parse_certificate as parse_certificate
from ._wire import sign_receipt as sign_receipt
from ._wire import validate_hello_request as validate_hello_request
from ._wire import validate_hello_response as validate_hello_response
from ._wire import validate_join_request as validate_join_request
from ._wire import validate_model_header as validate_model_header
from ._wire import validate_model_request as validate_model_request
from ._wire import validate_round as validate_round
from ._wire import validate_round_announcement as validate_round_announcement
from ._wire import validate_session_announcement as validate_session_announcement
from ._wire import validate_session_ref as validate_session_ref
from ._wire import validate_session_request as validate_session_request
from ._wire import validate_stage as validate_stage
from ._wire import validate_stage_broadcast as validate_stage_broadcast
from ._wire import validate_stage_header as validate_stage_header
from ._wire import validate_stage_request as validate_stage_request
from ._wire import validate_stage_submission as validate_stage_submission
from ._wire import verify_receipt as verify_receipt
from .errors import CertificateVerificationError as CertificateVerificationError
from .errors import ChunkIntegrityError as ChunkIntegrityError
from .errors import ConsortiumMismatchError as ConsortiumMismatchError
from .errors import CredentialsError as CredentialsError
from .errors import ForgedReceiptError as ForgedReceiptError
from .errors import InvalidEnvelopeError as InvalidEnvelopeError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import PeerNotEnrolledError as PeerNotEnrolledError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteError as RemoteError
from .errors import TransportError as TransportError
from .errors import UnauthenticatedPeerError as UnauthenticatedPeerError
from .errors import UnsupportedProtocolError as UnsupportedProtocolError
from .errors import WrongRoundError as WrongRoundError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "AdvertisedKeys",
    "AggregateResult",
    "BlockSum",
    "BoundServer",
    "CKKSAggregate",
    "CKKSAggregator",
    "CKKSCeremony",
    "CKKSClient",
    "CKKSEncryptedSum",
    "CKKSKeyring",
    "CKKSParameters",
    "CKKSServerContext",
    "CKKSSession",
    "CKKSUpload",
    "CertificateAuthority",
    "CertificateVerificationError",
    "ChunkIntegrityError",
    "ConsortiumMismatchError",
    "Credentials",
    "CredentialsError",
    "EncryptedShares",
    "EnrollmentInterceptor",
    "FixedPoint",
    "ForgedReceiptError",
    "InvalidEnvelopeError",
    "KeyAdvertisement",
    "MaskedInput",
    "MessageTooLargeError",
    "PackingLayout",
    "PeerNotEnrolledError",
    "ProtocolError",
    "RelayedShares",
    "RemoteError",
    "Role",
    "SecAggClient",
    "SecAggServer",
    "SessionParams",
    "SessionStats",
    "Stage",
    "SurvivorAnnouncement",
    "SurvivorSignature",
    "TranscriptEntry",
    "TransportError",
    "UnauthenticatedPeerError",
    "UnmaskRequest",
    "UnmaskResponse",
    "UnsupportedProtocolError",
    "WrongRoundError",
    "abort_with",
    "certificate_fingerprint",
    "create_channel",
    "create_server",
    "decode_message",
    "default_threshold",
    "fedhft_pb2",
    "fedhft_pb2_grpc",
    "init_ca",
    "issue_organization",
    "issue_server",
    "iter_chunks",
    "iter_model",
    "iter_upload",
    "join_chunks",
    "load_ca",
    "load_credentials",
    "open_sealed",
    "organization_in_certificate",
    "parse_certificate",
    "peer_certificate",
    "peer_organization",
    "receive_model",
    "receive_upload",
    "remote_error",
    "run_ckks_in_process",
    "run_secagg_in_process",
    "seal_to",
    "sign_receipt",
    "status_code_for",
    "translate_errors",
    "validate_hello_request",
    "validate_hello_response",
    "validate_join_request",
    "validate_model_header",
    "validate_model_request",
    "validate_round",
    "validate_round_announcement",
    "validate_session_announcement",
    "validate_session_ref",
    "validate_session_request",
    "validate_stage",
    "validate_stage_broadcast",
    "validate_stage_header",
    "validate_stage_request",
    "validate_stage_submission",
    "verify_identity_certificate",
    "verify_receipt",
    "verify_sealing_certificate",
    "verify_server_identity_certificate",
    "verify_tls_client_certificate",
    "verify_tls_server_certificate",
]
