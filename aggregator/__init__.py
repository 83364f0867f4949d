"""The consortium's aggregation server."""

from fedhft.model import initial_mole_state as initial_mole_state

from ._assignment import InfeasibleAssignmentError as InfeasibleAssignmentError
from ._assignment import assign_experts as assign_experts
from ._assignment import check_fedamole_feasible as check_fedamole_feasible
from ._assignment import reverse_selection_scores as reverse_selection_scores
from ._assignment import solve_assignment as solve_assignment
from ._ckks_setup import ckks_ceremony as ckks_ceremony
from ._experts import ExpertAggregate as ExpertAggregate
from ._experts import aggregate_mole_blocks as aggregate_mole_blocks
from ._federation import RoundCoordinator as RoundCoordinator
from ._federation import RoundSummary as RoundSummary
from ._mole_rounds import MoLECoordinator as MoLECoordinator
from ._server import AggregatorServer as AggregatorServer
from ._server import ServerOptions as ServerOptions
from ._server import serve as serve
from ._store import AggregatorStore as AggregatorStore
from .errors import AggregatorError as AggregatorError
from .errors import RoundError as RoundError
from .errors import StateError as StateError

__all__ = [
    "AggregatorError",
    "AggregatorServer",
    "AggregatorStore",
    "ExpertAggregate",
    "InfeasibleAssignmentError",
    "MoLECoordinator",
    "RoundCoordinator",
    "RoundError",
    "RoundSummary",
    "ServerOptions",
    "StateError",
    "aggregate_mole_blocks",
    "assign_experts",
    "check_fedamole_feasible",
    "ckks_ceremony",
    "initial_mole_state",
    "reverse_selection_scores",
    "serve",
    "solve_assignment",
]
