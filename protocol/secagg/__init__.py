"""SecAgg / SecAgg+ pairwise-masking secure aggregation (Bell et al. 2020): the client and
server state machines, their messages, the masking graph, Shamir shares and masks."""
