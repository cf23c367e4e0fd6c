"""The `xtm-composer` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from xtm_composer import __version__, crypto, logs, registry
from xtm_composer.orchestrators.factory import UnsupportedOrchestratorError
from xtm_composer.settings import (
    ConfigurationError,
    RegistrySettings,
    Settings,
    load_settings,
)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xtm-composer",
        description="Run OpenCTI managed connectors on a container orchestrator.",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="folder with default.yaml and $COMPOSER_ENV.yaml "
        "(default: $COMPOSER_CONFIG_DIR, else ./config)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "run",
        help="run the agent (the default command)",
        description="Register with the platform and reconcile its connectors "
        "until SIGTERM or SIGINT.",
    )
    commands.add_parser("version", help="print the version and exit")
    resolve = commands.add_parser(
        "resolve-image",
        help="show the image that would be pulled and whether credentials go with it",
        description="Apply the configured registry prefix to IMAGE and tell whether "
        "the registry credentials would be sent with the pull.",
    )
    resolve.add_argument("image", metavar="IMAGE")
    resolve.add_argument(
        "--platform",
        choices=("opencti", "openaev"),
        default="opencti",
        help="whose daemon.registry section to use (default: opencti)",
    )
    add_sandbox_commands(commands)
    return parser


def add_sandbox_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    try:
        from xtm_composer.sandbox.cli import add_sandbox_parser
    except ImportError:
        return
    add_sandbox_parser(commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if command == "version":
        print(f"xtm-composer {__version__}")
        return 0
    if command == "sandbox":
        from xtm_composer.sandbox.cli import run_sandbox_command

        return run_sandbox_command(args)
    try:
        settings = load_settings(args.config_dir, os.environ)
    except ConfigurationError as error:
        return fail(str(error))
    if command == "resolve-image":
        return resolve_image_command(settings, args.image, args.platform)
    return run_command(settings)


def fail(message: str) -> int:
    print(f"xtm-composer: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_command(settings: Settings) -> int:
    from xtm_composer.agent import run_agent

    logs.configure_logging(
        settings.manager.logger.level, settings.manager.logger.format
    )
    try:
        asyncio.run(run_agent(settings))
    except (
        ConfigurationError,
        crypto.ManagerKeyError,
        UnsupportedOrchestratorError,
    ) as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return 130
    return 0


def resolve_image_command(settings: Settings, image: str, platform: str) -> int:
    configured = getattr(settings, platform).daemon.registry
    try:
        resolved = registry.resolve_image(image, configured)
    except registry.ImageReferenceError as error:
        return fail(str(error))
    print(f"image: {resolved.reference}")
    print(f"registry: {resolved.registry_host}")
    print(f"credentials: {credentials_verdict(resolved, configured)}")
    return 0


def credentials_verdict(
    resolved: registry.ResolvedImage, configured: RegistrySettings | None
) -> str:
    if resolved.send_credentials:
        return "sent"
    if configured is None:
        return f"not sent (no {'daemon.registry'} section is configured)"
    if not configured.has_credentials:
        return "not sent (daemon.registry has no username and password)"
    return (
        "not sent (the image is on "
        f"{resolved.registry_host}, the credentials are for "
        f"{registry.server_host(configured.server)})"
    )
