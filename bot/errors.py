"""The errors matrix-callbot raises on purpose.

CallbotError
├── ConfigError          the configuration file or environment is wrong (CLI exit code 2)
├── MatrixError          the homeserver refused or failed a request
│   └── LoginError       could not log in or restore the stored session
├── CommandError         a command cannot run; the message is shown to the caller
│   ├── UsageError       wrong arguments
│   └── PermissionDenied the caller may not run it
├── IncompatibleDependency  a pinned library changed behaviour we rely on
└── bot.fleet.FleetLost  a fleet worker's database session ended (or never began)
"""

from __future__ import annotations


class CallbotError(Exception):
    """Base class of every error matrix-callbot raises deliberately."""


class ConfigError(CallbotError):
    """One or more problems in the configuration; each names the key and why."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class MatrixError(CallbotError):
    """The homeserver refused or failed a request."""


class LoginError(MatrixError):
    """Logging in or restoring the stored session failed."""


class CommandError(CallbotError):
    """A command cannot run. The message is safe to show to the caller."""


class UsageError(CommandError):
    """The command was given the wrong arguments."""


class PermissionDenied(CommandError):
    """The caller is not allowed to run the command."""


class IncompatibleDependency(CallbotError):
    """A dependency no longer behaves the way matrix-callbot relies on."""
