"""Optional parts of matrix-callbot and the pip extras that install them (pyproject.toml):
``[devsfu]`` (the dev SFU), ``[transcriber]`` (speech-to-text), ``[ytdlp]``, ``[all]``."""

from __future__ import annotations

from importlib.util import find_spec

#: what the dev SFU (`callbot dev-sfu`, the demo) needs
DEVSFU = {"aiortc": "devsfu"}


def missing_extras(requires: dict[str, str]) -> str | None:
    """What to install when a module that an extra provides is missing (None: all there)."""
    extras = sorted({extra for module, extra in requires.items() if find_spec(module) is None})
    if not extras:
        return None
    spec = ",".join(extras)
    return f"needs the [{spec}] extra: pip install 'matrix-callbot[{spec}]'"
