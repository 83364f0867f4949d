"""Protocol code shared by client and server: secure aggregation and wire formats."""

from ._certificates import ORGANIZATION_URI_PREFIX as ORGANIZATION_URI_PREFIX
from ._certificates import SERVER_URI_PREFIX as SERVER_URI_PREFIX
from ._certificates import Role as Role
from ._certificates import certificate_fingerprint as certificate_fingerprint
from ._certificates import certificate_holder as certificate_holder
from ._certificates import holder_uri as holder_uri
from ._certificates import organization_in_certificate as organization_in_certificate
from ._certificates import server_in_certificate as server_in_certificate
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
from ._generated.v1 import fedhft_pb2 as fedhft_pb2
from ._generated.v1 import fedhft_pb2_grpc as fedhft_pb2_grpc
from ._pki import CertificateAuthority as CertificateAuthority
from ._pki import Credentials as Credentials
from ._pki import init_ca as init_ca
from ._pki import issue_organization as issue_organization
from ._pki import issue_server as issue_server
from ._pki import load_ca as load_ca
from ._pki import load_credentials as load_credentials
from ._quantize import FixedPoint as FixedPoint
from ._sealing import open_sealed as open_sealed
from ._sealing import seal_to as seal_to
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
from .ckks._aggregation import CKKSAggregate as CKKSAggregate
from .ckks._aggregation import CKKSAggregator as CKKSAggregator
from .ckks._aggregation import CKKSClient as CKKSClient
from .ckks._aggregation import CKKSSession as CKKSSession
from .ckks._aggregation import run_ckks_in_process as run_ckks_in_process
from .ckks._messages import CKKSEncryptedSum as CKKSEncryptedSum
from .ckks._messages import CKKSUpload as CKKSUpload
from .ckks._packing import PackingLayout as PackingLayout
from .ckks._scheme import CKKSCeremony as CKKSCeremony
from .ckks._scheme import CKKSKeyring as CKKSKeyring
from .ckks._scheme import CKKSParameters as CKKSParameters
from .ckks._scheme import CKKSServerContext as CKKSServerContext
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
from .secagg._client import SecAggClient as SecAggClient
from .secagg._inprocess import SessionStats as SessionStats
from .secagg._inprocess import TranscriptEntry as TranscriptEntry
from .secagg._inprocess import run_secagg_in_process as run_secagg_in_process
from .secagg._params import SessionParams as SessionParams
from .secagg._params import default_threshold as default_threshold
from .secagg._params import session_threshold as session_threshold
from .secagg._server import AggregateResult as AggregateResult
from .secagg._server import BlockSum as BlockSum
from .secagg._server import SecAggServer as SecAggServer
from .secagg.messages import AdvertisedKeys as AdvertisedKeys
from .secagg.messages import EncryptedShares as EncryptedShares
from .secagg.messages import KeyAdvertisement as KeyAdvertisement
from .secagg.messages import MaskedInput as MaskedInput
from .secagg.messages import RelayedShares as RelayedShares
from .secagg.messages import Stage as Stage
from .secagg.messages import SurvivorAnnouncement as SurvivorAnnouncement
from .secagg.messages import SurvivorSignature as SurvivorSignature
from .secagg.messages import UnmaskRequest as UnmaskRequest
from .secagg.messages import UnmaskResponse as UnmaskResponse
from .secagg.messages import decode_message as decode_message

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ORGANIZATION_URI_PREFIX",
    "PROTOCOL_VERSION",
    "SERVER_URI_PREFIX",
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
    "certificate_holder",
    "create_channel",
    "create_server",
    "decode_message",
    "default_threshold",
    "fedhft_pb2",
    "fedhft_pb2_grpc",
    "holder_uri",
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
    "server_in_certificate",
    "session_threshold",
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
