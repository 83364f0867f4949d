"""Bounding one organization's influence: the server refuses sums honest inputs cannot make.

A malicious organization controls only its own masked upload. Whatever it changes there
(a flipped byte wraps around in the fixed-point ring) arrives in the unmasked sum, which
`RoundCoordinator.apply` checks against the bounds of `fedhft.protocol.blocks` before
moving any cluster adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from federation_helpers import consortium
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from fedhft.aggregator._federation import RoundCoordinator
from fedhft.aggregator._sessions import MaskingSession
from fedhft.policies import ConsortiumConfig
from fedhft.protocol import (
    AggregateResult,
    CKKSParameters,
    SecAggClient,
    decode_message,
    run_secagg_in_process,
)
from fedhft.protocol import fedhft_pb2 as pb
from fedhft.protocol.blocks import clip_packed, pack_block, row_average
from fedhft.protocol.errors import SumOutOfBoundsError
from fedhft.protocol.secagg._server import BlockSum
from fedhft.protocol.secagg.messages import MaskedInput

ROWS, COLS = 3, 2
BLOCK = "lora_b"
ORGS = ("org-a", "org-b", "org-c", "org-d")
ATTACKER = "org-d"
IDENTITIES = {org: Ed25519PrivateKey.generate() for org in ORGS}

Corruption = Callable[[np.ndarray], np.ndarray]
"""The attacker's edit of its masked words (a copy), after honest masking."""


def _config(**overrides: object) -> ConsortiumConfig:
    return consortium(
        clustering={"clusters": 1, "warmup_rounds": 0, "membership": "hard"}, **overrides
    )


def _coordinator(config: ConsortiumConfig) -> RoundCoordinator:
    return RoundCoordinator(
        config,
        run_id="bounds-test",
        initial_state={BLOCK: np.zeros((ROWS, COLS))},
        tier_blocks={"full": (BLOCK,)},
    )


def _honest_inputs(clip: float) -> dict[str, dict[str, np.ndarray]]:
    """Updates within ±0.01 on every row, full weight (hard membership, every row kept)."""
    rng = np.random.default_rng(5)
    return {
        org: {
            BLOCK: clip_packed(
                pack_block(rng.uniform(-0.01, 0.01, (ROWS, COLS)), np.ones(ROWS)), ROWS, COLS, clip
            )
        }
        for org in ORGS
    }


def _round(
    config: ConsortiumConfig, corrupt: Corruption | None, monkeypatch: pytest.MonkeyPatch
) -> tuple[RoundCoordinator, Mapping[str, dict[str, np.ndarray]]]:
    """One secure round with the attacker's upload corrupted; the sums are applied."""
    coordinator = _coordinator(config)
    params, _ = coordinator.session_params(
        round_number=1, attempt=1, cluster=0, participants=dict.fromkeys(ORGS, "full")
    )
    inputs = _honest_inputs(params.clip)
    honest_mask = SecAggClient.mask_input

    def mask_input(self: SecAggClient, relayed: object, values: object) -> MaskedInput:
        masked = honest_mask(self, relayed, values)  # type: ignore[arg-type]
        if self.organization != ATTACKER or corrupt is None:
            return masked
        blocks = tuple((b, corrupt(np.array(words))) for b, words in masked.blocks)
        return dataclasses.replace(masked, blocks=blocks)

    monkeypatch.setattr(SecAggClient, "mask_input", mask_input)
    result = run_secagg_in_process(params, inputs, IDENTITIES)
    coordinator.apply(round_number=1, participants=list(ORGS), results={0: result})
    return coordinator, inputs


def _ring_add(index: int, levels: int) -> Corruption:
    def corrupt(words: np.ndarray) -> np.ndarray:
        modulus = 1 << (words.dtype.itemsize * 8)
        words[index] = words.dtype.type((int(words[index]) + levels) % modulus)
        return words

    return corrupt


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # lr 0.05: a derived clip above 1
        {"training": {"learning_rate": 0.005}},  # a derived clip below the row weights' 1
        {"secure_aggregation": {"clip": 8.0}},  # an explicit clip
    ],
)
def test_honest_round_applies_the_exact_average(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, object]
) -> None:
    """Without an attacker the sums pass their bounds and the adapter moves by the plain
    per-row average (secure sum = plain sum, within one step per contributor)."""
    config = _config(**overrides)
    coordinator, inputs = _round(config, None, monkeypatch)
    plain = sum(values[BLOCK] for values in inputs.values())
    average, _ = row_average(plain, ROWS, COLS)
    step = 1.0 / config.secure_aggregation.scale
    np.testing.assert_allclose(
        coordinator.clusters.states[0][BLOCK], average, atol=len(ORGS) * step
    )


def test_attacker_shrinking_a_row_weight_is_refused_and_nothing_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack of the review: the attacker's corrupted upload adds 1 to a coordinate
    and takes its row's summed weight from 4 to 0.001 (wrap-arounds in the ring), so the
    applied average would move that coordinate by ~1,000 while honest values are within
    ±0.01. The sum is refused with the failing bound named, and the adapter does not
    move."""
    config = _config()
    scale = config.secure_aggregation.scale
    weight_word = ROWS * COLS  # the first row weight, after the rows × cols values
    shrink_weight = _ring_add(weight_word, -round((len(ORGS) - 0.001) * scale))
    push_value = _ring_add(0, round(scale))

    def corrupt(words: np.ndarray) -> np.ndarray:
        return push_value(shrink_weight(words))

    with pytest.raises(SumOutOfBoundsError) as caught:
        _round(config, corrupt, monkeypatch)
    assert (caught.value.block, caught.value.cluster) == (BLOCK, 0)
    assert "row weight" in caught.value.bound
    coordinator = _coordinator(config)
    np.testing.assert_array_equal(coordinator.clusters.states[0][BLOCK], np.zeros((ROWS, COLS)))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, ROWS * COLS + ROWS - 1), st.integers(1, 3), st.integers(1, 255)),
        min_size=1,
        max_size=6,
    )
)
def test_flipped_bytes_never_move_a_coordinate_beyond_the_clip(
    monkeypatch: pytest.MonkeyPatch, flips: list[tuple[int, int, int]]
) -> None:
    """Up to six flipped bytes anywhere in the attacker's masked upload: the round is
    either refused (nothing applied) or every applied coordinate moves by at most the
    clip, as far as an honest update could move it."""
    config = _config()
    clip = config.secure_aggregation.clip

    def corrupt(words: np.ndarray) -> np.ndarray:
        raw = words.view(np.uint8)
        for word, byte, mask in flips:
            raw[word * words.dtype.itemsize + byte] ^= mask
        return words

    try:
        coordinator, _ = _round(config, corrupt, monkeypatch)
    except SumOutOfBoundsError:
        # Refused: by the apply path's bounds, or already when the sum decoded outside
        # the ring's range for n contributors (reported as the same error).
        return
    moved = float(np.max(np.abs(coordinator.clusters.states[0][BLOCK])))
    target(moved)
    assert moved <= clip * (1 + 1e-6)


def _ckks_result(summed: np.ndarray) -> AggregateResult:
    """A CKKS session's result as `CKKSRoundSession` builds it from the reported sums."""
    block_sum = BlockSum(
        block=BLOCK,
        integer_sum=np.zeros(0, dtype=np.uint64),
        sum=summed,
        contributors=ORGS,
    )
    return AggregateResult(
        sid=b"\x01" * 32, blocks={BLOCK: block_sum}, skipped={}, survivors=ORGS, dropped=()
    )


def test_ckks_sums_are_checked_against_the_same_bounds() -> None:
    """CKKS mode: the decrypted sum the clients report goes through the same bounds,
    with the CKKS error bound as the rounding allowance: honest sums within that noise
    are applied, a sum with a row weight driven to 0.001 and a pushed value is not."""
    config = _config()
    clip = config.secure_aggregation.clip
    parameters = CKKSParameters.choose(max_clients=len(ORGS), value_bound=max(clip, 1.0))
    inputs = _honest_inputs(clip)
    plain = sum(values[BLOCK] for values in inputs.values())
    noise = parameters.error_bound(len(ORGS))
    noisy = plain + np.random.default_rng(1).uniform(-noise, noise, plain.shape)

    coordinator = _coordinator(config)
    coordinator.apply(
        round_number=1,
        participants=list(ORGS),
        results={0: _ckks_result(noisy)},
        sum_error=parameters.error_bound,
    )
    average, _ = row_average(plain, ROWS, COLS)
    # Every row weight is 4, so the average is off by at most (noise + 0.01·noise) / 4.
    np.testing.assert_allclose(coordinator.clusters.states[0][BLOCK], average, atol=noise)

    forged = plain.copy()
    forged[ROWS * COLS] = 0.001  # the first row's summed weight
    forged[0] += 1.0
    coordinator = _coordinator(config)
    with pytest.raises(SumOutOfBoundsError):
        coordinator.apply(
            round_number=1,
            participants=list(ORGS),
            results={0: _ckks_result(forged)},
            sum_error=parameters.error_bound,
        )
    np.testing.assert_array_equal(coordinator.clusters.states[0][BLOCK], np.zeros((ROWS, COLS)))


def _session_round(
    config: ConsortiumConfig, corrupt: Corruption, monkeypatch: pytest.MonkeyPatch
) -> tuple[MaskingSession, AggregateResult]:
    """One cluster's session as the server runs it (`MaskingSession`, stage by stage,
    every message encoded), with the attacker's masked upload corrupted."""
    coordinator = _coordinator(config)
    params, _ = coordinator.session_params(
        round_number=1, attempt=1, cluster=0, participants=dict.fromkeys(ORGS, "full")
    )
    inputs = _honest_inputs(params.clip)
    honest_mask = SecAggClient.mask_input

    def mask_input(self: SecAggClient, relayed: object, values: object) -> MaskedInput:
        masked = honest_mask(self, relayed, values)  # type: ignore[arg-type]
        if self.organization != ATTACKER:
            return masked
        blocks = tuple((b, corrupt(np.array(words))) for b, words in masked.blocks)
        return dataclasses.replace(masked, blocks=blocks)

    monkeypatch.setattr(SecAggClient, "mask_input", mask_input)
    public = {org: key.public_key() for org, key in IDENTITIES.items()}
    session = MaskingSession(params, peer_identities=public)
    clients = {
        org: SecAggClient(
            params, organization=org, identity_key=IDENTITIES[org], peer_identities=public
        )
        for org in ORGS
    }

    def relayed(org: str, stage: int) -> Any:
        status, payloads = session.broadcast(org, stage)
        assert status == pb.STAGE_STATUS_READY
        return decode_message(payloads[0])

    steps: list[Callable[[str], Any]] = [
        lambda org: clients[org].advertise_keys(),
        lambda org: clients[org].share_keys(relayed(org, pb.STAGE_ADVERTISE_KEYS)),
        lambda org: clients[org].mask_input(relayed(org, pb.STAGE_SHARE_KEYS), inputs[org]),
        lambda org: clients[org].sign_survivors(relayed(org, pb.STAGE_MASKED_INPUT)),
        lambda org: clients[org].unmask(relayed(org, pb.STAGE_CONSISTENCY)),
    ]
    for stage, step in zip(session.stages, steps, strict=True):
        for org in ORGS:
            session.accept(org, stage, step(org).encode())
        session.close_stage()
        assert session.aborted is None, f"the session aborted: {session.aborted}"
    return session, session.result()


def test_a_sum_outside_the_ring_range_is_refused_like_any_other_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attacker adds a quarter of the ring to one masked word, so the unmasked sum
    decodes to a level beyond what four clipped inputs can reach. The server's session
    does not abort with the reason only in its log: it ends like every refused sum, the
    bound check before applying names the block and the ring-range bound (for the
    server's `sum_rejected` record), and the adapter does not move."""
    config = _config()

    def corrupt(words: np.ndarray) -> np.ndarray:
        return _ring_add(0, 1 << (words.dtype.itemsize * 8 - 2))(words)

    session, result = _session_round(config, corrupt, monkeypatch)
    assert session.finished
    coordinator = _coordinator(config)
    with pytest.raises(SumOutOfBoundsError) as caught:
        coordinator.apply(round_number=1, participants=list(ORGS), results={0: result})
    assert (caught.value.block, caught.value.cluster) == (BLOCK, 0)
    assert "ring" in caught.value.bound and "levels" in caught.value.bound
    np.testing.assert_array_equal(coordinator.clusters.states[0][BLOCK], np.zeros((ROWS, COLS)))
