"""Blocks held by part of the roster under SecAgg+: each block's sum hides every holder.

The attacks here are the honest-but-curious server's: it keeps the transcript, strips
from one holder's masked vector everything the protocol lets it reconstruct (the
survivors' self masks, the dropped parties' pairwise masks), and looks at what is left.
For every released block, what is left must be the input plus pairwise masks that tie
all the block's surviving holders into one component, so only the block's total is
learned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from secagg_helpers import (
    Harness,
    as_inputs,
    expected_words,
    grid_levels,
    make_identities,
    make_params,
    reference_pairwise_mask,
    reference_self_mask,
    roster_of,
)

from fedhft.protocol import (
    KeyAdvertisement,
    MaskedInput,
    SessionParams,
    Stage,
    TranscriptEntry,
    UnmaskResponse,
    run_secagg_in_process,
)
from fedhft.protocol._crypto import load_agreement_key
from fedhft.protocol.errors import CohortTooSmallError, ThresholdError, UnmaskRuleError
from fedhft.protocol.secagg._inprocess import SERVER
from fedhft.protocol.secagg._masks import (
    pairwise_seed,
    subtracts_pairwise_mask,
)
from fedhft.protocol.secagg._shamir import Share, interpolate_at_zero
from fedhft.protocol.secagg.graph import neighbour_graph

Words = np.ndarray


# --------------------------------------------------------------------------- the server


def _messages(transcript: Sequence[TranscriptEntry], stage: Stage) -> dict[str, bytes]:
    return {e.sender: e.data for e in transcript if e.stage is stage and e.recipient == SERVER}


def _revealed(
    params: SessionParams, transcript: Sequence[TranscriptEntry]
) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
    """The self-mask seeds and masking keys the server rebuilds from the unmask answers.

    Every revealed share of a secret is interpolated, so the server uses all it got
    whatever threshold the secret was shared with.
    """
    seed_shares: dict[tuple[str, int], list[Share]] = {}
    key_shares: dict[str, list[Share]] = {}
    for responder, data in _messages(transcript, Stage.UNMASK).items():
        response = UnmaskResponse.decode(data)
        x = params.holder_index[responder]
        for owner, group, value in response.self_mask_shares:
            seed_shares.setdefault((owner, group), []).append(Share(x, value))
        for owner, value in response.key_shares:
            key_shares.setdefault(owner, []).append(Share(x, value))
    seeds = {secret: interpolate_at_zero(shares) for secret, shares in seed_shares.items()}
    keys = {owner: interpolate_at_zero(shares) for owner, shares in key_shares.items()}
    return seeds, keys


def _block_graph(params: SessionParams, block: str) -> Mapping[str, frozenset[str]]:
    """Who masks ``block`` with whom, as the server can tell from the public parameters.

    Before blocks had graphs of their own, it was the roster-wide graph restricted to
    the block's holders; the fallback lets these tests run against that code too.
    """
    block_graph = getattr(params, "block_graph", None)
    if block_graph is not None:
        return dict(block_graph(block))
    holders = params.block_supports[block]
    return {org: params.graph[org] & holders for org in holders}


def is_connected(graph: Mapping[str, frozenset[str]], vertices: set[str]) -> bool:
    """Whether ``vertices`` are one component of ``graph`` restricted to them (BFS)."""
    if not vertices:
        return False
    start = min(vertices)
    reached, frontier = {start}, [start]
    while frontier:
        for peer in graph[frontier.pop()] & vertices - reached:
            reached.add(peer)
            frontier.append(peer)
    return reached == vertices


def _masking_neighbours(params: SessionParams, owner: str, block: str) -> frozenset[str]:
    """Who ``owner`` masks ``block`` with."""
    return _block_graph(params, block)[owner]


def server_residuals(
    params: SessionParams, transcript: Sequence[TranscriptEntry], block: str
) -> dict[str, Words]:
    """Each surviving holder's masked ``block`` minus every mask the server can remove.

    That is the survivor's self mask (its seed is revealed) and its pairwise masks with
    dropped parties (their keys are revealed). What is left is the input plus the
    pairwise masks between survivors, which the server cannot compute.
    """
    seeds, keys = _revealed(params, transcript)
    advertised = {
        org: KeyAdvertisement.decode(data)
        for org, data in _messages(transcript, Stage.ADVERTISE).items()
    }
    masked = {
        org: dict(MaskedInput.decode(data).blocks)
        for org, data in _messages(transcript, Stage.MASKED_INPUT).items()
    }
    group = params.group_of_block[block]
    residuals = {}
    for owner, blocks in masked.items():
        if block not in blocks:
            continue
        residual = blocks[block].copy()
        if (owner, group) in seeds:
            seed = seeds[owner, group].to_bytes(32, "big")
            residual -= reference_self_mask(seed, owner, params, block)
        for gone, secret in keys.items():
            if gone not in _masking_neighbours(params, owner, block):
                continue
            private_key = load_agreement_key(secret.to_bytes(32, "big"))
            pair = pairwise_seed(
                private_key,
                advertised[owner].masking_key,
                sid=params.sid,
                owner=gone,
                peer=owner,
            )
            mask = reference_pairwise_mask(pair, params, block)
            if subtracts_pairwise_mask(owner, gone):
                residual += mask
            else:
                residual -= mask
        residuals[owner] = residual
    return residuals


def gf2_rank(rows: Sequence[Words]) -> int:
    """Rank over GF(2) of the vectors' lowest bits."""
    basis: dict[int, int] = {}
    rank = 0
    for row in rows:
        bits = int("".join("1" if w & 1 else "0" for w in row.tolist()) or "0", 2)
        while bits:
            top = bits.bit_length() - 1
            if top not in basis:
                basis[top] = bits
                rank += 1
                break
            bits ^= basis[top]
    return rank


def masking_components(
    params: SessionParams,
    transcript: Sequence[TranscriptEntry],
    block: str,
    levels: Mapping[str, Mapping[str, np.ndarray]],
) -> int:
    """How many separately masked groups the server sees among the block's survivors.

    The masks left on survivor ``h`` are ``e_h = residual_h − input_h``, a signed sum of
    one uniform mask per masking edge to another survivor. A set of survivors whose
    ``e_h`` sum to zero is a union of connected components of that masking graph (the
    server learns the set's input sum); over GF(2) the dependencies among the ``e_h``
    are exactly those sets, so the number of components is ``count − rank``. A survivor
    with no masking edge has ``e_h = 0`` and counts as a component of its own.
    """
    modulus = 2**params.fixed_point.bits
    masks = []
    for owner, residual in server_residuals(params, transcript, block).items():
        level = np.asarray(levels[owner][block], dtype=np.int64) % modulus
        masks.append(residual - level.astype(residual.dtype))
    return len(masks) - gf2_rank(masks)


# --------------------------------------------------------------------------- defect


def _isolating_session(n: int, k: int, holders: int) -> SessionParams:
    """A session whose roster-wide graph leaves a holder of block ``top`` no holder
    neighbour, found by varying the run id (the graph follows the session id)."""
    roster = roster_of(n)
    for attempt in range(1000):
        params = make_params(
            n,
            neighbours=k,
            run_id=f"run-{attempt}",
            block_lengths={"base": 64, "top": 64},
            block_supports={"base": roster, "top": roster[:holders]},
        )
        graph = neighbour_graph(params.sid, params.roster, k)
        top = params.block_supports["top"]
        if any(not graph[org] & top for org in top):
            return params
    raise AssertionError("no isolating session found")


def test_isolated_holder_input_is_hidden_from_the_server() -> None:
    """7 organizations, k = 2, a block held by 3: the server, stripping the self mask it
    learns from a holder's masked vector, must not find the holder's input."""
    params = _isolating_session(7, 2, 3)
    levels = grid_levels(params, np.random.default_rng(7))
    transcript: list[TranscriptEntry] = []
    result = run_secagg_in_process(
        params, as_inputs(params, levels), make_identities(params.roster), transcript=transcript
    )
    top = sorted(params.block_supports["top"])
    np.testing.assert_array_equal(
        result.blocks["top"].integer_sum, expected_words(params, levels, "top", top)
    )
    residuals = server_residuals(params, transcript, "top")
    read_by_server = [
        owner
        for owner in top
        if np.array_equal(
            residuals[owner].astype(np.uint64), expected_words(params, levels, "top", [owner])
        )
    ]
    assert read_by_server == []
    assert masking_components(params, transcript, "top", levels) == 1


def test_compensated_inputs_give_the_server_the_same_kind_of_view() -> None:
    """Two runs whose inputs differ on two holders of the partial block but have the
    same block sum: equal released sums, equal message sizes, and in both the server's
    residuals are one masking component with no holder's input readable (so each view
    is the block sum plus uniform masks, whichever inputs produced it)."""
    params = _isolating_session(7, 2, 3)
    identities = make_identities(params.roster)
    levels = grid_levels(params, np.random.default_rng(11))
    top = sorted(params.block_supports["top"])
    shifted = {org: dict(blocks) for org, blocks in levels.items()}
    delta = np.arange(64) - 32
    shifted[top[0]]["top"] = levels[top[0]]["top"] + delta
    shifted[top[1]]["top"] = levels[top[1]]["top"] - delta
    views = []
    for run_levels in (levels, shifted):
        transcript: list[TranscriptEntry] = []
        result = run_secagg_in_process(
            params, as_inputs(params, run_levels), identities, transcript=transcript
        )
        assert masking_components(params, transcript, "top", run_levels) == 1
        residuals = server_residuals(params, transcript, "top")
        for owner in top:
            own = expected_words(params, run_levels, "top", [owner])
            assert not np.array_equal(residuals[owner].astype(np.uint64), own)
        sizes = [(e.stage, e.sender, e.recipient, len(e.data)) for e in transcript]
        views.append((result.blocks["top"].integer_sum, sizes))
    np.testing.assert_array_equal(views[0][0], views[1][0])
    assert views[0][1] == views[1][1]


# --------------------------------------------------------------------------- properties

L = 64
"""Words per block: enough lowest bits that the GF(2) rank test errs with p < 2^-30."""

EARLY_STAGES = (Stage.ADVERTISE, Stage.SHARE_KEYS, Stage.MASKED_INPUT)


@st.composite
def _layouts(draw: st.DrawFn) -> tuple[SessionParams, dict[Stage, set[str]], int]:
    """Tiers (nested holder sets) or experts (a base block and random holder sets),
    n up to 30, k in 2..4, and dropouts at any stage."""
    n = draw(st.integers(4, 30))
    k = draw(st.integers(2, 4))
    roster = roster_of(n)
    order = draw(st.permutations(roster))
    supports: dict[str, Sequence[str]] = {"base": roster}
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(3, n), min_size=1, max_size=3))
        for tier, size in enumerate(sorted(sizes, reverse=True)):
            supports[f"tier.{tier}"] = order[:size]
    else:
        for expert in range(draw(st.integers(1, 4))):
            holders = draw(st.sets(st.sampled_from(roster), min_size=3, max_size=n))
            supports[f"expert.{expert}"] = sorted(holders)
    params = make_params(
        n,
        neighbours=k,
        block_lengths={block: L for block in supports},
        block_supports=supports,
        run_id=f"run-{draw(st.integers(0, 2**20))}",
    )
    droppers = draw(st.lists(st.sampled_from(roster), unique=True, max_size=max(1, n // 5)))
    drop: dict[Stage, set[str]] = {}
    for org in droppers:
        drop.setdefault(draw(st.sampled_from(list(Stage))), set()).add(org)
    return params, drop, draw(st.integers(0, 2**32 - 1))


def _recoverable(params: SessionParams, drop: Mapping[Stage, set[str]]) -> bool:
    """Whether the dropouts leave every secret enough live share holders: then the
    session must complete (a sufficient condition; others may complete too)."""
    alive = set(params.roster) - set().union(*drop.values())
    threshold_of = getattr(params, "threshold_of", lambda org: params.threshold)
    return len(alive) >= max(params.threshold, params.min_cohort) and all(
        len(params.share_holders(org) & alive) >= threshold_of(org) for org in params.roster
    )


def test_every_block_graph_spans_exactly_its_holders_connected() -> None:
    """The structure the property below relies on, for one mixed layout: each block's
    graph has exactly its holders as vertices, is symmetric, connected, with degree
    min(k, m − 1) or k + 1, and is contained in the share graph."""
    roster = roster_of(20)
    params = make_params(
        20,
        neighbours=4,
        block_lengths={"base": 4, "mid": 4, "top": 4},
        block_supports={"base": roster, "mid": roster[:10], "top": roster[5:8]},
    )
    for block, holders in params.block_supports.items():
        graph = params.block_graph(block)
        assert set(graph) == holders
        assert is_connected(graph, holders)
        for org, peers in graph.items():
            assert peers <= holders - {org}
            assert len(peers) in {min(4, len(holders) - 1), 5}
            assert all(org in graph[peer] for peer in peers)
            assert peers <= params.graph[org]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_layouts())
def test_each_block_sums_its_surviving_holders_and_hides_each_of_them(
    layout: tuple[SessionParams, dict[Stage, set[str]], int],
) -> None:
    """Random tier/expert layouts with dropouts: every released block is the exact sum
    over its surviving holders, and the server's residuals for it form one masking
    component; a block is withheld only below the cohort or when dropouts split it."""
    params, drop, seed = layout
    levels = grid_levels(params, np.random.default_rng(seed))
    transcript: list[TranscriptEntry] = []
    try:
        result = run_secagg_in_process(
            params,
            as_inputs(params, levels),
            make_identities(params.roster),
            drop=drop,
            transcript=transcript,
        )
    except (ThresholdError, CohortTooSmallError):
        assert not _recoverable(params, drop)
        event("aborted: too many dropouts")
        return
    if drop.get(Stage.MASKED_INPUT):
        event("dropped after sharing keys: their masks removed")
    survivors = set(params.roster) - set().union(*(drop.get(s, set()) for s in EARLY_STAGES))
    for block, holders in params.block_supports.items():
        alive = holders & survivors
        if block not in result.blocks:
            below = len(alive) < params.min_cohort
            assert below or not is_connected(_block_graph(params, block), alive)
            event("block withheld: " + ("below the cohort" if below else "split by dropouts"))
            assert result.skipped[block] == len(alive)
            continue
        assert set(result.blocks[block].contributors) == alive
        np.testing.assert_array_equal(
            result.blocks[block].integer_sum, expected_words(params, levels, block, alive)
        )
        assert masking_components(params, transcript, block, levels) == 1
    for block, holders in params.block_supports.items():
        graph = _block_graph(params, block)
        assert set(graph) == holders and all(graph[org] for org in holders)
        assert is_connected(graph, holders)
        alive = holders & survivors
        if len(alive) >= params.min_cohort and is_connected(graph, alive):
            assert block in result.blocks


# --------------------------------------------------------------------------- dropouts


def _cycle_session() -> tuple[SessionParams, str, list[str]]:
    """9 organizations, k = 2, block ``top`` held by 6 on a cycle: a holder and its two
    holder neighbours on that cycle."""
    roster = roster_of(9)
    params = make_params(
        9,
        neighbours=2,
        block_lengths={"base": L, "top": L},
        block_supports={"base": roster, "top": roster[:6]},
    )
    graph = _block_graph(params, "top")
    victim = "org-000"
    return params, victim, sorted(graph[victim])


def test_dropouts_that_isolate_a_survivor_leave_the_block_masked() -> None:
    """Both holder neighbours of a holder drop after sharing keys: 4 holders survive
    (above the cohort of 3), but the victim's masks all went to dropped parties, so the
    server would read its input. The block is withheld; the base block is released."""
    params, victim, neighbours = _cycle_session()
    levels = grid_levels(params, np.random.default_rng(9))
    transcript: list[TranscriptEntry] = []
    result = run_secagg_in_process(
        params,
        as_inputs(params, levels),
        make_identities(params.roster),
        drop={Stage.MASKED_INPUT: set(neighbours)},
        transcript=transcript,
    )
    assert "top" not in result.blocks and result.skipped["top"] == 4
    alive = set(params.roster) - set(neighbours)
    np.testing.assert_array_equal(
        result.blocks["base"].integer_sum, expected_words(params, levels, "base", alive)
    )
    # Not even the victim's self mask was revealed, so its residual is still masked.
    residual = server_residuals(params, transcript, "top")[victim]
    assert not np.array_equal(
        residual.astype(np.uint64), expected_words(params, levels, "top", [victim])
    )


def test_clients_refuse_to_unmask_a_block_split_by_dropouts() -> None:
    """A server that asks for the split block anyway gets no share: clients abort."""
    params, victim, neighbours = _cycle_session()
    harness = Harness(params)
    levels = grid_levels(params, np.random.default_rng(10))
    alive = sorted(set(params.roster) - set(neighbours))
    relayed = harness.share(harness.advertise())
    request = harness.sign(harness.mask(relayed, as_inputs(params, levels), alive))
    assert "top" not in request.blocks
    greedy = dataclasses.replace(request, blocks=tuple(sorted({*request.blocks, "top"})))
    with pytest.raises(UnmaskRuleError, match="separate groups"):
        harness.clients[victim].unmask(greedy)


def test_a_client_in_many_groups_drops_and_its_masks_are_removed() -> None:
    """A holder of every tier, with more share holders (and a higher threshold) than
    t, drops after sharing keys: every block's sum is still exact."""
    roster = roster_of(16)
    supports = {"base": roster, "mid": roster[:10], "top": roster[:5]}
    params = make_params(
        16,
        neighbours=2,
        block_lengths={block: L for block in supports},
        block_supports=supports,
    )
    gone = max(roster[:5], key=lambda org: len(params.share_holders(org)))
    assert params.threshold_of(gone) > params.threshold
    levels = grid_levels(params, np.random.default_rng(16))
    result = run_secagg_in_process(
        params,
        as_inputs(params, levels),
        make_identities(params.roster),
        drop={Stage.MASKED_INPUT: {gone}},
    )
    assert result.dropped == (gone,)
    for block, holders in params.block_supports.items():
        alive = holders - {gone}
        np.testing.assert_array_equal(
            result.blocks[block].integer_sum, expected_words(params, levels, block, alive)
        )
