from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.config import load_config, parse_config, validate_section
from bot.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
GOOD = {
    "matrix": {
        "homeserver": "https://hs.example",
        "user_id": "@bot:hs.example",
        "password": "hunter22",
    },
    "bot": {"data_dir": "data"},
}


def _parse(raw: dict, environ: dict | None = None, base: Path = Path("/srv/bot")):
    return parse_config(raw, base_dir=base, environ=environ or {})


def _problems(raw: dict, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _parse(raw, environ)
    return info.value.problems


def _with(section: str, **values) -> dict:
    raw = {k: dict(v) for k, v in GOOD.items()}
    raw.setdefault(section, {}).update(values)
    return raw


def test_example_config_is_valid_and_documents_every_option() -> None:
    cfg = load_config(REPO / "config.toml.example", environ={})
    assert cfg.bot.command_prefix == "!"
    assert cfg.bot.data_dir == (REPO / "data").resolve()
    text = (REPO / "config.toml.example").read_text()
    import dataclasses

    from bot.config import (
        BotConfig,
        CommandConfig,
        LoggingConfig,
        MatrixConfig,
        OutboundConfig,
        RtcConfig,
    )

    sections = (MatrixConfig, BotConfig, LoggingConfig, RtcConfig, CommandConfig, OutboundConfig)
    for section in sections:
        for f in dataclasses.fields(section):
            assert f.name in text, f"{section.__name__}.{f.name} is not in config.toml.example"


def test_defaults() -> None:
    cfg = _parse(GOOD)
    assert cfg.bot.command_prefix == "!"
    assert cfg.bot.reply_mode == "reply"
    assert cfg.logging.level == "INFO"
    assert cfg.bot.data_dir == Path("/srv/bot/data")
    # No allowed_users: everyone on the bot's own homeserver.
    assert cfg.allowed_user_globs == ("@*:hs.example",)


def test_unknown_key_is_named_with_a_suggestion() -> None:
    problems = _problems(_with("bot", comand_prefix="?"))
    assert problems == ["bot.comand_prefix: unknown key (did you mean 'command_prefix'?)"]


def test_unknown_section() -> None:
    raw = {**GOOD, "recorder": {"x": 1}}
    assert _problems(raw) == ["recorder: unknown key"]


def test_wrong_types_are_named() -> None:
    problems = _problems(
        _with("bot", command_prefix=1, allowed_users="@a:b", reply_mode="dm", command_max_age=True)
    )
    assert "bot.command_prefix: must be a string, got an integer" in problems
    assert "bot.allowed_users: must be a list of strings, got a string" in problems
    assert "bot.reply_mode: must be one of 'reply', 'thread', got 'dm'" in problems
    assert "bot.command_max_age: must be a number, got a boolean" in problems


def test_missing_values_are_named() -> None:
    raw = {"matrix": {"homeserver": "https://x.example"}, "bot": {}}
    problems = _problems(raw)
    assert "matrix.user_id: missing value" in problems
    assert "bot.data_dir: missing value" in problems
    assert _problems({"bot": {"data_dir": "d"}}) == ["matrix: missing value"]


def test_password_or_token_required() -> None:
    raw = _with("matrix")
    del raw["matrix"]["password"]
    (problem,) = _problems(raw)
    assert problem.startswith("matrix.password: missing value")
    assert "access_token" in problem
    raw["matrix"]["access_token"] = "syt_abc"
    assert _parse(raw).matrix.access_token == "syt_abc"


def test_value_checks() -> None:
    problems = _problems(
        _with("matrix", homeserver="hs.example", user_id="bot")
        | {"bot": {"data_dir": "d", "command_prefix": "! ", "allowed_users": ["alice"]}}
    )
    assert any(p.startswith("matrix.homeserver: must be an http") for p in problems)
    assert any(p.startswith("matrix.user_id: must be a full Matrix user ID") for p in problems)
    assert "bot.command_prefix: must be 1 to 16 characters without spaces" in problems
    assert any(p.startswith("bot.allowed_users: entries must be") for p in problems)


def test_secrets_from_environment() -> None:
    raw = _with("matrix")
    del raw["matrix"]["password"]
    cfg = _parse(raw, {"CALLBOT_MATRIX_PASSWORD": "from-env", "CALLBOT_BOT_COMMAND_MAX_AGE": "30"})
    assert cfg.matrix.password == "from-env"
    assert cfg.bot.command_max_age == 30.0
    # The environment wins over the file.
    assert _parse(GOOD, {"CALLBOT_MATRIX_PASSWORD": "env"}).matrix.password == "env"


def test_bad_environment_value_names_the_variable() -> None:
    problems = _problems(GOOD, {"CALLBOT_BOT_COMMAND_MAX_AGE": "soon"})
    assert problems == [
        "bot.command_max_age (from environment variable CALLBOT_BOT_COMMAND_MAX_AGE): "
        "must be a number, got 'soon'"
    ]
    problems = _problems(GOOD, {"CALLBOT_BOT_ALLOWED_USERS": "@a:b"})
    assert problems == [
        "bot.allowed_users (from environment variable CALLBOT_BOT_ALLOWED_USERS): "
        "this option cannot be set from the environment"
    ]


def test_secrets_stay_out_of_repr() -> None:
    cfg = _parse(_with("matrix", access_token="syt_secret_token"))
    assert "hunter22" not in repr(cfg)
    assert "syt_secret_token" not in repr(cfg)
    assert set(cfg.secrets()) == {"hunter22", "syt_secret_token"}


def test_command_overrides() -> None:
    raw = {**GOOD, "commands": {"status": {"power_level": 50}, "help": {"power_levle": 1}}}
    assert _problems(raw) == [
        "commands.help.power_levle: unknown key (did you mean 'power_level'?)"
    ]
    cfg = _parse({**GOOD, "commands": {"statsu": {"power_level": 50}}})
    with pytest.raises(ConfigError) as info:
        cfg.check_command_names({"status", "help"})
    assert info.value.problems == ["commands.statsu: unknown command (did you mean 'status'?)"]


def test_rtc_section() -> None:
    cfg = _parse(GOOD)
    assert cfg.rtc.delayed_leave_ms == 10_000 and not cfg.rtc.mints_tokens
    assert _problems({**GOOD, "rtc": {"delayed_leave_ms": 0}}) == [
        "rtc.delayed_leave_ms: must be greater than 0"
    ]
    (problem,) = _problems({**GOOD, "rtc": {"livekit_url": "wss://lk.example"}})
    assert problem.startswith("rtc.livekit_url: livekit_url, livekit_api_key")
    cfg = _parse(
        {**GOOD, "rtc": {"livekit_url": "wss://lk.example", "livekit_api_key": "k"}},
        {"CALLBOT_RTC_LIVEKIT_API_SECRET": "s3cret-value"},
    )
    assert cfg.rtc.mints_tokens and "s3cret-value" in cfg.secrets()
    assert "s3cret-value" not in repr(cfg)
    assert _problems({**GOOD, "rtc": {"livekit_url": "https://x"}})[0].startswith(
        "rtc.livekit_url: must be a ws:// or wss:// URL"
    )


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[matrix\nhomeserver = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 1"):
        load_config(bad)


def test_all_problems_reported_at_once() -> None:
    raw = {"matrix": {"homeserver": 5, "user_id": "@b:x", "password": "p", "extra": 1}, "bot": {}}
    problems = _problems(raw)
    assert len(problems) == 3, problems


def test_a_plugin_configs_own_checks_are_reported_with_its_section(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Tone:
        low: int = 100
        high: int = 200

        def __post_init__(self) -> None:
            if self.low >= self.high:
                raise ValueError("low must be below high")

    with pytest.raises(ConfigError) as e:
        validate_section(Tone, {"low": 300}, "plugins.tone.", tmp_path)
    assert e.value.problems == ["plugins.tone: low must be below high"]


def test_recovery_key_is_checked_secret_and_read_from_the_environment() -> None:
    key = "EsT1 HT7u 2D8e RJ5J Xpm5 QiQG RLzx hTZJ mA5Y F4nN CHD4 4593"
    cfg = _parse(GOOD, {"CALLBOT_MATRIX_RECOVERY_KEY": key})
    assert cfg.matrix.recovery_key == key and key in cfg.secrets()
    assert key not in repr(cfg)
    assert cfg.matrix.exclude_insecure_devices is True
    (problem,) = _problems(_with("matrix", recovery_key=key.replace("EsT1", "EsT2")))
    assert problem.startswith("matrix.recovery_key: ") and "typo" in problem
    assert "EsT2" not in problem  # a secret is never echoed
    (problem,) = _problems(_with("matrix", recovery_keys=key))
    assert "did you mean 'recovery_key'" in problem
