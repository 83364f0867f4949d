"""The organization-side SDK: masked adapters, DP-SGD training, privacy ledger."""

from fedhft.accounting import MechanismRecord as MechanismRecord
from fedhft.accounting import auto_noise_multiplier as auto_noise_multiplier
from fedhft.accounting import compute_epsilon as compute_epsilon
from fedhft.accounting import solve_noise_multiplier as solve_noise_multiplier
from fedhft.model import AdapterError as AdapterError
from fedhft.model import Block as Block
from fedhft.model import ClusterAdapters as ClusterAdapters
from fedhft.model import MaskedAdapterModel as MaskedAdapterModel
from fedhft.model import MixtureError as MixtureError
from fedhft.model import MoLEModel as MoLEModel
from fedhft.model import MoLERelease as MoLERelease
from fedhft.model import build_base_model as build_base_model
from fedhft.model import export_peft as export_peft
from fedhft.model import get_block_state as get_block_state
from fedhft.model import install_mole as install_mole
from fedhft.model import load_tokenizer as load_tokenizer
from fedhft.model import minilm_path as minilm_path
from fedhft.model import set_block_state as set_block_state
from fedhft.model import tier_mask as tier_mask

from ._client import ClientReport as ClientReport
from ._client import FederatedClient as FederatedClient
from ._client import RoundOutcome as RoundOutcome
from ._connection import RetryPolicy as RetryPolicy
from ._data import OrganizationData as OrganizationData
from ._data import TextDataset as TextDataset
from ._data import load_csv as load_csv
from ._data import load_dataset_file as load_dataset_file
from ._data import load_from_disk as load_from_disk
from ._data import load_jsonl as load_jsonl
from ._data import synthetic_federation as synthetic_federation
from ._mixture import PersonalState as PersonalState
from ._mixture import data_mask as data_mask
from ._mixture import mixture_start as mixture_start
from ._mixture import update_membership as update_membership
from ._participant import RoundParticipant as RoundParticipant
from ._trainer import LocalTrainer as LocalTrainer
from ._trainer import RoundStats as RoundStats
from ._update import MaskedUpdate as MaskedUpdate
from ._update import UpdateError as UpdateError
from .errors import BudgetExhaustedError as BudgetExhaustedError
from .errors import DataError as DataError
from .errors import EvidenceError as EvidenceError
from .errors import LedgerError as LedgerError
from .errors import LedgerMissingError as LedgerMissingError
from .errors import RunMismatchError as RunMismatchError
from .errors import SdkError as SdkError
from .errors import ServerUnreachableError as ServerUnreachableError
from .mole._affinity import AffinityRelease as AffinityRelease
from .mole._affinity import release_affinity as release_affinity
from .mole._participant import MoLEParticipant as MoLEParticipant
from .mole._private_step import MoLEPrivateStep as MoLEPrivateStep
from .mole._trainer import MoLETrainer as MoLETrainer
from .privacy._accounted_trainer import AccountedTrainer as AccountedTrainer
from .privacy._accounted_trainer import AuditSink as AuditSink
from .privacy._dp import GradSampleMode as GradSampleMode
from .privacy._dp import PrivateStep as PrivateStep
from .privacy._dp import poisson_batch as poisson_batch
from .privacy._ledger import PrivacyLedger as PrivacyLedger
from .privacy._ledger import open_organization_ledger as open_organization_ledger
from .privacy._noise import NoiseSampler as NoiseSampler
from .privacy._noise import SecureGaussian as SecureGaussian
from .privacy._noise import noise_sampler as noise_sampler
from .privacy._noise import use_noise_sampler as use_noise_sampler

__all__ = [
    "AccountedTrainer",
    "AdapterError",
    "AffinityRelease",
    "AuditSink",
    "Block",
    "BudgetExhaustedError",
    "ClientReport",
    "ClusterAdapters",
    "DataError",
    "EvidenceError",
    "FederatedClient",
    "GradSampleMode",
    "LedgerError",
    "LedgerMissingError",
    "LocalTrainer",
    "MaskedAdapterModel",
    "MaskedUpdate",
    "MechanismRecord",
    "MixtureError",
    "MoLEModel",
    "MoLEParticipant",
    "MoLEPrivateStep",
    "MoLERelease",
    "MoLETrainer",
    "NoiseSampler",
    "OrganizationData",
    "PersonalState",
    "PrivacyLedger",
    "PrivateStep",
    "RetryPolicy",
    "RoundOutcome",
    "RoundParticipant",
    "RoundStats",
    "RunMismatchError",
    "SdkError",
    "SecureGaussian",
    "ServerUnreachableError",
    "TextDataset",
    "UpdateError",
    "auto_noise_multiplier",
    "build_base_model",
    "compute_epsilon",
    "data_mask",
    "export_peft",
    "get_block_state",
    "install_mole",
    "load_csv",
    "load_dataset_file",
    "load_from_disk",
    "load_jsonl",
    "load_tokenizer",
    "minilm_path",
    "mixture_start",
    "noise_sampler",
    "open_organization_ledger",
    "poisson_batch",
    "release_affinity",
    "set_block_state",
    "solve_noise_multiplier",
    "synthetic_federation",
    "tier_mask",
    "update_membership",
    "use_noise_sampler",
]
