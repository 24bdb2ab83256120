"""Command registry, parsing, permissions and dispatch."""

from bot.commands.registry import Arg, Command, CommandContext, CommandRegistry, command

__all__ = ["Arg", "Command", "CommandContext", "CommandRegistry", "command"]
