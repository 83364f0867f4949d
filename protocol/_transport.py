"""gRPC over mutual TLS: server and channel factories, peer identity, error statuses.

Both ends trust exactly one root, the consortium CA (`fedhft.protocol._pki`). The server
requires a client certificate (`require_client_auth=True`); gRPC's TLS stack (BoringSSL)
verifies the chain and the extended key usage during the handshake, so a client with no
certificate, with one from another CA, or with a server certificate never reaches a
servicer (the caller sees UNAVAILABLE, the handshake failure). The organization is then
read from the verified certificate's ``fedhft://org/<id>`` URI SAN
(`peer_organization`), never from a request field, and checked against the enrolled list
(`EnrollmentInterceptor`, PERMISSION_DENIED when not enrolled). The same interceptor
holds each organization to a quota of calls in flight, cancels streams that went
silent (`fedhft.protocol._admission`) and logs every refused call in one rate-limited
line.

Typed errors become precise gRPC statuses (`status_code_for`, `translate_errors`); on the
client side `remote_error` turns a failed call back into a typed `RemoteError` that says
whether to retry.

Notes:
    Messages above `max_message_bytes` are refused by gRPC itself with
    RESOURCE_EXHAUSTED, on both ends; larger payloads go through the chunked streams of
    `fedhft.protocol._chunks`. ``grpc.so_reuseport`` is off so that a second server on
    the same port fails loudly instead of silently sharing it.

    Status details are the typed errors' messages, which by the project's rule never
    contain secrets. Any other exception is reported as INTERNAL with a fixed message and
    logged by its type and the line it was raised at only, because its text could quote
    data it was processing. A request that does not parse is refused (INVALID_ARGUMENT)
    by the interceptor instead of reaching gRPC's own deserializer error path, which
    logs a full traceback per request.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final, NoReturn, ParamSpec, TypeVar, cast

import grpc
from cryptography import x509

from fedhft.errors import FedHFTError

from ._admission import CallQuota, IdleWatch, RejectionLog, WatchedStream
from ._certificates import Role, organization_in_certificate, verify_tls_client_certificate
from ._pki import Credentials
from .errors import (
    CallCancelledError,
    CertificateVerificationError,
    CredentialsError,
    IdleStreamError,
    PeerNotEnrolledError,
    RemoteError,
    TransportError,
    UnauthenticatedPeerError,
    UndecodableRequestError,
)

DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
"""gRPC's own default; a chunk of `DEFAULT_CHUNK_BYTES` fits with room to spare."""

RETRYABLE_STATUSES: Final = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})

_UNAUTHENTICATED: Final = "<unauthenticated>"
_P = ParamSpec("_P")
_T = TypeVar("_T")

# Status of each typed error, looked up by class name along the error's MRO so that the
# table also covers errors other modules of the package define. Errors not listed fall
# back to their built-in base (see `status_code_for`).
_STATUS_BY_ERROR: Final[dict[str, str]] = {
    # Transport and provisioning.
    "UnauthenticatedPeerError": "UNAUTHENTICATED",
    "PeerNotEnrolledError": "PERMISSION_DENIED",
    "CertificateVerificationError": "PERMISSION_DENIED",
    "MessageTooLargeError": "RESOURCE_EXHAUSTED",
    "PeerQuotaError": "RESOURCE_EXHAUSTED",
    "IdleStreamError": "DEADLINE_EXCEEDED",
    "CallCancelledError": "CANCELLED",
    "UndecodableRequestError": "INVALID_ARGUMENT",
    "ChunkIntegrityError": "DATA_LOSS",
    "InvalidEnvelopeError": "INVALID_ARGUMENT",
    "WrongRoundError": "FAILED_PRECONDITION",
    "UnsupportedProtocolError": "FAILED_PRECONDITION",
    "ConsortiumMismatchError": "FAILED_PRECONDITION",
    "CredentialsError": "INTERNAL",
    "TransportError": "INTERNAL",
    # Secure aggregation.
    "MalformedMessageError": "INVALID_ARGUMENT",
    "InvalidInputError": "INVALID_ARGUMENT",
    "ForgedMessageError": "PERMISSION_DENIED",
    "DuplicateMessageError": "ALREADY_EXISTS",
    "ReplayError": "FAILED_PRECONDITION",
    "StageError": "FAILED_PRECONDITION",
    "CohortTooSmallError": "FAILED_PRECONDITION",
    "EquivocationError": "ABORTED",
    "ThresholdError": "ABORTED",
    "UnmaskRuleError": "PERMISSION_DENIED",
    "DecryptionError": "INVALID_ARGUMENT",
    "ReconstructionError": "INVALID_ARGUMENT",
    "QuantizationOverflowError": "INVALID_ARGUMENT",
}
_STATUS_BY_BUILTIN: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (PermissionError, "PERMISSION_DENIED"),
    (TimeoutError, "DEADLINE_EXCEEDED"),
    (OverflowError, "INVALID_ARGUMENT"),
    (ValueError, "INVALID_ARGUMENT"),
)


# --------------------------------------------------------------------------- factories


@dataclass(frozen=True)
class BoundServer:
    """A gRPC server bound to `host`:`port` (the real port when 0 was asked for)."""

    server: Any
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 hosts in brackets: what a channel's target is."""
        return f"{_bracket(self.host)}:{self.port}"

    def start(self) -> None:
        """Start serving (add servicers first)."""
        self.server.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop serving and wait until in-flight calls ended (after `grace` seconds)."""
        self.server.stop(grace).wait()


def create_server(
    credentials: Credentials,
    *,
    port: int,
    host: str = "127.0.0.1",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = 16,
    interceptors: Sequence[Any] = (),
    options: Sequence[tuple[str, int | str]] = (),
) -> BoundServer:
    """A gRPC server on `host`:`port` requiring client certificates from the consortium CA.

    `credentials` must be the server's (`fedhft ca issue --server`). Add servicers to
    ``bound.server`` (e.g. ``add_AggregatorServicer_to_server``), then ``bound.start()``.
    Port 0 picks a free port, reported as ``bound.port``.
    """
    if credentials.role is not Role.SERVER:
        raise CredentialsError(
            f"a server needs server credentials (`fedhft ca issue --server`), got those of "
            f"{credentials.role.value} {credentials.name!r}"
        )
    _check_limit(max_message_bytes)
    server_credentials = grpc.ssl_server_credentials(
        [(credentials.tls_private_key_pem(), credentials.tls_certificate_pem())],
        root_certificates=credentials.ca_certificate_pem(),
        require_client_auth=True,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedhft-rpc"),
        interceptors=list(interceptors),
        options=[*_limits(max_message_bytes), ("grpc.so_reuseport", 0), *options],
    )
    address = f"{_bracket(host)}:{port}"
    try:
        bound_port = server.add_secure_port(address, server_credentials)
    except RuntimeError:
        bound_port = 0
    if bound_port == 0:
        raise TransportError(f"cannot listen on {address} (address in use or unavailable)")
    return BoundServer(server=server, host=host, port=bound_port)


def create_channel(
    credentials: Credentials,
    target: str,
    server_hostname: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, int | str]] = (),
) -> Any:
    """A mutual-TLS channel from an organization to the server at `target` (``host:port``).

    The server must present a certificate issued by the consortium CA for
    `server_hostname` with the `serverAuth` usage; the channel presents the
    organization's TLS client certificate.
    """
    if credentials.role is not Role.ORGANIZATION:
        raise CredentialsError(
            f"a client channel needs organization credentials (`fedhft ca issue --org`), "
            f"got those of {credentials.role.value} {credentials.name!r}"
        )
    _check_limit(max_message_bytes)
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=credentials.ca_certificate_pem(),
        private_key=credentials.tls_private_key_pem(),
        certificate_chain=credentials.tls_certificate_pem(),
    )
    return grpc.secure_channel(
        target,
        channel_credentials,
        options=[
            ("grpc.ssl_target_name_override", server_hostname),
            *_limits(max_message_bytes),
            *options,
        ],
    )


def _limits(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _check_limit(max_message_bytes: int) -> None:
    if not 1024 <= max_message_bytes <= 2**31 - 1:
        raise ValueError(f"max_message_bytes must be 1024 to 2**31-1, got {max_message_bytes}")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --------------------------------------------------------------------------- peer identity


def peer_certificate(context: Any) -> x509.Certificate:
    """The client certificate the TLS handshake verified for this call.

    Raises `UnauthenticatedPeerError` when the call did not come over TLS with a client
    certificate (which `create_server` never allows, but a misconfigured server could).
    """
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        raise UnauthenticatedPeerError("the call did not arrive over TLS")
    pems = auth.get("x509_pem_cert") or []
    if len(pems) != 1:
        raise UnauthenticatedPeerError("the caller presented no verified client certificate")
    try:
        return x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        raise UnauthenticatedPeerError("the caller's client certificate does not parse") from None


def peer_organization(
    context: Any,
    *,
    ca_certificate: x509.Certificate | None = None,
    enrolled: Collection[str] | None = None,
) -> str:
    """The organization id of the caller, from its verified TLS client certificate.

    Given `ca_certificate`, the certificate is verified again (issuer, validity, the
    `clientAuth` usage) as defence in depth. Given `enrolled`, an organization not in it
    raises `PeerNotEnrolledError` (PERMISSION_DENIED).
    """
    certificate = peer_certificate(context)
    try:
        if ca_certificate is not None:
            organization = verify_tls_client_certificate(certificate, ca_certificate)
        else:
            organization = organization_in_certificate(certificate)
    except CertificateVerificationError as exc:
        raise UnauthenticatedPeerError(f"the caller's client certificate: {exc}") from None
    if enrolled is not None and organization not in enrolled:
        raise PeerNotEnrolledError(
            f"organization {organization!r} is not enrolled in this consortium"
        )
    return organization


class EnrollmentInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Admits calls before any servicer runs: enrolled organizations only, within quota.

    Each call is checked, in order: the caller's certificate names an enrolled
    organization (else PERMISSION_DENIED); that organization has fewer than
    `max_calls_per_peer` calls in flight (else RESOURCE_EXHAUSTED); its request parses
    (else INVALID_ARGUMENT). A stream that moves no message for `stream_idle_timeout_s`
    seconds is cancelled. Every call that ends with an error status is logged in one
    line by `rejections` (status, method, organization, reason), rate-limited per
    organization.

    Args:
        enrolled: a collection of organization ids, or a function returning the current
            one (so enrollment can change while the server runs).
        ca_certificate: given, the client certificate is verified again against it.
        max_calls_per_peer: the most calls one organization may have in flight; None
            for no limit.
        stream_idle_timeout_s: how long a stream may move no message before it is
            cancelled; None for no limit.
        rejections: where refused calls are logged (default: a new `RejectionLog`).

    Notes:
        gRPC hands an interceptor only the method and the metadata of a call, not its
        TLS peer, so the checks run first thing on the worker thread that gRPC picked,
        and a refused call gives that thread back at once. A server whose pool holds
        every organization's quota plus spare threads therefore always has a thread for
        each organization (see `fedhft.protocol._admission`).
    """

    def __init__(
        self,
        enrolled: Collection[str] | Callable[[], Collection[str]],
        *,
        ca_certificate: x509.Certificate | None = None,
        max_calls_per_peer: int | None = None,
        stream_idle_timeout_s: float | None = None,
        rejections: RejectionLog | None = None,
    ) -> None:
        self._enrolled = enrolled
        self._ca_certificate = ca_certificate
        self._quota = None if max_calls_per_peer is None else CallQuota(max_calls_per_peer)
        self._idle = None if stream_idle_timeout_s is None else IdleWatch(stream_idle_timeout_s)
        self.rejections = rejections or RejectionLog()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        return _guarded(handler, functools.partial(self._admitted, str(details.method)))

    @contextlib.contextmanager
    def _admitted(self, method: str, context: Any, streaming: bool) -> Iterator[_Call]:
        """Admit one call for the duration of the `with` block, or refuse it."""
        enrolled = self._enrolled() if callable(self._enrolled) else self._enrolled
        try:
            identity = peer_organization(
                context, ca_certificate=self._ca_certificate, enrolled=enrolled
            )
        except FedHFTError as error:
            self._refuse(context, method, _claimed_organization(context), error)
        if self._quota is not None:
            try:
                self._quota.acquire(identity)
            except FedHFTError as error:
                self._refuse(context, method, identity, error)
        idle = self._idle
        watched = idle.watch(context.cancel) if streaming and idle is not None else None

        def unwatch() -> None:
            if watched is not None and idle is not None:
                idle.unwatch(watched)

        try:
            yield _Call(watched, unwatch)
        except GeneratorExit:
            # gRPC stopped reading a response stream: the caller or the idle watch
            # cancelled it; only the latter is a refusal.
            if watched is not None and watched.expired:
                idle_error = IdleStreamError(_IDLE_MESSAGE)
                self._log(status_code_for(idle_error).name, method, identity, idle_error)
            raise
        except Exception as error:
            if context.code() is None:
                # The servicer raised without ending the call (no `translate_errors`).
                self._refuse(context, method, identity, error)
            self._log(context.code().name, method, identity, _ended_by(context, error))
            raise
        else:
            code = context.code()
            if code is not None and code != grpc.StatusCode.OK:
                self._log(code.name, method, identity, _ended_by(context, None))
        finally:
            unwatch()
            if self._quota is not None:
                self._quota.release(identity)

    def _refuse(self, context: Any, method: str, identity: str, error: BaseException) -> NoReturn:
        self._log(status_code_for(error).name, method, identity, _ended_by(context, error))
        abort_with(context, error)

    def _log(self, status: str, method: str, identity: str, reason: str | BaseException) -> None:
        text = reason if isinstance(reason, str) else str(reason)
        self.rejections.record(status=status, method=method, identity=identity, reason=text)


_IDLE_MESSAGE: Final = (
    "the stream moved no message within the server's idle deadline "
    "(`stream_idle_timeout_s`); it was cancelled"
)


class _Call:
    """What a guarded behaviour needs of its admission: the idle watch of its stream."""

    __slots__ = ("_unwatch", "watched")

    def __init__(self, watched: WatchedStream | None, unwatch: Callable[[], None]) -> None:
        self.watched = watched
        self._unwatch = unwatch

    def touch(self) -> None:
        if self.watched is not None:
            self.watched.touch()

    def requests(self, requests: Iterator[Any], *, then_unwatch: bool) -> Iterator[Any]:
        """A request stream whose messages are checked and reset the idle deadline.

        With `then_unwatch`, the idle deadline ends with the request stream: what the
        server does with a complete upload is its own time, not the caller's silence.
        """
        try:
            for request in requests:
                _check_parsed(request)
                self.touch()
                yield request
            if then_unwatch:
                self._unwatch()
        except grpc.RpcError:
            # gRPC raises a bare RpcError from a request stream whose call was cancelled.
            if self.watched is not None and self.watched.expired:
                raise IdleStreamError(_IDLE_MESSAGE) from None
            raise CallCancelledError("the caller cancelled the call or went away") from None


class _Undecodable:
    """Stands for a request message that did not parse (see `_lenient`)."""

    __slots__ = ("message_type",)

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, giving an `_Undecodable` instead of raising.

    gRPC logs a deserializer's exception with its full traceback, once per request.
    """
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    undecodable = _Undecodable(str(getattr(descriptor, "full_name", "the method's request")))

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # Any parse failure is the peer's; see the docstring.
            return undecodable

    return deserialize


def _check_parsed(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise UndecodableRequestError(
            f"the request does not parse as a {request.message_type} message; send the "
            "method's request type"
        )


def _claimed_organization(context: Any) -> str:
    """The organization a refused caller's certificate names, for the log only."""
    try:
        return organization_in_certificate(peer_certificate(context))
    except FedHFTError:
        return _UNAUTHENTICATED


def _ended_by(context: Any, error: BaseException | None) -> str:
    """Why a call ended: its status details, and where an unexpected error came from."""
    details = context.details()
    text = details.decode("utf-8", "replace") if isinstance(details, bytes) else str(details or "")
    cause = error if isinstance(error, FedHFTError) else getattr(error, "__cause__", None)
    if isinstance(cause, FedHFTError):
        return text or str(cause)
    if cause is not None:
        return f"{text or 'internal server error'} ({_where(cause)})"
    return text


def _where(error: BaseException) -> str:
    """``TypeError at _service.py:120 in Hello``: the type and the innermost frame only."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__
    frame = frames[-1]
    place = f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return f"{type(error).__name__} at {place} in {frame.name}"


def _guarded(handler: Any, admitted: Callable[[Any, bool], Any]) -> Any:
    """`handler` run inside ``admitted(context, streaming)``, for all four kinds."""
    if handler.unary_unary is not None:
        behaviour, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    elif handler.unary_stream is not None:
        behaviour, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    elif handler.stream_unary is not None:
        behaviour, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    else:
        behaviour, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    request_streaming = bool(handler.request_streaming)
    response_streaming = bool(handler.response_streaming)
    streaming = request_streaming or response_streaming

    def checked(request: Any, call: _Call) -> Any:
        if request_streaming:
            return call.requests(request, then_unwatch=not response_streaming)
        _check_parsed(request)
        return request

    if response_streaming:

        def responses(request: Any, context: Any) -> Iterator[Any]:
            with admitted(context, streaming) as call:
                for response in behaviour(checked(request, call), context):
                    call.touch()
                    yield response

        wrapped: Callable[[Any, Any], Any] = responses
    else:

        def unary(request: Any, context: Any) -> Any:
            with admitted(context, streaming) as call:
                return behaviour(checked(request, call), context)

        wrapped = unary
    return factory(
        wrapped,
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


# --------------------------------------------------------------------------- statuses


def status_code_for(error: BaseException) -> Any:
    """The gRPC status (a `grpc.StatusCode`) that reports `error` to the peer."""
    for cls in type(error).__mro__:
        if cls.__module__.startswith("fedhft.") and cls.__name__ in _STATUS_BY_ERROR:
            return getattr(grpc.StatusCode, _STATUS_BY_ERROR[cls.__name__])
    for builtin, name in _STATUS_BY_BUILTIN:
        if isinstance(error, builtin):
            return getattr(grpc.StatusCode, name)
    return grpc.StatusCode.INTERNAL


def abort_with(context: Any, error: BaseException) -> NoReturn:
    """End the call with the status of `error`; fedhft errors keep their message."""
    details = str(error) if isinstance(error, FedHFTError) else "internal server error"
    try:
        context.abort(status_code_for(error), details)
    except Exception as aborted:
        # gRPC ends the call by raising; the error that ended it rides along as the
        # cause, so that `EnrollmentInterceptor` can log where an unexpected one came from.
        raise aborted from error
    raise AssertionError("grpc.ServicerContext.abort returned")  # pragma: no cover


def translate_errors(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Decorate a servicer method so typed errors end the call with their gRPC status.

    The method's last positional argument must be the ``context``; generator methods
    (server streaming) are supported. Unexpected exceptions are reported as INTERNAL with
    a fixed message. Nothing is logged here: `EnrollmentInterceptor` logs every call that
    ends with an error status in one rate-limited line, unexpected errors by their type
    and the line they were raised at (never their text, which could quote the data).
    """

    def handle(context: Any, error: Exception) -> NoReturn:
        if context.code() is not None:
            # The servicer already ended the call with `context.abort`; keep its status.
            raise error
        abort_with(context, error)

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(*args: _P.args, **kwargs: _P.kwargs) -> Iterator[Any]:
            try:
                yield from cast("Iterator[Any]", method(*args, **kwargs))
            except Exception as error:  # Reported as a status, see handle().
                handle(args[-1], error)

        return cast("Callable[_P, _T]", streaming)

    @functools.wraps(method)
    def unary(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except Exception as error:  # Reported as a status, see handle().
            handle(args[-1], error)

    return unary


def remote_error(error: Any) -> RemoteError:
    """A typed error for a failed call (`grpc.RpcError`), saying whether to retry it."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    details = error.details() or ""
    return RemoteError(name, details, retryable=name in RETRYABLE_STATUSES)
