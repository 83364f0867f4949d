"""One-shot Gaussian releases of an organization's statistics, accounted like DP-SGD.

The Gaussian mechanism (Dwork & Roth 2014, App. A; its Rényi DP in Mironov 2017): a
statistic whose L2 sensitivity to adding or removing one record is at most ``C`` is
released as ``statistic + N(0, (σ·C)² I)``. Its ledger record is ``(σ, q = 1, one step)``
with mechanism ``gaussian``, composed with the organization's DP-SGD rounds by the same
accountant (`fedhft.accounting.compute_epsilon`), so a policy's ε covers every release.

Three statistics are released this way, each at most once per organization:

- FedAMoLE's per-expert affinity (`fedhft.sdk.mole._affinity`);
- the **label prior**: the organization's count of each label (one record changes one
  count by one: ``C = 1``). A shared head is trained and used with logit adjustment by its
  logarithm (Menon et al. 2021, *Long-tail learning via logit adjustment*), so the head
  the cluster averages learns what the label mix does not decide, and each organization
  adds its own mix back (the Bayes-optimal correction for a pure label shift, Saerens et
  al. 2002);
- the **sketch**: the sum over the organization's records of each record's embedding
  under the public initial model (the mean of its last hidden states: over the text's
  tokens for classification, over the prompt's tokens for a causal LM), each scaled to
  unit L2 norm (``C = 1``). FedHFT clusters organizations on these
  (`clustering.signal: sketch`).

Notes:
    The spend is committed to the ledger *before* the noise is drawn, so a crash can
    over-count spend but never under-count a release. Only post-processing of the noisy
    values is used afterwards: the label prior clamps each noisy count at one before
    normalizing; the sketch is scaled to unit norm (dividing by the true record count
    would not be post-processing, since under add/remove neighbours the count is
    private).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fedhft.accounting import MechanismRecord
from fedhft.policies import NoiseSource

from ._ledger import PrivacyLedger
from ._noise import NoiseSampler, noise_sampler

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GaussianRelease:
    """The noisy statistic of one Gaussian release and its accounting (no plaintext)."""

    values: tuple[float, ...]
    record: MechanismRecord
    epsilon_after: float

    def array(self) -> FloatArray:
        """The noisy values as a float64 vector."""
        return np.asarray(self.values, dtype=np.float64)


def gaussian_record(
    *, round_number: int, noise_multiplier: float, sensitivity: float, noise_source: NoiseSource
) -> MechanismRecord:
    """The ledger record of one Gaussian release (``q = 1``, one step, ``C`` = sensitivity)."""
    return MechanismRecord(
        round=round_number,
        mechanism="gaussian",
        noise_multiplier=noise_multiplier,
        sample_rate=1.0,
        steps=1,
        max_grad_norm=sensitivity,
        noise_source=noise_source,
    )


def gaussian_release(
    statistic: torch.Tensor,
    record: MechanismRecord,
    *,
    ledger: PrivacyLedger,
    sampler: NoiseSampler | None = None,
) -> GaussianRelease:
    """Commit ``record`` to ``ledger``, then release ``statistic`` with its noise.

    ``statistic`` must already have L2 sensitivity at most ``record.max_grad_norm``; the
    noise is ``N(0, (σ·C)²)`` per coordinate from ``sampler`` (default: the sampler the
    record's noise source names, a fresh `SecureGaussian` for ``secure``).

    Raises:
        BudgetExhaustedError: the release would exceed the ledger's budget; nothing was
            committed or released.
        ValueError: the record is not a one-shot Gaussian one.
    """
    sensitivity = record.max_grad_norm
    if record.mechanism != "gaussian" or record.sample_rate != 1.0 or record.steps != 1:
        raise ValueError("a Gaussian release needs a `gaussian` record with q = 1, one step")
    if sensitivity is None or not math.isfinite(record.noise_multiplier):
        raise ValueError("a Gaussian release needs a finite σ and a sensitivity")
    # Spend first: if this raises, nothing has been released.
    epsilon_after = ledger.commit(record)
    draw = sampler if sampler is not None else noise_sampler(record.noise_source)
    total = statistic.detach().to(torch.float64).reshape(-1)
    noise = draw(total.shape, record.noise_multiplier * sensitivity, torch.float64)
    noisy = (total + noise.to(torch.float64)).tolist()
    return GaussianRelease(
        values=tuple(float(v) for v in noisy), record=record, epsilon_after=epsilon_after
    )


def label_counts(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """How many records carry each label (L2 sensitivity 1 under add/remove)."""
    return torch.bincount(labels.to(torch.long), minlength=num_labels).to(torch.float64)


def log_label_prior(counts: npt.ArrayLike) -> FloatArray:
    """Log of the label distribution estimated from (noisy) counts, each clamped at 1."""
    clamped = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    result: FloatArray = np.log(clamped / float(clamped.sum()))
    return result


def unit_sketch(values: npt.ArrayLike) -> FloatArray:
    """A (noisy) sketch scaled to unit L2 norm; post-processing of the release.

    Raises:
        ValueError: the sketch is zero or not finite.
    """
    array = np.asarray(values, dtype=np.float64)
    norm = float(np.linalg.norm(array))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("a sketch must be a finite, non-zero vector")
    result: FloatArray = array / norm
    return result
