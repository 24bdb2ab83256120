"""The recorder plugin: per-participant and mixed Opus/Ogg recordings of calls."""
