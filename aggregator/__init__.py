"""The consortium's aggregation server."""

from ._assignment import InfeasibleAssignmentError as InfeasibleAssignmentError
from ._assignment import assign_experts as assign_experts
from ._assignment import check_fedamole_feasible as check_fedamole_feasible
from ._assignment import reverse_selection_scores as reverse_selection_scores
from ._assignment import solve_assignment as solve_assignment
from ._ckks_setup import ckks_ceremony as ckks_ceremony
from ._experts import ExpertAggregate as ExpertAggregate
from ._experts import aggregate_mole_blocks as aggregate_mole_blocks
from ._mole_rounds import MoLECoordinator as MoLECoordinator
from ._mole_rounds import initial_mole_state as initial_mole_state
from ._mole_rounds import run_fedamole_in_process as run_fedamole_in_process
from ._server import AggregatorServer as AggregatorServer
from ._server import ServerOptions as ServerOptions
from ._server import serve as serve

__all__ = [
    "AggregatorServer",
    "ExpertAggregate",
    "InfeasibleAssignmentError",
    "MoLECoordinator",
    "ServerOptions",
    "aggregate_mole_blocks",
    "assign_experts",
    "check_fedamole_feasible",
    "ckks_ceremony",
    "initial_mole_state",
    "reverse_selection_scores",
    "run_fedamole_in_process",
    "serve",
    "solve_assignment",
]
