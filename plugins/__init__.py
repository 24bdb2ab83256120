"""Plugins that ship with matrix-callbot (recorder, transcriber, music)."""
