"""The ``callbot`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
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

    dev = sub.add_parser(
        "dev-sfu",
        help="run a LiveKit-compatible SFU and MatrixRTC JWT service (for tests and the demo "
        "only; production uses LiveKit)",
        description="A loopback LiveKit-compatible SFU with the MatrixRTC JWT service on one "
        "port: LiveKit at ws://HOST:PORT, /sfu/get and /get_token at http://HOST:PORT. For "
        "tests and the demo only; production uses LiveKit.",
    )
    dev.add_argument(
        "--host",
        required=True,
        help="address to bind; ICE uses only this one, and libwebrtc ignores loopback addresses",
    )
    dev.add_argument("--port", type=int, default=7880, help="port (default: %(default)s)")
    dev.add_argument(
        "--homeserver",
        required=True,
        help="base URL of the homeserver that checks OpenID tokens for the JWT service",
    )
    dev.add_argument(
        "--server-name",
        help="the homeserver's Matrix server name: other servers' users are checked over "
        "federation (HTTPS) and get subscribe-only tokens (default: every token is checked at "
        "--homeserver, and all get full access)",
    )
    dev.add_argument(
        "--full-access-homeservers",
        help="comma-separated server names whose users may publish and open rooms, '*' for "
        "all (lk-jwt-service's LIVEKIT_FULL_ACCESS_HOMESERVERS; default: --server-name)",
    )
    dev.add_argument(
        "--federation-ca", help="CA file that federation TLS must chain to (default: the system's)"
    )
    dev.add_argument(
        "--no-auto-create",
        action="store_true",
        help="join only rooms a full-access token opened (LiveKit's room.auto_create: false)",
    )
    # The defaults of livekit-server --dev (bot.devsfu.auth; not imported here, to stay fast)
    dev.add_argument("--api-key", default="devkey", help="LiveKit API key (default: %(default)s)")
    dev.add_argument(
        "--api-secret", default="secret", help="LiveKit API secret (default: %(default)s)"
    )
    dev.add_argument("--log-level", default="INFO", help="log level (default: %(default)s)")

    demo = sub.add_parser(
        "demo",
        help="see it work: a throwaway Synapse, the dev SFU, the bot recording and transcribing "
        "a simulated participant (needs the [all] extra, and Synapse in .venv-synapse)",
    )
    demo.add_argument(
        "--data-dir", type=Path, help="where to keep everything (default: a new temporary folder)"
    )
    demo.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)

    from plugins.transcriber import cli as transcribe_cli  # argparse only: imports stay lazy

    transcribe_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "dev-sfu":
        return _dev_sfu(args)
    if args.command == "demo":
        from bot.demo.run import main as demo

        return demo(args.data_dir, args.keep)
    if args.command == "transcribe":
        from plugins.transcriber import cli as transcribe_cli

        return transcribe_cli.run(args)
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
    except ConfigError as e:  # found at start-up (e.g. matrix.recovery_key is needed)
        log.error("%s", e)
        return EXIT_CONFIG
    except CallbotError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 130


def _dev_sfu(args: argparse.Namespace) -> int:
    from bot.extras import DEVSFU, missing_extras

    if missing := missing_extras(DEVSFU):
        print(f"callbot dev-sfu: the dev SFU {missing}", file=sys.stderr)
        return EXIT_CONFIG
    from bot.devsfu import serve
    from bot.log import register_secret, setup_logging

    register_secret(args.api_secret)
    setup_logging(args.log_level.upper())
    try:
        asyncio.run(
            serve(
                args.host,
                args.port,
                homeserver=args.homeserver,
                api_key=args.api_key,
                api_secret=args.api_secret,
                server_name=args.server_name,
                full_access_homeservers=(
                    args.full_access_homeservers.replace(",", " ").split()
                    if args.full_access_homeservers
                    else None
                ),
                federation_ca=args.federation_ca,
                auto_create=not args.no_auto_create,
            )
        )
    except CallbotError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
