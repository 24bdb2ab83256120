#!/usr/bin/env bash
# Run the bot: scripts/run.sh [config.toml]
# Creates .venv and installs matrix-callbot into it on first use, then runs
# `callbot run -c <config>`.
source "$(dirname "$0")/_env.sh"
CONFIG=${1:-config.toml}
if [ ! -f "$CONFIG" ]; then
  echo "No $CONFIG: copy config.toml.example to $CONFIG and fill in your homeserver and bot account." >&2
  exit 2
fi
ensure_venv "[all]"
exec "$VENV/bin/callbot" run -c "$CONFIG"
