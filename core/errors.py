"""The root of every error fedhft raises, and the warning it gives for insecure options.

Each package (`fedhft.sdk`, `fedhft.protocol`, ...) keeps its own `errors.py` whose
errors derive from :class:`FedHFTError`; leaf errors also subclass the fitting built-in
(``PolicyError(FedHFTError, ValueError)``) so callers may catch either.
"""


class FedHFTError(Exception):
    """Base class of every error raised by fedhft."""


class SecurityWarning(UserWarning):
    """An insecure option is in use (pseudo-random noise, TLS off, secure aggregation off)."""
