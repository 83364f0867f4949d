"""Whole federations for research: in one process, on a pool of Ray workers, and the
synthetic consortia `fedhft simulate` writes.

`simulate_in_process` is the researcher's entry point: each organization's own data
and tier in, per-organization metrics, ε spent and per-round costs out; it writes the
policies, ledgers and audit logs and builds the trainers and the coordinator itself.

In one process (`run_federation_in_process`, `run_fedamole_in_process`) every
organization runs the real SDK trainer (DP-SGD, ledger, audit log) and every secure sum
is the real protocol, each message encoded and decoded as on the wire; only the network
and the certificates are missing. On Ray (`RayFederation`) a bounded pool of workers,
each holding one base model, trains organizations from their own folders, for
federations of hundreds. `provision` writes a synthetic consortium (CA, configuration,
policies, non-iid data) for `fedhft simulate` and the learning benchmark.
"""

from ._fedamole import MoLEFederationResult as MoLEFederationResult
from ._fedamole import run_fedamole_in_process as run_fedamole_in_process
from ._fedhft import FederationResult as FederationResult
from ._fedhft import OrganizationRun as OrganizationRun
from ._fedhft import RoundRecord as RoundRecord
from ._fedhft import run_federation_in_process as run_federation_in_process
from ._fedhft import secure_sum as secure_sum
from ._instruct import causal_model_spec as causal_model_spec
from ._provision import LABELS as LABELS
from ._provision import TIER_CYCLE as TIER_CYCLE
from ._provision import SimulatedConsortium as SimulatedConsortium
from ._provision import SimulatedModel as SimulatedModel
from ._provision import consortium_document as consortium_document
from ._provision import dropped_in as dropped_in
from ._provision import majority_accuracy as majority_accuracy
from ._provision import organization_rows as organization_rows
from ._provision import policy_document as policy_document
from ._provision import provision as provision
from ._provision import rounds_note as rounds_note
from ._provision import secagg_neighbours as secagg_neighbours
from ._ray import OrganizationFolder as OrganizationFolder
from ._ray import RayFederation as RayFederation
from ._ray import RayFederationResult as RayFederationResult
from ._ray import RayRound as RayRound
from ._ray import organization_folders as organization_folders
from ._ray import require_ray as require_ray
from ._research import LocalTraining as LocalTraining
from ._research import SimulatedOrganization as SimulatedOrganization
from ._research import SimulationResult as SimulationResult
from ._research import score_zero_shot as score_zero_shot
from ._research import simulate_in_process as simulate_in_process
from ._server_progress import server_attempts as server_attempts
from .errors import RayUnavailableError as RayUnavailableError
from .errors import SimulationError as SimulationError

__all__ = [
    "LABELS",
    "TIER_CYCLE",
    "FederationResult",
    "LocalTraining",
    "MoLEFederationResult",
    "OrganizationFolder",
    "OrganizationRun",
    "RayFederation",
    "RayFederationResult",
    "RayRound",
    "RayUnavailableError",
    "RoundRecord",
    "SimulatedConsortium",
    "SimulatedModel",
    "SimulatedOrganization",
    "SimulationError",
    "SimulationResult",
    "causal_model_spec",
    "consortium_document",
    "dropped_in",
    "majority_accuracy",
    "organization_folders",
    "organization_rows",
    "policy_document",
    "provision",
    "require_ray",
    "rounds_note",
    "run_fedamole_in_process",
    "run_federation_in_process",
    "score_zero_shot",
    "secagg_neighbours",
    "secure_sum",
    "server_attempts",
    "simulate_in_process",
]
