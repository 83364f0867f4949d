"""Generated code of the `fedhft.v1` wire protocol; do not edit."""
