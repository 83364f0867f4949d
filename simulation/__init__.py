"""Whole federations in one process: the real trainers, coordinators and secure sums.

For research and tests: every organization runs the real SDK trainer (DP-SGD, ledger,
audit log) and every secure sum is the real protocol, each message encoded and decoded
as on the wire; only the network and the certificates are missing. `fedhft simulate`
and the learning benchmark drive these.
"""

from ._fedamole import MoLEFederationResult as MoLEFederationResult
from ._fedamole import run_fedamole_in_process as run_fedamole_in_process
from ._fedhft import FederationResult as FederationResult
from ._fedhft import OrganizationRun as OrganizationRun
from ._fedhft import RoundRecord as RoundRecord
from ._fedhft import run_federation_in_process as run_federation_in_process
from ._fedhft import secure_sum as secure_sum

__all__ = [
    "FederationResult",
    "MoLEFederationResult",
    "OrganizationRun",
    "RoundRecord",
    "run_fedamole_in_process",
    "run_federation_in_process",
    "secure_sum",
]
