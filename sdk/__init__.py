"""The organization-side SDK: take part in a consortium's federated fine-tuning.

What an organization's engineer embedding fedhft uses: `FederatedClient` (with its
`ClientReport`, `RoundOutcome` and `RetryPolicy`) and the errors it raises; the data
loaders and `TextDataset`; the model it trains and exports (`MaskedAdapterModel`,
`build_base_model`, `load_tokenizer`, `export_peft`, `MoLEModel`, from `fedhft.model`);
`LocalTrainer` and `MoLETrainer` for training without a server; and the durable
`PrivacyLedger`.

fedhft's own packages (the simulation, the CLI, benchmarks) reach the machinery under
the client through two documented sub-packages and one module:

- `fedhft.sdk.privacy`: the DP-SGD step, secure Gaussian noise, the accounted trainer
  base and the ledger's checks;
- `fedhft.sdk.mole`: FedAMoLE's affinity release, trainer, DP step, participant and
  rounds;
- `fedhft.sdk.participants`: the transport-independent participants that
  `FederatedClient` drives over gRPC and `fedhft.simulation` drives in process.

Accounting maths is `fedhft.accounting`'s, block and adapter maths `fedhft.model`'s.
"""

from fedhft.model import AdapterError as AdapterError
from fedhft.model import ClusterAdapters as ClusterAdapters
from fedhft.model import MaskedAdapterModel as MaskedAdapterModel
from fedhft.model import MixtureError as MixtureError
from fedhft.model import MoLEModel as MoLEModel
from fedhft.model import build_base_model as build_base_model
from fedhft.model import export_peft as export_peft
from fedhft.model import load_tokenizer as load_tokenizer

from ._causal import CausalBatch as CausalBatch
from ._causal import CausalPrivateStep as CausalPrivateStep
from ._causal import CausalRoundStats as CausalRoundStats
from ._causal import CausalTrainer as CausalTrainer
from ._causal import collate_records as collate_records
from ._causal import record_losses as record_losses
from ._client import ClientReport as ClientReport
from ._client import FederatedClient as FederatedClient
from ._data import OrganizationData as OrganizationData
from ._data import TextDataset as TextDataset
from ._data import load_csv as load_csv
from ._data import load_dataset_file as load_dataset_file
from ._data import load_from_disk as load_from_disk
from ._data import load_jsonl as load_jsonl
from ._data import synthetic_federation as synthetic_federation
from ._generation import generation_scores as generation_scores
from ._generation import zero_shot_scores as zero_shot_scores
from ._instructions import IGNORE_INDEX as IGNORE_INDEX
from ._instructions import InstructionDataset as InstructionDataset
from ._instructions import InstructionOrganization as InstructionOrganization
from ._instructions import encode_instruction as encode_instruction
from ._instructions import load_instructions as load_instructions
from ._instructions import render_prompt as render_prompt
from ._instructions import synthetic_instruction_federation as synthetic_instruction_federation
from ._rounds import RoundOutcome as RoundOutcome
from ._trainer import LocalTrainer as LocalTrainer
from ._trainer import RoundStats as RoundStats
from ._update import MaskedUpdate as MaskedUpdate
from ._update import UpdateError as UpdateError
from .connection import RetryPolicy as RetryPolicy
from .errors import BudgetExhaustedError as BudgetExhaustedError
from .errors import DataError as DataError
from .errors import EvidenceError as EvidenceError
from .errors import LedgerError as LedgerError
from .errors import LedgerMissingError as LedgerMissingError
from .errors import RunMismatchError as RunMismatchError
from .errors import SdkError as SdkError
from .errors import ServerUnreachableError as ServerUnreachableError
from .mole._trainer import MoLETrainer as MoLETrainer
from .privacy._ledger import PrivacyLedger as PrivacyLedger

__all__ = [
    "IGNORE_INDEX",
    "AdapterError",
    "BudgetExhaustedError",
    "CausalBatch",
    "CausalPrivateStep",
    "CausalRoundStats",
    "CausalTrainer",
    "ClientReport",
    "ClusterAdapters",
    "DataError",
    "EvidenceError",
    "FederatedClient",
    "InstructionDataset",
    "InstructionOrganization",
    "LedgerError",
    "LedgerMissingError",
    "LocalTrainer",
    "MaskedAdapterModel",
    "MaskedUpdate",
    "MixtureError",
    "MoLEModel",
    "MoLETrainer",
    "OrganizationData",
    "PrivacyLedger",
    "RetryPolicy",
    "RoundOutcome",
    "RoundStats",
    "RunMismatchError",
    "SdkError",
    "ServerUnreachableError",
    "TextDataset",
    "UpdateError",
    "build_base_model",
    "collate_records",
    "encode_instruction",
    "export_peft",
    "generation_scores",
    "load_csv",
    "load_dataset_file",
    "load_from_disk",
    "load_instructions",
    "load_jsonl",
    "load_tokenizer",
    "record_losses",
    "render_prompt",
    "synthetic_federation",
    "synthetic_instruction_federation",
    "zero_shot_scores",
]
