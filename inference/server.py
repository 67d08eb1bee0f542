"""`mirror serve`: a small OpenAI-compatible HTTP server (`/v1/chat/completions`, `/v1/models`) for any ChatBackend.

Why it exists: evaluation, data generation and other labs' tools already speak the OpenAI chat API, so serving a
MIRROR checkpoint this way lets them use it unchanged (including through `EndpointBackend`), and the test suite
gets a real HTTP server without vLLM. It is the Python standard library only (`ThreadingHTTPServer`); requests
are answered one at a time by the backend (a lock), which is what one local model can do anyway. For
throughput serve the checkpoint with `vllm serve` instead: the wire format is the same.

Accepted: `messages` with string contents or `text` / `image_url` parts (base64 data URLs only: the server never
fetches remote URLs), `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n=1`.
Not supported (clear 400): streaming, `n > 1`, tools.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import io
import json
import logging
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, UnidentifiedImageError

from .backends import load_backend
from .backends.base import ChatBackend, GenerationConfig

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024  # a few face images as base64 fit many times over


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and an OpenAI-style error body."""


@dataclass
class ServeConfig:
    """Options of `mirror serve` (also the argparse flags)."""

    model: str = field(metadata={"help": "Model folder or Hub id (merged model or LoRA adapter)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to bind; 0.0.0.0 exposes it to the network."})
    port: int = field(default=8000, metadata={"help": "Port (0 picks a free one)."})
    served_model_name: str | None = field(
        default=None, metadata={"help": "Model id reported by /v1/models (default: --model)."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, mps or auto (default: best available)."})
    dtype: str | None = field(default=None, metadata={"help": "bfloat16, float16, float32 or auto."})
    backend: str = field(default="transformers", metadata={"help": "transformers or vllm."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow repository code (off: it runs code)."})
    api_key_env: str | None = field(
        default=None,
        metadata={"help": "Name of an environment variable holding a key that clients must send as Bearer token."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Default temperature when a request sets none."})
    top_p: float = field(default=0.9, metadata={"help": "Default top_p when a request sets none."})
    max_new_tokens: int = field(default=128, metadata={"help": "Default max tokens when a request sets none."})


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
    if body.get("stream"):
        raise RequestError("streaming is not supported by mirror serve; send stream=false")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported")
    if body.get("tools"):
        raise RequestError("tools are not supported")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
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


class ClosingHTTPServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` that leaves no thread behind when closed.

    HTTP/1.1 clients keep connections open, so a plain server's handler threads stay parked on idle sockets after
    `shutdown()`; `socketserver` does not even track daemon handler threads. Left until interpreter exit, such
    threads are killed during finalisation, which can abort the process ("terminate called without an active
    exception", seen intermittently in the test suite). Closing shuts every open client connection down, which
    ends its handler, then joins the handler threads (bounded by `close_timeout`).
    """

    daemon_threads = True  # a handler stuck in a long generation never keeps the process alive
    block_on_close = False  # joining is done below, for daemon threads too
    allow_reuse_address = True
    close_timeout = 30.0  # seconds server_close() waits for handlers (one generation in flight at most)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._tracking_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=self.daemon_threads
        )
        with self._tracking_lock:
            self._connections.add(request)
            self._handlers = {handler for handler in self._handlers if handler.is_alive()}
            self._handlers.add(thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._tracking_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        with self._tracking_lock:
            connections, handlers = list(self._connections), list(self._handlers)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)  # the handler's next read returns EOF and it finishes
            except OSError:
                pass  # already closed by the client
        deadline = time.monotonic() + self.close_timeout
        for handler in handlers:
            if handler is not threading.current_thread():
                handler.join(timeout=max(0.0, deadline - time.monotonic()))


class MirrorHTTPServer(ClosingHTTPServer):
    """The `mirror serve` server: the backend, its default sampling settings and an optional API key."""

    def __init__(
        self,
        address: tuple[str, int],
        backend: ChatBackend,
        *,
        model_name: str | None = None,
        defaults: GenerationConfig | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(address, ChatCompletionsHandler)
        self.backend = backend
        self.model_name = model_name or backend.name
        self.defaults = defaults or GenerationConfig()
        self.api_key = api_key
        self.created = int(time.time())
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class ChatCompletionsHandler(BaseHTTPRequestHandler):
    server: MirrorHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, so a client's connection pool is reused
    server_version = "mirror-serve"

    def log_message(self, format: str, *args: Any) -> None:  # route access logs to logging, not stderr
        logger.info("%s - %s", self.address_string(), format % args)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorised(self) -> bool:
        if not self.server.api_key:
            return True
        supplied = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(supplied.encode(), self.server.api_key.encode()):
            return True
        self._send_error(HTTPStatus.UNAUTHORIZED, "invalid or missing API key", "authentication_error")
        return False

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {
                "id": self.server.model_name,
                "object": "model",
                "created": self.server.created,
                "owned_by": "mirror",
            }
            self._send_json(HTTPStatus.OK, {"object": "list", "data": [model]})
        elif self.path.rstrip("/") in ("/health", "/v1/health"):
            self._send_json(HTTPStatus.OK, {"status": "ok"})
        else:
            self._send_error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found_error")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes")
            return
        raw = self.rfile.read(length)
        if not self._authorised():
            return
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found_error")
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object")
            messages, images = parse_messages(body.get("messages"))
            config = parse_generation(body, self.server.defaults)
            if images and not self.server.backend.supports_images:
                raise RequestError(f"model {self.server.model_name!r} is text-only but the request has images")
        except json.JSONDecodeError as error:
            self._send_error(HTTPStatus.BAD_REQUEST, f"invalid JSON: {error}")
            return
        except RequestError as error:
            self._send_error(HTTPStatus.BAD_REQUEST, str(error))
            return
        try:
            with self.server.lock:
                text = self.server.backend.chat(messages, images or None, config)
                usage = getattr(self.server.backend, "last_usage", None)
        except ValueError as error:  # e.g. placeholder / image mismatch found by the backend
            self._send_error(HTTPStatus.BAD_REQUEST, str(error))
            return
        except Exception as error:
            logger.exception("generation failed")
            self._send_error(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {type(error).__name__}", "server_error"
            )
            return
        response: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.server.model_name,
            "system_fingerprint": "mirror-serve",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
        if usage is not None:
            response["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        self._send_json(HTTPStatus.OK, response)


def make_server(
    backend: ChatBackend,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str | None = None,
    defaults: GenerationConfig | None = None,
    api_key: str | None = None,
) -> MirrorHTTPServer:
    """Bind a server for `backend` (port 0 picks a free port; read it back from `server.base_url`)."""
    return MirrorHTTPServer((host, port), backend, model_name=model_name, defaults=defaults, api_key=api_key)


@contextmanager
def serve_in_thread(backend: ChatBackend, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
    """Run a server in a daemon thread for the duration of a `with` block (tests, notebooks); yields the server."""
    server = make_server(backend, host, port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_class: type, skip: tuple[str, ...] = ()) -> None:
    """One `--flag` per dataclass field, with the field's help text (positional when it has no default)."""
    for item in fields(config_class):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        help_text = item.metadata.get("help")
        if item.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = {"int": int, "float": float}.get(str(item.type), str)
        if item.default is MISSING and item.default_factory is MISSING:
            parser.add_argument(flag, type=kind, required=True, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=item.default, help=help_text)


def make_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The `mirror serve` parser; added to `subparsers` when given (the `mirror` CLI), standalone otherwise."""
    description = "Serve a MIRROR model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models)."
    if subparsers is None:
        parser = argparse.ArgumentParser(prog="mirror serve", description=description)
    else:
        parser = subparsers.add_parser(
            "serve", help="Serve a model over an OpenAI-compatible API.", description=description
        )
    add_dataclass_arguments(parser, ServeConfig)
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    config = ServeConfig(**{item.name: getattr(args, item.name) for item in fields(ServeConfig)})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .backends.endpoint import api_key_from_env

    api_key = api_key_from_env(config.api_key_env)
    backend = load_backend(
        config.model,
        backend=config.backend,
        revision=config.revision,
        device=config.device,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
    )
    defaults = GenerationConfig(
        temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens
    )
    server = make_server(
        backend,
        config.host,
        config.port,
        model_name=config.served_model_name or config.model,
        defaults=defaults,
        api_key=api_key,
    )
    print(f"Serving {server.model_name!r} at {server.base_url} (Ctrl+C to stop)", flush=True)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning("Listening on %s without an API key: anyone who can reach it can use the model", config.host)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_args()))
