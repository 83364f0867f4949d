"""CKKS homomorphic secure aggregation (TenSEAL): the scheme, its packing, messages and
the server-side aggregation of ciphertexts."""
