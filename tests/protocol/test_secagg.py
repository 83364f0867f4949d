"""Masking-mode secure aggregation end to end: exact sums, dropouts, aborts and privacy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from secagg_helpers import (
    Harness,
    as_inputs,
    expected_words,
    grid_levels,
    make_identities,
    make_params,
    reference_self_mask,
    roster_of,
)

from fedhft.protocol import (
    MaskedInput,
    SessionParams,
    SessionStats,
    Stage,
    TranscriptEntry,
    UnmaskResponse,
    run_secagg_in_process,
)
from fedhft.protocol.errors import CohortTooSmallError, StageError, ThresholdError
from fedhft.protocol.secagg._inprocess import SERVER
from fedhft.protocol.secagg._shamir import Share, reconstruct_secret

EARLY_STAGES = (Stage.ADVERTISE, Stage.SHARE_KEYS, Stage.MASKED_INPUT)
"""A party that drops at one of these stages sends no masked input."""


def _survivors(params: SessionParams, drop: dict[Stage, set[str]]) -> set[str]:
    gone = set().union(*(drop.get(stage, set()) for stage in EARLY_STAGES))
    return set(params.roster) - gone


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[SessionParams, dict[Stage, set[str]], int]:
    n = draw(st.integers(3, 7))
    threshold = draw(st.integers(n // 2 + 1, n))
    roster = roster_of(n)
    lengths = {f"layer.{i}.lora_B": draw(st.integers(1, 9)) for i in range(draw(st.integers(1, 3)))}
    supports = {
        block: draw(st.sets(st.sampled_from(roster), min_size=3, max_size=n)) for block in lengths
    }
    droppers = draw(st.lists(st.sampled_from(roster), unique=True, max_size=n - threshold))
    drop: dict[Stage, set[str]] = {}
    for org in droppers:
        drop.setdefault(draw(st.sampled_from(list(Stage))), set()).add(org)
    params = make_params(n, threshold=threshold, block_lengths=lengths, block_supports=supports)
    return params, drop, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=_scenarios())
def test_secure_sum_equals_plain_sum_exactly(
    scenario: tuple[SessionParams, dict[Stage, set[str]], int],
) -> None:
    """For random supports and dropouts within n − t, each block's sum is exact mod 2^bits.

    Inputs lie on the quantization grid, so the integer sum of the levels is known
    exactly; blocks whose surviving holders fall below the minimum cohort are skipped.
    """
    params, drop, seed = scenario
    levels = grid_levels(params, np.random.default_rng(seed))
    survivors = _survivors(params, drop)
    identities = make_identities(params.roster)
    if len(survivors) < params.min_cohort:
        with pytest.raises(CohortTooSmallError):
            run_secagg_in_process(params, as_inputs(params, levels), identities, drop=drop)
        return
    result = run_secagg_in_process(params, as_inputs(params, levels), identities, drop=drop)
    assert set(result.survivors) == survivors
    for block, support in params.block_supports.items():
        contributors = sorted(support & survivors)
        if len(contributors) < params.min_cohort:
            assert result.skipped[block] == len(contributors)
            assert block not in result.blocks
            continue
        summed = result.blocks[block]
        assert summed.contributors == tuple(contributors)
        np.testing.assert_array_equal(
            summed.integer_sum.astype(np.uint64),
            expected_words(params, levels, block, contributors),
        )
        exact = sum(levels[org][block] for org in contributors) / params.scale
        np.testing.assert_array_equal(summed.sum, exact)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 6), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_dequantized_sum_is_within_n_steps(n: int, seed: int, data: st.DataObject) -> None:
    """Off-grid inputs: the sum is within count steps and the mean within one step."""
    params = make_params(n, scale=2.0**10)
    leaving = st.lists(
        st.sampled_from(params.roster), unique=True, max_size=min(n - params.threshold, n - 3)
    )
    drop = {Stage.MASKED_INPUT: set(data.draw(leaving))}
    rng = np.random.default_rng(seed)
    inputs = {
        org: {block: rng.uniform(-1, 1, length) for block, length in params.block_lengths.items()}
        for org in params.roster
    }
    result = run_secagg_in_process(params, inputs, make_identities(params.roster), drop=drop)
    for block, summed in result.blocks.items():
        plain = np.sum([inputs[org][block] for org in summed.contributors], axis=0)
        assert np.all(np.abs(summed.sum - plain) < summed.count * params.step)
        assert np.all(np.abs(summed.mean() - plain / summed.count) < params.step)


@pytest.mark.parametrize("stage", list(Stage))
def test_recovers_from_n_minus_t_dropouts_at_each_stage(stage: Stage) -> None:
    """Seven parties, t = 4: three dropping at any one stage still give the exact sum."""
    params = make_params(7, threshold=4)
    levels = grid_levels(params, np.random.default_rng(7))
    drop = {stage: {"org-001", "org-003", "org-006"}}
    result = run_secagg_in_process(
        params, as_inputs(params, levels), make_identities(params.roster), drop=drop
    )
    survivors = sorted(_survivors(params, drop))
    for block in params.block_lengths:
        np.testing.assert_array_equal(
            result.blocks[block].integer_sum.astype(np.uint64),
            expected_words(params, levels, block, survivors),
        )
    # Only parties that shared keys and then sent no input leave masks to remove.
    expected_dropped = ("org-001", "org-003", "org-006") if stage is Stage.MASKED_INPUT else ()
    assert result.dropped == expected_dropped


def test_dropouts_spread_over_all_stages() -> None:
    """n − t dropouts spread over every stage are recovered together."""
    params = make_params(9, threshold=5)
    levels = grid_levels(params, np.random.default_rng(9))
    drop = {
        Stage.ADVERTISE: {"org-000"},
        Stage.SHARE_KEYS: {"org-002"},
        Stage.MASKED_INPUT: {"org-004"},
        Stage.UNMASK: {"org-008"},
    }
    result = run_secagg_in_process(
        params, as_inputs(params, levels), make_identities(params.roster), drop=drop
    )
    survivors = sorted(_survivors(params, drop))
    assert list(result.survivors) == survivors
    for block in params.block_lengths:
        np.testing.assert_array_equal(
            result.blocks[block].integer_sum.astype(np.uint64),
            expected_words(params, levels, block, survivors),
        )


@pytest.mark.parametrize("stage", list(Stage))
def test_below_threshold_aborts_and_reveals_nothing(stage: Stage) -> None:
    """n − t + 1 dropouts at any stage abort with ThresholdError and no secret is rebuilt.

    Before the unmask stage no client is ever asked for a share; at the unmask stage
    fewer than t parties answer, so every secret has fewer than t shares, which reveal
    nothing about it (see test_shamir), and the server releases no sum.
    """
    params = make_params(7, threshold=4)
    harness = Harness(params)
    inputs = as_inputs(params, grid_levels(params, np.random.default_rng(3)))
    leaving = {"org-000", "org-002", "org-004", "org-005"}
    transcript: list[TranscriptEntry] = []
    with pytest.raises(ThresholdError, match="nothing unmasked"):
        run_secagg_in_process(
            params, inputs, harness.identities, drop={stage: leaving}, transcript=transcript
        )
    responses = [
        UnmaskResponse.decode(entry.data) for entry in transcript if entry.stage is Stage.UNMASK
    ]
    if stage is not Stage.UNMASK:
        assert responses == []
    else:
        assert len(responses) == params.threshold - 1


def test_server_refuses_to_continue_after_an_abort() -> None:
    """After a ThresholdError the server state machine accepts nothing more."""
    params = make_params(5, threshold=3)
    harness = Harness(params)
    advertised = harness.advertise()
    for org in params.roster[:2]:
        harness.server.receive(harness.clients[org].share_keys(advertised).encode())
    with pytest.raises(ThresholdError):
        harness.server.finish_share_keys()
    with pytest.raises(StageError, match="aborted"):
        harness.server.result()
    late = harness.clients["org-002"].share_keys(advertised)
    with pytest.raises(StageError, match="aborted"):
        harness.server.receive(late)


def test_secagg_plus_sparse_graph_with_dropouts() -> None:
    """With a 4-regular SecAgg+ graph (t = 3 of 5 holders) dropouts are still recovered."""
    params = make_params(12, neighbours=4, threshold=3)
    assert all(len(peers) == 4 for peers in params.graph.values())
    levels = grid_levels(params, np.random.default_rng(12))
    drop = {Stage.MASKED_INPUT: {"org-005"}, Stage.UNMASK: {"org-010"}}
    stats = SessionStats()
    result = run_secagg_in_process(
        params, as_inputs(params, levels), make_identities(params.roster), drop=drop, stats=stats
    )
    survivors = sorted(_survivors(params, drop))
    for block in params.block_lengths:
        np.testing.assert_array_equal(
            result.blocks[block].integer_sum.astype(np.uint64),
            expected_words(params, levels, block, survivors),
        )
    assert result.dropped == ("org-005",)


def test_sixty_four_bit_modulus_when_the_sum_could_overflow() -> None:
    """When n·clip·scale reaches 2^31 the session uses 64-bit words and stays exact."""
    params = make_params(5, scale=2.0**30)
    assert params.fixed_point.bits == 64
    levels = grid_levels(params, np.random.default_rng(64))
    result = run_secagg_in_process(
        params, as_inputs(params, levels), make_identities(params.roster)
    )
    for block, summed in result.blocks.items():
        assert summed.integer_sum.dtype == np.uint64
        np.testing.assert_array_equal(
            summed.integer_sum, expected_words(params, levels, block, params.roster)
        )


def test_heterogeneous_supports_sum_over_holders_only() -> None:
    """Each block is summed over exactly its holders, with its own contributor count."""
    roster = roster_of(6)
    params = make_params(
        6,
        block_lengths={"full": 4, "top": 3, "edge": 2},
        block_supports={"full": roster, "top": roster[:4], "edge": roster[2:5]},
    )
    levels = grid_levels(params, np.random.default_rng(6))
    result = run_secagg_in_process(
        params, as_inputs(params, levels), make_identities(params.roster)
    )
    for block, support in params.block_supports.items():
        assert result.blocks[block].count == len(support)
        np.testing.assert_array_equal(
            result.blocks[block].integer_sum.astype(np.uint64),
            expected_words(params, levels, block, sorted(support)),
        )


def test_block_falling_below_min_cohort_stays_masked() -> None:
    """A block left with two surviving holders is skipped and its self-mask seeds unasked."""
    roster = roster_of(6)
    params = make_params(
        6,
        block_lengths={"full": 4, "small": 3},
        block_supports={"full": roster, "small": roster[:3]},
    )
    levels = grid_levels(params, np.random.default_rng(5))
    transcript: list[TranscriptEntry] = []
    result = run_secagg_in_process(
        params,
        as_inputs(params, levels),
        make_identities(params.roster),
        drop={Stage.MASKED_INPUT: {"org-000"}},
        transcript=transcript,
    )
    assert dict(result.skipped) == {"small": 2}
    assert set(result.blocks) == {"full"}
    small_group = params.group_of_block["small"]
    for entry in transcript:
        if entry.stage is Stage.UNMASK:
            response = UnmaskResponse.decode(entry.data)
            assert all(group != small_group for _, group, _ in response.self_mask_shares)


def _chi_square_p(words: np.ndarray) -> float:
    counts = np.bincount(np.frombuffer(words.tobytes(), dtype=np.uint8), minlength=256)
    return float(chisquare(counts).pvalue)


def _masked_vectors(transcript: list[TranscriptEntry]) -> dict[str, dict[str, np.ndarray]]:
    return {
        entry.sender: dict(MaskedInput.decode(entry.data).blocks)
        for entry in transcript
        if entry.stage is Stage.MASKED_INPUT and entry.recipient == SERVER
    }


def test_masked_vector_as_the_server_sees_it_is_uniform() -> None:
    """A constant input, masked, has uniformly distributed bytes (chi-square p > 1e-6).

    The same test rejects the unmasked quantized input outright, so it has power.
    """
    params = make_params(4, block_lengths={"block": 8192}, block_supports=None)
    inputs = {org: {"block": np.full(8192, 0.25)} for org in params.roster}
    transcript: list[TranscriptEntry] = []
    run_secagg_in_process(params, inputs, make_identities(params.roster), transcript=transcript)
    for vectors in _masked_vectors(transcript).values():
        assert _chi_square_p(vectors["block"]) > 1e-6
    assert _chi_square_p(params.fixed_point.quantize(inputs["org-000"]["block"])) < 1e-12


def test_no_mask_bytes_are_shared_between_two_blocks() -> None:
    """Attack on one-keystream-per-key masking: with equal zero inputs on two blocks of
    equal length, a keystream read at the same position for both would make the
    difference of the two masked vectors zero (the masks cancel) and give the server
    one block's input from the other's. Every client's difference is uniform instead."""
    blocks = {"layer.0.lora_B": 4096, "layer.1.lora_B": 4096}
    params = make_params(4, block_lengths=blocks, block_supports=None)
    inputs = {org: {b: np.zeros(4096) for b in blocks} for org in params.roster}
    transcript: list[TranscriptEntry] = []
    run_secagg_in_process(params, inputs, make_identities(params.roster), transcript=transcript)
    for vectors in _masked_vectors(transcript).values():
        difference = np.subtract(vectors["layer.0.lora_B"], vectors["layer.1.lora_B"])
        assert _chi_square_p(difference) > 1e-6


def _server_residual(
    params: SessionParams, transcript: list[TranscriptEntry], owner: str, block: str
) -> np.ndarray:
    """The owner's masked vector minus its self mask, rebuilt from the revealed shares.

    This is everything the server can strip off an individual vector: what remains is
    the input plus the pairwise masks with other survivors.
    """
    shares = [
        Share(params.holder_index[entry.sender], value)
        for entry in transcript
        if entry.stage is Stage.UNMASK
        for who, group, value in UnmaskResponse.decode(entry.data).self_mask_shares
        if who == owner and group == params.group_of_block[block]
    ]
    seed = reconstruct_secret(shares, threshold=params.threshold).to_bytes(32, "big")
    masked = _masked_vectors(transcript)[owner][block].copy()
    self_mask = reference_self_mask(seed, owner, params, block)
    return np.asarray(np.subtract(masked, self_mask))


def test_swapping_two_inputs_leaves_the_server_view_indistinguishable() -> None:
    """Two clients swapping inputs (same sum): same result, same message sizes, and every
    individual vector, even after the server strips the self mask it learns, is uniform.
    """
    params = make_params(4, block_lengths={"block": 8192}, scale=2.0**8)
    identities = make_identities(params.roster)
    base = {org: {"block": np.zeros(8192)} for org in params.roster}
    # On the quantization grid, so rounding is deterministic and the sums comparable.
    structured = np.round(np.linspace(-1, 1, 8192) * params.scale) / params.scale
    runs = []
    for first, second in ((structured, -structured), (-structured, structured)):
        inputs = dict(base)
        inputs["org-000"] = {"block": first}
        inputs["org-001"] = {"block": second}
        transcript: list[TranscriptEntry] = []
        result = run_secagg_in_process(params, inputs, identities, transcript=transcript)
        runs.append((result, transcript))
    (result_a, transcript_a), (result_b, transcript_b) = runs
    np.testing.assert_array_equal(
        result_a.blocks["block"].integer_sum, result_b.blocks["block"].integer_sum
    )
    assert [(e.stage, e.sender, e.recipient, len(e.data)) for e in transcript_a] == [
        (e.stage, e.sender, e.recipient, len(e.data)) for e in transcript_b
    ]
    for transcript in (transcript_a, transcript_b):
        for owner in ("org-000", "org-001"):
            residual = _server_residual(params, transcript, owner, "block")
            assert _chi_square_p(residual) > 1e-6
    # Sanity: without the pairwise masks the residual would be the structured input.
    assert _chi_square_p(params.fixed_point.quantize(structured)) < 1e-12


@pytest.mark.slow
def test_fifty_clients_with_thirty_percent_dropouts() -> None:
    """N = 50, t = 34, 15 dropouts over all stages, L = 20 000: exact sums."""
    params = make_params(50, threshold=34, block_lengths={"a": 20_000, "b": 77})
    levels = grid_levels(params, np.random.default_rng(50))
    roster = params.roster
    drop = {stage: set(roster[3 * i : 3 * i + 3]) for i, stage in enumerate(Stage)}
    result = run_secagg_in_process(
        params, as_inputs(params, levels), make_identities(roster), drop=drop
    )
    survivors = sorted(_survivors(params, drop))
    for block in params.block_lengths:
        np.testing.assert_array_equal(
            result.blocks[block].integer_sum.astype(np.uint64),
            expected_words(params, levels, block, survivors),
        )


@pytest.mark.slow
def test_hundred_clients_secagg_plus() -> None:
    """N = 100 on a 20-regular graph (t = 11 of 21 holders), 10 dropouts: exact sums."""
    params = make_params(100, neighbours=20, threshold=11, block_lengths={"a": 5_000})
    levels = grid_levels(params, np.random.default_rng(100))
    roster = params.roster
    drop = {Stage.MASKED_INPUT: set(roster[:5]), Stage.UNMASK: set(roster[50:55])}
    result = run_secagg_in_process(
        params, as_inputs(params, levels), make_identities(roster), drop=drop
    )
    survivors = sorted(_survivors(params, drop))
    np.testing.assert_array_equal(
        result.blocks["a"].integer_sum.astype(np.uint64),
        expected_words(params, levels, "a", survivors),
    )


def test_session_stats_count_the_bytes_on_the_wire() -> None:
    """Bytes up/down per client equal the transcript's, and the given clock is used."""
    params = make_params(4, threshold=3)
    ticks = iter(range(10_000))
    stats = SessionStats(clock=lambda: float(next(ticks)))
    transcript: list[TranscriptEntry] = []
    run_secagg_in_process(
        params,
        as_inputs(params, grid_levels(params, np.random.default_rng(1))),
        make_identities(params.roster),
        transcript=transcript,
        stats=stats,
    )
    for org in params.roster:
        assert stats.bytes_up[org] == sum(len(e.data) for e in transcript if e.sender == org)
        assert stats.bytes_down[org] == sum(len(e.data) for e in transcript if e.recipient == org)
        assert stats.client_seconds[org] >= 5  # at least one tick per stage
    assert stats.server_seconds >= 5
