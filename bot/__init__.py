"""matrix-callbot: headless bots that take part in Matrix calls."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("matrix-callbot")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
