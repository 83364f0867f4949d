"""Dense packing of heterogeneous blocks into CKKS ciphertext slots.

Every client of a CKKS session computes the same public layout from the session's block
lengths and block supports (tier masks are public, ARCHITECTURE.md §2.2). Blocks are grouped into
*segments* by their holder set: all blocks held by exactly the same clients are laid end
to end (sorted by block id), and each segment is cut into ciphertexts of ``slots`` values,
so a block may span ciphertexts and many small blocks share one. A client encrypts only
the segments it belongs to, and the server adds each segment's ciphertexts over that
segment's holders, so every block is summed over exactly its holders without any client
encrypting zeros for blocks it does not hold.

Overhead: the only wasted slots are the tail of each segment's last ciphertext, so a
client uploads at most one partially filled ciphertext per segment it belongs to, i.e.
fewer than ``segments × slots`` padding slots. With nested tiers (every tier's blocks
include the tier below's) there is one segment per distinct tier in the session, so the
padding stays below ``tiers × slots`` values per client, whatever the number of blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SessionParamsError


@dataclass(frozen=True)
class PackedBlock:
    """Where one block lives inside its segment: ``values[offset : offset + length]``."""

    block_id: str
    offset: int
    length: int


@dataclass(frozen=True)
class PackedSegment:
    """Blocks with one holder set, laid end to end and cut into ciphertexts."""

    index: int
    holders: tuple[str, ...]
    blocks: tuple[PackedBlock, ...]
    length: int
    slots: int

    @property
    def ciphertexts(self) -> int:
        """Number of ciphertexts the segment spans."""
        return math.ceil(self.length / self.slots)

    def chunk_lengths(self) -> tuple[int, ...]:
        """Values in each ciphertext: ``slots`` each, the remainder in the last one."""
        full, rest = divmod(self.length, self.slots)
        return (self.slots,) * full + ((rest,) if rest else ())


@dataclass(frozen=True)
class PackingLayout:
    """The public packing of a session's blocks into segments of ciphertexts."""

    slots: int
    segments: tuple[PackedSegment, ...]

    @classmethod
    def build(
        cls,
        *,
        block_lengths: Mapping[str, int],
        block_supports: Mapping[str, frozenset[str] | tuple[str, ...]],
        slots: int,
    ) -> PackingLayout:
        """Group blocks by holder set (segments ordered by sorted holders, blocks by id)."""
        if not isinstance(slots, int) or slots < 1:
            raise SessionParamsError(f"`slots` must be a positive integer, got {slots!r}")
        if set(block_lengths) != set(block_supports):
            raise SessionParamsError(
                "`block_lengths` and `block_supports` must name the same blocks"
            )
        groups: dict[tuple[str, ...], list[str]] = {}
        for block_id in sorted(block_lengths):
            length = block_lengths[block_id]
            if not isinstance(length, int) or isinstance(length, bool) or length < 1:
                raise SessionParamsError(
                    f"length of block {block_id!r} must be a positive integer, got {length!r}"
                )
            holders = tuple(sorted(set(block_supports[block_id])))
            if not holders:
                raise SessionParamsError(f"block {block_id!r} has no holder")
            groups.setdefault(holders, []).append(block_id)
        segments = []
        for index, holders in enumerate(sorted(groups)):
            offset = 0
            placed = []
            for block_id in groups[holders]:
                placed.append(PackedBlock(block_id, offset, block_lengths[block_id]))
                offset += block_lengths[block_id]
            segments.append(PackedSegment(index, holders, tuple(placed), offset, slots))
        return cls(slots=slots, segments=tuple(segments))

    def segments_of(self, organization: str) -> tuple[PackedSegment, ...]:
        """The segments ``organization`` holds, in layout order."""
        return tuple(s for s in self.segments if organization in s.holders)

    def blocks_of(self, organization: str) -> frozenset[str]:
        """Ids of the blocks ``organization`` holds."""
        return frozenset(b.block_id for s in self.segments_of(organization) for b in s.blocks)

    def ciphertexts_of(self, organization: str) -> int:
        """How many ciphertexts ``organization`` uploads."""
        return sum(s.ciphertexts for s in self.segments_of(organization))

    def values_of(self, organization: str) -> int:
        """How many values ``organization`` contributes (its plaintext payload)."""
        return sum(s.length for s in self.segments_of(organization))

    def padding_of(self, organization: str) -> int:
        """Unused slots in ``organization``'s ciphertexts (fewer than slots × its segments)."""
        return self.ciphertexts_of(organization) * self.slots - self.values_of(organization)
