"""Run one masking-mode session entirely in one process, with optional dropouts.

Used by tests, benchmarks and single-machine simulation: every message goes through its
canonical encoding and back, exactly as a transport would carry it, and the client and
server state machines are the real ones. Timings and byte counts per party are recorded
when a :class:`SessionStats` is passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import SessionParamsError
from ._client import SecAggClient
from ._params import SessionParams
from ._server import AggregateResult, SecAggServer
from .messages import Message, Stage

SERVER = "server"
"""The name of the server in a transcript."""

_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True)
class TranscriptEntry:
    """One message on the wire: stage, sender, recipient (``"server"`` for the server).

    A client's message belongs to the stage it answers; a server broadcast belongs to
    the stage it closes (``AdvertisedKeys`` to ``advertise``, ``UnmaskRequest`` to
    ``consistency``).
    """

    stage: Stage
    sender: str
    recipient: str
    data: bytes


@dataclass
class SessionStats:
    """Per-party cost of one in-process session (filled in by the driver)."""

    client_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds each client spent in its stage methods and message codecs."""
    server_seconds: float = 0.0
    """Seconds the server spent receiving, finishing stages and unmasking."""
    bytes_up: dict[str, int] = field(default_factory=dict)
    """Bytes each client sent to the server."""
    bytes_down: dict[str, int] = field(default_factory=dict)
    """Bytes the server sent to each client."""
    clock: Callable[[], float] | None = None
    """The clock to time with (e.g. ``time.process_time``); ``time.perf_counter`` if None."""


def run_secagg_in_process(
    params: SessionParams,
    inputs: Mapping[str, Mapping[str, npt.ArrayLike]],
    identities: Mapping[str, Ed25519PrivateKey],
    *,
    drop: Mapping[Stage | str, Collection[str]] | None = None,
    transcript: list[TranscriptEntry] | None = None,
    stats: SessionStats | None = None,
) -> AggregateResult:
    """Run one session of every roster member and return the server's result.

    Args:
        params: The session.
        inputs: Organization → block id → vector, for exactly the blocks it holds.
        identities: Organization → Ed25519 identity key, for every roster member.
        drop: Stage → organizations that go silent at that stage (they send nothing from
            then on). Stages: ``advertise``, ``share_keys``, ``masked_input``,
            ``consistency``, ``unmask``.
        transcript: If given, every message on the wire is appended to it.
        stats: If given, filled with per-party seconds and bytes.

    Raises:
        ThresholdError, CohortTooSmallError: too many dropouts; nothing was unmasked.
        ProtocolError: any other check failed.
    """
    drops = {Stage(stage): frozenset(orgs) for stage, orgs in (drop or {}).items()}
    unknown = set().union(*drops.values()) - set(params.roster) if drops else set()
    if unknown:
        raise SessionParamsError(f"`drop` names {len(unknown)} organizations not in the roster")
    stats = stats if stats is not None else SessionStats()
    for org in params.roster:
        stats.client_seconds.setdefault(org, 0.0)
        stats.bytes_up.setdefault(org, 0)
        stats.bytes_down.setdefault(org, 0)
    now = stats.clock if stats.clock is not None else time.perf_counter
    public = {org: key.public_key() for org, key in identities.items()}
    started = now()
    server = SecAggServer(params, peer_identities=public)
    stats.server_seconds += now() - started
    clients = {
        org: SecAggClient(
            params, organization=org, identity_key=identities[org], peer_identities=public
        )
        for org in params.roster
    }

    def upload(stage: Stage, org: str, message: Message) -> None:
        started = now()
        data = message.encode()
        stats.client_seconds[org] += now() - started
        stats.bytes_up[org] += len(data)
        if transcript is not None:
            transcript.append(TranscriptEntry(stage, org, SERVER, data))
        started = now()
        server.receive(data)
        stats.server_seconds += now() - started

    # A broadcast is one message sent to every participant: the server encodes it once.
    encoded: dict[int, tuple[Message, bytes]] = {}

    def download(stage: Stage, org: str, message: _M) -> _M:
        started = now()
        cached = encoded.get(id(message))
        if cached is None or cached[0] is not message:
            cached = encoded[id(message)] = (message, message.encode())
        data = cached[1]
        stats.server_seconds += now() - started
        stats.bytes_down[org] += len(data)
        if transcript is not None:
            transcript.append(TranscriptEntry(stage, SERVER, org, data))
        started = now()
        decoded = cast(_M, type(message).decode(data))
        stats.client_seconds[org] += now() - started
        return decoded

    @contextmanager
    def server_clock() -> Iterator[None]:
        started = now()
        try:
            yield
        finally:
            stats.server_seconds += now() - started

    @contextmanager
    def client_clock(org: str) -> Iterator[None]:
        started = now()
        try:
            yield
        finally:
            stats.client_seconds[org] += now() - started

    def active(stage: Stage) -> list[str]:
        return sorted(server.participants - drops.get(stage, frozenset()))

    for org in active(Stage.ADVERTISE):
        with client_clock(org):
            advertisement = clients[org].advertise_keys()
        upload(Stage.ADVERTISE, org, advertisement)
    with server_clock():
        advertised = server.finish_advertise()

    for org in active(Stage.SHARE_KEYS):
        received_ads = download(Stage.ADVERTISE, org, advertised)
        with client_clock(org):
            shares = clients[org].share_keys(received_ads)
        upload(Stage.SHARE_KEYS, org, shares)
    with server_clock():
        relayed = server.finish_share_keys()

    for org in active(Stage.MASKED_INPUT):
        received_shares = download(Stage.SHARE_KEYS, org, relayed[org])
        with client_clock(org):
            masked = clients[org].mask_input(received_shares, inputs.get(org, {}))
        upload(Stage.MASKED_INPUT, org, masked)
    with server_clock():
        announcement = server.finish_masked_input()

    for org in active(Stage.CONSISTENCY):
        received_announcement = download(Stage.MASKED_INPUT, org, announcement)
        with client_clock(org):
            signature = clients[org].sign_survivors(received_announcement)
        upload(Stage.CONSISTENCY, org, signature)
    with server_clock():
        request = server.finish_consistency()

    for org in active(Stage.UNMASK):
        received_request = download(Stage.CONSISTENCY, org, request)
        with client_clock(org):
            response = clients[org].unmask(received_request)
        upload(Stage.UNMASK, org, response)
    with server_clock():
        return server.finish_unmask()
