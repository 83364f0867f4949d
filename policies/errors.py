"""Errors raised while loading and checking policy files."""

from fedhft.errors import FedHFTError


class PolicyError(FedHFTError, ValueError):
    """A policy or consortium file is invalid.

    ``problems`` holds one line per problem, each naming the file, the field path and
    what is allowed, so a CLI can print them one per line.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class IncompatiblePolicyError(PolicyError):
    """An organization's policy forbids joining the consortium as configured."""
