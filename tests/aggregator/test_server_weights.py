"""The aggregation server never loads the base model's weights (MiniLM consortium)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_helpers import fast_consortium, provision

# Run in a fresh interpreter: records every weight file the process opens, from Python
# (`open`, as `torch.load` does) or through safetensors (whose reader opens files in
# Rust, so it is wrapped before transformers imports it). The server is built, started
# and stopped; then the same process builds the base model the way a client does, as a
# control that the recording sees a load.
_PROBE = """
import json, os, resource, sys

import safetensors

opened = []
_safe_open = safetensors.safe_open


def recording_safe_open(filename, *args, **kwargs):
    opened.append(os.fspath(filename))
    return _safe_open(filename, *args, **kwargs)


safetensors.safe_open = recording_safe_open


def audit(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        path = os.fspath(args[0])
        if path.endswith((".safetensors", ".bin", ".pt", ".pth")):
            opened.append(path)


sys.addaudithook(audit)

from fedhft.aggregator import AggregatorServer, ServerOptions
from fedhft.model import build_base_model, minilm_path
from fedhft.policies import ConsortiumConfig

config = ConsortiumConfig.model_validate_json(open(sys.argv[1]).read())
server = AggregatorServer(
    config, credentials=sys.argv[2], state_dir=sys.argv[3], new_run=True,
    options=ServerOptions(join_timeout_s=60),
).start()
blocks = len(server.coordinator.shapes)
server.stop(grace=0.1)
by_server = list(opened)
server_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
build_base_model(config.model)
print(json.dumps({
    "weights": str(minilm_path()),
    "blocks": blocks,
    "server": by_server,
    "client": opened[len(by_server):],
    "server_peak_kib": server_peak_kib,
    "client_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedhft", "fedamole"])
def test_server_of_a_minilm_consortium_loads_no_weights(tmp_path: Path, method: str) -> None:
    """A MiniLM server process starts, serves and stops without opening a weight file,
    while building the base model in that process (as a client does) opens MiniLM's."""
    extra = (
        {
            "tiers": {
                "edge": {"layers": [-1], "modules": ["value"], "min_experts": 1, "max_experts": 2},
                "full": {"layers": "all", "min_experts": 2, "max_experts": 3},
            },
            "clustering": {"clusters": 1},
            "fedamole": {"num_experts": 3, "holders_per_expert": 3},
        }
        if method == "fedamole"
        else {}
    )
    config = fast_consortium(model={"source": "minilm", "num_labels": 4}, method=method, **extra)
    config_file = tmp_path / "consortium.json"
    config_file.write_text(config.model_dump_json())
    pki = provision(tmp_path / "pki")
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(config_file), str(pki.server), str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["blocks"] > 2  # The server did derive the MiniLM adapter layout.
    assert report["server"] == []
    # The control: the recording sees the MiniLM weights when a client loads them.
    assert any(path.startswith(report["weights"]) for path in report["client"])
