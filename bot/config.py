"""Configuration: a TOML file (plus environment overrides) read into typed, validated dataclasses.

Every problem is reported with the dotted key it concerns and why, and all problems are
collected before raising, so one run of `callbot check-config` shows them all.

Any scalar option may instead come from the environment as ``CALLBOT_<SECTION>_<KEY>``
(for example ``CALLBOT_MATRIX_PASSWORD``); the environment wins over the file, which keeps
secrets out of the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from bot.errors import ConfigError
from bot.matrix.crypto import CryptoError, decode_recovery_key

ENV_PREFIX = "CALLBOT_"

Check = Callable[[Any], str | None]
T = typing.TypeVar("T")


def _check(fn: Check, **kw: Any) -> Any:
    """A dataclass field with a value check that returns a problem text or None."""
    metadata = {"check": fn}
    return field(metadata=metadata, **kw)


def _http_url(v: str) -> str | None:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
        return f"must be an http:// or https:// URL, got {v!r}"
    return None


def _user_id(v: str) -> str | None:
    if not re.fullmatch(r"@[^:\s]+:\S+", v):
        return f"must be a full Matrix user ID like '@bot:example.org', got {v!r}"
    return None


def _recovery_key(v: str | None) -> str | None:
    try:
        if v is not None:
            decode_recovery_key(v)
    except CryptoError as e:
        return str(e)  # never the value: it is a secret
    return None


def _prefix(v: str) -> str | None:
    if not v or len(v) > 16 or any(c.isspace() for c in v):
        return "must be 1 to 16 characters without spaces"
    return None


def _user_globs(v: tuple[str, ...]) -> str | None:
    bad = [g for g in v if not g.startswith("@") or ":" not in g]
    if bad:
        return f"entries must be user ID patterns like '@*:example.org', got {bad[0]!r}"
    return None


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


@dataclass(frozen=True)
class MatrixConfig:
    homeserver: str = _check(_http_url)
    user_id: str = _check(_user_id)
    password: str | None = field(default=None, repr=False, metadata={"secret": True})
    access_token: str | None = field(default=None, repr=False, metadata={"secret": True})
    device_name: str = "matrix-callbot"
    ignore_unverified_devices: bool = True
    #: the account's recovery key, to sign a new device of an identity made elsewhere
    recovery_key: str | None = field(
        default=None, repr=False, metadata={"secret": True, "check": _recovery_key}
    )
    #: as Element's "exclude insecure devices" (MSC4153): keys to, commands and media keys
    #: from, only devices their owner cross-signed
    exclude_insecure_devices: bool = True

    @property
    def server_name(self) -> str:
        return self.user_id.split(":", 1)[1]


@dataclass(frozen=True)
class BotConfig:
    data_dir: Path
    command_prefix: str = _check(_prefix, default="!")
    allowed_users: tuple[str, ...] = _check(_user_globs, default=())
    reply_mode: Literal["reply", "thread"] = "reply"
    command_max_age: float = _check(_positive, default=120.0)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["human", "json"] = "human"


def _non_negative_int(v: int) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _at_least_one(v: int) -> str | None:
    return None if v >= 1 else "must be 1 or more"


def _optional_url(v: str | None) -> str | None:
    return None if v is None else _http_url(v)


def _ws_url(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"wss?://[^\s/]+(/\S*)?", v):
        return f"must be a ws:// or wss:// URL, got {v!r}"
    return None


def _listen_address(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if v and (not sep or not host or not port.isdigit() or not 0 < int(port) < 65536):
        return f"must be HOST:PORT like '127.0.0.1:9464' (or empty: off), got {v!r}"
    return None


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (/metrics) and a health check (/health) over HTTP."""

    #: Where to serve them, e.g. "127.0.0.1:9464"; empty (the default): not served.
    address: str = _check(_listen_address, default="")


@dataclass(frozen=True)
class RtcConfig:
    """Joining calls (MatrixRTC)."""

    #: "legacy": the state event Element Call sends by default; "sticky": MSC4143 sticky
    #: events (Element Call's "matrix_2_0" mode), used only if the homeserver supports them
    membership_format: Literal["legacy", "sticky"] = "legacy"
    #: Use this MatrixRTC authorization (JWT) service instead of discovering one.
    livekit_service_url: str | None = _check(_optional_url, default=None)
    #: Mint LiveKit tokens directly (no JWT service): all three must be set.
    livekit_url: str | None = _check(_ws_url, default=None)
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = field(default=None, repr=False, metadata={"secret": True})
    #: The delayed leave the homeserver sends if the bot stops restarting it.
    delayed_leave_ms: int = _check(_positive, default=10_000)
    #: Notification sent when the bot starts a call: "notification", "ring" or "none".
    notification_type: Literal["notification", "ring", "none"] = "notification"
    #: Wait this long after sending a new media key before encrypting with it.
    use_key_delay_ms: int = _check(_non_negative_int, default=1_000)
    #: Joiners within this age of our key get the current key instead of a new one.
    key_rotation_grace_ms: int = _check(_non_negative_int, default=10_000)
    #: The to-device form of the media keys the bot sends (bot.rtc.key_events; it reads
    #: all): "element_call" (io.element.call.encryption_keys, what Element Call 0.26 and
    #: matrix-js-sdk 43 read), "spec" (MSC4143 m.rtc.encryption_key, 32-byte keys) or "both".
    key_event_format: Literal["element_call", "spec", "both"] = "element_call"
    #: Leave a call once no other user is in it (bot.rtc.autoleave) ...
    auto_leave: bool = True
    #: ... this many seconds after the last one left (a reconnecting participant comes back)
    auto_leave_grace: float = _check(_non_negative, default=30.0)
    #: ... or this many seconds after joining, if nobody else has been in the call since.
    wait_for_participants: float = _check(_non_negative, default=600.0)
    #: After a crash, re-join the calls the bot was in that are still going on (their
    #: recordings and transcripts continue in the same call folder; bot.rtc.resume).
    rejoin_after_restart: bool = True
    #: Calls the bot is in at once at most (bot.rtc.capacity); joins past it are ...
    max_calls: int = _check(_at_least_one, default=20)
    #: ... refused with a reply naming this limit ("refuse"), or wait, first come first
    #: served, for a call to end ("queue"; at most max_calls joins wait, later ones are refused).
    when_full: Literal["refuse", "queue"] = "refuse"

    @property
    def mints_tokens(self) -> bool:
        return bool(self.livekit_url and self.livekit_api_key and self.livekit_api_secret)


def _allow_entries(v: tuple[str, ...]) -> str | None:
    from bot.outbound import parse_allow

    try:
        parse_allow(v)
    except ValueError as e:
        return f"entries must be networks like '10.0.0.0/8' or host names like 'sfu.lan': {e}"
    return None


def _http_urls(v: tuple[str, ...]) -> str | None:
    for url in v:
        if why := _http_url(url):
            return why
        if "@" in urlsplit(url).netloc:
            return f"must not hold a user name or password, got {_without_userinfo(url)!r}"
    return None


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


@dataclass(frozen=True)
class OutboundConfig:
    """``[outbound]``: what the bot may fetch of the URLs others choose (call foci and
    their JWT services, .well-known, music URLs and their redirects; bot.outbound)."""

    #: Networks ("10.0.0.0/8", "fd00::/8", "192.168.1.20") and host names ("sfu.lan",
    #: "*.lan") that may be contacted although they are loopback, private or link-local.
    #: URLs written in this config (matrix.homeserver, rtc.livekit_service_url,
    #: outbound.openid_services) are allowed without being listed.
    allow: tuple[str, ...] = _check(_allow_entries, default=())
    #: More MatrixRTC authorization (JWT) services the bot's OpenID token may go to, as
    #: base URLs; rtc.livekit_service_url and those the bot's homeserver advertises always
    #: may. A call whose focus is none of these is joined on the bot's own transport.
    openid_services: tuple[str, ...] = _check(_http_urls, default=())
    #: Send the OpenID token to any JWT service a call names (Element Call's behaviour: it
    #: lets the bot join calls hosted on other servers' SFUs, and lets whoever posts a call
    #: membership receive a token that proves the bot's identity).
    openid_any_service: bool = False
    #: Send the OpenID token to the JWT service that a call member of another homeserver
    #: publishes on, when its host is that homeserver's name or a subdomain of it
    #: (@bob:other.org on https://rtc.other.org): without it the bot cannot hear the remote
    #: half of a federated call (multi-SFU), and with it that service learns the bot's identity.
    openid_member_homeservers: bool = True
    #: A request to such a URL (JWT service, .well-known) gives up after this long, seconds.
    timeout_s: float = _check(_positive, default=20.0)
    #: Their answers may be at most this large, bytes.
    max_response_bytes: int = _check(_at_least_one, default=1_048_576)


def _timezone(v: str) -> str | None:
    from bot.schedule.timezones import find_zone

    if find_zone(v) is None:
        if find_zone("UTC") is None:
            return "no time zone database found: install the tzdata package (pip install tzdata)"
        return f"unknown time zone {v!r} (use an IANA name like 'Europe/Berlin')"
    return None


def _timezones(v: dict[str, str]) -> str | None:
    for room, tz in v.items():
        if not room.startswith("!"):
            return f"keys must be room IDs like '!abc:example.org', got {room!r}"
        if why := _timezone(tz):
            return f"{room}: {why}"
    return None


def _db_url(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"[a-z][a-z0-9+]*://\S*", v):
        return "must be an SQLAlchemy database URL like 'postgresql://user@host/db'"
    return None


@dataclass(frozen=True)
class ScheduleConfig:
    """``[schedule]``: scheduled calls (bot.schedule, docs/scheduling.md)."""

    enabled: bool = True
    #: Times in !schedule are read in this zone, unless the room has its own.
    timezone: str = _check(_timezone, default="UTC")
    #: Per-room zones: "!room:example.org" = "Europe/Berlin" (!timezone in a room wins).
    room_timezones: dict[str, str] = field(default_factory=dict, metadata={"check": _timezones})
    #: Where jobs are kept: an SQLAlchemy URL; default sqlite:///<data_dir>/schedule.sqlite.
    job_store: str | None = field(default=None, repr=False, metadata={"check": _db_url})
    #: A run missed while the bot was down is still made up to this many seconds late.
    misfire_grace: float = _check(_positive, default=300.0)


def _postgres_url(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"postgres(ql)?://\S+", v):
        return "must be a PostgreSQL URL like 'postgresql://callbot@db.example.org/callbot'"
    return None


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]``: several bot processes (workers) of one account sharing a PostgreSQL
    database (bot.fleet, docs/deploy.md). Without ``database_url``: one process, as ever."""

    #: postgresql://user:password@host/db; every worker of the account names the same one.
    database_url: str | None = field(
        default=None, repr=False, metadata={"secret": True, "check": _postgres_url}
    )
    #: Call folders (recordings, transcripts) go here instead of <data_dir>/calls: storage
    #: every worker reaches, so the one that takes over a call continues its folder.
    calls_dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.database_url is not None


@dataclass(frozen=True)
class CommandConfig:
    """Per-command permission overrides, under ``[commands.<name>]``."""

    power_level: int | None = None
    allowed_users_only: bool | None = None


@dataclass(frozen=True)
class PluginsConfig:
    """``[plugins]``: which plugins run, and each one's own ``[plugins.<name>]`` table.

    The tables are checked by the plugins' own config classes when the bot is built
    (``validate_section``); ``rooms`` in a table limits the plugin to those rooms.
    """

    enabled: tuple[str, ...] = ()
    sections: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    base_dir: Path = Path()


@dataclass(frozen=True)
class Config:
    matrix: MatrixConfig
    bot: BotConfig
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    rtc: RtcConfig = field(default_factory=RtcConfig)
    commands: dict[str, CommandConfig] = field(default_factory=dict)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)

    @property
    def allowed_user_globs(self) -> tuple[str, ...]:
        """``bot.allowed_users``, defaulting to everyone on the bot's own homeserver."""
        return self.bot.allowed_users or (f"@*:{self.matrix.server_name}",)

    def secrets(self) -> list[str]:
        """Values that must never reach a log line."""
        values = (
            self.matrix.password,
            self.matrix.access_token,
            self.matrix.recovery_key,
            self.rtc.livekit_api_secret,
        )
        urls = (self.schedule.job_store, self.fleet.database_url)
        db_passwords = [urlsplit(url).password for url in urls if url]
        return [s for s in (*values, *db_passwords) if s]

    def check_command_names(self, known: set[str]) -> None:
        """Fail on ``[commands.<name>]`` sections for commands that do not exist."""
        problems = [
            _unknown(f"commands.{name}", name, known, what="command")
            for name in self.commands
            if name not in known
        ]
        if problems:
            raise ConfigError(problems)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate; raise ConfigError on any problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(["file not found"], str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read file: {e}"], str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"invalid TOML: {e}"], str(path)) from None
    return parse_config(raw, base_dir=path.resolve().parent, source=str(path), environ=environ)


def parse_config(
    raw: dict[str, Any],
    *,
    base_dir: Path,
    source: str = "config",
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate an already-parsed TOML document. Relative paths resolve against base_dir."""
    problems: list[str] = []
    raw = _apply_env(raw, os.environ if environ is None else environ, problems)
    plugins = _plugins_section(raw.pop("plugins", {}), problems, base_dir)
    cfg = _build(Config, raw, "", problems, base_dir)
    if cfg is not None:
        cfg = dataclasses.replace(cfg, plugins=plugins)
    if cfg is not None and not (cfg.matrix.password or cfg.matrix.access_token):
        problems.append(
            "matrix.password: missing value (set matrix.password or matrix.access_token, "
            f"or the environment variable {ENV_PREFIX}MATRIX_PASSWORD)"
        )
    if cfg is not None:
        minting = (cfg.rtc.livekit_url, cfg.rtc.livekit_api_key, cfg.rtc.livekit_api_secret)
        if any(minting) and not all(minting):
            problems.append(
                "rtc.livekit_url: livekit_url, livekit_api_key and livekit_api_secret go together"
            )
    if problems or cfg is None:
        raise ConfigError(problems, source)
    return cfg


def _plugins_section(raw: Any, problems: list[str], base_dir: Path) -> PluginsConfig:
    if not isinstance(raw, dict):
        problems.append("plugins: must be a table")
        return PluginsConfig(base_dir=base_dir)
    enabled = raw.get("enabled", [])
    if not isinstance(enabled, list) or not all(isinstance(n, str) for n in enabled):
        problems.append(f"plugins.enabled: must be a list of plugin names, got {_tname(enabled)}")
        enabled = []
    sections = {}
    for name, table in raw.items():
        if name == "enabled":
            continue
        if not isinstance(table, dict):
            problems.append(f"plugins.{name}: must be a table ([plugins.{name}])")
            continue
        sections[name] = table
    return PluginsConfig(tuple(enabled), sections, base_dir)


def validate_section(cls: type[T], raw: Mapping[str, Any], prefix: str, base_dir: Path) -> T:
    """Check one config table against a dataclass (a plugin's); ConfigError names the keys."""
    problems: list[str] = []
    value = _build(cls, dict(raw), prefix, problems, base_dir)
    if problems or value is None:
        raise ConfigError(problems or [f"{prefix.rstrip('.')}: invalid"])
    return value


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> dict:
    """Copy raw with CALLBOT_<SECTION>_<KEY> variables laid over it (as strings, typed later)."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        section_type = hints[f.name]
        if not dataclasses.is_dataclass(section_type):
            continue
        for sf in dataclasses.fields(section_type):
            var = f"{ENV_PREFIX}{f.name}_{sf.name}".upper()
            if var in environ:
                section = merged.setdefault(f.name, {})
                if isinstance(section, dict):
                    section[sf.name] = _EnvValue(var, environ[var])
    return merged


@dataclass(frozen=True)
class _EnvValue:
    """A value taken from the environment: a string that still has to be typed."""

    var: str
    text: str


def _build(cls: type, data: Any, prefix: str, problems: list[str], base_dir: Path) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or '(top level)'}: must be a table")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(_unknown(prefix + key, key, set(fields)))
    values: dict[str, Any] = {}
    ok = True
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if not has_default:
                problems.append(f"{key}: missing value")
                ok = False
            continue
        before = len(problems)
        value = _convert(hints[name], data[name], key, problems, base_dir)
        if len(problems) > before:
            ok = False
            continue
        check = f.metadata.get("check")
        why = check(value) if check else None
        if why:
            problems.append(f"{key}: {why}")
            ok = False
            continue
        values[name] = value
    if not ok:
        return None
    try:  # checks that span fields (a plugin config's __post_init__)
        return cls(**values)
    except (TypeError, ValueError) as e:
        problems.append(f"{prefix.rstrip('.') or '(top level)'}: {e}")
        return None


def _convert(tp: Any, value: Any, key: str, problems: list[str], base_dir: Path) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # only "X | None" is used
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key, problems, base_dir)
    if isinstance(value, _EnvValue):
        return _convert_env(tp, value, key, problems, base_dir)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a section (the class)
        return _build(tp, value, key + ".", problems, base_dir)
    if origin is dict and args[1] is str:  # a plain table of strings
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            problems.append(f"{key}: must be a table of strings, got {_tname(value)}")
            return None
        return dict(value)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: must be a table, got {_tname(value)}")
            return None
        out = {k: _build(args[1], v, f"{key}.{k}.", problems, base_dir) for k, v in value.items()}
        return out
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{key}: must be a list of strings, got {_tname(value)}")
            return None
        return tuple(value)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            problems.append(f"{key}: must be one of {choices}, got {value!r}")
            return None
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            problems.append(f"{key}: must be a non-empty path string, got {_tname(value)}")
            return None
        return (base_dir / Path(value).expanduser()).resolve()
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        problems.append(f"{key}: must be an integer, got a boolean")
        return None
    if not isinstance(value, tp):
        problems.append(f"{key}: must be {_TYPE_WORDS[tp]}, got {_tname(value)}")
        return None
    return value


def _convert_env(tp: Any, ev: _EnvValue, key: str, problems: list[str], base_dir: Path) -> Any:
    text = ev.text.strip()
    where = f"{key} (from environment variable {ev.var})"
    try:
        if tp is bool:
            lowered = text.lower()
            if lowered not in _BOOL_WORDS:
                raise ValueError
            value: Any = _BOOL_WORDS[lowered]
        elif tp is int:
            value = int(text)
        elif tp is float:
            value = float(text)
        elif tp in (str, Path) or typing.get_origin(tp) is Literal:
            value = ev.text
        else:
            problems.append(f"{where}: this option cannot be set from the environment")
            return None
    except ValueError:
        problems.append(f"{where}: must be {_TYPE_WORDS.get(tp, tp)}, got {text!r}")
        return None
    before = len(problems)
    converted = _convert(tp, value, key, problems, base_dir)
    if len(problems) > before:  # name the variable, not just the key
        problems[before:] = [p.replace(f"{key}:", f"{where}:", 1) for p in problems[before:]]
    return converted


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_TYPE_WORDS: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}


def _tname(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _unknown(key: str, name: str, known: set[str], what: str = "key") -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{key}: unknown {what}{hint}"
