"""Tests of the dense, support-aware packing of blocks into CKKS ciphertext slots."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhft.protocol.ckks._packing import PackingLayout
from fedhft.protocol.errors import SessionParamsError

ORGS = ("a", "b", "c", "d", "e")


@st.composite
def sessions(draw: st.DrawFn) -> tuple[dict[str, int], dict[str, frozenset[str]], int]:
    """Random block lengths, non-empty supports over five organizations, and a slot count."""
    count = draw(st.integers(1, 25))
    lengths = {f"layer.{i}.B": draw(st.integers(1, 300)) for i in range(count)}
    supports = {
        block: frozenset(draw(st.sets(st.sampled_from(ORGS), min_size=1))) for block in lengths
    }
    return lengths, supports, draw(st.sampled_from([1, 7, 64, 1024]))


@given(sessions())
@settings(max_examples=60, deadline=None)
def test_layout_places_every_block_once(
    session: tuple[dict[str, int], dict[str, frozenset[str]], int],
) -> None:
    """Every block sits once, contiguously, in the segment of exactly its holders."""
    lengths, supports, slots = session
    layout = PackingLayout.build(block_lengths=lengths, block_supports=supports, slots=slots)
    seen = set()
    for segment in layout.segments:
        offset = 0
        for block in segment.blocks:
            assert block.offset == offset
            assert block.length == lengths[block.block_id]
            assert frozenset(segment.holders) == supports[block.block_id]
            offset += block.length
            seen.add(block.block_id)
        assert segment.length == offset
        assert sum(segment.chunk_lengths()) == segment.length
        assert all(0 < n <= slots for n in segment.chunk_lengths())
    assert seen == set(lengths)
    assert len({s.holders for s in layout.segments}) == len(layout.segments)


@given(sessions())
@settings(max_examples=60, deadline=None)
def test_padding_is_below_one_ciphertext_per_segment(
    session: tuple[dict[str, int], dict[str, frozenset[str]], int],
) -> None:
    """A client's payload is exactly its blocks, padded by under one ciphertext per segment."""
    lengths, supports, slots = session
    layout = PackingLayout.build(block_lengths=lengths, block_supports=supports, slots=slots)
    for org in ORGS:
        held = {b for b, holders in supports.items() if org in holders}
        assert layout.blocks_of(org) == held
        assert layout.values_of(org) == sum(lengths[b] for b in held)
        assert 0 <= layout.padding_of(org) < slots * max(1, len(layout.segments_of(org)))


@given(sessions(), st.randoms(use_true_random=False))
@settings(max_examples=30, deadline=None)
def test_layout_is_independent_of_mapping_order(
    session: tuple[dict[str, int], dict[str, frozenset[str]], int], shuffle: object
) -> None:
    """Clients that list blocks in different orders compute the same layout."""
    lengths, supports, slots = session
    keys = list(lengths)
    shuffle.shuffle(keys)  # type: ignore[attr-defined]
    reordered = PackingLayout.build(
        block_lengths={k: lengths[k] for k in keys},
        block_supports={k: supports[k] for k in reversed(keys)},
        slots=slots,
    )
    assert reordered == PackingLayout.build(
        block_lengths=lengths, block_supports=supports, slots=slots
    )


def test_small_blocks_share_one_ciphertext() -> None:
    """Forty 10-value blocks with one holder set fill one ciphertext, not forty."""
    lengths = {f"b{i:02d}": 10 for i in range(40)}
    supports = {b: frozenset(ORGS) for b in lengths}
    layout = PackingLayout.build(block_lengths=lengths, block_supports=supports, slots=512)
    assert layout.ciphertexts_of("a") == 1
    assert layout.padding_of("a") == 512 - 400


def test_nested_tiers_make_one_segment_per_tier() -> None:
    """With nested tiers, a client's padding is bounded by its number of tiers, not blocks."""
    # Tiers: "edge" (client a) trains the top 4 layers, "standard" (b) the top 8 and
    # "full" (c) all 12.
    lengths, supports = {}, {}
    for layer in range(12):
        holders = {"a", "b", "c"} if layer >= 8 else ({"b", "c"} if layer >= 4 else {"c"})
        lengths[f"layer.{layer}.B"] = 100
        supports[f"layer.{layer}.B"] = frozenset(holders)
    layout = PackingLayout.build(block_lengths=lengths, block_supports=supports, slots=256)
    assert len(layout.segments) == 3
    assert len(layout.segments_of("c")) == 3
    assert layout.padding_of("c") < 3 * 256


@pytest.mark.parametrize(
    ("lengths", "supports", "match"),
    [
        ({"x": 0}, {"x": frozenset("a")}, "positive integer"),
        ({"x": 3}, {"x": frozenset()}, "no holder"),
        ({"x": 3}, {"y": frozenset("a")}, "same blocks"),
    ],
)
def test_bad_layout_input_rejected(
    lengths: dict[str, int], supports: dict[str, frozenset[str]], match: str
) -> None:
    """Zero-length blocks, holderless blocks and mismatched block names are refused."""
    with pytest.raises(SessionParamsError, match=match):
        PackingLayout.build(block_lengths=lengths, block_supports=supports, slots=8)
