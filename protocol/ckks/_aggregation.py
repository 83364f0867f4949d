"""Homomorphic secure aggregation (CKKS mode): session, client, server, in-process driver.

Implements ARCHITECTURE.md §4.2. Each organization encrypts its blocks, packed densely by the
public :class:`~fedhft.protocol.ckks._packing.PackingLayout`, under the consortium's
CKKS secret key (:mod:`fedhft.protocol.ckks._scheme`); the server, holding a keyless context,
adds the ciphertexts of each segment over the organizations that sent them, and returns
the encrypted sums; every organization decrypts them and unpacks one sum per block.

The protocol is non-interactive (one upload, one download) and needs no dropout
recovery: a client that never uploads is simply not in the sum, and the per-block
contributor count says so. A segment with fewer contributors than the session's minimum
cohort is withheld by the server and refused by the clients, so no one decrypts the sum
of one or two organizations.

Threat model (weaker than the masking mode): every organization holds the secret key,
so the server together with any one organization decrypts every individual upload; a
malicious server could also return one organization's ciphertext as a "sum". The mode
protects updates against an honest-but-curious server that colludes with no client, and
against outsiders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import tenseal as ts

from ..errors import (
    CohortTooSmallError,
    DuplicateMessageError,
    ForgedMessageError,
    InvalidInputError,
    MalformedMessageError,
    QuantizationOverflowError,
    ReplayError,
    SessionParamsError,
    StageError,
)
from ._messages import (
    MAX_PARTIES,
    CKKSEncryptedSum,
    CKKSUpload,
    EncryptedSegmentSum,
    check_id,
    load_ciphertext,
    max_ciphertext_bytes,
)
from ._packing import PackedSegment, PackingLayout
from ._scheme import CKKSKeyring, CKKSParameters, CKKSServerContext

FloatArray = npt.NDArray[np.float64]

_SESSION_DOMAIN = b"fedhft/ckks-session/v1\x00"


@dataclass(frozen=True, eq=False)
class CKKSSession:
    """Public parameters of one CKKS aggregation: who sums which blocks, under which key.

    ``sid`` binds all of them (and ``key_id``) into every message, so a message from
    another run, round, cluster, roster or layout is rejected as a replay.
    """

    run_id: str
    round: int
    cluster: int
    roster: tuple[str, ...]
    key_id: str
    min_cohort: int
    block_lengths: Mapping[str, int]
    block_supports: Mapping[str, frozenset[str]]
    config_hash: str = ""
    model_hash: str = ""
    sid: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_id(self.run_id, "`run_id`")
        check_id(self.key_id, "`key_id`")
        for name in ("round", "cluster"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SessionParamsError(f"`{name}` must be an integer >= 0, got {value!r}")
        roster = tuple(self.roster)
        for organization in roster:
            check_id(organization, "organization id")
        if len(roster) > MAX_PARTIES or list(roster) != sorted(set(roster)) or not roster:
            raise SessionParamsError("`roster` must be a non-empty, sorted list of unique ids")
        if not isinstance(self.min_cohort, int) or self.min_cohort < 3:
            raise SessionParamsError(
                f"`min_cohort` must be an integer >= 3 (one member of a pair could subtract "
                f"its own update), got {self.min_cohort!r}"
            )
        supports: dict[str, frozenset[str]] = {}
        for block_id in sorted(self.block_supports):
            check_id(block_id, "block id")
            holders = frozenset(self.block_supports[block_id])
            if not holders <= set(roster):
                raise SessionParamsError(f"holders of block {block_id!r} must be in the roster")
            supports[block_id] = holders
        lengths = {
            block_id: self.block_lengths[block_id] for block_id in sorted(self.block_lengths)
        }
        # The layout's own checks cover lengths and matching block names.
        PackingLayout.build(block_lengths=lengths, block_supports=supports, slots=1)
        object.__setattr__(self, "roster", roster)
        object.__setattr__(self, "block_lengths", MappingProxyType(lengths))
        object.__setattr__(self, "block_supports", MappingProxyType(supports))
        canonical = json.dumps(
            {
                "run_id": self.run_id,
                "round": self.round,
                "cluster": self.cluster,
                "roster": list(roster),
                "key_id": self.key_id,
                "min_cohort": self.min_cohort,
                "blocks": [[b, lengths[b], sorted(supports[b])] for b in lengths],
                "config_hash": self.config_hash,
                "model_hash": self.model_hash,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("ascii")
        object.__setattr__(self, "sid", hashlib.sha256(_SESSION_DOMAIN + canonical).digest())

    def layout(self, parameters: CKKSParameters) -> PackingLayout:
        """The packing of this session's blocks into ciphertexts of ``parameters``."""
        if len(self.roster) > parameters.max_clients:
            raise SessionParamsError(
                f"the roster has {len(self.roster)} organizations, more than the "
                f"{parameters.max_clients} the CKKS parameters were chosen for"
            )
        return PackingLayout.build(
            block_lengths=self.block_lengths,
            block_supports=self.block_supports,
            slots=parameters.slots,
        )


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class CKKSAggregate:
    """Decrypted per-block sums, their contributor counts, and the blocks withheld."""

    sums: Mapping[str, FloatArray]
    counts: Mapping[str, int]
    withheld: frozenset[str]
    parameters: CKKSParameters = field(repr=False)

    def error_bound(self, block_id: str) -> float:
        """Guaranteed per-coordinate bound on the error of ``sums[block_id]``."""
        return self.parameters.error_bound(self.counts[block_id])


class CKKSClient:
    """One organization's side of a CKKS session: encrypt once, decrypt the sums."""

    def __init__(self, session: CKKSSession, keyring: CKKSKeyring) -> None:
        if keyring.key_id != session.key_id:
            raise SessionParamsError("the session names another CKKS key generation")
        if keyring.organization not in session.roster:
            raise SessionParamsError(f"{keyring.organization!r} is not in the session's roster")
        self.session = session
        self.organization = keyring.organization
        self._keyring = keyring
        self._parameters = keyring.parameters
        self._layout = session.layout(keyring.parameters)
        self._uploaded = False

    @property
    def layout(self) -> PackingLayout:
        """The session's public packing layout."""
        return self._layout

    def _segment_values(
        self, segment: PackedSegment, inputs: Mapping[str, npt.ArrayLike]
    ) -> FloatArray:
        values = np.empty(segment.length, dtype=np.float64)
        for block in segment.blocks:
            vector = np.asarray(inputs[block.block_id], dtype=np.float64)
            if vector.shape != (block.length,):
                raise InvalidInputError(
                    f"block {block.block_id!r} must have shape ({block.length},), "
                    f"got {vector.shape}"
                )
            values[block.offset : block.offset + block.length] = vector
        if not np.all(np.isfinite(values)):
            raise InvalidInputError("inputs must be finite (no NaN or infinity)")
        if np.max(np.abs(values), initial=0.0) > self._parameters.value_bound:
            raise QuantizationOverflowError(
                f"an input value exceeds the CKKS value bound {self._parameters.value_bound}; "
                f"clip updates to it or run a new ceremony with a larger bound"
            )
        return values

    def encrypt(self, inputs: Mapping[str, npt.ArrayLike]) -> bytes:
        """Encrypt this organization's blocks (exactly those it holds) into an upload."""
        if self._uploaded:
            raise StageError("this client already encrypted its input for the session")
        expected = self._layout.blocks_of(self.organization)
        if set(inputs) != expected:
            missing, extra = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
            raise InvalidInputError(
                f"inputs must name exactly this organization's blocks; missing {missing}, "
                f"unexpected {extra}"
            )
        context = self._keyring.tenseal_context
        segments = []
        for segment in self._layout.segments_of(self.organization):
            values = self._segment_values(segment, inputs)
            chunks = np.split(
                values, np.arange(self._layout.slots, segment.length, self._layout.slots)
            )
            segments.append(
                (
                    segment.index,
                    tuple(ts.ckks_vector(context, chunk).serialize() for chunk in chunks),
                )
            )
        self._uploaded = True
        return CKKSUpload(self.session.sid, self.organization, tuple(segments)).encode()

    def decrypt(self, encrypted_sum: bytes) -> CKKSAggregate:
        """Decrypt the server's sums into one sum per block, refusing undersized cohorts."""
        message = CKKSEncryptedSum.decode(
            encrypted_sum, max_ciphertext_bytes=max_ciphertext_bytes(self._parameters)
        )
        if message.sid != self.session.sid:
            raise ReplayError("the encrypted sum belongs to another session, round or cluster")
        segments = self._layout.segments
        released = {s.index for s in message.released}
        if released | set(message.withheld) != set(range(len(segments))) or (
            released & set(message.withheld)
        ):
            raise MalformedMessageError("the server must release or withhold every segment once")
        context = self._keyring.tenseal_context
        sums: dict[str, FloatArray] = {}
        counts: dict[str, int] = {}
        for item in message.released:
            segment = segments[item.index]
            if not set(item.contributors) <= set(segment.holders):
                raise MalformedMessageError("a segment names contributors that do not hold it")
            if len(item.contributors) < self.session.min_cohort:
                raise CohortTooSmallError(
                    f"the server released a sum of {len(item.contributors)} organizations, "
                    f"below the minimum cohort {self.session.min_cohort}",
                    blocks=tuple(b.block_id for b in segment.blocks),
                )
            lengths = segment.chunk_lengths()
            if len(item.ciphertexts) != len(lengths):
                raise MalformedMessageError("a segment sum has the wrong number of ciphertexts")
            values = np.concatenate(
                [
                    np.asarray(
                        load_ciphertext(
                            context, data, length=length, parameters=self._parameters
                        ).decrypt(),
                        dtype=np.float64,
                    )
                    for data, length in zip(item.ciphertexts, lengths, strict=True)
                ]
            )
            for block in segment.blocks:
                sums[block.block_id] = values[block.offset : block.offset + block.length]
                counts[block.block_id] = len(item.contributors)
        withheld = frozenset(
            b.block_id for index in message.withheld for b in segments[index].blocks
        )
        return CKKSAggregate(
            sums=MappingProxyType(sums),
            counts=MappingProxyType(counts),
            withheld=withheld,
            parameters=self._parameters,
        )


# --------------------------------------------------------------------------- server


class CKKSAggregator:
    """The server's side of a CKKS session: check uploads, add them, release the sums.

    It holds only running encrypted sums, never an individual plaintext, and its context
    has no key that could decrypt them.
    """

    def __init__(self, session: CKKSSession, server_context: CKKSServerContext) -> None:
        if server_context.key_id != session.key_id:
            raise SessionParamsError("the session names another CKKS key generation")
        self.session = session
        self._context = server_context
        self._parameters = server_context.parameters
        self._layout = session.layout(server_context.parameters)
        self._sums: dict[int, list[ts.CKKSVector]] = {}
        self._contributors: dict[int, list[str]] = {s.index: [] for s in self._layout.segments}
        self._received: set[str] = set()
        self._closed = False

    @property
    def received(self) -> frozenset[str]:
        """Organizations whose upload was accepted."""
        return frozenset(self._received)

    def receive(self, sender: str, upload: bytes) -> None:
        """Accept ``sender``'s upload (``sender`` is the identity the transport verified)."""
        if self._closed:
            raise StageError("the session's sums were already released")
        message = CKKSUpload.decode(
            upload, max_ciphertext_bytes=max_ciphertext_bytes(self._parameters)
        )
        if message.sid != self.session.sid:
            raise ReplayError("the upload belongs to another session, round or cluster")
        if message.organization != sender or sender not in self.session.roster:
            raise ForgedMessageError("the upload's organization is not its authenticated sender")
        if sender in self._received:
            raise DuplicateMessageError(f"{sender!r} already uploaded in this session")
        held = self._layout.segments_of(sender)
        if [index for index, _ in message.segments] != [s.index for s in held]:
            raise MalformedMessageError("the upload must carry exactly the sender's segments")
        # Check every ciphertext before adding any, so a bad upload leaves no trace.
        loaded = []
        for segment, (_, ciphertexts) in zip(held, message.segments, strict=True):
            lengths = segment.chunk_lengths()
            if len(ciphertexts) != len(lengths):
                raise MalformedMessageError("a segment has the wrong number of ciphertexts")
            loaded.append(
                [
                    load_ciphertext(
                        self._context.tenseal_context,
                        data,
                        length=length,
                        parameters=self._parameters,
                    )
                    for data, length in zip(ciphertexts, lengths, strict=True)
                ]
            )
        for segment, vectors in zip(held, loaded, strict=True):
            running = self._sums.get(segment.index)
            if running is None:
                self._sums[segment.index] = vectors
            else:
                for total, vector in zip(running, vectors, strict=True):
                    total.add_(vector)
            self._contributors[segment.index].append(sender)
        self._received.add(sender)

    def result(self) -> CKKSEncryptedSum:
        """Release the sum of every segment with at least ``min_cohort`` contributors.

        Raises `CohortTooSmallError` (naming every block) when no segment qualifies;
        otherwise segments below the cohort are withheld and listed.
        """
        self._closed = True
        released, withheld = [], []
        for segment in self._layout.segments:
            contributors = tuple(sorted(self._contributors[segment.index]))
            if len(contributors) < self.session.min_cohort:
                withheld.append(segment.index)
                continue
            released.append(
                EncryptedSegmentSum(
                    segment.index,
                    contributors,
                    tuple(vector.serialize() for vector in self._sums[segment.index]),
                )
            )
        if not released:
            raise CohortTooSmallError(
                f"no block has {self.session.min_cohort} contributors "
                f"({len(self._received)} organizations uploaded)",
                blocks=tuple(self.session.block_lengths),
            )
        return CKKSEncryptedSum(self.session.sid, tuple(released), tuple(withheld))


# --------------------------------------------------------------------------- in-process


def run_ckks_in_process(
    session: CKKSSession,
    *,
    public_context: bytes,
    keyrings: Mapping[str, CKKSKeyring],
    inputs: Mapping[str, Mapping[str, npt.ArrayLike]],
    drop: Collection[str] = (),
) -> CKKSAggregate:
    """Run one CKKS session in memory; organizations in ``drop`` never upload.

    Returns the aggregate as decrypted by the first surviving organization of the roster.
    """
    aggregator = CKKSAggregator(session, CKKSServerContext.from_bytes(public_context))
    survivors = [org for org in session.roster if org not in set(drop)]
    if not survivors:
        raise CohortTooSmallError("every organization dropped out", blocks=())
    clients = {org: CKKSClient(session, keyrings[org]) for org in survivors}
    for org in survivors:
        aggregator.receive(org, clients[org].encrypt(inputs[org]))
    return clients[survivors[0]].decrypt(aggregator.result().encode())
