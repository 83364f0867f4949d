"""`python -m fedhft.cli`: the same as the `fedhft` console script."""

from . import main

main()
