"""fedhft: privacy-hardened personalized federated fine-tuning of language models."""

from importlib.metadata import PackageNotFoundError, version

from fedhft.errors import FedHFTError as FedHFTError
from fedhft.errors import SecurityWarning as SecurityWarning

try:
    __version__ = version("fedhft")
except PackageNotFoundError:  # pragma: no cover - only when run from an uninstalled tree
    __version__ = "0+unknown"

__all__ = ["FedHFTError", "SecurityWarning", "__version__"]
