"""Causal-LM B blocks through the real masking secure aggregation give the clear average."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from causal_helpers import batch_of, encoded, examples
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tiny_causal import TinyCausal

from fedhft.policies import TierSpec
from fedhft.protocol import SessionParams, run_secagg_in_process
from fedhft.protocol.blocks import clip_packed, packed_length, row_average
from fedhft.sdk._causal import CausalPrivateStep
from fedhft.sdk._update import MaskedUpdate
from fedhft.sdk.privacy import SecureGaussian

SCALE = 2.0**16
CLIP = 1.0


def test_masked_updates_of_causal_blocks_sum_to_the_clear_row_average(
    tiny_causal: TinyCausal,
) -> None:
    """Organizations each take a DP step on their own records, pack π·m⊙Δ and π·m of every
    trained B as FedHFT does, and sum them with the in-process masking protocol: per row,
    the released average equals Σ m⊙Δ / Σ m computed in the clear (within the quantization
    steps of the sum), and rows no one kept get no weight.

    Three organizations, not two: the protocol refuses a cohort under three, where one of
    two contributors could subtract its own update from the sum.
    """
    roster = ["org-a", "org-b", "org-c"]
    rng = np.random.default_rng(21)
    tier = TierSpec(layers=[-1], modules=["q_proj", "v_proj"])
    deltas, keeps, inputs = {}, {}, {}
    shapes: dict[str, tuple[int, int]] = {}
    for index, org in enumerate(roster):
        model = tiny_causal.adapted()
        trained = model.apply_tier(tier)
        before = model.get_block_state(trained)
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
        with CausalPrivateStep(
            model,
            optimizer,
            noise_multiplier=0.8,
            max_grad_norm=0.5,
            expected_batch_size=4.0,
            noise_sampler=SecureGaussian(),
        ) as step:
            step.step(batch_of(tiny_causal, encoded(tiny_causal, examples(4, organization=index))))
        after = model.get_block_state(trained)
        deltas[org] = {b: after[b] - before[b] for b in trained}
        # A data mask keeps about half the rows, a different half per organization; one
        # row is dropped by everyone.
        keeps[org] = {b: rng.random(after[b].shape[0]) < 0.5 for b in trained}
        for b in trained:
            keeps[org][b][0] = False
            assert 0 < np.abs(deltas[org][b]).max() < CLIP
        update = MaskedUpdate.build(
            round=1,
            delta=deltas[org],
            keep=keeps[org],
            membership=[1.0],
            private=True,
            block_order=trained,
        )
        shapes.update(update.shapes)
        inputs[org] = {
            b: clip_packed(v, *update.shapes[b], CLIP) for b, v in update.vectors(0).items()
        }
    params = SessionParams(
        run_id="causal-1",
        round=1,
        cluster=0,
        roster=roster,
        config_hash=hashlib.sha256(b"consortium").digest(),
        model_hash=hashlib.sha256(b"tiny causal").digest(),
        threshold=2,
        min_cohort=3,
        block_lengths={b: packed_length(*shape) for b, shape in shapes.items()},
        block_supports={b: set(roster) for b in shapes},
        clip=CLIP,
        scale=SCALE,
    )
    identities = {org: Ed25519PrivateKey.generate() for org in roster}
    result = run_secagg_in_process(params, inputs, identities)
    assert not result.skipped
    for block_id, (rows, cols) in shapes.items():
        average, has_weight = row_average(result.blocks[block_id].sum, rows, cols)
        weights = sum(keeps[org][block_id].astype(np.float64) for org in roster)
        weighted = sum(deltas[org][block_id] * keeps[org][block_id][:, None] for org in roster)
        np.testing.assert_array_equal(has_weight, weights > 0)
        assert not has_weight[0]
        clear = weighted[has_weight] / weights[has_weight][:, None]
        np.testing.assert_allclose(average[has_weight], clear, atol=len(roster) / SCALE)
