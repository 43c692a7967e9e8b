"""The mss-relay command: serve, check-config, hash-password."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence

from mss_relay import __version__
from mss_relay.config import ConfigError, load_config
from mss_relay.passwords import hash_password

EX_CONFIG = 78  # sysexits.h: systemd's RestartPreventExitStatus can name it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mss-relay",
        description="SMTP relay enforcing the rules of the Messagerie Sécurisée de Santé.",
    )
    parser.add_argument("--version", action="version", version=f"mss-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the relay")
    serve.add_argument("--config", required=True, help="path to the YAML configuration")
    check = commands.add_parser("check-config", help="validate a configuration and exit")
    check.add_argument("--config", required=True, help="path to the YAML configuration")
    commands.add_parser("hash-password", help="read a password on standard input, print its hash")
    return parser


def _config_error(error: ConfigError) -> int:
    print(f"mss-relay: configuration error: {error}", file=sys.stderr)
    return EX_CONFIG


def _check_config(path: str) -> int:
    from mss_relay.app import make_upstream
    from mss_relay.tls import server_context

    try:
        config = load_config(path)
        if config.tls and not (config.tls.self_signed and not config.tls.certificate.exists()):
            server_context(config.tls, config.hostname)
        make_upstream(config)
    except ConfigError as error:
        return _config_error(error)
    for warning in config.warnings:
        print(f"mss-relay: warning: {warning}", file=sys.stderr)
    print(config.summary())
    return 0


def _serve(path: str) -> int:
    from mss_relay.app import serve

    try:
        config = load_config(path)
        return asyncio.run(serve(config))
    except ConfigError as error:
        return _config_error(error)
    except KeyboardInterrupt:
        return 0


def _hash_password() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("mss-relay: hash-password: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "check-config":
        return _check_config(args.config)
    return _hash_password()
