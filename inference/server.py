"""`mirror serve`: an OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/models`) for any ChatBackend, on
FastAPI + uvicorn, with the crisis-safety layer in front of the model (inference/README.md says more).

Requests are answered one at a time (a lock: one local model). By default every user turn of each request's history
is screened (a fresh `SafetySession` replays it, so a referral or a pending safety question persists across
stateless requests); `--no_safety` serves machine clients and only on a loopback address. Client text is not
logged. Images come as base64 data URLs only (no server-side fetching); `n > 1` and tools are a clear 400.
"""

import base64
import binascii
import errno
import functools
import hmac
import io
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .backends.base import ChatBackend, GenerationConfig, ModelLoadArguments
from .backends.transformers_backend import Usage
from .chat import SafetyArguments
from .safety import CrisisDetector, SafetyConfig, SafetyDecision, SafetySession

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024  # a few face images as base64 fit many times over


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and an OpenAI-style error body."""


@dataclass
class ServeArguments(SafetyArguments):
    """Options of `mirror serve` besides the model (ModelLoadArguments) and default sampling (GenerationConfig)."""

    host: str = field(
        default="127.0.0.1", metadata={"help": "Interface to bind; 0.0.0.0 exposes the server to the network."}
    )
    port: int = field(default=8000, metadata={"help": "Port (0 picks a free one)."})
    served_model_name: str | None = field(
        default=None,
        metadata={"help": "Model id reported by /v1/models and in replies; default: --model (a folder: its name)."},
    )
    backend: str = field(
        default="transformers", metadata={"help": "Local inference backend.", "choices": ["transformers", "vllm"]}
    )
    api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "Name of an environment variable holding the key clients must send as a Bearer token (not the "
            "key itself: command lines are visible to other users). Default: no key."
        },
    )
    max_body_bytes: int = field(
        default=MAX_BODY_BYTES, metadata={"help": "Largest request body accepted; larger ones get HTTP 413."}
    )
    no_safety: bool = field(
        default=False,
        metadata={
            "help": "Serve the raw model without crisis screening, for machine clients (evaluation, generation) "
            "only. Refused unless --host is a loopback address."
        },
    )


ARGUMENTS = (ModelLoadArguments, ServeArguments, GenerationConfig)


def decode_data_url(url: str) -> Image.Image:
    """Decode a `data:image/...;base64,` URL; remote URLs are refused (no server-side fetching, no SSRF)."""
    if not url.startswith("data:"):
        raise RequestError(
            "image_url must be a base64 data URL (data:image/png;base64,...); remote URLs are not fetched"
        )
    header, _, payload = url.partition(",")
    if ";base64" not in header or not header[5:].startswith("image/"):
        raise RequestError("image_url data URL must be base64-encoded image data")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
    except (binascii.Error, UnidentifiedImageError, OSError) as error:
        raise RequestError(f"image_url could not be decoded as an image: {error}") from error
    return image.convert("RGB")


def parse_messages(raw_messages: Any) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """OpenAI messages -> MIRROR messages (`{"type": "image"}` placeholders) and the images in order."""
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RequestError("'messages' must be a non-empty list")
    messages, images = [], []
    for index, message in enumerate(raw_messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{index}] needs a role of system, user or assistant")
        content = message.get("content")
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    blocks.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind == "image_url":
                    image_url = part.get("image_url")
                    url = image_url.get("url") if isinstance(image_url, dict) else image_url
                    if not isinstance(url, str):
                        raise RequestError(f"messages[{index}]: image_url part without a url")
                    images.append(decode_data_url(url))
                    blocks.append({"type": "image"})
                else:
                    raise RequestError(f"messages[{index}]: unsupported content part type {kind!r}")
        else:
            raise RequestError(f"messages[{index}].content must be a string or a list of parts")
        messages.append({"role": message["role"], "content": blocks})
    return messages, images


def user_turns(messages: list[dict[str, Any]]) -> list[str]:
    """The text of every user message, in order: what the safety layer screens."""
    return [
        " ".join(block["text"] for block in message["content"] if block["type"] == "text")
        for message in messages
        if message["role"] == "user"
    ]


def _number(body: dict[str, Any], key: str, kind: type, default: Any, low: float, high: float) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a number")
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}")
    return kind(value)


def parse_generation(body: dict[str, Any], defaults: GenerationConfig) -> GenerationConfig:
    """Request sampling parameters over the server's defaults (the paper's 0.7 / 0.9 / 128 unless changed)."""
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported")
    if body.get("tools"):
        raise RequestError("tools are not supported")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise RequestError("'stop' must be a string or a list of strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("'seed' must be an integer")
    return GenerationConfig(
        temperature=_number(body, "temperature", float, defaults.temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", float, defaults.top_p, 1e-6, 1.0),
        max_new_tokens=_number({"max_tokens": max_tokens}, "max_tokens", int, defaults.max_new_tokens, 1, 1 << 20),
        seed=seed,
        stop=stop or None,
    )


def is_loopback(host: str) -> bool:
    """Is `host` a loopback address (127.0.0.0/8, ::1) or `localhost`?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_no_safety_host(host: str) -> None:
    """Serving without the safety layer is for machine clients on this machine only."""
    if not is_loopback(host):
        raise ValueError(
            f"--no_safety serves the raw model without crisis screening and is refused on {host!r}: bind it to "
            "127.0.0.1 (machine clients on this machine), or drop --no_safety"
        )


@functools.cache
def _default_detector() -> CrisisDetector:
    """One default detector per process (loading the embedding model takes seconds), shared by every app."""
    return CrisisDetector(SafetyConfig())


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    """An OpenAI-style error response (a Starlette `JSONResponse`, itself an ASGI app)."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class _GuardMiddleware:
    """Checks the API key and the declared body size from the headers alone: a pure ASGI middleware, so nothing of
    a refused request's body is read. Chunked bodies are counted while the endpoint reads them."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        await (refusal or self.app)(scope, receive, send)

    def refusal(self, scope: dict[str, Any]) -> Any:
        """The error response to a request refused from its headers alone, or None."""
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.api_key is not None and scope["path"] not in ("/health", "/v1/health"):
            supplied = headers.get("authorization", "")
            token = supplied[7:].strip() if supplied[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return error_response(401, "invalid or missing API key", "authentication_error")
        declared = headers.get("content-length")
        if declared is not None and not declared.strip().isdigit():
            return error_response(400, "Content-Length must be a non-negative integer")
        if declared is not None and int(declared) > self.max_body_bytes:
            return error_response(413, f"request body over {self.max_body_bytes} bytes")
        return None


def create_app(
    backend: ChatBackend,
    *,
    model_name: str | None = None,
    defaults: GenerationConfig | None = None,
    api_key: str | None = None,
    safety: SafetyConfig | None = None,
    detector: CrisisDetector | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """The FastAPI app serving `backend`, safety on unless `SafetyConfig(enabled=False)` (the caller checks the host:
    `check_no_safety_host`). `detector` is shared by all requests; by default one per process is built."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    safety = safety or SafetyConfig()
    if safety.enabled and detector is None:
        detector = _default_detector() if safety == SafetyConfig() else CrisisDetector(safety)
    model_name = model_name or default_model_name(backend.name)
    defaults = defaults or GenerationConfig()
    created = int(time.time())
    lock = threading.Lock()

    app = FastAPI(title="mirror serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        detail = f"no route {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, detail, kind)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> dict[str, Any]:
        model = {"id": model_name, "object": "model", "created": created, "owned_by": "mirror"}
        return {"object": "list", "data": [model]}

    def generate(messages, images, config) -> tuple[str, Any]:
        with lock:
            text = backend.chat(messages, images or None, config)
            return text, getattr(backend, "last_usage", None)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request) -> Any:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return error_response(413, f"request body over {max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error_response(400, f"invalid JSON: {exc}")
        try:
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object")
            messages, images = parse_messages(body.get("messages"))
            config = parse_generation(body, defaults)
            if images and not backend.supports_images:
                raise RequestError(f"model {model_name!r} is text-only but the request has images")
        except RequestError as exc:
            return error_response(400, str(exc))

        decision: SafetyDecision | None = None
        session = None
        turns = user_turns(messages)
        if safety.enabled and turns:
            session = SafetySession(safety, detector=detector)
            decision = await run_in_threadpool(session.check_history, turns)
        usage, finish_reason = None, "stop"
        if decision is not None and not decision.allow_model_reply:
            text = decision.message or ""  # the referral or the safety question; the model is not called
            usage = Usage()  # so clients that read `usage` find one: no model tokens were spent
        else:
            try:
                raw, usage = await run_in_threadpool(generate, messages, images, config)
            except ValueError as exc:  # e.g. placeholder / image mismatch found by the backend
                return error_response(400, str(exc))
            except Exception as exc:
                logger.exception("generation failed")
                return error_response(500, f"generation failed: {type(exc).__name__}", "server_error")
            if usage is not None and usage.completion_tokens >= config.max_new_tokens:
                finish_reason = "length"
            text = session.filter_reply(turns[-1], raw) if session is not None else raw
            if text != raw:
                finish_reason = "stop"  # a safety message replaced the reply
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        usage_keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        usage_body = {key: getattr(usage, key) for key in usage_keys} if usage is not None else None
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _stream_events(
                completion_id, model_name, text, finish_reason, usage_body if include_usage else None
            )
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        message = {"role": "assistant", "content": text}
        response = _completion(
            completion_id, model_name, "chat.completion", message=message, finish_reason=finish_reason
        )
        return response if usage_body is None else {**response, "usage": usage_body}

    return _GuardMiddleware(app, api_key, max_body_bytes)


def default_model_name(model: str) -> str:
    """What /v1/models and the replies call the model: a local folder by its name (never the absolute path, which
    tells clients about the server's disk), a Hub id as it is."""
    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


def _completion(completion_id: str, model: str, kind: str, created: int | None = None, **choice: Any) -> dict:
    """An OpenAI `chat.completion` (or `chat.completion.chunk`) body with one choice: `message` (or `delta`) and
    `finish_reason`."""
    return {
        "id": completion_id,
        "object": kind,
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": "mirror-serve",
        "choices": [{"index": 0, **choice, "logprobs": None}],
    }


def _stream_events(
    completion_id: str, model: str, text: str, finish_reason: str, usage: dict[str, int] | None
) -> Iterator[str]:
    """Server-sent events in the OpenAI `chat.completion.chunk` format: the role, the text in word-sized pieces,
    the finish reason, the usage when asked for, then `[DONE]`."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        payload = _completion(
            completion_id, model, "chat.completion.chunk", created, delta=delta, finish_reason=finish
        )
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for index, piece in enumerate(text.split(" ")):
        yield chunk({"content": piece if index == 0 else " " + piece})
    yield chunk({}, finish_reason)
    if usage is not None:
        payload = _completion(completion_id, model, "chat.completion.chunk", created)
        yield f"data: {json.dumps({**payload, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


@dataclass
class RunningServer:
    """A server started by `serve_in_thread`."""

    host: str
    port: int
    model_name: str

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise OSError(f"port {port} is in use; pick another --port (0 = a free one)") from None
        raise
    return sock


@contextmanager
def serve_in_thread(
    backend: ChatBackend, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 30.0, **kwargs: Any
) -> Iterator[RunningServer]:
    """Run a server in a background thread for the duration of a `with` block (tests, notebooks). Port 0 picks a
    free port (read `server.base_url`); `kwargs` go to `create_app` (`safety`, ...)."""
    import uvicorn

    safety = kwargs.get("safety")
    if safety is not None and not safety.enabled:
        check_no_safety_host(host)
    app = create_app(backend, **kwargs)
    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="mirror-serve")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("mirror serve did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(host, sock.getsockname()[1], kwargs.get("model_name") or backend.name)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def main(model: ModelLoadArguments, arguments: ServeArguments, generation: GenerationConfig) -> int:
    """`mirror serve`: load the model, then serve it until interrupted."""
    import uvicorn

    from .backends import load_backend
    from .backends.endpoint import api_key_from_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if arguments.no_safety:
        check_no_safety_host(arguments.host)  # before loading anything: a refused start should be quick
    if arguments.max_body_bytes < 1:
        raise ValueError(f"--max_body_bytes must be positive, got {arguments.max_body_bytes}")
    model.check_source()
    api_key = api_key_from_env(arguments.api_key_env)
    safety = arguments.safety_config(enabled=not arguments.no_safety)
    sock = _bind(arguments.host, arguments.port)  # before loading anything: a port in use should fail at once
    try:
        # Built before the model loads, so a safety layer that cannot load fails fast.
        detector = CrisisDetector(safety) if safety.enabled else None
        backend = load_backend(model.model, backend=arguments.backend, **model.load_kwargs())
    except BaseException:
        sock.close()
        raise
    name = arguments.served_model_name or default_model_name(model.model)
    app = create_app(
        backend,
        model_name=name,
        defaults=generation,
        api_key=api_key,
        safety=safety,
        detector=detector,
        max_body_bytes=arguments.max_body_bytes,
    )
    url = RunningServer(arguments.host, sock.getsockname()[1], name).base_url
    screening = "crisis screening ON" if safety.enabled else "crisis screening OFF (--no_safety, loopback only)"
    print(f"Serving {name!r} at {url} ({screening}; Ctrl+C to stop)", flush=True)
    if not is_loopback(arguments.host) and not api_key:
        logger.warning("Listening on %s without an API key: anyone who can reach it can use the model", arguments.host)
    uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=False, lifespan="off")).run(sockets=[sock])
    return 0
