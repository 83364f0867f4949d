"""Masking-mode work: each party regenerates exactly the masks it must, and nothing twice.

The server's cost with dropouts is the dropped parties' pairwise masks with their surviving
neighbours; these tests pin that it derives each such pair's seed once (one X25519
agreement per pair, not per pair and block) and generates exactly one keystream per mask
it removes, while the released sums stay exact. The batched key derivations must give
the very keys of the per-block ones, so the masks (and the bytes on the wire) are those
of every earlier version.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from secagg_helpers import Harness, as_inputs, expected_words, grid_levels, make_params, roster_of

from fedhft.protocol import SessionParams, _crypto
from fedhft.protocol.secagg import _masks
from fedhft.protocol.secagg._masks import MaskKeys, pairwise_mask_key, self_mask_key
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


def test_server_regenerates_each_dropped_pair_once_and_exactly_the_masks_to_remove(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight blocks, a sparse graph, uneven supports, three dropouts: the server's unmask
    step agrees once per (dropped, surviving neighbour) pair, generates one keystream per
    mask in the sums, and the sums are exact."""
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
        _counting(monkeypatch, _crypto, "_fill_keystream") as generated,
    ):
        result = harness.server.finish_unmask()

    assert len(agreements) == len(pairs)
    assert len(generated) == keystreams
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
        _counting(monkeypatch, _crypto, "_fill_keystream") as generated,
    ):
        harness.clients[org].mask_input(relayed[org], inputs)
    masks = sum(1 + len(params.block_graph(b)[org]) for b in params.blocks_of(org))
    # One agreement per neighbour for the pairwise seeds, one per share bundle opened.
    assert len(agreements) == 2 * len(params.graph[org])
    assert len(generated) == masks


@pytest.mark.parametrize("blocks", [[], ["a"], ["layer.0.lora_B", "layer.1.lora_B", "é" * 40]])
def test_mask_keys_are_the_per_block_keys(blocks: list[str]) -> None:
    """One HKDF extract per seed gives the same keys as a full HKDF per block."""
    seed, sid = os.urandom(32), os.urandom(32)
    pairwise = MaskKeys.pairwise(seed, sid=sid)
    own = MaskKeys.self_mask(seed, sid=sid, owner="org-001")
    for block in blocks:
        assert pairwise.of(block) == pairwise_mask_key(seed, sid=sid, block=block)
        assert own.of(block) == self_mask_key(seed, sid=sid, owner="org-001", block=block)
    assert repr(pairwise) == "MaskKeys(<hidden>)"


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
    masks = [(os.urandom(32), bool(rng.integers(2))) for _ in range(count)]
    one_by_one = start.copy()
    for key, negate in masks:
        _crypto.apply_mask(one_by_one, key, negate=negate)
    batched = start.copy()
    _crypto.apply_masks(batched, masks)
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
