from __future__ import annotations

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
