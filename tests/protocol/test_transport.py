"""gRPC over mutual TLS on loopback: who gets in, and the status each refusal gets.

The servicer here is a tiny stand-in (`_TestAggregator`): the real aggregation server is
built on this transport later. It uses the same helpers the real one will
(`peer_organization`, `translate_errors`, the `validate_*` functions, chunked streams,
signed receipts), so these tests pin the transport's behaviour, not the servicer's.
Every test starts its own server on 127.0.0.1 with a free port and stops it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedhft.protocol import (
    PROTOCOL_VERSION,
    BoundServer,
    Credentials,
    EnrollmentInterceptor,
    create_channel,
    create_server,
    init_ca,
    issue_organization,
    issue_server,
    iter_chunks,
    iter_upload,
    peer_organization,
    receive_model,
    receive_upload,
    remote_error,
    sign_receipt,
    translate_errors,
    validate_hello_request,
    validate_model_header,
    validate_model_request,
    validate_stage_header,
    validate_stage_submission,
    verify_receipt,
    verify_server_identity_certificate,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol import fedhft_pb2_grpc as pb_grpc
from fedhft.protocol.errors import CredentialsError, TransportError

CONSORTIUM = "northern-health"
CONFIG_HASH = hashlib.sha256(b"consortium configuration").digest()
SESSION = pb.SessionRef(
    run_id="run-1", round=4, cluster=0, session_id=hashlib.sha256(b"session").digest()
)
MAX_MESSAGE = 64 * 1024
CHUNK = 16 * 1024
UPLOAD_CAP = 1024 * 1024
STAGE_CAP = 8 * 1024
MODEL = bytes(range(251)) * 1000  # 251 000 bytes: four times the message limit
TIMEOUT = 10.0
ENROLLED = frozenset({"st-mary", "glen-clinic"})


def _session(**changes: Any) -> pb.SessionRef:
    """`SESSION` with some fields changed."""
    fields: dict[str, Any] = {
        "run_id": SESSION.run_id,
        "round": SESSION.round,
        "cluster": SESSION.cluster,
        "session_id": SESSION.session_id,
    }
    return pb.SessionRef(**{**fields, **changes})


@dataclass(frozen=True)
class Pki:
    server: Credentials
    st_mary: Credentials
    glen_clinic: Credentials
    not_enrolled: Credentials
    foreign: Credentials  # "st-mary", issued by a look-alike CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One consortium CA with a server and three organizations, plus a look-alike CA."""
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(CONSORTIUM, root / "ca")
    other = init_ca(CONSORTIUM, root / "other-ca")
    return Pki(
        server=issue_server(ca, "localhost", root / "server"),
        st_mary=issue_organization(ca, "st-mary", root / "st-mary"),
        glen_clinic=issue_organization(ca, "glen-clinic", root / "glen-clinic"),
        not_enrolled=issue_organization(ca, "harbour-bank", root / "harbour-bank"),
        foreign=issue_organization(other, "st-mary", root / "foreign"),
    )


class _TestAggregator(pb_grpc.AggregatorServicer):  # type: ignore[misc]
    """A tiny stand-in servicer; the real aggregator is built on this transport later."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.calls: list[str] = []
        self.uploads: list[tuple[str, bytes]] = []

    @translate_errors
    def Hello(self, request: pb.HelloRequest, context: Any) -> pb.HelloResponse:
        self.calls.append("Hello")
        organization = peer_organization(context)
        validate_hello_request(
            request,
            ca_certificate=self.credentials.ca_certificate,
            organization=organization,
            config_hash=CONFIG_HASH,
        )
        return pb.HelloResponse(
            protocol=PROTOCOL_VERSION,
            consortium=CONSORTIUM,
            consortium_config_hash=CONFIG_HASH,
            server_identity_certificate=_der(self.credentials.identity_certificate),
            organization=organization,
            current_round=SESSION.round,
        )

    @translate_errors
    def SubmitStage(self, request: pb.StageSubmission, context: Any) -> pb.StageAck:
        self.calls.append("SubmitStage")
        validate_stage_submission(
            request,
            expected_session=SESSION,
            expected_stages={pb.STAGE_ADVERTISE_KEYS},
            max_payload_bytes=STAGE_CAP,
        )
        return pb.StageAck(session=request.session, stage=request.stage)

    @translate_errors
    def UploadStage(self, request_iterator: Iterator[pb.UploadChunk], context: Any) -> pb.StageAck:
        self.calls.append("UploadStage")
        organization = peer_organization(context)

        def check(header: pb.StageHeader) -> None:
            validate_stage_header(
                header, expected_session=SESSION, expected_stages={pb.STAGE_MASKED_INPUT}
            )

        header, payload = receive_upload(request_iterator, max_total=UPLOAD_CAP, check_header=check)
        self.uploads.append((organization, payload))
        statement = pb.ReceiptStatement(
            consortium=CONSORTIUM,
            server=self.credentials.name,
            organization=organization,
            session=header.session,
            stage=header.stage,
            payload_bytes=len(payload),
            payload_sha256=hashlib.sha256(payload).digest(),
            accepted_at_unix_ms=int(time.time() * 1000),
        )
        receipt = sign_receipt(self.credentials.identity_key, statement)
        return pb.StageAck(session=header.session, stage=header.stage, receipt=receipt)

    @translate_errors
    def DownloadModel(self, request: pb.ModelRequest, context: Any) -> Iterator[pb.ModelChunk]:
        self.calls.append("DownloadModel")
        validate_model_request(request, latest_round=SESSION.round, clusters=2)
        header = pb.ModelHeader(
            round=request.round,
            cluster=request.cluster,
            format="safetensors",
            model_hash=hashlib.sha256(MODEL).digest(),
        )
        yield pb.ModelChunk(header=header)
        for chunk in iter_chunks(MODEL, CHUNK):
            yield pb.ModelChunk(chunk=chunk)

    @translate_errors
    def AwaitSession(self, request: pb.SessionRequest, context: Any) -> pb.SessionAnnouncement:
        self.calls.append("AwaitSession")
        context.abort(grpc.StatusCode.NOT_FOUND, f"no cluster {request.cluster}")

    @translate_errors
    def AwaitRound(self, request: pb.RoundRequest, context: Any) -> pb.RoundAnnouncement:
        self.calls.append("AwaitRound")
        secret = "-".join(["hunter", "2"])
        raise RuntimeError(f"db password is {secret}")


@dataclass
class Running:
    bound: BoundServer
    servicer: _TestAggregator


@pytest.fixture
def running(pki: Pki) -> Iterator[Running]:
    """The stand-in aggregator behind `create_server`, enrollment enforced; stopped after."""
    bound = create_server(
        pki.server,
        port=0,
        max_message_bytes=MAX_MESSAGE,
        interceptors=[EnrollmentInterceptor(ENROLLED, ca_certificate=pki.server.ca_certificate)],
    )
    servicer = _TestAggregator(pki.server)
    pb_grpc.add_AggregatorServicer_to_server(servicer, bound.server)
    bound.start()
    try:
        yield Running(bound, servicer)
    finally:
        bound.stop(None)


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _stub(channel: Any) -> pb_grpc.AggregatorStub:
    return pb_grpc.AggregatorStub(channel)


def _hello(credentials: Credentials, **overrides: Any) -> pb.HelloRequest:
    fields: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "consortium_config_hash": CONFIG_HASH,
        "identity_certificate": _der(credentials.identity_certificate),
        "sealing_certificate": _der(credentials.sealing_certificate),  # type: ignore[arg-type]
    }
    fields.update(overrides)
    return pb.HelloRequest(**fields)


def _raw_channel(running: Running, pki: Pki, key: bytes | None, chain: bytes | None) -> Any:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.server.ca_certificate_pem(),
        private_key=key,
        certificate_chain=chain,
    )
    return grpc.secure_channel(
        running.bound.address,
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


def _refusal(call: Callable[[], object]) -> Any:
    """The `grpc.RpcError` that `call` raises."""
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


# --------------------------------------------------------------------------- handshake


def test_mutual_tls_handshake_authenticates_the_organization(running: Running, pki: Pki) -> None:
    """Over mTLS the server learns the caller from its certificate and proves its identity."""
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        response = _stub(channel).Hello(_hello(pki.st_mary), timeout=TIMEOUT)
    assert response.organization == "st-mary"
    server_certificate = x509.load_der_x509_certificate(response.server_identity_certificate)
    key = verify_server_identity_certificate(
        server_certificate, pki.st_mary.ca_certificate, "localhost"
    )
    assert key.public_bytes_raw() == pki.server.identity_public_key.public_bytes_raw()
    assert running.servicer.calls == ["Hello"]


def test_client_without_certificate_is_refused_in_the_handshake(running: Running, pki: Pki) -> None:
    """A client presenting no certificate never reaches a servicer (UNAVAILABLE)."""
    with _raw_channel(running, pki, None, None) as channel:
        error = _refusal(lambda: _stub(channel).Hello(_hello(pki.st_mary), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert running.servicer.calls == []


def test_client_certificate_from_another_ca_is_refused(running: Running, pki: Pki) -> None:
    """A certificate for an enrolled name, signed by a look-alike CA, fails the handshake."""
    key, chain = pki.foreign.tls_private_key_pem(), pki.foreign.tls_certificate_pem()
    with _raw_channel(running, pki, key, chain) as channel:
        error = _refusal(lambda: _stub(channel).Hello(_hello(pki.foreign), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert running.servicer.calls == []


def test_server_certificate_cannot_act_as_a_client(running: Running, pki: Pki) -> None:
    """The server's own certificate (serverAuth only) is refused as a client certificate."""
    key, chain = pki.server.tls_private_key_pem(), pki.server.tls_certificate_pem()
    with _raw_channel(running, pki, key, chain) as channel:
        error = _refusal(lambda: _stub(channel).Hello(_hello(pki.st_mary), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert running.servicer.calls == []


def test_client_refuses_a_server_with_another_name(running: Running, pki: Pki) -> None:
    """A channel expecting another host name refuses the server's certificate."""
    address = running.bound.address
    with create_channel(pki.st_mary, address, "aggregator.example.org") as channel:
        error = _refusal(lambda: _stub(channel).Hello(_hello(pki.st_mary), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert running.servicer.calls == []


def test_organization_certificate_cannot_serve(pki: Pki) -> None:
    """`create_server` refuses organization credentials, and clients refuse such a server."""
    with pytest.raises(CredentialsError, match="server credentials"):
        create_server(pki.st_mary, port=0)
    with pytest.raises(CredentialsError, match="organization credentials"):
        create_channel(pki.server, "127.0.0.1:1", "localhost")
    # A rogue server holding only an organization's TLS certificate (clientAuth).
    rogue = grpc.server(_executor())
    pb_grpc.add_AggregatorServicer_to_server(_TestAggregator(pki.server), rogue)
    rogue_credentials = grpc.ssl_server_credentials(
        [(pki.glen_clinic.tls_private_key_pem(), pki.glen_clinic.tls_certificate_pem())],
        root_certificates=pki.glen_clinic.ca_certificate_pem(),
        require_client_auth=True,
    )
    port = rogue.add_secure_port("127.0.0.1:0", rogue_credentials)
    rogue.start()
    try:
        with create_channel(pki.st_mary, f"127.0.0.1:{port}", "glen-clinic") as channel:
            error = _refusal(lambda: _stub(channel).Hello(_hello(pki.st_mary), timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        rogue.stop(None).wait()


def _executor() -> Any:
    from concurrent import futures

    return futures.ThreadPoolExecutor(max_workers=2)


# --------------------------------------------------------------------------- enrollment


def test_organization_not_enrolled_is_permission_denied(running: Running, pki: Pki) -> None:
    """A valid certificate of an organization outside the enrolled list: PERMISSION_DENIED."""
    with create_channel(pki.not_enrolled, running.bound.address, "localhost") as channel:
        stub = _stub(channel)
        error = _refusal(lambda: stub.Hello(_hello(pki.not_enrolled), timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'harbour-bank' is not enrolled" in error.details()
        header = pb.StageHeader(session=SESSION, stage=pb.STAGE_MASKED_INPUT)
        error = _refusal(
            lambda: stub.UploadStage(iter_upload(header, b"x" * 100, CHUNK), timeout=TIMEOUT)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        error = _refusal(
            lambda: list(stub.DownloadModel(pb.ModelRequest(round=4, cluster=0), timeout=TIMEOUT))
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert running.servicer.calls == []
    assert running.servicer.uploads == []


def test_enrollment_can_change_while_serving(pki: Pki) -> None:
    """An interceptor given a function sees enrollment changes on the next call."""
    enrolled = {"st-mary"}
    bound = create_server(
        pki.server, port=0, interceptors=[EnrollmentInterceptor(lambda: enrolled)]
    )
    pb_grpc.add_AggregatorServicer_to_server(_TestAggregator(pki.server), bound.server)
    bound.start()
    try:
        with create_channel(pki.st_mary, bound.address, "localhost") as channel:
            assert _stub(channel).Hello(_hello(pki.st_mary), timeout=TIMEOUT).organization
            enrolled.clear()
            error = _refusal(lambda: _stub(channel).Hello(_hello(pki.st_mary), timeout=TIMEOUT))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        bound.stop(None)


def test_hello_with_another_organizations_identity_is_permission_denied(
    running: Running, pki: Pki
) -> None:
    """St Mary's connection cannot register Glen Clinic's identity certificate."""
    request = _hello(pki.st_mary, identity_certificate=_der(pki.glen_clinic.identity_certificate))
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        error = _refusal(lambda: _stub(channel).Hello(request, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not issued to 'st-mary'" in error.details()


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"consortium_config_hash": hashlib.sha256(b"other").digest()}, "FAILED_PRECONDITION"),
        ({"protocol": "fedhft.v2"}, "FAILED_PRECONDITION"),
        ({"consortium_config_hash": b"short"}, "INVALID_ARGUMENT"),
        ({"identity_certificate": b"not a certificate"}, "INVALID_ARGUMENT"),
        ({"sealing_certificate": b"\x30" * 20_000}, "RESOURCE_EXHAUSTED"),
    ],
    ids=["config-hash", "version", "hash-length", "garbage-cert", "huge-cert"],
)
def test_bad_hello_gets_a_precise_status(
    running: Running, pki: Pki, overrides: dict[str, Any], status: str
) -> None:
    """Each kind of bad Hello maps to its own gRPC status."""
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        error = _refusal(
            lambda: _stub(channel).Hello(_hello(pki.st_mary, **overrides), timeout=TIMEOUT)
        )
    assert error.code().name == status


# --------------------------------------------------------------------------- sizes and rounds


def test_oversized_message_is_resource_exhausted(running: Running, pki: Pki) -> None:
    """A message above the server's limit is refused by gRPC before the servicer runs."""
    submission = pb.StageSubmission(
        session=SESSION, stage=pb.STAGE_ADVERTISE_KEYS, payload=b"\x01" * (MAX_MESSAGE + 1)
    )
    address = running.bound.address
    with create_channel(
        pki.st_mary, address, "localhost", max_message_bytes=4 * MAX_MESSAGE
    ) as channel:
        error = _refusal(lambda: _stub(channel).SubmitStage(submission, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert running.servicer.calls == []


def test_stage_payload_over_its_cap_is_resource_exhausted(running: Running, pki: Pki) -> None:
    """A stage payload within gRPC's limit but above the stage cap is refused by validation."""
    submission = pb.StageSubmission(
        session=SESSION, stage=pb.STAGE_ADVERTISE_KEYS, payload=b"\x01" * (STAGE_CAP + 1)
    )
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        error = _refusal(lambda: _stub(channel).SubmitStage(submission, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "UploadStage" in error.details()


@pytest.mark.parametrize(
    ("session", "stage", "status"),
    [
        (SESSION, pb.STAGE_ADVERTISE_KEYS, "OK"),
        (_session(round=3), pb.STAGE_ADVERTISE_KEYS, "FAILED_PRECONDITION"),
        (_session(cluster=1), pb.STAGE_ADVERTISE_KEYS, "FAILED_PRECONDITION"),
        (_session(session_id=bytes(32)), pb.STAGE_ADVERTISE_KEYS, "FAILED_PRECONDITION"),
        (SESSION, pb.STAGE_UNMASK, "FAILED_PRECONDITION"),
        (SESSION, pb.STAGE_UNSPECIFIED, "INVALID_ARGUMENT"),
        (_session(session_id=b"short"), pb.STAGE_ADVERTISE_KEYS, "INVALID_ARGUMENT"),
        (_session(run_id="run 1;drop"), pb.STAGE_ADVERTISE_KEYS, "INVALID_ARGUMENT"),
    ],
    ids=["current", "old-round", "other-cluster", "other-session", "other-stage",
         "no-stage", "short-sid", "bad-run-id"],
)  # fmt: skip
def test_stage_submission_for_the_wrong_session_is_refused(
    running: Running, pki: Pki, session: pb.SessionRef, stage: int, status: str
) -> None:
    """A message for another round, cluster, session or stage is refused precisely."""
    submission = pb.StageSubmission(session=session, stage=stage, payload=b"advertisement")  # type: ignore[arg-type]
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        stub = _stub(channel)
        if status == "OK":
            assert stub.SubmitStage(submission, timeout=TIMEOUT).session == SESSION
            return
        error = _refusal(lambda: stub.SubmitStage(submission, timeout=TIMEOUT))
    assert error.code().name == status


# --------------------------------------------------------------------------- chunked streams


def test_chunked_upload_beyond_the_message_limit_gets_a_signed_receipt(
    running: Running, pki: Pki
) -> None:
    """A payload 12× the message limit arrives intact and the receipt verifies."""
    payload = bytes(range(256)) * (3 * MAX_MESSAGE // 64)
    assert len(payload) > 10 * MAX_MESSAGE
    header = pb.StageHeader(session=SESSION, stage=pb.STAGE_MASKED_INPUT)
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        stub = _stub(channel)
        hello = stub.Hello(_hello(pki.st_mary), timeout=TIMEOUT)
        ack = stub.UploadStage(iter_upload(header, payload, CHUNK), timeout=TIMEOUT)
    assert running.servicer.uploads == [("st-mary", payload)]
    server_key = verify_server_identity_certificate(
        x509.load_der_x509_certificate(hello.server_identity_certificate),
        pki.st_mary.ca_certificate,
        "localhost",
    )
    statement = verify_receipt(ack.receipt, server_key)
    assert statement.organization == "st-mary"
    assert statement.session == SESSION
    assert statement.payload_bytes == len(payload)
    assert statement.payload_sha256 == hashlib.sha256(payload).digest()


def _tampered_upload(payload: bytes) -> Iterator[pb.UploadChunk]:
    yield pb.UploadChunk(header=pb.StageHeader(session=SESSION, stage=pb.STAGE_MASKED_INPUT))
    for chunk in iter_chunks(payload, CHUNK):
        if chunk.index == 1:
            chunk = pb.Chunk(index=1, data=bytes(len(chunk.data)))
        yield pb.UploadChunk(chunk=chunk)


def _declared_too_large() -> Iterator[pb.UploadChunk]:
    yield pb.UploadChunk(header=pb.StageHeader(session=SESSION, stage=pb.STAGE_MASKED_INPUT))
    yield pb.UploadChunk(
        chunk=pb.Chunk(index=0, data=b"x", total_bytes=UPLOAD_CAP + 1, sha256=bytes(32))
    )


def _wrong_round_upload() -> Iterator[pb.UploadChunk]:
    stale = _session(round=SESSION.round - 1)
    header = pb.StageHeader(session=stale, stage=pb.STAGE_MASKED_INPUT)
    return iter_upload(header, b"y" * 1000, CHUNK)


@pytest.mark.parametrize(
    ("requests", "status"),
    [
        (lambda: _tampered_upload(b"z" * (3 * CHUNK)), "DATA_LOSS"),
        (lambda: _declared_too_large(), "RESOURCE_EXHAUSTED"),
        (
            lambda: iter_upload(
                pb.StageHeader(session=SESSION, stage=pb.STAGE_MASKED_INPUT),
                b"w" * (UPLOAD_CAP + 1),
                CHUNK,
            ),
            "RESOURCE_EXHAUSTED",
        ),
        (lambda: _wrong_round_upload(), "FAILED_PRECONDITION"),
        (lambda: iter([pb.UploadChunk(chunk=pb.Chunk(index=0))]), "INVALID_ARGUMENT"),
    ],
    ids=["bad-checksum", "declared-over-cap", "streamed-over-cap", "wrong-round", "no-header"],
)
def test_bad_uploads_are_refused_and_not_stored(
    running: Running, pki: Pki, requests: Any, status: str
) -> None:
    """Corrupted, oversized, stale or headerless uploads get their status; nothing is kept."""
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        error = _refusal(lambda: _stub(channel).UploadStage(requests(), timeout=TIMEOUT))
    assert error.code().name == status
    assert running.servicer.uploads == []


def test_model_download_streams_in_chunks(running: Running, pki: Pki) -> None:
    """A model larger than one message downloads in chunks and matches its digest."""
    request = pb.ModelRequest(round=4, cluster=1)

    def check(header: pb.ModelHeader) -> None:
        validate_model_header(header, expected_round=4, expected_cluster=1)

    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        responses = _stub(channel).DownloadModel(request, timeout=TIMEOUT)
        header, model = receive_model(responses, max_total=1 << 20, check_header=check)
        assert model == MODEL
        assert header.model_hash == hashlib.sha256(MODEL).digest()
        error = _refusal(
            lambda: list(_stub(channel).DownloadModel(pb.ModelRequest(round=9), timeout=TIMEOUT))
        )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# --------------------------------------------------------------------------- errors


def test_unexpected_errors_are_internal_without_their_text(
    running: Running, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A servicer bug surfaces as INTERNAL with a fixed message; its text is not logged."""
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        error = _refusal(lambda: _stub(channel).AwaitRound(pb.RoundRequest(), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal server error"
    assert "hunter-2" not in caplog.text
    assert "RuntimeError" in caplog.text


def test_an_unexpected_error_is_logged_in_one_line_with_its_place(
    running: Running, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A servicer bug is logged once, in one line naming the call, the caller and the line
    it was raised at: no traceback, no text of the error."""
    caplog.set_level(logging.DEBUG)
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        _refusal(lambda: _stub(channel).AwaitRound(pb.RoundRequest(), timeout=TIMEOUT))
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    line = record.getMessage()
    assert record.exc_info is None and "\n" not in line
    assert "/fedhft.v1.Aggregator/AwaitRound from st-mary ended with INTERNAL" in line
    assert "RuntimeError at test_transport.py:" in line
    assert "hunter-2" not in caplog.text


def test_a_servicers_own_abort_keeps_its_status(running: Running, pki: Pki) -> None:
    """`translate_errors` leaves a status the servicer set with `context.abort` untouched."""
    with create_channel(pki.st_mary, running.bound.address, "localhost") as channel:
        error = _refusal(
            lambda: _stub(channel).AwaitSession(pb.SessionRequest(cluster=7), timeout=TIMEOUT)
        )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no cluster 7"


def test_remote_error_says_whether_to_retry(running: Running, pki: Pki) -> None:
    """Refusals become final RemoteErrors; an unreachable server is retryable."""
    with create_channel(pki.not_enrolled, running.bound.address, "localhost") as channel:
        refused = _refusal(lambda: _stub(channel).Hello(_hello(pki.not_enrolled), timeout=TIMEOUT))
    denied = remote_error(refused)
    assert (denied.code, denied.retryable) == ("PERMISSION_DENIED", False)
    port = running.bound.port
    running.bound.stop(None)
    with create_channel(pki.st_mary, f"127.0.0.1:{port}", "localhost") as channel:
        down = _refusal(lambda: _stub(channel).Hello(_hello(pki.st_mary), timeout=2.0))
    unavailable = remote_error(down)
    assert (unavailable.code, unavailable.retryable) == ("UNAVAILABLE", True)


def test_port_in_use_is_a_transport_error(running: Running, pki: Pki) -> None:
    """A second server on a port already served fails loudly instead of sharing it."""
    with pytest.raises(TransportError, match="cannot listen"):
        create_server(pki.server, port=running.bound.port)


def test_bound_server_address_formats_ipv6() -> None:
    """IPv6 hosts are bracketed in the address a channel dials."""
    assert BoundServer(server=None, host="::1", port=5000).address == "[::1]:5000"
    assert BoundServer(server=None, host="127.0.0.1", port=5000).address == "127.0.0.1:5000"


# --------------------------------------------------------------------------- idle streams


class _EndlessModel(pb_grpc.AggregatorServicer):  # type: ignore[misc]
    """Streams model chunks for as long as the caller reads them."""

    @translate_errors
    def DownloadModel(self, request: pb.ModelRequest, context: Any) -> Iterator[pb.ModelChunk]:
        yield pb.ModelChunk(header=pb.ModelHeader(round=request.round, format="safetensors"))
        chunk = bytes(CHUNK)
        while True:
            yield pb.ModelChunk(chunk=pb.Chunk(data=chunk))


def test_a_download_the_caller_stops_reading_is_cancelled(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A response stream that can send nothing more (its caller stopped reading) is
    cancelled after the idle deadline, and the cancellation is logged in one line."""
    caplog.set_level(logging.DEBUG)
    interceptor = EnrollmentInterceptor(ENROLLED, stream_idle_timeout_s=0.3)
    bound = create_server(pki.server, port=0, interceptors=[interceptor])
    pb_grpc.add_AggregatorServicer_to_server(_EndlessModel(), bound.server)
    bound.start()
    try:
        with create_channel(pki.st_mary, bound.address, "localhost") as channel:
            stream = _stub(channel).DownloadModel(pb.ModelRequest(round=1), timeout=120)
            assert next(stream).HasField("header")
            # Stop reading until the server gave up; then what was buffered drains and
            # the stream ends with the server's cancellation.
            _wait_for_line(caplog, "DownloadModel from st-mary ended with DEADLINE_EXCEEDED")
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stream:
                    pass
    finally:
        bound.stop(None)
    assert ended.value.code() == grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]


def _wait_for_line(caplog: pytest.LogCaptureFixture, text: str, bound_s: float = 60.0) -> None:
    """Wait until a log line holds `text`, at most `bound_s` seconds (the caller checks)."""
    end = time.monotonic() + bound_s
    while text not in caplog.text and time.monotonic() < end:
        time.sleep(0.05)
    assert text in caplog.text
