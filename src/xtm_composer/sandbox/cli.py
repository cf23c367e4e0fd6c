"""The `xtm-composer sandbox` command.

    xtm-composer sandbox serve [--listen 127.0.0.1:4000] [--token-file FILE]
        [--state-file FILE] [--catalog DIR ...] [--platform-version V]
    xtm-composer sandbox connector add --catalog-id SLUG --name NAME
        [--set KEY=VALUE ...] [--set-file KEY=FILE ...]
    xtm-composer sandbox connector edit|start|stop|delete|show ID
    xtm-composer sandbox connector list
    xtm-composer sandbox version [V]

The token comes from `--token-file` or the `XTM_SANDBOX_TOKEN` environment
variable, never from the command line, where other users could read it. The
client commands reach `--url`, `XTM_SANDBOX_URL` or http://127.0.0.1:4000.
Errors are one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from xtm_composer import logs
from xtm_composer.sandbox import encryption
from xtm_composer.sandbox.admin import DEFAULT_URL, SandboxAdmin, SandboxAdminError
from xtm_composer.sandbox.catalog import CatalogError, load_catalog
from xtm_composer.sandbox.configuration import PLATFORM_KEYS
from xtm_composer.sandbox.server import (
    bind_socket,
    create_app,
    require_loopback,
    uvicorn_config,
)
from xtm_composer.sandbox.state import (
    DEFAULT_PLATFORM_VERSION,
    SandboxError,
    SandboxState,
    StateFileError,
)

log = logs.get_logger(__name__)

TOKEN_ENV = "XTM_SANDBOX_TOKEN"
URL_ENV = "XTM_SANDBOX_URL"
DEFAULT_LISTEN = "127.0.0.1:4000"
PROGRAM = "xtm-composer sandbox"

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A failed command, reported as one line without a traceback."""


def add_sandbox_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register the `sandbox` command on an argparse subparsers object."""
    sandbox = subparsers.add_parser(
        "sandbox",
        help="run a local stand-in of the OpenCTI connector-manager API",
        description="Serve a local stand-in of the OpenCTI connector-manager API, "
        "and create, start, stop and delete its managed connectors.",
    )
    sandbox.set_defaults(_sandbox_handler=None, _sandbox_parser=sandbox)
    commands = sandbox.add_subparsers(metavar="COMMAND")
    _add_serve_parser(commands)
    _add_connector_parser(commands)

    version = commands.add_parser(
        "version",
        parents=[_client_options()],
        help="show or change the platform version that the sandbox reports",
    )
    version.add_argument("version", nargs="?", help="new platform version")
    version.set_defaults(_sandbox_handler=_version)
    return sandbox


def run_sandbox_command(args: argparse.Namespace) -> int:
    """Run the parsed `sandbox` command; returns the exit status."""
    handler: Handler | None = getattr(args, "_sandbox_handler", None)
    if handler is None:
        parser: argparse.ArgumentParser | None = getattr(args, "_sandbox_parser", None)
        if parser is not None:
            parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except (
        CommandError,
        SandboxAdminError,
        SandboxError,
        StateFileError,
        CatalogError,
        ValueError,
    ) as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sandbox` arguments alone, as `python -m xtm_composer.sandbox` does."""
    parser = argparse.ArgumentParser(prog="xtm-composer")
    add_sandbox_parser(parser.add_subparsers())
    args = parser.parse_args(["sandbox", *(sys.argv[1:] if argv is None else argv)])
    return run_sandbox_command(args)


# serve


def _add_serve_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the sandbox until interrupted",
        description="Serve the sandbox on a loopback address until SIGINT or "
        f"SIGTERM. Clients send the token of --token-file or ${TOKEN_ENV}.",
    )
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"loopback address and TCP port to listen on (default: {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"file containing the bearer token (default: the ${TOKEN_ENV} variable)",
    )
    serve.add_argument(
        "--state-file",
        type=Path,
        metavar="FILE",
        help="JSON file that keeps the manager and connectors across restarts "
        "(default: memory only)",
    )
    serve.add_argument(
        "--catalog",
        type=Path,
        action="append",
        metavar="DIR",
        help="catalog directory of <slug>/connector_manifest.json and "
        "connector_config_schema.json; repeat for several "
        "(default: the bundled connector-test entry)",
    )
    serve.add_argument(
        "--platform-version",
        default=DEFAULT_PLATFORM_VERSION,
        metavar="VERSION",
        help="version that about.version returns "
        f"(default: {DEFAULT_PLATFORM_VERSION})",
    )
    serve.add_argument(
        "--encryption-version",
        type=int,
        choices=encryption.VERSIONS,
        default=encryption.DEFAULT_VERSION,
        help="RSA padding of encrypted values: 1 is PKCS#1 v1.5, 2 is OAEP "
        "with SHA-256 (default: 2)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="lowest level logged; debug logs each request's operation name",
    )
    serve.add_argument(
        "--log-format",
        choices=("json", "pretty"),
        default="json",
        help="json: one object per line; pretty: text for people (default: json)",
    )
    serve.set_defaults(_sandbox_handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    host, port = parse_listen(args.listen)
    token = _server_token(args.token_file)
    logs.configure_logging(args.log_level, args.log_format)
    if args.state_file is not None and not args.state_file.parent.is_dir():
        raise CommandError(
            f"--state-file: directory {args.state_file.parent} does not exist"
        )

    state = SandboxState(
        load_catalog(args.catalog),
        platform_version=args.platform_version,
        state_file=args.state_file,
        encryption_version=args.encryption_version,
    )
    app = create_app(state, token)
    try:
        listener = bind_socket(host, port)
    except OSError as error:
        raise CommandError(
            f"cannot listen on {args.listen}: {error.strerror or error}"
        ) from None

    bound_port = listener.getsockname()[1]
    url = (
        f"http://[{host}]:{bound_port}"
        if ":" in host
        else f"http://{host}:{bound_port}"
    )
    log.info(
        "sandbox listening",
        url=url,
        catalog=sorted(state.catalog),
        state_file=str(args.state_file) if args.state_file else None,
        platform_version=state.platform_version,
    )
    with _absorbed_stop_signals():
        uvicorn.Server(uvicorn_config(app)).run(sockets=[listener])
    log.info("sandbox stopped", url=url)
    return 0


@contextlib.contextmanager
def _absorbed_stop_signals() -> Iterator[None]:
    """Let SIGINT and SIGTERM end `serve` with status 0 and no traceback.

    uvicorn shuts down gracefully on these signals, then raises the signal
    again with the handler it found. A no-op handler absorbs that second one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {
        number: signal.signal(number, _ignore_signal) for number in stop_signals
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _ignore_signal(_number: int, _frame: object) -> None:
    pass


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `HOST:PORT` (`[::1]:PORT` for IPv6) and check the host is loopback."""
    host, separator, port_text = listen.rpartition(":")
    if not separator or not host:
        raise CommandError(
            f"--listen {listen!r} must be HOST:PORT, such as {DEFAULT_LISTEN}"
        )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise CommandError(
            f"--listen {listen!r}: the port must be a number from 0 to 65535"
        )
    try:
        return require_loopback(host), port
    except ValueError as error:
        raise CommandError(f"--listen: {error}") from None


def _server_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise CommandError(
                f"cannot read --token-file {token_file}: {error.strerror}"
            ) from None
        if not token:
            raise CommandError(f"--token-file {token_file} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CommandError(f"no token: set {TOKEN_ENV} or pass --token-file FILE")
    return token


# connector and version


def _client_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        help=f"sandbox base URL (default: ${URL_ENV} or {DEFAULT_URL}); "
        f"the token comes from ${TOKEN_ENV}",
    )
    return options


def _add_connector_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    connector = commands.add_parser(
        "connector", help="create, edit, start, stop, delete or show connectors"
    )
    connector.set_defaults(_sandbox_handler=None, _sandbox_parser=connector)
    actions = connector.add_subparsers(metavar="ACTION")
    client = _client_options()

    add = actions.add_parser("add", parents=[client], help="create a connector")
    add.add_argument("--catalog-id", required=True, metavar="SLUG", help="catalog slug")
    add.add_argument("--name", required=True, help="connector name, unique")
    _add_value_options(add)
    add.set_defaults(_sandbox_handler=_add)

    edit = actions.add_parser(
        "edit",
        parents=[client],
        help="change the name or some configuration keys of a connector",
        description="Change a connector. Keys not given keep their value.",
    )
    edit.add_argument("id", help="connector id")
    edit.add_argument("--name", help="new name (default: unchanged)")
    _add_value_options(edit)
    edit.set_defaults(_sandbox_handler=_edit)

    simple_actions: dict[str, tuple[str, Handler]] = {
        "start": ("ask the manager to start a connector", _start),
        "stop": ("ask the manager to stop a connector", _stop),
        "delete": ("delete a connector", _delete),
        "show": ("show a connector: status, logs, health, hash", _show),
    }
    for action, (help_text, handler) in simple_actions.items():
        parser = actions.add_parser(action, parents=[client], help=help_text)
        parser.add_argument("id", help="connector id")
        parser.set_defaults(_sandbox_handler=handler)

    listing = actions.add_parser("list", parents=[client], help="list all connectors")
    listing.set_defaults(_sandbox_handler=_list)


def _add_value_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="configuration value; repeat for several keys. Give secrets with "
        "--set-file, because command lines are visible to other users",
    )
    parser.add_argument(
        "--set-file",
        action="append",
        default=[],
        metavar="KEY=FILE",
        help="configuration value read from FILE, without its trailing newline",
    )


def _add(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        created = admin.add_connector(args.catalog_id, args.name, _values(args))
    _print_json(created)
    return 0


def _edit(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        current = admin.connector(args.id)
        # The platform replaces the whole configuration on edit, as its form
        # sends every key. Sending the current plain values first makes this
        # command change only the keys given, and ciphertexts stay as stored.
        values = {
            item["key"]: item["value"]
            for item in current["configuration"]
            if not item["encrypted"] and item["key"] not in PLATFORM_KEYS
        }
        values.update(_values(args))
        edited = admin.edit_connector(args.id, args.name or current["name"], values)
    _print_json(edited)
    return 0


def _start(args: argparse.Namespace) -> int:
    return _request_status(args, "starting")


def _stop(args: argparse.Namespace) -> int:
    return _request_status(args, "stopping")


def _request_status(args: argparse.Namespace, status: str) -> int:
    with _admin(args) as admin:
        admin.request_status(args.id, status)
    print(f"connector {args.id}: requested status {status}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        admin.delete_connector(args.id)
    print(f"connector {args.id}: deleted")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        _print_json(admin.connector(args.id))
    return 0


def _list(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        _print_json(admin.connectors())
    return 0


def _version(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        version = admin.set_version(args.version) if args.version else admin.version()
    print(version)
    return 0


def _admin(args: argparse.Namespace) -> SandboxAdmin:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CommandError(f"set {TOKEN_ENV} to the sandbox token")
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    return SandboxAdmin(url, token)


def _values(args: argparse.Namespace) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in args.set:
        key, value = _split_assignment("--set", item)
        values[key] = value
    for item in args.set_file:
        key, path = _split_assignment("--set-file", item)
        try:
            values[key] = Path(path).read_text(encoding="utf-8").removesuffix("\n")
        except OSError as error:
            raise CommandError(
                f"--set-file {key}: cannot read {path}: {error.strerror}"
            ) from None
    return values


def _split_assignment(option: str, item: str) -> tuple[str, str]:
    key, separator, value = item.partition("=")
    if not separator or not key:
        # The item is not echoed: it may be a secret typed without its key.
        raise CommandError(f"every {option} expects KEY=VALUE with a non-empty KEY")
    return key, value


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
