"""Scripted, deterministic stand-ins for the client and judge models, in process or behind real HTTP.

These are *not* models: they make the evaluation runnable offline (smoke runs, `mirror quickstart`, tests,
`bench/evaluate.py`) and their scores mean nothing. `openai_app(responders)` serves them over the OpenAI chat API
(`dataset_builder.tiny.serve_app(app)` runs it on 127.0.0.1); the request's `model` picks the responder.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's `Request` annotation at runtime.
import functools
import hashlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dataset_builder.tiny import make_chat_app
from inference.backends.base import ChatBackend

PROMPT_DIR = Path(__file__).parent / "prompts"
Responder = Callable[[list[dict[str, Any]]], str]

_STYLE = re.compile(r"Resistance style:\s*(\w+)")
_SCALE = re.compile(r"Scale\s+(-?\d+)\s*-\s*(-?\d+)")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(block.get("text") or "" for block in content if block.get("type") == "text")
    return content or ""


@functools.cache
def scripted_client_lines(version: str = "v1") -> dict[str, list[str]]:
    return yaml.safe_load((PROMPT_DIR / f"scripted_client_{version}.yaml").read_text(encoding="utf-8"))["lines"]


def client_responder(messages: list[dict[str, Any]]) -> str:
    """The next scripted client line: the number of client replies so far picks it (a retry repeats it)."""
    style_match = _STYLE.search(_text(messages[0])) if messages else None
    lines = scripted_client_lines()
    lines = lines.get(style_match.group(1) if style_match else "none", lines["none"])
    # A retry appends (assistant: bad output, user: note); count client turns before it.
    turns = sum(m["role"] == "assistant" for m in messages)
    if len(messages) >= 2 and messages[-1]["role"] == "user" and "could not be used" in _text(messages[-1]):
        turns -= 1
    return lines[min(turns, len(lines) - 1)]


def judge_responder(messages: list[dict[str, Any]]) -> str:
    """'Score: N', N a hash of the first prompt on the scale it names (default 0-6)."""
    prompt = _text(messages[0])
    scale = _SCALE.search(prompt)
    low, high = (int(scale.group(1)), int(scale.group(2))) if scale else (0, 6)
    digest = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16)
    return f"Score: {low + digest % (high - low + 1)}"


def therapist_responder(messages: list[dict[str, Any]]) -> str:
    return "That sounds hard. What went through your mind when that happened?"


RESPONDERS: dict[str, Responder] = {
    "client": client_responder,
    "judge": judge_responder,
    "therapist": therapist_responder,
}


class ScriptedBackend(ChatBackend):
    """A text-only ChatBackend answering from a responder, each call after `latency` seconds."""

    supports_images = False

    def __init__(self, role: str, latency: float = 0.0, responder: Responder | None = None) -> None:
        if responder is None and role not in RESPONDERS:
            raise ValueError(f"scripted model {role!r}: expected one of {sorted(RESPONDERS)}")
        self.name = f"scripted-{role}"
        self.responder = responder or RESPONDERS[role]
        self.latency = latency
        self.calls = 0
        self._lock = threading.Lock()

    def generate_batch(self, conversations, images, config) -> list[str]:
        replies = []
        for messages in conversations:
            with self._lock:
                self.calls += 1
            time.sleep(self.latency)
            replies.append(self.responder(messages))
        return replies


def openai_app(responders: dict[str, Responder], latency: float = 0.0, calls: list | None = None):
    """A FastAPI app speaking OpenAI's chat-completions API (`dataset_builder.tiny.make_chat_app`); `model` picks
    the responder. Each request sleeps `latency` seconds without blocking others (async), so the server is never
    the bottleneck. `calls` (a list) receives every request body, for tests."""
    from fastapi import HTTPException

    def respond(body: dict[str, Any]) -> str:
        if calls is not None:
            calls.append(body)
        responder = responders.get(body.get("model"))
        if responder is None:
            raise HTTPException(404, f"unknown model {body.get('model')!r}; serving {sorted(responders)}")
        return responder(body.get("messages") or [])

    app = make_chat_app(respond, latency)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in responders]}

    return app
