"""The organization's privacy machinery: the durable ledger, secure Gaussian noise, the
DP-SGD step, one-shot Gaussian releases and the accounted trainer base."""
