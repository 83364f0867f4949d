"""FedAMoLE's per-expert affinity, released only through an accounted Gaussian mechanism.

Reverse-selection expert assignment (RSEA, Zhang et al. 2024) needs, for every client,
how strongly its data prefers each expert of the global pool. In the paper the server
sees these scores in the clear; here (ARCHITECTURE.md §2.3, issue 7) a client releases them only
as the output of a Gaussian mechanism whose spend is committed to its privacy ledger
first, composed with its DP-SGD rounds in the same accountant.

Statistic: for each record, the router's probability vector over **all** ``E`` pool
experts (softmax of ``⟨A_e x, P x⟩ / √r`` with every pool expert's public frozen ``A``),
averaged over the record's unpadded tokens and over the MoLE modules. Each vector is
clipped to L2 norm ``C = 1`` (a probability vector already is), so adding or removing one
record moves their sum by at most ``C`` in L2: the Gaussian mechanism with noise
``σ·C`` per coordinate is ``(σ, q = 1, one step)`` in the accountant.

Notes:
    Only the noisy *sum* leaves the client. Dividing it by the true record count would
    not be post-processing (under add/remove neighbours the count itself is private), so
    the affinity handed to the server is the noisy sum normalized by its own total —
    a function of the DP output alone. The spend is committed to the ledger *before*
    the noise is drawn and the result returned, so a crash can over-count spend but
    never under-count a release. Noise comes from the policy's sampler (a CSPRNG,
    `SecureGaussian`, in production).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from fedhft.accounting import MechanismRecord
from fedhft.model import AdapterError, MoLEBase, expert_a
from fedhft.policies import NoiseSource

from ..privacy._ledger import PrivacyLedger
from ..privacy._noise import NoiseSampler
from ..privacy._releases import gaussian_record, gaussian_release

FloatArray = npt.NDArray[np.float64]

AFFINITY_CLIP = 1.0
"""L2 bound C on one record's affinity vector (its contribution to the sum)."""


def record_affinities(
    model: MoLEBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_experts: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """Each record's mean router probability over the ``num_experts`` pool experts.

    Returns a float64 tensor ``records × num_experts``; each row is a probability vector.
    The router's projection ``P`` is the client's current one; the experts' ``A`` are the
    public pool ones, whether or not the client holds them. Plaintext: never release it.
    """
    if num_experts < 1:
        raise AdapterError(f"num_experts must be >= 1, got {num_experts}")
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise AdapterError(
            "input_ids and attention_mask must be records × tokens tensors of one shape, "
            f"got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    adapter = model.adapter
    pools: dict[str, torch.Tensor] = {}
    for block_id, module in model.modules.items():
        in_features = module.base.in_features
        pools[block_id] = torch.stack(
            [
                expert_a(adapter.a_seed, block_id, e, adapter.rank, in_features)
                for e in range(num_experts)
            ]
        )
    captured: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, inputs, _out, block_id=block_id: captured.__setitem__(
                block_id, inputs[0].detach()
            )
        )
        for block_id, module in model.modules.items()
    ]
    rows: list[torch.Tensor] = []
    network: torch.nn.Module = model.model
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                ids = input_ids[start : start + batch_size]
                mask = attention_mask[start : start + batch_size]
                captured.clear()
                model.route(ids, mask)
                weights = mask.to(torch.float64)
                weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
                per_module = []
                for block_id, module in model.modules.items():
                    x = captured[block_id].to(torch.float64)
                    pool = pools[block_id].to(torch.float64)
                    projection = module.router.projection.detach().to(torch.float64)
                    token = x @ projection.t()
                    experts = torch.einsum("bti,eri->bter", x, pool)
                    scores = torch.einsum("bter,btr->bte", experts, token)
                    probabilities = torch.softmax(scores / math.sqrt(adapter.rank), dim=-1)
                    per_module.append(torch.einsum("bte,bt->be", probabilities, weights))
                rows.append(torch.stack(per_module).mean(dim=0))
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return torch.cat(rows) if rows else torch.zeros((0, num_experts), dtype=torch.float64)


@dataclass(frozen=True)
class AffinityRelease:
    """One client's DP affinity release: the noisy sum only, and its accounting.

    There is deliberately no plaintext statistic here; `affinity` is post-processing of
    `noisy_sum`.
    """

    round: int
    noisy_sum: tuple[float, ...]
    record: MechanismRecord
    epsilon_after: float
    _array: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        array = np.asarray(self.noisy_sum, dtype=np.float64)
        array.setflags(write=False)
        object.__setattr__(self, "_array", array)

    @property
    def affinity(self) -> FloatArray:
        """The noisy sum clamped at 0 and normalized to total 1 (uniform if all ≤ 0)."""
        clamped = np.maximum(self._array, 0.0)
        total = float(clamped.sum())
        if total <= 0.0:
            return np.full(clamped.shape, 1.0 / clamped.size)
        result: FloatArray = clamped / total
        return result


def release_affinity(
    model: MoLEBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_experts: int,
    noise_multiplier: float,
    ledger: PrivacyLedger,
    round_number: int,
    noise_source: NoiseSource = NoiseSource.SECURE,
    sampler: NoiseSampler | None = None,
) -> AffinityRelease:
    """Release the records' per-expert affinity through the Gaussian mechanism.

    Computes the clipped sum of `record_affinities`, commits a
    ``MechanismRecord(mechanism="gaussian", noise_multiplier=σ, sample_rate=1,
    steps=1, max_grad_norm=C)`` to `ledger`, then adds N(0, (σC)²) per coordinate.

    Args:
        sampler: the noise sampler; default the one `noise_source` names (a fresh
            `SecureGaussian` for ``secure``). Tests may pass a seeded one.

    Raises:
        BudgetExhaustedError: the release would exceed the ledger's budget; nothing was
            committed or released.
        ValueError: σ is not a finite number > 0.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(
            f"`fedamole.affinity_noise_multiplier` must be a finite number > 0, "
            f"got {noise_multiplier!r}"
        )
    vectors = record_affinities(model, input_ids, attention_mask, num_experts=num_experts)
    norms = vectors.norm(dim=1, keepdim=True)
    clipped = vectors * (AFFINITY_CLIP / norms.clamp_min(AFFINITY_CLIP))
    release = gaussian_release(
        clipped.sum(dim=0),
        gaussian_record(
            round_number=round_number,
            noise_multiplier=noise_multiplier,
            sensitivity=AFFINITY_CLIP,
            noise_source=noise_source,
        ),
        ledger=ledger,
        sampler=sampler,
    )
    return AffinityRelease(
        round=round_number,
        noisy_sum=release.values,
        record=release.record,
        epsilon_after=release.epsilon_after,
    )
