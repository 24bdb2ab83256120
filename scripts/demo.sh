#!/usr/bin/env bash
# See it work, with nothing to set up: scripts/demo.sh [--data-dir DIR]
# Creates .venv with matrix-callbot[all] and, apart from it, .venv-synapse with a throwaway
# Synapse (its pins must not mix with the bot's) on first use, then runs `callbot demo`:
# Synapse, the dev SFU, the bot, and a simulated participant who speaks; it prints where the
# recording and transcript are, and the transcript.
source "$(dirname "$0")/_env.sh"
ensure_venv "[all]"
ensure_synapse
exec "$VENV/bin/callbot" demo "$@"
