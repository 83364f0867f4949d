"""DP-SGD per record on a causal LM: response-only labels, per-record gradients that do not
depend on batch-mates or padding, and one step equal to clip → sum → noise → divide."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from causal_helpers import RecordingNoise, batch_of, encoded, examples
from tiny_causal import TinyCausal

from fedhft.model import AdapterError, CausalAdapterModel
from fedhft.policies import TierSpec
from fedhft.sdk._causal import CausalBatch, CausalPrivateStep, record_losses
from fedhft.sdk._instructions import IGNORE_INDEX
from fedhft.sdk.privacy import SecureGaussian


def _alone_gradient(model: CausalAdapterModel, batch: CausalBatch, row: int) -> list[torch.Tensor]:
    """The gradient of record `row`'s loss computed with that record alone (no Opacus)."""
    n = int(batch.attention_mask[row].sum())
    alone = CausalBatch(
        batch.input_ids[row : row + 1, :n],
        batch.attention_mask[row : row + 1, :n],
        batch.labels[row : row + 1, :n],
    )
    parameters = model.trainable_parameters()
    loss = record_losses(model, alone).sum()
    return [g.detach().clone() for g in torch.autograd.grad(loss, parameters)]


def _randomize_b(model: CausalAdapterModel, seed: int) -> None:
    rng = np.random.default_rng(seed)
    model.set_block_state({b.block_id: rng.normal(0.0, 0.05, size=b.shape) for b in model.blocks})


def test_labels_mask_exactly_the_prompt_and_padding(tiny_causal: TinyCausal) -> None:
    """Labels are IGNORE_INDEX on every prompt and padding position and equal the token
    elsewhere; the positions `response_logits` scores are exactly the response tokens, and
    their logits are the full forward pass's logits at the positions before them."""
    records = encoded(tiny_causal, examples(5))
    batch = batch_of(tiny_causal, records)
    for row, record in enumerate(records):
        n, p = len(record.input_ids), record.prompt_length
        labels = batch.labels[row].tolist()
        assert labels[:p] == [IGNORE_INDEX] * p
        assert labels[p:n] == list(record.input_ids[p:])
        assert labels[n:] == [IGNORE_INDEX] * (batch.labels.shape[1] - n)
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (batch.labels.shape[1] - n)
        assert record.input_ids[-1] == tiny_causal.tokenizer.eos_token_id
    model = tiny_causal.adapted()
    _randomize_b(model, 1)
    with torch.no_grad():
        logits, targets, record_index = model.response_logits(
            batch.input_ids, batch.attention_mask, batch.labels
        )
        full = model.peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
    responses = [list(r.input_ids[r.prompt_length :]) for r in records]
    assert targets.tolist() == [token for response in responses for token in response]
    assert record_index.tolist() == [i for i, r in enumerate(responses) for _ in r]
    expected = torch.cat(
        [full[i, r.prompt_length - 1 : len(r.input_ids) - 1] for i, r in enumerate(records)]
    )
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_per_record_gradient_is_independent_of_batch_mates_and_padding(
    tiny_causal: TinyCausal,
) -> None:
    """Opacus' per-sample gradient of one record equals its gradient computed alone, in a
    batch of shorter mates (little padding) and in one with a much longer mate."""
    model = tiny_causal.adapted()
    _randomize_b(model, 2)
    pool = encoded(tiny_causal, examples(12))
    pool.sort(key=lambda r: len(r.input_ids))
    record = pool[5]
    long_mate = pool[-1]
    assert len(long_mate.input_ids) > len(record.input_ids)
    batches = [[pool[0], record, pool[1]], [long_mate, pool[7], record, pool[3]]]
    expected = _alone_gradient(model, batch_of(tiny_causal, [record]), 0)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.0)
    with CausalPrivateStep(
        model,
        optimizer,
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        expected_batch_size=4.0,
        noise_sampler=SecureGaussian(),
    ) as step:
        for mates in batches:
            batch = batch_of(tiny_causal, mates)
            row = mates.index(record)
            step.step(batch)
            per_sample = [p.grad_sample[row] for p in model.trainable_parameters()]
            for got, want in zip(per_sample, expected, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_one_dp_step_is_clip_sum_noise_divide(tiny_causal: TinyCausal) -> None:
    """With an injected noise draw, one step's B update equals the hand computation: each
    record's alone-gradient (rows outside the tier's slice zeroed) clipped to C, summed,
    plus the noise (zero on frozen rows), divided by the expected batch size; B outside
    the tier stays put."""
    model = tiny_causal.adapted()
    _randomize_b(model, 3)
    tier = TierSpec(layers=[-1], modules=["q_proj", "v_proj"], row_fraction=0.5)
    trained = model.apply_tier(tier)
    assert trained == ("layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj")
    records = encoded(tiny_causal, examples(6))
    batch = batch_of(tiny_causal, records)
    clip, sigma, expected_batch, lr = 0.05, 0.7, 5.0, 0.5
    masks = [torch.from_numpy(model.row_masks[b]).view(-1, 1) for b in trained]
    grads = []
    for row in range(len(records)):
        grads.append(
            [g * m for g, m in zip(_alone_gradient(model, batch, row), masks, strict=True)]
        )
    before = model.get_block_state()
    summed = [torch.zeros_like(p) for p in model.trainable_parameters()]
    for grad in grads:
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grad))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        assert factor < 1.0  # The test must exercise clipping.
        for total, g in zip(summed, grad, strict=True):
            total += g * factor
    noise = RecordingNoise(seed=9)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=lr)
    with CausalPrivateStep(
        model,
        optimizer,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=expected_batch,
        noise_sampler=noise,
    ) as step:
        step.step(batch)
    assert len(noise.draws) == len(trained)
    after = model.get_block_state()
    for block_id, total, draw, mask in zip(trained, summed, noise.draws, masks, strict=True):
        assert draw.std() > 0
        update = (total + draw * mask) / expected_batch
        want = before[block_id] - lr * update.double().numpy()
        np.testing.assert_allclose(after[block_id], want, rtol=1e-5, atol=1e-7)
        frozen_rows = ~model.row_masks[block_id]
        np.testing.assert_array_equal(after[block_id][frozen_rows], before[block_id][frozen_rows])
    for block_id in set(model.block_ids) - set(trained):
        np.testing.assert_array_equal(after[block_id], before[block_id])


def test_empty_poisson_batch_still_gets_its_noise(tiny_causal: TinyCausal) -> None:
    """An empty batch is a step: B moves by exactly −lr · noise / expected batch size."""
    model = tiny_causal.adapted()
    model.apply_tier(TierSpec(layers=[0], modules=["k_proj"]))
    empty = batch_of(tiny_causal, [])
    noise = RecordingNoise(seed=4)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
    with CausalPrivateStep(
        model,
        optimizer,
        noise_multiplier=1.0,
        max_grad_norm=0.1,
        expected_batch_size=2.0,
        noise_sampler=noise,
    ) as step:
        assert np.isnan(step.step(empty))
    (draw,) = noise.draws
    np.testing.assert_allclose(
        model.get_block_state(["layers.0.self_attn.k_proj"])["layers.0.self_attn.k_proj"],
        -draw.double().numpy() / 2.0,
        rtol=1e-6,
    )


def _clipped_sum(
    model: CausalAdapterModel, batch: CausalBatch, mode: str, clip: float
) -> list[torch.Tensor]:
    """Σ of the batch's clipped per-record gradients, read off one noiseless DP step (SGD,
    lr 1, expected batch size 1); the model's B is restored afterwards."""
    before = model.get_block_state()
    parameters = model.trainable_parameters()
    start = [p.detach().clone() for p in parameters]
    with CausalPrivateStep(
        model,
        torch.optim.SGD(parameters, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=1.0,
        noise_sampler=SecureGaussian(),
        grad_sample_mode=mode,  # type: ignore[arg-type]
    ) as step:
        assert step.mode == mode
        step.step(batch)
    moved = [s - p.detach() for s, p in zip(start, parameters, strict=True)]
    model.set_block_state(before)
    return moved


def test_ghost_clipping_gives_the_clipped_sum_that_hooks_give(tiny_causal: TinyCausal) -> None:
    """Noiseless, on the same batch, a ghost-clipping step moves B by exactly the sum of the
    records' alone-gradients each clipped to C, the same as a hooks step (clipping binds for
    some records and not for others)."""
    model = tiny_causal.adapted()
    _randomize_b(model, 5)
    records = encoded(tiny_causal, examples(6))
    batch = batch_of(tiny_causal, records)
    alone = [_alone_gradient(model, batch, row) for row in range(len(records))]
    norms = torch.stack([torch.sqrt(sum((g.double() ** 2).sum() for g in gs)) for gs in alone])
    clip = float(norms.median())
    assert (norms > clip * 1.01).any() and (norms < clip * 0.99).any()
    expected = [
        sum(gs[k] * min(1.0, clip / (float(n) + 1e-6)) for gs, n in zip(alone, norms, strict=True))
        for k in range(len(alone[0]))
    ]
    ghost = _clipped_sum(model, batch, "ghost", clip)
    hooks = _clipped_sum(model, batch, "hooks", clip)
    for got_ghost, got_hooks, want in zip(ghost, hooks, expected, strict=True):
        torch.testing.assert_close(got_ghost, want, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(got_ghost, got_hooks, rtol=1e-4, atol=1e-7)


def test_ghost_clipping_contribution_is_independent_of_batch_mates(
    tiny_causal: TinyCausal,
) -> None:
    """Under ghost clipping a record adds the same clipped gradient to the noiseless sum
    (the sum with it minus the sum without it) among short mates and beside a much longer
    one, and that contribution is its alone-gradient clipped to C."""
    model = tiny_causal.adapted()
    _randomize_b(model, 6)
    pool = encoded(tiny_causal, examples(12))
    pool.sort(key=lambda r: len(r.input_ids))
    record = pool[5]
    alone = _alone_gradient(model, batch_of(tiny_causal, [record]), 0)
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in alone)))
    clip = norm / 2  # The record's own gradient is clipped.
    want = [g * clip / (norm + 1e-6) for g in alone]
    for mates in ([pool[0], pool[1]], [pool[-1], pool[7], pool[3]]):
        with_record = _clipped_sum(model, batch_of(tiny_causal, [*mates, record]), "ghost", clip)
        without = _clipped_sum(model, batch_of(tiny_causal, mates), "ghost", clip)
        for a, b, w in zip(with_record, without, want, strict=True):
            torch.testing.assert_close(a - b, w, rtol=1e-3, atol=1e-6)


def test_ghost_clipping_refuses_a_row_slice(tiny_causal: TinyCausal) -> None:
    """Ghost clipping cannot zero frozen rows before clipping: a row-sliced tier is refused
    with an error that names the fix, and no Opacus hook is left on the model."""
    model = tiny_causal.adapted()
    model.apply_tier(TierSpec(layers=[-1], row_fraction=0.5))
    with pytest.raises(AdapterError, match=r"row slice.*grad_sample_mode 'hooks'"):
        CausalPrivateStep(
            model,
            torch.optim.SGD(model.trainable_parameters(), lr=1.0),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=2.0,
            noise_sampler=SecureGaussian(),
            grad_sample_mode="ghost",
        )
    assert not any(module._forward_hooks for module in model.peft_model.modules())
