"""FedAMoLE on the organization: affinity release, the MoLE trainer and DP step, the
transport-independent participant and its gRPC rounds.

The public API of this sub-package is for fedhft's own packages (the simulation,
benchmarks); an organization's engineer needs only `fedhft.sdk.MoLETrainer` (and
`FederatedClient`, which runs FedAMoLE rounds for a FedAMoLE consortium).
"""

from ._affinity import AffinityRelease as AffinityRelease
from ._affinity import release_affinity as release_affinity
from ._participant import PERSONALIZED_FILE as PERSONALIZED_FILE
from ._participant import MoLEParticipant as MoLEParticipant
from ._private_step import MoLEPrivateStep as MoLEPrivateStep
from ._rounds import FedAMoLERounds as FedAMoLERounds
from ._trainer import MoLETrainer as MoLETrainer

__all__ = [
    "PERSONALIZED_FILE",
    "AffinityRelease",
    "FedAMoLERounds",
    "MoLEParticipant",
    "MoLEPrivateStep",
    "MoLETrainer",
    "release_affinity",
]
