# Shared by scripts/run.sh and scripts/test.sh: make the project's virtual environment.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
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
