"""Commands: what they are called, what arguments they take, who may run them.

Commands are async methods decorated with ``@command``; the permission requirements sit in
the same decorator, beside the handler::

    class Greeter:
        @command("hello", help="Say hello", args=[Arg("name", required=False)],
                 allowed_users_only=False)
        async def hello(self, ctx: CommandContext, name: str | None = None) -> None:
            await ctx.reply(f"Hello {name or ctx.sender}")

    registry.register(Greeter())

Mistakes in a declaration (bad name, non-async handler, optional argument before a
required one) raise ``TypeError``/``ValueError`` when the decorator runs, not when a user
types the command.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bot.config import CommandConfig

NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SPEC_ATTR = "__callbot_command__"


@dataclass(frozen=True)
class Arg:
    """One positional argument. ``rest=True`` takes the remaining text (last argument only)."""

    name: str
    required: bool = True
    rest: bool = False

    def usage(self) -> str:
        text = f"<{self.name}{'...' if self.rest else ''}>"
        return text if self.required else f"[{text}]"


class Replier(Protocol):
    async def __call__(self, text: str, html: str | None = None) -> str: ...


@dataclass(frozen=True)
class CommandContext:
    """What a command handler gets besides its arguments."""

    room_id: str
    sender: str
    event_id: str
    prefix: str
    reply: Replier
    #: Whether the caller may run a given command here (used by !help).
    may_run: Callable[[Command], bool]


Handler = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    help: str
    args: tuple[Arg, ...] = ()
    #: The caller must match ``bot.allowed_users``.
    allowed_users_only: bool = True
    #: The caller needs at least this power level in the room (None: no requirement).
    power_level: int | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for n in (self.name, *self.aliases):
            if not NAME_RE.fullmatch(n):
                raise ValueError(
                    f"command name {n!r}: use 1-32 lowercase letters, digits, '-' or '_', "
                    "starting with a letter"
                )
        if not inspect.iscoroutinefunction(self.handler):
            raise TypeError(f"command {self.name!r}: handler must be an async function")
        if not self.help.strip():
            raise ValueError(f"command {self.name!r}: help text is required")
        seen_optional = False
        for i, a in enumerate(self.args):
            if a.rest and i != len(self.args) - 1:
                raise ValueError(f"command {self.name!r}: only the last argument may be rest")
            if a.required and seen_optional:
                raise ValueError(
                    f"command {self.name!r}: required argument {a.name!r} after an optional one"
                )
            seen_optional |= not a.required

    def usage(self, prefix: str) -> str:
        return " ".join([f"{prefix}{self.name}", *(a.usage() for a in self.args)])

    def with_overrides(self, override: CommandConfig) -> Command:
        changes: dict[str, Any] = {}
        if override.power_level is not None:
            changes["power_level"] = override.power_level
        if override.allowed_users_only is not None:
            changes["allowed_users_only"] = override.allowed_users_only
        return replace(self, **changes)


@dataclass(frozen=True)
class _Spec:
    name: str | None
    help: str
    args: tuple[Arg, ...] = ()
    allowed_users_only: bool = True
    power_level: int | None = None
    aliases: tuple[str, ...] = field(default=())

    def build(self, default_name: str, handler: Handler) -> Command:
        return Command(
            self.name or default_name,
            handler,
            self.help,
            self.args,
            self.allowed_users_only,
            self.power_level,
            self.aliases,
        )


def command(
    name: str | None = None,
    *,
    help: str,
    args: Iterable[Arg] = (),
    allowed_users_only: bool = True,
    power_level: int | None = None,
    aliases: Iterable[str] = (),
) -> Callable[[Handler], Handler]:
    """Mark an async method as a command; the name defaults to the method's name."""
    spec = _Spec(name, help, tuple(args), allowed_users_only, power_level, tuple(aliases))

    def decorate(fn: Handler) -> Handler:
        # Build once now so that mistakes surface at import time.
        spec.build(fn.__name__, fn)
        setattr(fn, _SPEC_ATTR, spec)
        return fn

    return decorate


class CommandRegistry:
    """All commands the bot knows, by name and alias."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._by_name: dict[str, Command] = {}

    def add(self, cmd: Command) -> None:
        for n in (cmd.name, *cmd.aliases):
            if n in self._by_name:
                raise ValueError(f"command {n!r} is already registered")
        self._commands[cmd.name] = cmd
        for n in (cmd.name, *cmd.aliases):
            self._by_name[n] = cmd

    def register(self, owner: object) -> list[Command]:
        """Add every ``@command`` method of an object (a plugin or the core)."""
        added = []
        for attr in dir(type(owner)):
            fn = getattr(type(owner), attr, None)
            spec: _Spec | None = getattr(fn, _SPEC_ATTR, None)
            if spec is None:
                continue
            cmd = spec.build(attr, getattr(owner, attr))
            self.add(cmd)
            added.append(cmd)
        return added

    def register_plugin_class(
        self,
        cls: type,
        instance_for: Callable[[str], Awaitable[object | None]],
        missing: str,
    ) -> list[Command]:
        """Add a plugin class's ``@command`` methods; each runs on the plugin instance of the
        call in the command's room (``await instance_for(room_id)``), or replies ``missing``."""
        from bot.errors import CommandError

        added = []
        for attr in dir(cls):
            fn = getattr(cls, attr, None)
            spec: _Spec | None = getattr(fn, _SPEC_ATTR, None)
            if spec is None:
                continue

            async def handler(ctx: CommandContext, _fn: Any = fn, **kwargs: Any) -> None:
                target = await instance_for(ctx.room_id)
                if target is None:
                    raise CommandError(missing)
                await _fn(target, ctx, **kwargs)

            cmd = spec.build(attr, handler)
            self.add(cmd)
            added.append(cmd)
        return added

    def apply_overrides(self, overrides: Mapping[str, CommandConfig]) -> None:
        """Apply ``[commands.<name>]`` config; names must be known (see Config)."""
        for name, override in overrides.items():
            old = self._commands[name]
            new = old.with_overrides(override)
            self._commands[name] = new
            for n in (new.name, *new.aliases):
                self._by_name[n] = new

    def get(self, name: str) -> Command | None:
        return self._by_name.get(name)

    def names(self) -> set[str]:
        return set(self._commands)

    def __iter__(self):
        return iter(sorted(self._commands.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._commands)
