"""Privacy accounting both an organization and its auditor use: ε of mechanism records.

`MechanismRecord` holds the parameters of one DP release; `compute_epsilon` composes a
sequence of them under the policy's accountant (RDP, PRV or GDP, through Opacus's
analyses); `auto_noise_multiplier` / `solve_noise_multiplier` find the σ that fits a
budget. Pure math: the durable ledger that records spend lives in `fedhft.sdk`.
"""

from ._analysis import PRV_EPS_ERROR as PRV_EPS_ERROR
from ._analysis import PRV_EPSILON_CUTOFF as PRV_EPSILON_CUTOFF
from ._analysis import HistoryEntry as HistoryEntry
from ._analysis import epsilon as epsilon
from ._analysis import epsilon_rdp as epsilon_rdp
from ._analysis import group_history as group_history
from ._records import MechanismRecord as MechanismRecord
from ._records import auto_noise_multiplier as auto_noise_multiplier
from ._records import compute_epsilon as compute_epsilon
from ._records import solve_noise_multiplier as solve_noise_multiplier
from .errors import AccountingError as AccountingError
from .errors import BudgetExhaustedError as BudgetExhaustedError

__all__ = [
    "PRV_EPSILON_CUTOFF",
    "PRV_EPS_ERROR",
    "AccountingError",
    "BudgetExhaustedError",
    "HistoryEntry",
    "MechanismRecord",
    "auto_noise_multiplier",
    "compute_epsilon",
    "epsilon",
    "epsilon_rdp",
    "group_history",
    "solve_noise_multiplier",
]
