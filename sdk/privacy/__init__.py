"""The organization's privacy machinery: the durable ledger, secure Gaussian noise, the
DP-SGD step, one-shot Gaussian releases and the accounted trainer base.

The public API of this sub-package is for fedhft's own packages (the simulation, the
CLI's ledger commands, benchmarks); an organization's engineer needs only
`fedhft.sdk.PrivacyLedger`.
"""

from .._client_state import check_rebuilt_ledger as check_rebuilt_ledger
from ._accounted_trainer import AccountedTrainer as AccountedTrainer
from ._accounted_trainer import AuditSink as AuditSink
from ._dp import GradSampleMode as GradSampleMode
from ._dp import PrivateStep as PrivateStep
from ._dp import autocast_dtype as autocast_dtype
from ._dp import forward_precision as forward_precision
from ._dp import poisson_batch as poisson_batch
from ._dp import training_device as training_device
from ._ledger import PrivacyLedger as PrivacyLedger
from ._ledger import open_organization_ledger as open_organization_ledger
from ._noise import NoiseSampler as NoiseSampler
from ._noise import SecureGaussian as SecureGaussian
from ._noise import noise_sampler as noise_sampler
from ._noise import use_noise_sampler as use_noise_sampler
from ._releases import unit_sketch as unit_sketch

__all__ = [
    "AccountedTrainer",
    "AuditSink",
    "GradSampleMode",
    "NoiseSampler",
    "PrivacyLedger",
    "PrivateStep",
    "SecureGaussian",
    "autocast_dtype",
    "check_rebuilt_ledger",
    "forward_precision",
    "noise_sampler",
    "open_organization_ledger",
    "poisson_batch",
    "training_device",
    "unit_sketch",
    "use_noise_sampler",
]
