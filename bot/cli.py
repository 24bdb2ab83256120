"""The ``callbot`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING

from bot import __version__
from bot.errors import CallbotError, ConfigError

if TYPE_CHECKING:  # imported lazily at run time so that `callbot --help` stays fast
    from bot.app import CallBot
    from bot.config import Config

EXIT_CONFIG = 2

log = logging.getLogger("bot")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callbot",
        description="A bot that joins end-to-end encrypted Matrix calls (MatrixRTC).",
    )
    p.add_argument("--version", action="version", version=f"matrix-callbot {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="connect to Matrix and run the bot until stopped")
    run.add_argument(
        "-c", "--config", default="config.toml", help="config file (default: %(default)s)"
    )

    check = sub.add_parser(
        "check-config", help="validate a config file: exit 0 if good, 2 with the problems if not"
    )
    check.add_argument("file", help="the config file to check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    return _run(args.config)


def _load(path: str) -> tuple[Config, CallBot] | None:
    """The config and the bot built from it, or None after printing the config's problems."""
    from bot.app import CallBot
    from bot.config import load_config

    try:
        config = load_config(path)
        return config, CallBot(config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return None


def _check_config(path: str) -> int:
    loaded = _load(path)
    if loaded is None:
        return EXIT_CONFIG
    config, _ = loaded
    print(f"{path}: OK (bot {config.matrix.user_id}, data in {config.bot.data_dir})")
    return 0


def _run(path: str) -> int:
    from bot.log import register_secret, setup_logging

    loaded = _load(path)
    if loaded is None:
        return EXIT_CONFIG
    config, bot = loaded
    for secret in config.secrets():
        register_secret(secret)
    setup_logging(config.logging.level, config.logging.format)
    os.umask(0o077)  # everything the bot writes (keys, recordings) is private to its user
    try:
        return asyncio.run(bot.run())
    except CallbotError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 130
