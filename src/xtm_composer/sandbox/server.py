"""The sandbox's HTTP server: OpenCTI's `/graphql` endpoint and sandbox controls.

Every route needs `Authorization: Bearer <token>`; a missing or wrong token gets
HTTP 401 with a GraphQL-style error body. Routes:

- `POST /graphql`: a JSON body `{query, variables, operationName}` executed
  against `schema.graphql`. A document that does not parse or validate gets
  HTTP 400; execution errors come with HTTP 200 in `errors`, as in OpenCTI.
- `GET /sandbox/version`, `POST /sandbox/version` with `{"version": "6.10.0"}`:
  read or change `about.version`, as a platform upgrade does. Sandbox only.
- `GET /sandbox/catalog`: the loaded catalog entries, without their schemas.
  Sandbox only.

`SandboxServer` runs the app with uvicorn in a background thread, on a loopback
address only.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
import threading
import time
from typing import Any

import uvicorn
from graphql import GraphQLError, GraphQLSchema, execute_sync, parse, validate
from graphql.utilities import get_operation_ast
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from xtm_composer import logs
from xtm_composer.sandbox.resolvers import load_schema
from xtm_composer.sandbox.state import SandboxState

log = logs.get_logger(__name__)

LOOPBACK_HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 10.0
"""Time for the server thread to start listening; ample on a loaded CI machine."""
SHUTDOWN_TIMEOUT_SECONDS = 5.0
"""Time for open requests to finish at stop, before connections are cut."""


def require_loopback(host: str) -> str:
    """Return `host` as an address if it is a loopback one, else raise ValueError.

    `localhost` becomes 127.0.0.1, so the name cannot resolve anywhere else.
    """
    if host == "localhost":
        return LOOPBACK_HOST
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IP address; the sandbox listens on a loopback "
            "address only, such as 127.0.0.1"
        ) from None
    if not address.is_loopback:
        raise ValueError(
            f"{host} is not a loopback address; the sandbox listens on a loopback "
            "address only, such as 127.0.0.1 or ::1"
        )
    return str(address)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a TCP socket with SO_REUSEADDR, so a restart can take the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    return listener


def uvicorn_config(app: Starlette) -> uvicorn.Config:
    """Return a uvicorn configuration that leaves logging setup to xtm-composer."""
    return uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT_SECONDS),
    )


class SandboxApp:
    """The request handlers, sharing one state and one schema."""

    def __init__(self, state: SandboxState, token: str) -> None:
        if not token:
            raise ValueError("the sandbox token must not be empty")
        logs.register_secret(token)
        self.state = state
        self.schema: GraphQLSchema = load_schema()
        self._token = token.encode("utf-8")
        self._rejected_requests = 0

    def starlette(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/graphql", self.graphql, methods=["POST"]),
                Route("/sandbox/version", self.version, methods=["GET", "POST"]),
                Route("/sandbox/catalog", self.catalog, methods=["GET"]),
            ]
        )

    async def graphql(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return error_response(
                400,
                "the request body must be a JSON object with a query string",
                "BAD_REQUEST",
            )
        variables = body.get("variables")
        operation_name = body.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            return error_response(400, "variables must be a JSON object", "BAD_REQUEST")
        if operation_name is not None and not isinstance(operation_name, str):
            return error_response(400, "operationName must be a string", "BAD_REQUEST")

        status, result = await run_in_threadpool(
            self.execute, body["query"], variables, operation_name
        )
        return JSONResponse(result, status_code=status)

    def execute(
        self,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """Run one GraphQL request; returns the HTTP status and the response body."""
        try:
            document = parse(query)
        except GraphQLError as error:
            return 400, {"errors": [_formatted(error, "GRAPHQL_PARSE_FAILED")]}
        errors = validate(self.schema, document)
        if errors:
            codes = [_formatted(error, "GRAPHQL_VALIDATION_FAILED") for error in errors]
            return 400, {"errors": codes}

        operation = get_operation_ast(document, operation_name)
        log.debug(
            "graphql request",
            operation=operation.name.value if operation and operation.name else None,
            operation_type=operation.operation.value if operation else None,
        )
        result = execute_sync(
            self.schema,
            document,
            context_value=self.state,
            variable_values=variables,
            operation_name=operation_name,
        )
        return 200, dict(result.formatted)

    async def version(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        if request.method == "POST":
            body = await _json_body(request)
            version = body.get("version") if isinstance(body, dict) else None
            if not isinstance(version, str) or not version.strip():
                return error_response(
                    400,
                    'the request body must be {"version": "<non-empty string>"}',
                    "BAD_REQUEST",
                )
            self.state.set_platform_version(version)
        return JSONResponse({"version": self.state.platform_version})

    async def catalog(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        entries = [entry.summary() for entry in self.state.catalog.values()]
        return JSONResponse({"entries": entries})

    def _authorized(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode("utf-8"), self._token)

    def _unauthorized(self, request: Request) -> Response:
        # Only the first rejection is a warning. Repeats, such as a client that
        # retries with the same wrong token, go to debug with their count.
        self._rejected_requests += 1
        level = log.warning if self._rejected_requests == 1 else log.debug
        level(
            "request rejected: missing or wrong bearer token",
            path=request.url.path,
            rejected_requests=self._rejected_requests,
        )
        if request.headers.get("authorization"):
            message = "invalid token: send the sandbox token as Authorization: Bearer"
        else:
            message = "authentication required: send Authorization: Bearer <token>"
        response = error_response(401, message, "UNAUTHENTICATED")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response


def create_app(state: SandboxState, token: str) -> Starlette:
    """Build the ASGI app that serves `state` to clients holding `token`."""
    return SandboxApp(state, token).starlette()


def error_response(status: int, message: str, code: str) -> JSONResponse:
    """Return a GraphQL-style error body: `{"errors": [{message, extensions}]}`."""
    body = {"errors": [{"message": message, "extensions": {"code": code}}]}
    return JSONResponse(body, status_code=status)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _formatted(error: GraphQLError, code: str) -> dict[str, Any]:
    formatted = dict(error.formatted)
    formatted["extensions"] = {"code": code}
    return formatted


class SandboxServer:
    """The sandbox served by uvicorn in a background thread, for tests and demos.

    `start()` binds the port (an ephemeral one when `port` is 0) and returns once
    the server accepts connections. `stop()` closes the port, which clients see
    as a platform outage. `start()` again serves the same state on the same
    port.
    """

    def __init__(
        self,
        state: SandboxState | None = None,
        *,
        token: str,
        host: str = LOOPBACK_HOST,
        port: int = 0,
    ) -> None:
        self.host = require_loopback(host)
        self.port = port
        self.state = state if state is not None else SandboxState()
        self.app = create_app(self.state, token)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL, such as `http://127.0.0.1:4000`; the port is known after start."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Listen and serve; raises if the port is taken or startup fails."""
        if self.running:
            raise RuntimeError(f"the sandbox server already runs at {self.url}")
        listener = bind_socket(self.host, self.port)
        self.port = listener.getsockname()[1]
        server = uvicorn.Server(uvicorn_config(self.app))
        self._failure = None
        self._server = server
        self._thread = threading.Thread(
            target=self._serve,
            args=(server, listener),
            name=f"sandbox-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._wait_started(server, self._thread)
        log.info("sandbox server started", url=self.url)

    def stop(self) -> None:
        """Stop serving and close the port; does nothing when not running."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_SECONDS * 2)
        if thread.is_alive():
            server.force_exit = True
            thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        if thread.is_alive():
            log.error(
                "sandbox server thread still running after stop",
                url=self.url,
                timeout_seconds=SHUTDOWN_TIMEOUT_SECONDS * 3,
            )
        self._server = None
        self._thread = None
        log.info("sandbox server stopped", url=self.url)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.stop()

    def _serve(self, server: uvicorn.Server, listener: socket.socket) -> None:
        try:
            asyncio.run(server.serve(sockets=[listener]))
        except BaseException as error:
            # start() raises it during startup; later, the log is the only trace.
            self._failure = error
            log.error("sandbox server failed", url=self.url, error=repr(error))
        finally:
            listener.close()

    def _wait_started(self, server: uvicorn.Server, thread: threading.Thread) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive():
                self._server = self._thread = None
                raise RuntimeError(
                    f"the sandbox server failed to start at {self.url}: "
                    f"{self._failure!r}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"the sandbox server did not start within "
                    f"{STARTUP_TIMEOUT_SECONDS:g} s at {self.url}"
                )
            time.sleep(0.01)
