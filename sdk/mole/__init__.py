"""FedAMoLE on the organization: affinity release, the MoLE trainer and DP step, the
transport-independent participant and its gRPC rounds."""
