"""The V2 HTTP/REST endpoint: KServe's routes (and Triton's extensions to them) over the same
dataplane, repository, batchers and statistics as gRPC, on the server's event loop.

aiohttp carries it: level with uvicorn + starlette in requests per second and CPU per
request on a 12 KB POST (scripts/benchmarks/http_frameworks.py), one library instead of three, and it
runs on the loop the gRPC server already owns. Errors are the gRPC ones as HTTP codes with
{"error": "..."}; health routes and the zoo page stay open when a token guards the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeGuard

import grpc
import orjson
from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf import json_format
from google.protobuf.message import Message

from serving.protocol.errors import InvalidInput, ServingError
from serving.server import answers
from serving.server.bearer import bearer_token_matches
from serving.server.dataplane import DataPlane, InferenceCall
from serving.server.http.connections import ConnectionGuard, GuardedSite
from serving.server.http.tensors import HEADER_LENGTH, encode_infer_response, parse_infer_request
from serving.server.infer_request import request_decoder
from serving.server.load_override import LoadOverride
from serving.server.peers import LocalServer, Peers
from serving.server.settings import ServerSettings
from serving.server.shared_memory import is_loopback_address
from serving.server.tls import server_ssl_context

__all__ = ["build_app", "HttpEndpoint", "HTTP_STATUS"]

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page")

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC status -> HTTP status, for the same failure on either transport."""

OPEN_PATHS = ("/v2/health/", "/page/")
"""Reachable without the bearer token: probes cannot present one, and the page asks for it."""

BODY_SECONDS = 30.0
"""A request body that has not arrived whole by then is refused (a client that announced
more bytes than it sends must not hold a handler forever)."""


JSON_IN_THREAD_BYTES = 256 * 1024
"""JSON request documents larger than this are parsed off the event loop."""


class _ClientMistakes(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad header value, a line too long) at ERROR
    with a traceback; it has already answered 400. What a client sent wrong is one debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            logger.debug("refused a request it could not parse: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return False
        return True


_protocol_logger = logging.getLogger("serving.server.http.protocol")
_protocol_logger.addFilter(_ClientMistakes())


def _json(message: Message) -> dict:
    """A protocol message in the JSON form Triton's HTTP endpoint answers with."""
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """deepr's errors as HTTP codes with {"error": ...}; a bug is a 500 that says so, and is logged."""
    try:
        return await handler(request)
    except ServingError as exc:
        return _error(HTTP_STATUS.get(exc.code, 500), str(exc))
    except ClientLeft as exc:  # nobody to answer, and nothing the server did wrong
        logger.debug("%s", exc)
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.empty_body or exc.status < 400:
            raise
        return _error(exc.status, exc.text or exc.reason)
    except Exception as exc:
        logger.exception("%s %s failed", request.method, request.path)
        return _error(500, f"{request.method} {request.path} failed: {type(exc).__name__}: {exc}")


def _token_check(token: str) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/" or request.path.startswith(OPEN_PATHS):
            return await handler(request)
        presented = request.headers.get("Authorization")
        if bearer_token_matches(presented, token):
            return await handler(request)
        message = (
            "missing bearer token (header 'Authorization: Bearer <token>')"
            if presented is None
            else "invalid bearer token"
        )
        return web.json_response({"error": message}, status=401, headers={"WWW-Authenticate": "Bearer"})

    return check


class ClientLeft(Exception):
    """The client closed its connection before its request body arrived whole."""


async def _body(request: web.Request) -> bytes:
    try:
        async with asyncio.timeout(BODY_SECONDS):
            return await request.read()
    except TimeoutError:
        raise InvalidInput(f"the request body did not arrive whole within {BODY_SECONDS:g} s") from None
    except (ConnectionError, ClientPayloadError) as exc:
        raise ClientLeft(f"{request.method} {request.path}: the client left before its body arrived ({exc})") from None


async def _json_body(request: web.Request) -> dict:
    """The body as a JSON object; {} when empty. orjson refuses documents nested past 1,024
    levels with a JSONDecodeError, where the standard library would recurse until it fails."""
    raw = await _body(request)
    if not raw.strip():
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    return document


class Routes:
    """One method per V2 route; `version` is "" where the path names none."""

    def __init__(self, dataplane: DataPlane, whole: LocalServer | Peers) -> None:
        self.dataplane = dataplane
        self.whole = whole
        """Who answers a call about the whole server: this process, or every worker."""

    @staticmethod
    def _model(request: web.Request) -> tuple[str, str]:
        return request.match_info["model"], request.match_info.get("version", "")

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.dataplane.live() else 400)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if await self.whole.ready() else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        name, version, extensions = self.dataplane.server_metadata()
        return web.json_response({"name": name, "version": version, "extensions": list(extensions)})

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(_json(answers.model_metadata(self.dataplane, *self._model(request))))

    async def model_ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if await self.whole.model_ready(*self._model(request)) else 400)

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response(_json(self.dataplane.model_config(*self._model(request))))

    async def model_statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return web.json_response(_json(await self.whole.statistics(name, version)))

    async def infer(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        body, header_length = await _body(request), request.headers.get(HEADER_LENGTH)
        json_bytes = len(body) if header_length is None else int(header_length) if header_length.isdigit() else 0
        if json_bytes > JSON_IN_THREAD_BYTES:  # parsing megabytes of numbers must not stall every other call
            parsed = await asyncio.to_thread(parse_infer_request, body, header_length, name, version)
        else:
            parsed = parse_infer_request(body, header_length, name, version)
        call = InferenceCall(
            name,
            version,
            parsed.message.id,
            decode=request_decoder(parsed.message, self.dataplane.shared_memory),
            encode=lambda model, outputs, requested: encode_infer_response(parsed, model, outputs, requested),
        )
        answer, answer_header_length = await self.dataplane.handle(call)
        if answer_header_length is None:
            return web.Response(body=answer, content_type="application/json")
        return web.Response(
            body=answer, content_type="application/octet-stream", headers={HEADER_LENGTH: str(answer_header_length)}
        )

    async def repository_index(self, request: web.Request) -> web.Response:
        ready = bool((await _json_body(request)).get("ready", False))
        index = await self.whole.index(ready)
        return web.json_response(_json(index)["models"])

    async def load(self, request: web.Request) -> web.Response:
        name, parameters = await self._model_control(request)
        await self.whole.load(name, LoadOverride.from_json(name, parameters))
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        name, parameters = await self._model_control(request)
        answers.check_unload_parameters(parameters)
        await self.whole.unload(name)
        return web.Response(status=200)

    async def _model_control(self, request: web.Request) -> tuple[str, dict]:
        """The model a load or unload names and its parameters, once the request is one this
        server takes."""
        answers.check_model_control(self.dataplane, "")
        parameters = (await _json_body(request)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"'parameters' must be an object, got {type(parameters).__name__}")
        return request.match_info["model"], parameters

    async def shm_status(self, request: web.Request) -> web.Response:
        regions = self.dataplane.shared_memory.status(request.match_info.get("region", ""))
        return web.json_response(
            [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
        )

    async def shm_register(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        peer = request.remote or ""
        answers.check_registration(self.dataplane, region, is_loopback_address(peer), peer)
        body = await _json_body(request)
        key, offset, size = body.get("key"), body.get("offset", 0), body.get("byte_size")
        if not isinstance(key, str) or not _is_count(offset) or not _is_count(size):
            raise InvalidInput(
                "a registration needs 'key' (a string), 'byte_size' and optionally 'offset' (integers >= 0), got "
                f"key {type(key).__name__}, byte_size {size!r:.40}, offset {offset!r:.40}"
            )
        await self.whole.register(region, key, offset, size)
        return web.Response(status=200)

    async def shm_unregister(self, request: web.Request) -> web.Response:
        await self.whole.unregister(request.match_info.get("region", ""))
        return web.Response(status=200)

    async def cuda_shm_status(self, request: web.Request) -> web.Response:
        return web.json_response(answers.cuda_region_status(request.match_info.get("region", "")))

    async def cuda_shm_register(self, request: web.Request) -> web.Response:
        answers.refuse_cuda_registration(request.match_info["region"])
        return web.Response(status=200)

    async def cuda_shm_unregister(self, request: web.Request) -> web.Response:
        return web.Response(status=200)  # none are registered: nothing is left after

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE / "index.html")


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def build_app(
    dataplane: DataPlane,
    settings: ServerSettings,
    guard: ConnectionGuard | None = None,
    whole: LocalServer | Peers | None = None,
) -> web.Application:
    middlewares = (
        ([guard.middleware] if guard else []) + [_errors] + ([_token_check(settings.token)] if settings.token else [])
    )
    app = web.Application(client_max_size=settings.max_message_bytes, middlewares=middlewares)
    r = Routes(dataplane, whole or LocalServer(dataplane))
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    app.router.add_get("/v2/health/live", r.live)
    app.router.add_get("/v2/health/ready", r.ready)
    app.router.add_get("/v2", r.server_metadata)
    app.router.add_get("/v2/models/stats", r.model_statistics)
    for prefix in (model, versioned):
        app.router.add_get(prefix, r.model_metadata)
        app.router.add_get(prefix + "/ready", r.model_ready)
        app.router.add_get(prefix + "/config", r.model_config)
        app.router.add_get(prefix + "/stats", r.model_statistics)
        app.router.add_post(prefix + "/infer", r.infer)
    app.router.add_post("/v2/repository/index", r.repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", r.load)
    app.router.add_post("/v2/repository/models/{model}/unload", r.unload)
    app.router.add_get("/v2/systemsharedmemory/status", r.shm_status)
    app.router.add_get("/v2/systemsharedmemory/region/{region}/status", r.shm_status)
    app.router.add_post("/v2/systemsharedmemory/region/{region}/register", r.shm_register)
    app.router.add_post("/v2/systemsharedmemory/region/{region}/unregister", r.shm_unregister)
    app.router.add_post("/v2/systemsharedmemory/unregister", r.shm_unregister)
    app.router.add_get("/v2/cudasharedmemory/status", r.cuda_shm_status)
    app.router.add_get("/v2/cudasharedmemory/region/{region}/status", r.cuda_shm_status)
    app.router.add_post("/v2/cudasharedmemory/region/{region}/register", r.cuda_shm_register)
    app.router.add_post("/v2/cudasharedmemory/region/{region}/unregister", r.cuda_shm_unregister)
    app.router.add_post("/v2/cudasharedmemory/unregister", r.cuda_shm_unregister)
    app.router.add_get("/", r.page)
    app.router.add_static("/page/", PAGE)
    return app


class HttpEndpoint:
    """The REST endpoint of one server, started and stopped with it."""

    def __init__(
        self, dataplane: DataPlane, settings: ServerSettings, whole: LocalServer | Peers | None = None
    ) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.whole = whole or LocalServer(dataplane)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        settings = self.settings
        guard = ConnectionGuard(settings.max_connections, settings.connection_idle_seconds, settings.header_seconds)
        runner = web.AppRunner(
            build_app(self.dataplane, settings, guard, self.whole),
            access_log=None,
            logger=_protocol_logger,
            handle_signals=False,
            shutdown_timeout=settings.grace_seconds,
        )
        await runner.setup()
        site = GuardedSite(
            runner,
            guard,
            settings.host,
            settings.http_port,
            ssl_context=server_ssl_context(settings),
            backlog=1024,
            # a worker accepts on the socket its parent bound once for every worker
            sock=socket.socket(fileno=settings.worker_http_fd) if settings.worker_http_fd >= 0 else None,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"cannot listen for HTTP on {self.settings.host}:{self.settings.http_port}: {exc.strerror or exc}"
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        """Stop accepting; requests in flight get the server's grace seconds to finish."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
