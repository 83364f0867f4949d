"""The organization's side of a round, independent of any transport (public for
fedhft's own packages).

`FederatedClient` drives these participants over gRPC; `fedhft.simulation` and the
benchmarks drive them in process. `RoundParticipant` runs FedHFT, FedAvg and local
rounds (cluster adapters in, a `fedhft.sdk.MaskedUpdate` and its masked contributions
out), `MoLEParticipant` FedAMoLE rounds; both keep their round state in the
organization's state folder so that an interrupted round re-sends the same DP output
instead of spending again.
"""

from ._participant import RoundParticipant as RoundParticipant
from .mole._participant import MoLEParticipant as MoLEParticipant

__all__ = ["MoLEParticipant", "RoundParticipant"]
