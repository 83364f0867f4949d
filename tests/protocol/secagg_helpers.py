"""Builders and a step-by-step driver for masking-mode secure-aggregation tests."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedhft.protocol import (
    AdvertisedKeys,
    AggregateResult,
    RelayedShares,
    SecAggClient,
    SecAggServer,
    SessionParams,
    SurvivorAnnouncement,
    UnmaskRequest,
)

CONFIG_HASH = hashlib.sha256(b"consortium config").digest()
MODEL_HASH = hashlib.sha256(b"model").digest()


def roster_of(n: int) -> list[str]:
    """``n`` organization ids that sort in numeric order."""
    return [f"org-{i:03d}" for i in range(n)]


def make_params(
    n: int = 5,
    *,
    threshold: int | None = None,
    block_lengths: Mapping[str, int] | None = None,
    block_supports: Mapping[str, Iterable[str]] | None = None,
    neighbours: int | None = None,
    run_id: str = "run-1",
    round: int = 1,
    cluster: int = 0,
    clip: float = 1.0,
    scale: float = 2.0**16,
    min_cohort: int = 3,
) -> SessionParams:
    """A session over ``n`` organizations; every block is held by everyone by default."""
    roster = roster_of(n)
    lengths = dict(block_lengths or {"layer.0.lora_B": 12, "layer.1.lora_B": 5})
    supports = {
        block: set(block_supports[block]) if block_supports else set(roster) for block in lengths
    }
    if threshold is None:
        holders = n if neighbours is None or neighbours >= n - 1 else neighbours + 1
        threshold = holders // 2 + 1
    return SessionParams(
        run_id=run_id,
        round=round,
        cluster=cluster,
        roster=roster,
        config_hash=CONFIG_HASH,
        model_hash=MODEL_HASH,
        threshold=threshold,
        min_cohort=min_cohort,
        block_lengths=lengths,
        block_supports=supports,
        clip=clip,
        scale=scale,
        neighbours=neighbours,
    )


def make_identities(roster: Iterable[str]) -> dict[str, Ed25519PrivateKey]:
    """A fresh Ed25519 identity key per organization."""
    return {org: Ed25519PrivateKey.generate() for org in roster}


def grid_levels(
    params: SessionParams, rng: np.random.Generator
) -> dict[str, dict[str, npt.NDArray[np.int64]]]:
    """Random integer levels in ``[−clip·scale, clip·scale]`` per organization and block."""
    bound = int(params.clip * params.scale)
    return {
        org: {
            block: rng.integers(-bound, bound, size=params.block_lengths[block], endpoint=True)
            for block in params.blocks_of(org)
        }
        for org in params.roster
    }


def as_inputs(
    params: SessionParams, levels: Mapping[str, Mapping[str, npt.NDArray[np.int64]]]
) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    """The float inputs that lie exactly on those levels, so quantization is exact."""
    return {
        org: {block: values.astype(np.float64) / params.scale for block, values in blocks.items()}
        for org, blocks in levels.items()
    }


def expected_words(
    params: SessionParams,
    levels: Mapping[str, Mapping[str, npt.NDArray[np.int64]]],
    block: str,
    contributors: Iterable[str],
) -> npt.NDArray[np.uint64]:
    """The exact sum of the contributors' levels modulo 2^bits, as uint64."""
    modulus = 2**params.fixed_point.bits
    totals = [0] * params.block_lengths[block]
    for org in contributors:
        for i, level in enumerate(levels[org][block].tolist()):
            totals[i] += level
    return np.array([total % modulus for total in totals], dtype=np.uint64)


class Harness:
    """Drives real clients and a real server stage by stage, so tests can tamper in between.

    Every message is encoded and decoded on its way, as a transport would carry it.
    """

    def __init__(
        self, params: SessionParams, identities: Mapping[str, Ed25519PrivateKey] | None = None
    ) -> None:
        self.params = params
        self.identities = dict(identities or make_identities(params.roster))
        self.public = {org: key.public_key() for org, key in self.identities.items()}
        self.server = SecAggServer(params, peer_identities=self.public)
        self.clients = {
            org: SecAggClient(
                params,
                organization=org,
                identity_key=self.identities[org],
                peer_identities=self.public,
            )
            for org in params.roster
        }

    def _who(self, orgs: Iterable[str] | None) -> list[str]:
        return sorted(self.server.participants if orgs is None else orgs)

    def advertise(self, orgs: Iterable[str] | None = None) -> AdvertisedKeys:
        """Stage 1 for ``orgs`` (default: all participants)."""
        for org in self._who(orgs):
            self.server.receive(self.clients[org].advertise_keys().encode())
        return self.server.finish_advertise()

    def share(
        self, advertised: AdvertisedKeys, orgs: Iterable[str] | None = None
    ) -> dict[str, RelayedShares]:
        """Stage 2 for ``orgs``."""
        for org in self._who(orgs):
            received = AdvertisedKeys.decode(advertised.encode())
            self.server.receive(self.clients[org].share_keys(received).encode())
        return self.server.finish_share_keys()

    def mask(
        self,
        relayed: Mapping[str, RelayedShares],
        inputs: Mapping[str, Mapping[str, npt.ArrayLike]],
        orgs: Iterable[str] | None = None,
    ) -> SurvivorAnnouncement:
        """Stage 3 for ``orgs``."""
        for org in self._who(orgs):
            received = RelayedShares.decode(relayed[org].encode())
            masked = self.clients[org].mask_input(received, inputs.get(org, {}))
            self.server.receive(masked.encode())
        return self.server.finish_masked_input()

    def sign(
        self, announcement: SurvivorAnnouncement, orgs: Iterable[str] | None = None
    ) -> UnmaskRequest:
        """Stage 4 for ``orgs``."""
        for org in self._who(orgs):
            received = SurvivorAnnouncement.decode(announcement.encode())
            self.server.receive(self.clients[org].sign_survivors(received).encode())
        return self.server.finish_consistency()

    def unmask(self, request: UnmaskRequest, orgs: Iterable[str] | None = None) -> AggregateResult:
        """Stage 5 for ``orgs``; returns the server's result."""
        for org in self._who(orgs):
            received = UnmaskRequest.decode(request.encode())
            self.server.receive(self.clients[org].unmask(received).encode())
        return self.server.finish_unmask()


_PAIR_MASK_PURPOSE = b"fedhft/secagg/v1/pairwise-mask"
_SELF_MASK_PURPOSE = b"fedhft/secagg/v1/self-mask"


def _framed(parts: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _reference_mask(
    secret: bytes, purpose: bytes, context: list[bytes], params: SessionParams, block: str
) -> npt.NDArray[Any]:
    """The mask on ``block`` as the specification defines it, straight from
    `cryptography`: key = HKDF-SHA256(secret; salt = frame(purpose, sid), info =
    frame(purpose, sid, *context)), mask = ChaCha20 keystream (zero nonce) bytes at the
    block's offset in the layout of every block end to end in sorted order."""
    sid = params.sid
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=_framed([purpose, sid]),
        info=_framed([purpose, sid, *context]),
    ).derive(secret)
    word = params.fixed_point.bits // 8
    offset = 0
    for name in sorted(params.block_lengths):
        if name == block:
            break
        offset += params.block_lengths[name] * word
    counter, skip = divmod(offset, 64)
    nonce = struct.pack("<I", counter) + bytes(12)
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    length = params.block_lengths[block]
    stream = encryptor.update(bytes(skip + length * word))[skip:]
    dtype = "<u4" if word == 4 else "<u8"
    return np.frombuffer(stream, dtype=dtype).astype(params.fixed_point.word_dtype)


def reference_pairwise_mask(
    pair_seed: bytes, params: SessionParams, block: str
) -> npt.NDArray[Any]:
    """A pair's mask on ``block``, computed independently of fedhft's mask code."""
    return _reference_mask(pair_seed, _PAIR_MASK_PURPOSE, [], params, block)


def reference_self_mask(
    seed: bytes, owner: str, params: SessionParams, block: str
) -> npt.NDArray[Any]:
    """``owner``'s self mask on ``block`` from its group's seed, computed independently."""
    return _reference_mask(seed, _SELF_MASK_PURPOSE, [owner.encode()], params, block)
