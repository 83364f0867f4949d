"""Time Flower's SecAgg+ on one round, in process, for `benchmarks/secagg.py`.

Runs in Flower's own environment (`benchmarks/requirements-flower.txt`: flwr pins a
protobuf older than fedhft's generated gRPC code accepts), so this file imports only
numpy and flwr. It drives Flower's own code on both sides: the server is
`SecAggPlusWorkflow`'s four stage methods, each client is `secaggplus_mod`, and an
in-memory grid carries every message through Flower's protobuf encoding to the addressed
client's mod and back (no reply from a client that drops out before sending its masked
vector). Times are process CPU seconds; encoding a request and decoding a reply count as
server time, the rest of a round trip as the client's; making up a client's inputs (the
stand-in for training) counts for nobody. The strategy only hands back the securely
aggregated vector.

Usage: python benchmarks/_flower_secaggplus.py '{"clients": 10, "blocks": [...], ...}'
prints one JSON object: mean client seconds over survivors, all clients' seconds, server
seconds, mean bytes up per survivor (the protobuf size of its replies), and the largest
error of the released average against the exact one.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import (
    SecAggPlusWorkflow,
    WorkflowState,
)
from flwr.supercore.task_identity import TaskIdentity

clock = time.process_time  # CPU seconds, like `benchmarks/secagg.py`


def client_inputs(seed: int, client: int, blocks: list[int]) -> list[np.ndarray]:
    """The same per-client inputs `benchmarks/secagg.py` gives every other method."""
    rng = np.random.default_rng([seed, client])
    return [rng.uniform(-1.0, 1.0, n) for n in blocks]


class _Proxy(ClientProxy):  # type: ignore[misc]
    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, *a: Any, **k: Any) -> Any:  # pragma: no cover - unused
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


class _Strategy:
    """Samples every client; `aggregate_fit` returns the securely aggregated vector as is."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids
        self.aggregate: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        return [(_Proxy(nid), FitIns(parameters, {})) for nid in self.node_ids]

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        parameters = results[0][1].parameters
        self.aggregate = parameters_to_ndarrays(parameters)
        return parameters, {}


class _ClientManager:
    def __init__(self, count: int) -> None:
        self.count = count

    def num_available(self) -> int:
        return self.count


class _Grid:
    """Delivers each message to its client's `secaggplus_mod` and times the client."""

    def __init__(self, seed: int, blocks: list[int], drop: set[int]) -> None:
        self.seed = seed
        self.blocks = blocks
        self.drop = drop
        self.contexts: dict[int, Context] = {}
        self.client_seconds: dict[int, float] = {}
        self.bytes_up: dict[int, int] = {}
        self.training_seconds: dict[int, float] = {}

    def _fit(self, node_id: int) -> Any:
        def call_next(message: Message, context: Context) -> Message:
            # Making up the inputs stands in for training: not part of SecAgg+'s cost.
            started = clock()
            arrays = client_inputs(self.seed, node_id, self.blocks)
            self.training_seconds[node_id] = clock() - started
            fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, {})
            return Message(compat.fitres_to_recorddict(fitres, False), reply_to=message)

        return call_next

    def send_and_receive(self, messages: Any, timeout: Any = None) -> list[Message]:
        """Carry each message over protobuf, as the wire does, and charge each side its part.

        Encoding an outgoing message and decoding a reply count as server time (the
        caller's clock); decoding it, running the mod and encoding the reply count as the
        client's time.
        """
        replies = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            stage = message.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if node_id in self.drop and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
                continue
            wire = message_to_proto(message)
            context = self.contexts.setdefault(
                node_id,
                Context(
                    run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={}
                ),
            )
            started = clock()
            received = message_from_proto(wire)
            reply = secaggplus_mod(received, context, self._fit(node_id))
            reply_wire = message_to_proto(reply)
            self.client_seconds[node_id] = self.client_seconds.get(node_id, 0.0) + (
                clock() - started - self.training_seconds.pop(node_id, 0.0)
            )
            self.bytes_up[node_id] = self.bytes_up.get(node_id, 0) + reply_wire.ByteSize()
            replies.append(message_from_proto(reply_wire))
        return replies


def run(config: dict[str, Any]) -> dict[str, Any]:
    """One SecAgg+ round; returns mean client seconds, server seconds and bytes up."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    # The workflow shuffles clients onto its neighbour ring with `random`; fix the draw.
    random.seed(config["seed"])
    # What a SuperLink would set for the ServerApp's process.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    n, seed = config["clients"], config["seed"]
    blocks: list[int] = config["blocks"]
    node_ids = list(range(1, n + 1))
    drop = {node_ids[i] for i in config["drop"]}
    grid = _Grid(seed, blocks, drop)
    strategy = _Strategy(node_ids)
    base = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=strategy, client_manager=_ClientManager(n))  # type: ignore[arg-type]
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord([np.zeros(1)])
    workflow = SecAggPlusWorkflow(
        num_shares=config["num_shares"],
        reconstruction_threshold=config["threshold"],
        max_weight=1.0,
        clipping_range=config["clip"],
        quantization_range=config["quantization_range"],
        modulus_range=2**32,
    )
    state = WorkflowState()
    started = clock()
    completed = True
    for stage in (
        workflow.setup_stage,
        workflow.share_keys_stage,
        workflow.collect_masked_vectors_stage,
        workflow.unmask_stage,
    ):
        if not stage(grid, context, state):  # type: ignore[arg-type]
            completed = False
            break
    total = clock() - started
    # Clients ran inside the server's clock (in-memory grid); take their time out.
    client_total = sum(grid.client_seconds.values())
    error = None
    if completed and strategy.aggregate is not None:
        survivors = [nid for nid in node_ids if nid not in drop]
        plain = [
            np.mean([client_inputs(seed, nid, blocks)[i] for nid in survivors], axis=0)
            for i in range(len(blocks))
        ]
        # The aggregate is the weighted average (every weight is 1 here).
        pairs = zip(strategy.aggregate, plain, strict=True)
        error = max(float(np.max(np.abs(a - p))) for a, p in pairs)
    active = [nid for nid in node_ids if nid not in drop]
    return {
        "completed": completed,
        "client_seconds": float(np.mean([grid.client_seconds[nid] for nid in active])),
        "client_total_seconds": client_total,
        "server_seconds": total - client_total,
        "bytes_up": float(np.mean([grid.bytes_up[nid] for nid in active])),
        "max_error_of_average": error,
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
