from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

from bot import __version__

REPO = Path(__file__).resolve().parent.parent


def callbot(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_help_and_version() -> None:
    out = callbot("--help")
    assert out.returncode == 0
    assert "run" in out.stdout and "check-config" in out.stdout
    out = callbot("--version")
    assert out.stdout.strip() == f"matrix-callbot {__version__}"


def test_check_config_accepts_the_example() -> None:
    out = callbot("check-config", "config.toml.example")
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_check_config_names_the_wrong_key(tmp_path: Path) -> None:
    text = (REPO / "config.toml.example").read_text().replace("reply_mode", "reply_mdoe")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = callbot("check-config", str(bad))
    assert out.returncode == 2
    assert f"{bad}: bot.reply_mdoe: unknown key (did you mean 'reply_mode'?)" in out.stderr


def test_check_config_names_unknown_command_sections(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "config.toml.example").read_text() + "\n[commands.hlep]\n")
    out = callbot("check-config", str(bad))
    assert out.returncode == 2
    assert "commands.hlep: unknown command (did you mean 'help'?)" in out.stderr


def test_missing_file_and_run_with_bad_config(tmp_path: Path) -> None:
    out = callbot("check-config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2
    assert "file not found" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[matrix]\n")
    out = callbot("run", "-c", str(bad))
    assert out.returncode == 2
    assert "matrix.homeserver: missing value" in out.stderr


def test_run_reports_an_unreachable_homeserver(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[matrix]\nhomeserver = "http://127.0.0.1:9"\nuser_id = "@b:x"\npassword = "sekrit-pw"\n'
        '[bot]\ndata_dir = "d"\n'
    )
    out = callbot("run", "-c", str(cfg))
    assert out.returncode == 1
    assert "cannot reach the homeserver http://127.0.0.1:9" in out.stderr
    assert "sekrit-pw" not in out.stderr + out.stdout


async def test_run_serves_commands_and_stops_on_sigterm(synapse, tmp_path: Path) -> None:
    """The real `callbot run` process: answers in an encrypted room, exits 0 on SIGTERM."""
    from tests.botproc import BotProcess
    from tests.conftest import peer

    account = synapse.register("bot")
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[matrix]\nhomeserver = "{synapse.url}"\nuser_id = "{account.user_id}"\n'
        '[bot]\ndata_dir = "data"\n[logging]\nformat = "json"\nlevel = "DEBUG"\n'
    )
    bot = await BotProcess(cfg, {"CALLBOT_MATRIX_PASSWORD": account.password}).start()
    try:
        async with peer(synapse, tmp_path, "alice") as alice:
            room = await alice.create_room(invite=[account.user_id])
            await alice.wait_member(room, account.user_id)
            assert "Uptime:" in await alice.ask(room, "!status", account.user_id)
    finally:
        rc = await bot.stop(signal.SIGTERM)
    lines = bot.lines
    assert rc == 0, "".join(lines[-20:])
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert any(e["msg"] == "joined on invite" and e.get("room") == room for e in entries)
    assert any(e["msg"] == "stopped" for e in entries)
    assert account.password not in "".join(lines)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
