# Shared by scripts/run.sh, scripts/demo.sh and scripts/test.sh: make the project's virtual
# environment (.venv) and, for the demo and the tests, Synapse's own (.venv-synapse).
# Re-installs only when pyproject.toml (or the Synapse version) changed since the last install.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
SYNVENV="$ROOT/.venv-synapse"
# The throwaway homeserver of the demo and the tests (bot/demo/synapse.py SYNAPSE_VERSION).
SYNAPSE_VERSION=1.163.2
PYTHON=${PYTHON:-python3}

ensure_python() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "matrix-callbot needs Python 3.11 or newer as '$PYTHON' (set PYTHON=...)" >&2
    exit 1
  fi
}

# ensure_venv EXTRAS: e.g. ensure_venv "[test]" or ensure_venv ""
ensure_venv() {
  local extras=$1
  ensure_python
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local stamp="$VENV/.installed$extras"
  local want
  want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT$extras"
    echo "$want" > "$stamp"
  fi
}

# Synapse in its own environment: its pinned dependencies must not mix with ours.
# bot/demo/synapse.py finds it there (or at $CALLBOT_SYNAPSE_PYTHON).
ensure_synapse() {
  ensure_python
  if [ "$(cat "$SYNVENV/.installed" 2>/dev/null)" != "$SYNAPSE_VERSION" ]; then
    [ -x "$SYNVENV/bin/python" ] || "$PYTHON" -m venv "$SYNVENV"
    "$SYNVENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION"
    echo "$SYNAPSE_VERSION" > "$SYNVENV/.installed"
  fi
  export CALLBOT_SYNAPSE_PYTHON="$SYNVENV/bin/python"
}
