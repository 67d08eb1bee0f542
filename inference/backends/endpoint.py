"""OpenAI-compatible chat endpoints (vLLM, TGI, HF Inference Providers and Endpoints, OpenAI, `mirror serve`),
through `huggingface_hub.InferenceClient(base_url=...).chat_completion`.

Images travel as base64 PNG data URLs, the one encoding every OpenAI-compatible vision server accepts. Timeouts,
connection errors and 5xx are retried with exponential backoff; 4xx are not (repeating cannot fix them). The key is
`api_key`, else the HF token huggingface_hub resolves, sent only to Hugging Face hosts so it never leaks to a
third-party server. Keys are never logged or put in error messages.
"""

from __future__ import annotations

import base64
import functools
import importlib
import io
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from ..prompts import join_text_blocks
from .base import ChatBackend, GenerationConfig, ImageLists, Messages, check_images

logger = logging.getLogger(__name__)

HF_HOST_SUFFIXES = ("huggingface.co", "hf.co", "huggingface.cloud", "hf.space")
# Sent instead of a key to servers that need none: it stops `InferenceClient` falling back to the HF token.
NO_KEY = "EMPTY"


class EndpointError(RuntimeError):
    """A chat request failed for good: a client error, or a transient one that outlived every retry."""


def image_to_data_url(image: Image.Image) -> str:
    """Encode an image as a base64 PNG data URL (lossless, so the server sees the exact pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_openai_messages(messages: Messages, images: list[Image.Image] | None = None) -> list[dict[str, Any]]:
    """Convert MIRROR's messages (image placeholders, images passed separately) to OpenAI chat messages.

    A content made only of text becomes a plain string, which text-only servers (and old TGI) require.
    """
    remaining = iter(images or [])
    converted = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for block in content:
                if block.get("type") == "image":
                    parts.append({"type": "image_url", "image_url": {"url": image_to_data_url(next(remaining))}})
                elif block.get("type") == "text":
                    parts.append({"type": "text", "text": block.get("text") or ""})
                else:
                    raise ValueError(f"Unsupported content block type {block.get('type')!r}")
            content = join_text_blocks(parts)  # text-only parts become one string; others stay a list of parts
        converted.append({"role": message["role"], "content": content})
    return converted


@functools.cache
def transport_errors() -> tuple[type[BaseException], ...]:
    """Retryable transport errors of the HTTP library huggingface_hub uses (`httpx2` from 2.x, `httpx` before)."""
    errors: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors += [module.TimeoutException, module.NetworkError, module.RemoteProtocolError]
    return tuple(errors)


def is_hf_host(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return any(host == suffix or host.endswith("." + suffix) for suffix in HF_HOST_SUFFIXES)


class EndpointBackend(ChatBackend):
    """A `ChatBackend` for any OpenAI-compatible `/v1/chat/completions` server.

    `base_url` is the server root or its `/v1` URL; `model` the name the server expects (vLLM: the served model
    name). `timeout` is per attempt; `max_retries` extra attempts follow timeouts, connection errors and 5xx, after
    `backoff` seconds doubled each retry (up to 25 % jitter, capped at `max_backoff`). `supports_images=False` makes
    image prompts fail before any request. `max_concurrency`: parallel requests in `chat_batch`. `use_hf_token`
    forces (True) or forbids (False) sending the resolved HF token when `api_key` is None (None: HF hosts only).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        *,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        supports_images: bool = True,
        max_concurrency: int = 8,
        use_hf_token: bool | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from huggingface_hub import InferenceClient

        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url, self.model, self.name, self.supports_images = base_url, model, model, supports_images
        self.timeout, self.max_retries, self.backoff, self.max_backoff = timeout, max_retries, backoff, max_backoff
        self.max_concurrency = max(1, max_concurrency)
        self._sleep = sleep
        if api_key is None:
            send_hf_token = is_hf_host(base_url) if use_hf_token is None else use_hf_token
            # None lets InferenceClient resolve HF_TOKEN / the stored login itself.
            api_key = None if send_hf_token else NO_KEY
        self._client = InferenceClient(base_url=base_url, api_key=api_key, timeout=timeout)

    def __repr__(self) -> str:  # never show the key
        return f"EndpointBackend(base_url={self.base_url!r}, model={self.model!r})"

    def _request(self, messages: list[dict[str, Any]], config: GenerationConfig) -> str:
        response = self._client.chat_completion(
            messages,
            model=self.model,
            max_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p if config.temperature > 0 else None,
            seed=config.seed,
            stop=list(config.stop) if config.stop else None,
        )
        if not response.choices:
            raise EndpointError(f"{self.model!r} at {self.base_url} returned no choices")
        return (response.choices[0].message.content or "").strip()

    @staticmethod
    def is_transient(error: BaseException) -> bool:
        """Timeouts, dropped connections and server errors (5xx) are worth retrying; anything else is not."""
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled

        if isinstance(error, OfflineModeIsEnabled):
            return False
        if isinstance(error, (InferenceTimeoutError, *transport_errors())):
            return True
        if isinstance(error, HfHubHTTPError):
            status = getattr(error.response, "status_code", None)
            return status is not None and status >= 500
        return False

    def chat(
        self, messages: Messages, images: list[Image.Image] | None = None, config: GenerationConfig | None = None
    ) -> str:
        from huggingface_hub.errors import OfflineModeIsEnabled

        config = config or GenerationConfig()
        check_images(messages, images, self.supports_images, self.name)
        payload = to_openai_messages(messages, images)
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._request(payload, config)
            except OfflineModeIsEnabled as error:
                raise EndpointError(
                    f"HF_HUB_OFFLINE=1 makes huggingface_hub refuse every HTTP request, including to {self.base_url}. "
                    "Unset HF_HUB_OFFLINE in the process that calls the endpoint (local model folders load without it)."
                ) from error
            except Exception as error:
                if not self.is_transient(error):
                    raise EndpointError(f"{self.model!r} at {self.base_url}: request failed: {error}") from error
                if attempt == attempts:
                    raise EndpointError(
                        f"{self.model!r} at {self.base_url}: request failed after {attempts} attempt(s) "
                        f"(timeout {self.timeout}s per attempt): {type(error).__name__}: {error}"
                    ) from error
                wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (1 + random.random() / 4)
                message = "%s: attempt %d/%d failed (%s); retrying in %.2fs"
                logger.warning(message, self.base_url, attempt, attempts, type(error).__name__, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")

    def generate_batch(self, conversations: list[Messages], images: ImageLists, config: GenerationConfig) -> list[str]:
        """Concurrent requests (the server batches them); replies come back in input order."""
        if len(conversations) <= 1 or self.max_concurrency == 1:
            return [self.chat(m, i, config) for m, i in zip(conversations, images, strict=True)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations))) as pool:
            return list(pool.map(lambda m, i: self.chat(m, i, config), conversations, images))


def api_key_from_env(variable: str | None) -> str | None:
    """The API key held in environment variable `variable` (never on a command line, where others can read it)."""
    if not variable:
        return None
    api_key = os.environ.get(variable)
    if not api_key:
        raise ValueError(f"--api_key_env {variable}: that environment variable is empty or unset")
    return api_key
