"""The consortium's aggregation server."""

from ._ckks_setup import ckks_ceremony as ckks_ceremony
from ._server import AggregatorServer as AggregatorServer
from ._server import ServerOptions as ServerOptions
from ._server import serve as serve

__all__ = ["AggregatorServer", "ServerOptions", "ckks_ceremony", "serve"]
