"""The virtual client: an LLM (any ChatBackend) playing a test profile with its resistance style (ARCHITECTURE §6).

Every output is validated; an invalid one is asked again with a note saying what was wrong, and a client that
keeps failing raises `ClientFailure` (a failed session with its reason, never an endless loop). The prompt is a
versioned data file: `evaluation/prompts/client_<version>.yaml`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from inference.prompts import strip_stage_directions

PROMPT_DIR = Path(__file__).parent / "prompts"
END_TOKEN = "[/END]"
PROFILE_FIELDS = ("age", "gender", "occupation", "personal_info", "reason_for_counseling", "distorted_thought")

_LEADING_DIRECTION = re.compile(r"^\s*\[([^\]]*)\]\s*")
_ROLE_PREFIX = re.compile(r"^\s*[*_]*\s*(client|patient|therapist|counsell?or|assistant|user)\s*[*_]*\s*:", re.I)
_THERAPIST_LINE = re.compile(r"(^|\n)\s*[*_]*\s*(therapist|counsell?or|t)\s*[*_]*\s*:", re.I)
_CLIENT_LINE = re.compile(r"\n\s*[*_]*\s*(client|patient)\s*[*_]*\s*:", re.I)
_WORDS = re.compile(r"[a-z0-9']+")


@dataclass
class ClientConfig:
    """Settings of the virtual client."""

    prompt_version: str = field(default="v1", metadata={"help": "Client prompt file (evaluation/prompts/client_*)."})
    max_turns: int = field(
        default=20, metadata={"help": "Hard cap on utterances per session (client and therapist together)."}
    )
    min_exchanges: int = field(
        default=2, metadata={"help": "Client-therapist exchanges before the client may end with [/END]."}
    )
    max_retries: int = field(
        default=3, metadata={"help": "Extra asks after an invalid client output before the session is failed."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Client sampling temperature."})
    top_p: float = field(default=0.9, metadata={"help": "Client nucleus sampling mass."})
    max_new_tokens: int = field(default=128, metadata={"help": "Client reply budget in tokens."})

    def __post_init__(self) -> None:
        if self.max_turns < 2:
            raise ValueError(f"client.max_turns must be at least 2, got {self.max_turns}")
        if self.max_retries < 0:
            raise ValueError("client.max_retries must be >= 0")


@functools.cache
def load_client_prompt(version: str = "v1") -> dict[str, Any]:
    path = PROMPT_DIR / f"client_{version}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("client_") for p in PROMPT_DIR.glob("client_*.yaml"))
        raise ValueError(f"Unknown client prompt version {version!r}; available: {known}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@dataclass
class ClientTurn:
    """One validated client utterance."""

    stage_direction: str
    statement: str  # verbal text only (what a therapist may read)
    end: bool  # the client ended the session with [/END]
    raw: str
    attempts: list[dict[str, Any]]  # every try: {"raw", "error"}


class ClientOutputError(ValueError):
    """One client output broke the format (the message says how)."""


class ClientFailure(RuntimeError):
    """The client produced no valid output within the retry budget."""

    def __init__(self, reason: str, attempts: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


def _norm(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def validate_client_output(
    raw: str, *, first: bool, may_end: bool, name: str | None = None, previous: list[str] = ()
) -> ClientTurn:
    """Check one client output and split it; raises ClientOutputError naming the problem.

    `previous`: earlier utterances (therapist and client) that the reply must not merely echo.
    """
    text = (raw or "").strip()
    if not text:
        raise ClientOutputError("empty output")
    if _ROLE_PREFIX.match(text) or (name and re.match(rf"^\s*{re.escape(name.split()[0])}\s*:", text, re.I)):
        raise ClientOutputError("starts with a role prefix")
    if _THERAPIST_LINE.search(text):
        raise ClientOutputError("writes the therapist's part")
    if _CLIENT_LINE.search(text):
        raise ClientOutputError("writes more than one turn")
    end = END_TOKEN in text
    text = text.replace(END_TOKEN, " ").strip()
    match = _LEADING_DIRECTION.match(text)
    if not match or not match.group(1).strip():
        raise ClientOutputError("missing stage direction")
    direction = match.group(1).strip()
    statement = strip_stage_directions(text[match.end() :])
    if end and not may_end:
        raise ClientOutputError("ends the session before the minimum number of exchanges")
    if first and statement:
        raise ClientOutputError("first reply must be non-verbal only")
    if statement and any(_norm(statement) == _norm(other) for other in previous if other and _norm(other)):
        raise ClientOutputError("echoes an earlier turn")
    return ClientTurn(direction, statement, end, raw, [])


class VirtualClient:
    """Plays one profile against a therapist, through any ChatBackend: the client model is the assistant, the
    therapist's replies are user messages."""

    def __init__(self, backend: Any, config: ClientConfig | None = None) -> None:
        self.backend = backend
        self.config = config or ClientConfig()
        self.prompt = load_client_prompt(self.config.prompt_version)

    def system_prompt(self, profile: dict[str, Any]) -> str:
        client = profile["client"]
        resistance = profile.get("resistance") or "none"
        if resistance not in self.prompt["resistance_descriptions"]:
            raise ValueError(f"profile {profile.get('id')!r}: unknown resistance style {resistance!r}")
        return self.prompt["system"].format(
            **{key: client.get(key) or "" for key in PROFILE_FIELDS},
            name=client.get("name") or "the client",
            thinking_traps=", ".join(client.get("thinking_traps") or []) or "none named",
            resistance=resistance,
            resistance_description=self.prompt["resistance_descriptions"][resistance],
            max_turns=self.config.max_turns,
            end_token=END_TOKEN,
        )

    def messages(self, profile: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The client model's conversation for its next reply; stage directions of its own turns are kept."""
        from inference.backends.base import text_message as text

        messages = [text("system", self.system_prompt(profile)), text("user", self.prompt["first_turn_instruction"])]
        for turn in history:
            if turn["speaker"] == "client":
                direction = f"[{turn['stage_direction']}] " if turn.get("stage_direction") else ""
                messages.append(text("assistant", (direction + (turn.get("statement") or "")).strip()))
            else:
                messages.append(text("user", turn.get("statement") or ""))
        return messages

    def reply(self, profile: dict[str, Any], history: list[dict[str, Any]], seed: int | None = None) -> ClientTurn:
        """The next validated client turn; raises ClientFailure after `max_retries` invalid outputs."""
        from inference.backends.base import GenerationConfig, text_message

        first = not any(turn["speaker"] == "client" for turn in history)
        may_end = sum(turn["speaker"] == "therapist" for turn in history) >= self.config.min_exchanges
        previous = [turn.get("statement") or "" for turn in history[-2:]]
        base = self.messages(profile, history)
        c = self.config
        sampling = GenerationConfig(temperature=c.temperature, top_p=c.top_p, max_new_tokens=c.max_new_tokens)
        attempts: list[dict[str, Any]] = []
        for attempt in range(self.config.max_retries + 1):
            messages = list(base)
            if attempts:
                note = self.prompt["first_turn_note"] if first else ""
                retry = self.prompt["retry_instruction"].format(problem=attempts[-1]["error"], first_turn_note=note)
                messages += [text_message("assistant", attempts[-1]["raw"] or ""), text_message("user", retry.strip())]
            config = replace(sampling, seed=None if seed is None else seed + attempt)
            # Backend errors propagate: an unreachable model is not a client failure (the runner records the
            # session as an error and a resume runs it again); endpoints retry transient failures themselves.
            raw = self.backend.chat(messages, None, config)
            try:
                turn = validate_client_output(
                    raw, first=first, may_end=may_end, name=profile["client"].get("name"), previous=previous
                )
            except ClientOutputError as error:
                attempts.append({"raw": raw, "error": str(error)})
                continue
            attempts.append({"raw": raw, "error": None})
            turn.attempts = attempts
            return turn
        reasons = "; ".join(a["error"] for a in attempts)
        raise ClientFailure(f"client output invalid after {len(attempts)} attempt(s): {reasons}", attempts)
