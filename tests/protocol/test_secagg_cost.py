"""Masking-mode work: each party regenerates exactly the masks it must, and nothing twice.

The server's cost with dropouts is the dropped parties' pairwise masks with their surviving
neighbours; these tests pin that it derives each such pair's seed once (one X25519
agreement per pair, not per pair and block), generates exactly one keystream per mask
it removes, and sets a cipher up once per run of adjacent blocks a key masks, while the
released sums stay exact. The masks themselves are pinned against a derivation written
here and in `secagg_helpers` straight from `cryptography`'s HKDF and ChaCha20.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from secagg_helpers import Harness, as_inputs, expected_words, grid_levels, make_params, roster_of

from fedhft.protocol import SessionParams, _crypto
from fedhft.protocol.secagg import _masks
from fedhft.protocol.secagg._shamir import MERSENNE_521, lagrange_at_zero


@contextmanager
def _counting(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str
) -> Iterator[list[tuple[Any, ...]]]:
    """Record the arguments of every call to ``module.name`` inside the block."""
    calls: list[tuple[Any, ...]] = []
    original: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(module, name, counted)
        yield calls


def _masks_to_remove(
    params: SessionParams, survivors: set[str], dropped: set[str]
) -> tuple[set[tuple[str, str]], int]:
    """The (dropped, surviving neighbour) pairs with a mask in some sum, and how many
    keystreams the server must generate: one self mask per surviving holder and block,
    one pairwise mask per such pair and block."""
    pairs: set[tuple[str, str]] = set()
    keystreams = 0
    for block, support in params.block_supports.items():
        keystreams += len(support & survivors)
        graph = params.block_graph(block)
        for gone in dropped & support:
            edges = graph[gone] & survivors
            pairs |= {(gone, survivor) for survivor in edges}
            keystreams += len(edges)
    return pairs, keystreams


def _server_mask_blocks(
    params: SessionParams, survivors: set[str], dropped: set[str]
) -> dict[tuple[str, ...], list[str]]:
    """Each key the server removes masks with (a survivor's self-mask seed of one group,
    or a dropped pair) → the blocks it masks."""
    blocks: dict[tuple[str, ...], list[str]] = {}
    for block, support in params.block_supports.items():
        group = str(params.group_of_block[block])
        for owner in support & survivors:
            blocks.setdefault(("self", owner, group), []).append(block)
        graph = params.block_graph(block)
        for gone in dropped & support:
            for survivor in graph[gone] & survivors:
                blocks.setdefault(("pair", gone, survivor), []).append(block)
    return blocks


def _runs(params: SessionParams, blocks_of_key: dict[tuple[str, ...], list[str]]) -> int:
    """Maximal runs of adjacent blocks (in the mask layout) summed over the keys."""
    order = list(params.block_lengths)
    runs = 0
    for blocks in blocks_of_key.values():
        positions = sorted(order.index(b) for b in blocks)
        runs += sum(1 for i, p in enumerate(positions) if i == 0 or positions[i - 1] != p - 1)
    return runs


def test_server_regenerates_each_dropped_pair_once_and_exactly_the_masks_to_remove(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight blocks, a sparse graph, uneven supports, three dropouts: the server's unmask
    step agrees once per (dropped, surviving neighbour) pair, generates exactly the
    keystream bytes of the masks in the sums (none twice), and the sums are exact."""
    roster = roster_of(12)
    lengths = {f"layer.{i}.lora_B": 7 + i for i in range(8)}
    supports = {block: roster if i < 5 else roster[i - 4 :] for i, block in enumerate(lengths)}
    params = make_params(
        12, neighbours=6, threshold=4, block_lengths=lengths, block_supports=supports
    )
    levels = grid_levels(params, np.random.default_rng(23))
    dropped = {"org-002", "org-007", "org-010"}
    survivors = set(roster) - dropped
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    announcement = harness.mask(relayed, as_inputs(params, levels), orgs=survivors)
    request = harness.sign(announcement)
    for org in sorted(survivors):
        harness.server.receive(harness.clients[org].unmask(request).encode())
    pairs, keystreams = _masks_to_remove(params, survivors, dropped)
    assert len(pairs) > len(dropped)  # the scenario has several surviving neighbours each

    with (
        _counting(monkeypatch, _masks, "x25519_agree") as agreements,
        _counting(monkeypatch, _crypto.MaskStream, "fill") as generated,
        _counting(monkeypatch, _crypto, "_start_keystream") as setups,
    ):
        result = harness.server.finish_unmask()

    assert len(agreements) == len(pairs)
    # Exactly the keystream bytes of the masks in the sums, none generated twice.
    word = params.fixed_point.bits // 8
    mask_bytes = sum(
        params.block_lengths[block] * word
        for blocks in _server_mask_blocks(params, survivors, dropped).values()
        for block in blocks
    )
    assert sum(words.nbytes for _, words, _ in generated) == mask_bytes
    spans = {(id(stream), offset, words.nbytes) for stream, words, offset in generated}
    assert len(spans) == len(generated)
    assert len(setups) == _runs(params, _server_mask_blocks(params, survivors, dropped))
    assert len(setups) < keystreams  # adjacent blocks share one cipher setup
    for block, support in params.block_supports.items():
        contributors = sorted(support & survivors)
        np.testing.assert_array_equal(
            result.blocks[block].integer_sum.astype(np.uint64),
            expected_words(params, levels, block, contributors),
        )


def test_client_generates_one_keystream_per_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client masks each block once per block neighbour plus its self mask, agreeing
    once per neighbour, however many blocks it holds."""
    params = make_params(9, neighbours=4, threshold=3, block_lengths={f"b{i}": 5 for i in range(6)})
    levels = grid_levels(params, np.random.default_rng(9))
    harness = Harness(params)
    relayed = harness.share(harness.advertise())
    org = "org-004"
    inputs = as_inputs(params, levels)[org]
    with (
        _counting(monkeypatch, _masks, "x25519_agree") as agreements,
        _counting(monkeypatch, _crypto.MaskStream, "fill") as generated,
        _counting(monkeypatch, _crypto, "_start_keystream") as setups,
    ):
        harness.clients[org].mask_input(relayed[org], inputs)
    masks = sum(1 + len(params.block_graph(b)[org]) for b in params.blocks_of(org))
    # One agreement per neighbour for the pairwise seeds, one per share bundle opened.
    assert len(agreements) == 2 * len(params.graph[org])
    assert len(generated) == masks
    # Every block is held by everyone and masked with every neighbour: one cipher setup
    # per key (the self mask and one per neighbour) for all six blocks.
    assert all(params.block_graph(b)[org] == params.graph[org] for b in params.blocks_of(org))
    assert len(setups) == 1 + len(params.graph[org])


def test_mask_keys_are_hkdf_of_purpose_session_and_owner() -> None:
    """One key per pair and per (owner, self-mask seed), HKDF-SHA256 computed here from
    `cryptography` alone; distinct per purpose, session and owner."""
    seed, sid = os.urandom(32), os.urandom(32)

    def reference(purpose: bytes, context: list[bytes]) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=_framed([purpose, sid]),
            info=_framed([purpose, sid, *context]),
        ).derive(seed)

    pair = _masks.pairwise_mask_key(seed, sid=sid)
    own = _masks.self_mask_key(seed, sid=sid, owner="org-001")
    assert pair == reference(b"fedhft/secagg/v1/pairwise-mask", [])
    assert own == reference(b"fedhft/secagg/v1/self-mask", [b"org-001"])
    keys = {
        pair,
        own,
        _masks.self_mask_key(seed, sid=sid, owner="org-002"),
        _masks.pairwise_mask_key(seed, sid=os.urandom(32)),
        _masks.self_mask_key(seed, sid=os.urandom(32), owner="org-001"),
    }
    assert len(keys) == 5
    assert repr(_masks.pairwise_mask(seed, sid=sid)) == "MaskStream(<hidden>)"


def _framed(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _reference_keystream(key: bytes, length: int) -> bytes:
    """The first ``length`` bytes of the RFC 8439 ChaCha20 keystream, zero nonce."""
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return encryptor.update(bytes(length))


@pytest.mark.parametrize("bits", [32, 64])
def test_mask_stream_reads_one_keystream_at_any_offset_in_any_order(bits: int) -> None:
    """Blocks read at their offsets, adjacent or not, forwards or backwards, are the
    slices of one keystream: no byte is produced for two blocks, none differs."""
    key = os.urandom(32)
    dtype = np.dtype("<u4" if bits == 32 else "<u8")
    lengths = [5, 16, 1, 33, 7, 4096, 3]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) * dtype.itemsize
    full = np.frombuffer(_reference_keystream(key, sum(lengths) * dtype.itemsize), dtype=dtype)
    for order in (range(len(lengths)), reversed(range(len(lengths))), [3, 0, 1, 2, 6, 4, 5]):
        stream = _crypto.MaskStream(key)
        for i in order:
            words = np.empty(lengths[i], dtype=dtype)
            stream.fill(words, int(offsets[i]))
            start = int(offsets[i]) // dtype.itemsize
            np.testing.assert_array_equal(words, full[start : start + lengths[i]])


def test_key_derivation_is_derive_key_per_context() -> None:
    """The extract-once derivation keeps purpose, session and context separation."""
    secret, sid = os.urandom(32), os.urandom(32)
    contexts: list[list[bytes]] = [[], [b"x"], [b"ab", b"c"], [b"a", b"bc"], [b""]]
    derivation = _crypto.KeyDerivation(secret, purpose=b"p", sid=sid)
    keys = [derivation.key(_crypto.frame(c)) for c in contexts]
    assert keys == [_crypto.derive_key(secret, purpose=b"p", sid=sid, context=c) for c in contexts]
    assert len(set(keys)) == len(keys)
    other = _crypto.KeyDerivation(secret, purpose=b"q", sid=sid)
    assert other.key(_crypto.frame([])) != keys[0]
    assert secret.hex() not in repr(derivation)


@pytest.mark.parametrize(("bits", "count"), [(32, 0), (32, 1), (32, 37), (64, 20)])
def test_apply_masks_equals_one_mask_at_a_time(bits: int, count: int) -> None:
    """The chunked column sum gives the words of adding and subtracting masks one by one."""
    rng = np.random.default_rng(count)
    dtype = np.uint32 if bits == 32 else np.uint64
    start = rng.integers(0, 2**bits - 1, size=1000, dtype=dtype, endpoint=True)
    keys = [(os.urandom(32), bool(rng.integers(2))) for _ in range(count)]
    one_by_one = start.copy()
    for key, negate in keys:
        _crypto.apply_mask(one_by_one, key, negate=negate)
    batched = start.copy()
    _crypto.apply_masks(batched, [(_crypto.MaskStream(k), n) for k, n in keys], offset=0)
    np.testing.assert_array_equal(batched, one_by_one)
    if count:
        assert not np.array_equal(batched, start)


@pytest.mark.parametrize("prime", [MERSENNE_521, 65_537, 2**127 - 1])
def test_lagrange_coefficients_with_one_inversion_match_the_definition(prime: int) -> None:
    """The batched inversion gives ``Π_{j≠i} x_j / (x_j − x_i)`` for every holder set
    shape a SecAgg+ server meets (sparse, unordered, one holder), each inverted alone."""
    rng = np.random.default_rng(prime % 1000)
    for size in (1, 2, 5, 41):
        xs = [int(x) for x in rng.choice(np.arange(1, 1000), size=size, replace=False)]
        expected = []
        for i, xi in enumerate(xs):
            numerator, denominator = 1, 1
            for j, xj in enumerate(xs):
                if i != j:
                    numerator, denominator = numerator * xj, denominator * (xj - xi)
            expected.append(numerator * pow(denominator, -1, prime) % prime)
        assert lagrange_at_zero(xs, prime) == expected
