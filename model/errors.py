"""Errors raised by the model layer both organizations and the server share."""

from __future__ import annotations

from fedhft.errors import FedHFTError


class ModelError(FedHFTError):
    """Base class of the errors raised by :mod:`fedhft.model`."""


class AdapterError(ModelError, ValueError):
    """A tier, block or adapter state does not fit the model."""


class MixtureError(ModelError, ValueError):
    """Cluster adapters, a membership vector or a personal state are inconsistent."""


class ReleaseFormatError(ModelError, ValueError):
    """Bytes that should hold a released model are not well formed."""


class TokenizerMismatchError(ModelError, ValueError):
    """The local tokenizer is not the one the consortium configuration pins."""


class ModelSourceError(ModelError, ValueError):
    """The consortium's `model` cannot be found or read (a missing package or file, a
    file that is not a model)."""
