"""The messages of masking-mode secure aggregation and their canonical byte encoding.

Every message is a frozen dataclass with ``encode() -> bytes`` and ``decode(bytes)``.
The encoding is canonical (one byte string per message, lists sorted and unique) and
self-contained, so a transport carries it opaquely and a signature over it is
unambiguous. Layout: ``"FHSA" ‖ version ‖ kind ‖ sid (32) ‖ round (u64) ‖ cluster (u32)``
followed by the message's fields; integers are big-endian, strings and byte strings
length-prefixed, vectors little-endian words (`fedhft.protocol._encoding`, ids under
`SECAGG_IDS`: a u8 length and ASCII).

Decoding is strict: wrong magic, version or kind, out-of-range sizes, ids that are not
identifiers, unsorted or repeated list entries, and trailing bytes all raise
:class:`MalformedMessageError`. Whether a message belongs to *this* session and stage
is for the state machines to check; decoding only guarantees it is well formed.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import ClassVar, Self

import numpy as np

from .._crypto import KEY_BYTES, SIGNATURE_BYTES
from .._encoding import SECAGG_IDS, ByteReader, ByteWriter
from .._encoding import Words as Words
from ..errors import MalformedMessageError
from ._shamir import SHARE_VALUE_BYTES, decode_share_value, encode_share_value

MAGIC = b"FHSA"
VERSION = 1
SID_BYTES = 32

MAX_PARTIES = 10_000
"""Most organizations a session, and so any list in a message, may name."""
MAX_BLOCKS = 100_000
"""Most blocks a session may sum."""
MAX_BLOCK_WORDS = 2**28
"""Most words in one block's vector (1 GiB of uint32)."""
MAX_SEALED_SHARE_BYTES = 2**22
"""Most bytes of one encrypted share bundle."""

ORGANIZATION_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
"""Organization ids, as in `fedhft.policies` (lower-case letters, digits, '-', '_')."""
BLOCK_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/#\[\]-]{0,254}")
"""Block ids: module paths with optional slice suffixes, at most 255 characters."""


class Stage(StrEnum):
    """The five stages of a masking session, in order (ARCHITECTURE.md §4.1)."""

    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"


class MessageKind(IntEnum):
    """The kind byte of each message, in protocol order."""

    KEY_ADVERTISEMENT = 1
    ADVERTISED_KEYS = 2
    ENCRYPTED_SHARES = 3
    RELAYED_SHARES = 4
    MASKED_INPUT = 5
    SURVIVOR_ANNOUNCEMENT = 6
    SURVIVOR_SIGNATURE = 7
    UNMASK_REQUEST = 8
    UNMASK_RESPONSE = 9


def check_organization_id(value: str, what: str = "organization id") -> str:
    """Return ``value`` if it is a valid organization id, else raise."""
    if not isinstance(value, str) or ORGANIZATION_ID.fullmatch(value) is None:
        raise MalformedMessageError(
            f"{what} must be lower-case letters, digits, '-' or '_' (at most 63), got {value!r:.80}"
        )
    return value


def check_block_id(value: str) -> str:
    """Return ``value`` if it is a valid block id, else raise."""
    if not isinstance(value, str) or BLOCK_ID.fullmatch(value) is None:
        raise MalformedMessageError(
            "a block id must be 1–255 characters of letters, digits and _.:/#[]-, "
            f"got {value!r:.80}"
        )
    return value


# --------------------------------------------------------------------------- codec


def _writer() -> ByteWriter:
    return ByteWriter(SECAGG_IDS)


def _reader(data: bytes) -> ByteReader:
    return ByteReader(data, SECAGG_IDS)


def _read_organization(reader: ByteReader, what: str = "organization id") -> str:
    return check_organization_id(reader.text(what), what)


def _read_block(reader: ByteReader) -> str:
    return check_block_id(reader.text("block id"))


def _sorted_unique(keys: list[str], what: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise MalformedMessageError(f"{what} must be sorted and unique")


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class _Message:
    """Header fields every message carries: the session it belongs to."""

    KIND: ClassVar[MessageKind]

    sid: bytes
    round: int
    cluster: int

    def _write_header(self, writer: ByteWriter) -> None:
        if len(self.sid) != SID_BYTES:
            raise MalformedMessageError(f"a session id has {SID_BYTES} bytes")
        if not (0 <= self.round < 2**63 and 0 <= self.cluster < 2**32):
            raise MalformedMessageError("round or cluster out of range")
        writer.raw(MAGIC)
        writer.u8(VERSION)
        writer.u8(self.KIND)
        writer.raw(self.sid)
        writer.u64(self.round)
        writer.u32(self.cluster)

    @classmethod
    def _read_header(cls, data: bytes) -> tuple[ByteReader, bytes, int, int]:
        reader = _reader(data)
        reader.expect(MAGIC, "not a fedhft secure-aggregation message (bad magic)")
        version = reader.u8()
        if version != VERSION:
            raise MalformedMessageError(
                f"protocol version {version} is not supported; this build speaks {VERSION}"
            )
        kind = reader.u8()
        if kind != cls.KIND:
            raise MalformedMessageError(f"expected a {cls.KIND.name} message, got kind {kind}")
        sid = reader.raw(SID_BYTES)
        round_ = reader.u64()
        if round_ >= 2**63:
            raise MalformedMessageError("round out of range")
        return reader, sid, round_, reader.u32()

    def encode(self) -> bytes:
        """The canonical bytes of this message."""
        writer = _writer()
        self._write_header(writer)
        self._write_body(writer)
        return writer.getvalue()

    def _write_body(self, writer: ByteWriter) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class KeyAdvertisement(_Message):
    """Stage 1, client → server: fresh X25519 keys signed with the identity key."""

    KIND: ClassVar[MessageKind] = MessageKind.KEY_ADVERTISEMENT
    SIGNATURE_DOMAIN: ClassVar[bytes] = b"fedhft/secagg/v1/key-advertisement"

    organization: str
    encryption_key: bytes
    masking_key: bytes
    signature: bytes

    def signed_payload(self) -> bytes:
        """The bytes the signature covers: the header and every field but the signature."""
        writer = _writer()
        self._write_header(writer)
        self._write_keys(writer)
        return writer.getvalue()

    def _write_keys(self, writer: ByteWriter) -> None:
        check_organization_id(self.organization)
        if len(self.encryption_key) != KEY_BYTES or len(self.masking_key) != KEY_BYTES:
            raise MalformedMessageError(f"advertised public keys have {KEY_BYTES} bytes")
        writer.text(self.organization)
        writer.raw(self.encryption_key)
        writer.raw(self.masking_key)

    def _write_body(self, writer: ByteWriter) -> None:
        self._write_keys(writer)
        if len(self.signature) != SIGNATURE_BYTES:
            raise MalformedMessageError(f"a signature has {SIGNATURE_BYTES} bytes")
        writer.raw(self.signature)

    @classmethod
    def _read_fields(cls, reader: ByteReader, sid: bytes, round_: int, cluster: int) -> Self:
        return cls(
            sid,
            round_,
            cluster,
            organization=_read_organization(reader),
            encryption_key=reader.raw(KEY_BYTES),
            masking_key=reader.raw(KEY_BYTES),
            signature=reader.raw(SIGNATURE_BYTES),
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        message = cls._read_fields(reader, sid, round_, cluster)
        reader.done()
        return message


@dataclass(frozen=True)
class AdvertisedKeys(_Message):
    """Stage 1, server → clients: every advertisement received, sorted by organization."""

    KIND: ClassVar[MessageKind] = MessageKind.ADVERTISED_KEYS

    advertisements: tuple[KeyAdvertisement, ...]

    def _write_body(self, writer: ByteWriter) -> None:
        organizations = [ad.organization for ad in self.advertisements]
        _sorted_unique(organizations, "advertisements")
        writer.u32(len(self.advertisements))
        for ad in self.advertisements:
            if (ad.sid, ad.round, ad.cluster) != (self.sid, self.round, self.cluster):
                raise MalformedMessageError("an advertisement belongs to another session")
            ad._write_body(writer)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        count = reader.count(MAX_PARTIES, "advertisements")
        ads = tuple(
            KeyAdvertisement._read_fields(reader, sid, round_, cluster) for _ in range(count)
        )
        reader.done()
        _sorted_unique([ad.organization for ad in ads], "advertisements")
        return cls(sid, round_, cluster, advertisements=ads)


@dataclass(frozen=True)
class EncryptedShares(_Message):
    """Stage 2, client → server: one sealed share bundle per neighbour, for relaying."""

    KIND: ClassVar[MessageKind] = MessageKind.ENCRYPTED_SHARES

    sender: str
    shares: tuple[tuple[str, bytes], ...]
    """``(recipient, sealed bundle)`` pairs sorted by recipient."""

    def _write_body(self, writer: ByteWriter) -> None:
        writer.text(check_organization_id(self.sender, "sender"))
        _write_sealed(writer, self.shares, "recipients")

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        sender = _read_organization(reader, "sender")
        shares = _read_sealed(reader, "recipients")
        reader.done()
        return cls(sid, round_, cluster, sender=sender, shares=shares)


@dataclass(frozen=True)
class RelayedShares(_Message):
    """Stage 2, server → one client: the sealed bundles addressed to it."""

    KIND: ClassVar[MessageKind] = MessageKind.RELAYED_SHARES

    recipient: str
    shares: tuple[tuple[str, bytes], ...]
    """``(sender, sealed bundle)`` pairs sorted by sender."""

    def _write_body(self, writer: ByteWriter) -> None:
        writer.text(check_organization_id(self.recipient, "recipient"))
        _write_sealed(writer, self.shares, "senders")

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        recipient = _read_organization(reader, "recipient")
        shares = _read_sealed(reader, "senders")
        reader.done()
        return cls(sid, round_, cluster, recipient=recipient, shares=shares)


@dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    """Stage 3, client → server: each of the client's blocks, quantized and masked."""

    KIND: ClassVar[MessageKind] = MessageKind.MASKED_INPUT

    sender: str
    bits: int
    blocks: tuple[tuple[str, Words], ...]
    """``(block id, masked words)`` pairs sorted by block id."""

    def _write_body(self, writer: ByteWriter) -> None:
        writer.text(check_organization_id(self.sender, "sender"))
        if self.bits not in (32, 64):
            raise MalformedMessageError(f"word width must be 32 or 64 bits, got {self.bits}")
        writer.u8(self.bits)
        _sorted_unique([block for block, _ in self.blocks], "masked blocks")
        writer.u32(len(self.blocks))
        for block, words in self.blocks:
            if np.asarray(words).dtype.itemsize * 8 != self.bits:
                raise MalformedMessageError("a masked block's word width differs from `bits`")
            writer.text(check_block_id(block))
            writer.words(words)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        sender = _read_organization(reader, "sender")
        bits = reader.u8()
        if bits not in (32, 64):
            raise MalformedMessageError(f"word width must be 32 or 64 bits, got {bits}")
        count = reader.count(MAX_BLOCKS, "masked blocks")
        blocks = tuple(
            (_read_block(reader), reader.words(bits, MAX_BLOCK_WORDS)) for _ in range(count)
        )
        reader.done()
        _sorted_unique([block for block, _ in blocks], "masked blocks")
        return cls(sid, round_, cluster, sender=sender, bits=bits, blocks=blocks)


@dataclass(frozen=True)
class SurvivorAnnouncement(_Message):
    """Stage 4, server → clients: who sent a masked input (the survivor set U3)."""

    KIND: ClassVar[MessageKind] = MessageKind.SURVIVOR_ANNOUNCEMENT
    SIGNATURE_DOMAIN: ClassVar[bytes] = b"fedhft/secagg/v1/survivors"

    survivors: tuple[str, ...]

    def _write_body(self, writer: ByteWriter) -> None:
        _write_organizations(writer, self.survivors, "survivors")

    def signed_payload(self) -> bytes:
        """What a client signs to confirm this survivor set: the whole announcement."""
        return self.encode()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        survivors = _read_organizations(reader, "survivors")
        reader.done()
        return cls(sid, round_, cluster, survivors=survivors)


@dataclass(frozen=True)
class SurvivorSignature(_Message):
    """Stage 4, client → server: the client's signature over the announced survivor set."""

    KIND: ClassVar[MessageKind] = MessageKind.SURVIVOR_SIGNATURE

    sender: str
    signature: bytes

    def _write_body(self, writer: ByteWriter) -> None:
        writer.text(check_organization_id(self.sender, "sender"))
        if len(self.signature) != SIGNATURE_BYTES:
            raise MalformedMessageError(f"a signature has {SIGNATURE_BYTES} bytes")
        writer.raw(self.signature)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        sender = _read_organization(reader, "sender")
        signature = reader.raw(SIGNATURE_BYTES)
        reader.done()
        return cls(sid, round_, cluster, sender=sender, signature=signature)


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Stage 5, server → clients: whom to unmask, with the survivors' signatures.

    Clients reveal self-mask shares of ``survivors`` (for the groups of ``blocks``) and
    masking-key shares of ``dropped``; the two sets must be disjoint.
    """

    KIND: ClassVar[MessageKind] = MessageKind.UNMASK_REQUEST

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    blocks: tuple[str, ...]
    signatures: tuple[tuple[str, bytes], ...]
    """``(signer, signature over the survivor announcement)`` pairs sorted by signer."""

    def _write_body(self, writer: ByteWriter) -> None:
        _write_organizations(writer, self.survivors, "survivors")
        _write_organizations(writer, self.dropped, "dropped")
        _sorted_unique(list(self.blocks), "blocks")
        writer.u32(len(self.blocks))
        for block in self.blocks:
            writer.text(check_block_id(block))
        _sorted_unique([signer for signer, _ in self.signatures], "signatures")
        writer.u32(len(self.signatures))
        for signer, signature in self.signatures:
            writer.text(check_organization_id(signer, "signer"))
            if len(signature) != SIGNATURE_BYTES:
                raise MalformedMessageError(f"a signature has {SIGNATURE_BYTES} bytes")
            writer.raw(signature)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        survivors = _read_organizations(reader, "survivors")
        dropped = _read_organizations(reader, "dropped")
        blocks = tuple(_read_block(reader) for _ in range(reader.count(MAX_BLOCKS, "blocks")))
        _sorted_unique(list(blocks), "blocks")
        count = reader.count(MAX_PARTIES, "signatures")
        signatures = tuple(
            (_read_organization(reader, "signer"), reader.raw(SIGNATURE_BYTES))
            for _ in range(count)
        )
        _sorted_unique([signer for signer, _ in signatures], "signatures")
        reader.done()
        return cls(
            sid,
            round_,
            cluster,
            survivors=survivors,
            dropped=dropped,
            blocks=blocks,
            signatures=signatures,
        )


@dataclass(frozen=True, repr=False)
class UnmaskResponse(_Message):
    """Stage 5, client → server: the shares the request allows, and no others.

    ``repr`` hides the share values.
    """

    KIND: ClassVar[MessageKind] = MessageKind.UNMASK_RESPONSE

    sender: str
    self_mask_shares: tuple[tuple[str, int, int], ...]
    """``(owner, support group, share value)`` sorted by owner and group."""
    key_shares: tuple[tuple[str, int], ...]
    """``(owner, share value)`` of dropped owners' masking keys, sorted by owner."""

    def __repr__(self) -> str:
        return (
            f"UnmaskResponse(sender={self.sender!r}, "
            f"self_mask_shares=<{len(self.self_mask_shares)} hidden>, "
            f"key_shares=<{len(self.key_shares)} hidden>)"
        )

    def _write_body(self, writer: ByteWriter) -> None:
        writer.text(check_organization_id(self.sender, "sender"))
        keys = [f"{owner}\x00{group:010d}" for owner, group, _ in self.self_mask_shares]
        _sorted_unique(keys, "self-mask shares")
        writer.u32(len(self.self_mask_shares))
        for owner, group, value in self.self_mask_shares:
            writer.text(check_organization_id(owner, "share owner"))
            writer.u32(group)
            writer.raw(encode_share_value(value))
        _sorted_unique([owner for owner, _ in self.key_shares], "key shares")
        writer.u32(len(self.key_shares))
        for owner, value in self.key_shares:
            writer.text(check_organization_id(owner, "share owner"))
            writer.raw(encode_share_value(value))

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate the canonical bytes of this message."""
        reader, sid, round_, cluster = cls._read_header(data)
        sender = _read_organization(reader, "sender")
        count = reader.count(MAX_PARTIES * 64, "self-mask shares")
        self_mask_shares = tuple(
            (
                _read_organization(reader, "share owner"),
                reader.u32(),
                decode_share_value(reader.raw(SHARE_VALUE_BYTES)),
            )
            for _ in range(count)
        )
        keys = [f"{owner}\x00{group:010d}" for owner, group, _ in self_mask_shares]
        _sorted_unique(keys, "self-mask shares")
        count = reader.count(MAX_PARTIES, "key shares")
        key_shares = tuple(
            (
                _read_organization(reader, "share owner"),
                decode_share_value(reader.raw(SHARE_VALUE_BYTES)),
            )
            for _ in range(count)
        )
        _sorted_unique([owner for owner, _ in key_shares], "key shares")
        reader.done()
        return cls(
            sid,
            round_,
            cluster,
            sender=sender,
            self_mask_shares=self_mask_shares,
            key_shares=key_shares,
        )


@dataclass(frozen=True, repr=False)
class SharePayload:
    """The plaintext inside one sealed bundle: a sender's shares for one recipient.

    ``key_share`` is the share of the sender's masking private key; ``self_mask_shares``
    holds, per support group the sender belongs to, the share of its self-mask seed.
    The recipient's x-coordinate is implied by its roster position.
    """

    sender: str
    recipient: str
    key_share: int
    self_mask_shares: tuple[tuple[int, int], ...] = field(default=())

    def __repr__(self) -> str:
        return f"SharePayload(sender={self.sender!r}, recipient={self.recipient!r}, <hidden>)"

    def encode(self) -> bytes:
        """Canonical bytes of the payload (encrypted before it leaves the client)."""
        writer = _writer()
        writer.text(check_organization_id(self.sender, "sender"))
        writer.text(check_organization_id(self.recipient, "recipient"))
        writer.raw(encode_share_value(self.key_share))
        groups = [group for group, _ in self.self_mask_shares]
        if any(a >= b for a, b in itertools.pairwise(groups)):
            raise MalformedMessageError("self-mask shares must be sorted by group and unique")
        writer.u32(len(self.self_mask_shares))
        for group, value in self.self_mask_shares:
            writer.u32(group)
            writer.raw(encode_share_value(value))
        return writer.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse a decrypted payload strictly."""
        reader = _reader(data)
        sender = _read_organization(reader, "sender")
        recipient = _read_organization(reader, "recipient")
        key_share = decode_share_value(reader.raw(SHARE_VALUE_BYTES))
        count = reader.count(MAX_BLOCKS, "self-mask shares")
        shares = tuple(
            (reader.u32(), decode_share_value(reader.raw(SHARE_VALUE_BYTES))) for _ in range(count)
        )
        reader.done()
        groups = [group for group, _ in shares]
        if any(a >= b for a, b in itertools.pairwise(groups)):
            raise MalformedMessageError("self-mask shares must be sorted by group and unique")
        return cls(sender, recipient, key_share, shares)

    @staticmethod
    def encoded_length(sender: str, recipient: str, groups: int) -> int:
        """Length of :meth:`encode`'s output, so the server can check sealed sizes."""
        return (
            2
            + len(sender)
            + len(recipient)
            + SHARE_VALUE_BYTES
            + 4
            + groups * (4 + SHARE_VALUE_BYTES)
        )


Message = (
    KeyAdvertisement
    | AdvertisedKeys
    | EncryptedShares
    | RelayedShares
    | MaskedInput
    | SurvivorAnnouncement
    | SurvivorSignature
    | UnmaskRequest
    | UnmaskResponse
)

_BY_KIND: dict[int, type[Message]] = {
    MessageKind.KEY_ADVERTISEMENT: KeyAdvertisement,
    MessageKind.ADVERTISED_KEYS: AdvertisedKeys,
    MessageKind.ENCRYPTED_SHARES: EncryptedShares,
    MessageKind.RELAYED_SHARES: RelayedShares,
    MessageKind.MASKED_INPUT: MaskedInput,
    MessageKind.SURVIVOR_ANNOUNCEMENT: SurvivorAnnouncement,
    MessageKind.SURVIVOR_SIGNATURE: SurvivorSignature,
    MessageKind.UNMASK_REQUEST: UnmaskRequest,
    MessageKind.UNMASK_RESPONSE: UnmaskResponse,
}


def decode_message(data: bytes) -> Message:
    """Decode any secure-aggregation message, dispatching on its kind byte."""
    if len(data) < len(MAGIC) + 2:
        raise MalformedMessageError("message truncated before its kind byte")
    kind = data[len(MAGIC) + 1]
    message_type = _BY_KIND.get(kind)
    if message_type is None:
        raise MalformedMessageError(f"unknown message kind {kind}")
    return message_type.decode(data)


def _write_organizations(writer: ByteWriter, organizations: tuple[str, ...], what: str) -> None:
    _sorted_unique(list(organizations), what)
    writer.u32(len(organizations))
    for organization in organizations:
        writer.text(check_organization_id(organization, what))


def _read_organizations(reader: ByteReader, what: str) -> tuple[str, ...]:
    count = reader.count(MAX_PARTIES, what)
    organizations = tuple(_read_organization(reader, what) for _ in range(count))
    _sorted_unique(list(organizations), what)
    return organizations


def _write_sealed(writer: ByteWriter, entries: tuple[tuple[str, bytes], ...], what: str) -> None:
    _sorted_unique([organization for organization, _ in entries], what)
    writer.u32(len(entries))
    for organization, sealed in entries:
        writer.text(check_organization_id(organization, what))
        if len(sealed) > MAX_SEALED_SHARE_BYTES:
            raise MalformedMessageError(f"a sealed share bundle exceeds {MAX_SEALED_SHARE_BYTES}")
        writer.blob(sealed)


def _read_sealed(reader: ByteReader, what: str) -> tuple[tuple[str, bytes], ...]:
    count = reader.count(MAX_PARTIES, what)
    entries = tuple(
        (
            _read_organization(reader, what),
            reader.blob(MAX_SEALED_SHARE_BYTES, "sealed share bundle"),
        )
        for _ in range(count)
    )
    _sorted_unique([organization for organization, _ in entries], what)
    return entries
