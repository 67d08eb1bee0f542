"""LLM judges: CTRS, working alliance and PANAS rubrics, one call per item at temperature 0.

An answer `parse_score` cannot read is asked again (bounded retries with backoff and a reminder of the format);
if it still cannot be read the item is a *missing value* (it lowers `percent_parseable`), never a zero. Raw answers
are kept. A cache keyed by judge model, rubric version, item and the exact prompt makes a rerun call no model.
Rubrics are versioned data files: `evaluation/rubrics/<name>_<version>.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dataset_builder.files import atomic_write

logger = logging.getLogger(__name__)

RUBRIC_DIR = Path(__file__).parent / "rubrics"
DEFAULT_RUBRIC_VERSION = "v1"

_NUMBER = r"[-+−]?\d+(?:\.\d+)?"
# "Score: 4", "**Rating**: 4/6", "score = 4", "Final score - 5"
_LABELLED = re.compile(
    rf"\b(?:final\s+)?(?:score|rating)\b[\s*_\"']*(?:is|of|[:=\-–])?[\s*_\"']*({_NUMBER})(?:\s*(?:/|out\s+of)\s*(\d+))?",
    re.IGNORECASE,
)
_ANY_NUMBER = re.compile(rf"(?<![\w.])({_NUMBER})(?:\s*(?:/|out\s+of)\s*(\d+))?(?![\w])", re.IGNORECASE)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_JSON_KEYS = ("score", "rating", "value")
# A sentence that ends in the number: "... I would give it a 4." / "Overall: 5/6"
_TRAILING = re.compile(rf"({_NUMBER})(?:\s*(?:/|out\s+of)\s*(\d+))?[\s.!)\]*_\"'`]*$", re.IGNORECASE)


def _to_score(number: str, denominator: str | None, low: int, high: int) -> int | None:
    """An integer in [low, high], or None (out of range, fractional, or on another scale like '7/10' on 0-6)."""
    value = float(number.replace("−", "-"))
    if denominator is not None and int(denominator) != high:
        return None  # "7/10" on a 0-6 scale: the judge used another scale; rescaling would be a guess
    if not value.is_integer():
        return None
    value = int(value)
    return value if low <= value <= high else None


def _unique(candidates: list[int | None]) -> int | None:
    """The one value all candidates agree on; None when there is none or several answers disagree (ambiguous)."""
    values = set(candidates)
    return values.pop() if len(values) == 1 else None


def _json_score(value: Any, low: int, high: int) -> int | None:
    """A JSON value as a score: a number, or a string holding only a number ("4", "4/6")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    number = _ANY_NUMBER.fullmatch(str(value).strip())
    return _to_score(number.group(1), number.group(2), low, high) if number else None


def parse_score(text: str, low: int, high: int) -> int | None:
    """Read one integer score in `[low, high]` from a judge's free text; `None` when it cannot be read.

    Accepted, in order: a JSON object with a `score`/`rating`/`value` key; labelled scores ("Score: 4",
    "**Rating:** 4/6"); a bare number; a sentence ending in the number ("... I would rate this a 4."); a text with
    exactly one number in it. A denominator must equal `high` ("4/6" on 0-6 reads 4; "7/10" reads nothing).
    Out-of-range, negative, fractional, empty, "N/A" and ambiguous answers (two different labelled scores, or
    several numbers with nothing to tell which is the score) give `None`, never a guess.
    """
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    text = (text or "").strip()
    if not text:
        return None

    json_scores = []
    for match in _JSON_OBJECT.finditer(text):
        try:
            data = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(data, dict):
            json_scores += [_json_score(v, low, high) for k, v in data.items() if str(k).lower() in _JSON_KEYS]
    if json_scores:
        return _unique(json_scores)

    labelled = [_to_score(m.group(1), m.group(2), low, high) for m in _LABELLED.finditer(text)]
    if labelled:
        return _unique(labelled)

    bare = _ANY_NUMBER.fullmatch(text.rstrip(".!"))
    if bare:
        return _to_score(bare.group(1), bare.group(2), low, high)

    numbers = list(_ANY_NUMBER.finditer(text))
    trailing = _TRAILING.search(text)
    if trailing and numbers and numbers[-1].start() == trailing.start():
        return _to_score(trailing.group(1), trailing.group(2), low, high)
    if len(numbers) == 1:
        return _to_score(numbers[0].group(1), numbers[0].group(2), low, high)
    return None


@dataclass(frozen=True)
class JudgeItem:
    """One judge question: `key` is unique within a session ("ctrs/understanding", "panas/after/upset")."""

    key: str
    rubric: str
    version: str
    group: str
    low: int
    high: int
    prompt: str
    retry_instruction: str


@dataclass
class Rubric:
    name: str
    version: str
    low: int
    high: int
    data: dict[str, Any]
    path: Path

    def items(self, profile_text: str, transcript_text: str) -> list[JudgeItem]:
        """The judge questions for one session."""
        if self.name == "panas":  # one question per affect, before and after the session (only "after" sees it)
            blocks = {"after": f"\nTranscript:\n{transcript_text}\n"}
            questions = [
                (
                    f"{moment}/{affect}",
                    polarity,
                    {**fields, "affect": affect, "transcript_block": blocks.get(moment, "")},
                )
                for moment, fields in self.data["moments"].items()
                for polarity in ("positive", "negative")
                for affect in self.data["affects"][polarity]
            ]
        else:
            questions = [
                (item_id, item["group"], {"description": item["description"], "anchors": item["anchors"]})
                for item_id, item in self.data["items"].items()
            ]
        fill = {"profile": profile_text, "transcript": transcript_text, "low": self.low, "high": self.high}
        retry = self.data["retry_instruction"].format(low=self.low, high=self.high)
        out = []
        for key, group, fields in questions:
            prompt = self.data["template"].format(**fill, **fields)
            out.append(
                JudgeItem(f"{self.name}/{key}", self.name, self.version, group, self.low, self.high, prompt, retry)
            )
        return out


def load_rubric(name: str, version: str = DEFAULT_RUBRIC_VERSION) -> Rubric:
    """A bundled rubric (`ctrs`, `alliance`, `panas`) by version, or a YAML file path given as `name`."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = RUBRIC_DIR / f"{name}_{version}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RUBRIC_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no rubric {name!r} version {version!r} ({path}); bundled: {known}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("name", "version", "low", "high", "template", "retry_instruction"):
        if key not in data:
            raise ValueError(f"rubric {path}: missing key {key!r}")
    if data["name"] == "panas" and not {"affects", "moments"} <= set(data):
        raise ValueError(f"rubric {path}: a PANAS rubric needs 'affects' and 'moments'")
    if data["name"] != "panas" and not data.get("items"):
        raise ValueError(f"rubric {path}: no items")
    return Rubric(data["name"], str(data["version"]), int(data["low"]), int(data["high"]), data, path)


def profile_text(profile: dict[str, Any]) -> str:
    """The client profile as the judge reads it."""
    client = profile.get("client", profile)
    lines = [
        f"Name: {client.get('name')}, {client.get('age')}, {client.get('gender')}, {client.get('occupation')}",
        f"Background: {client.get('personal_info')}",
        f"Reason for counselling: {client.get('reason_for_counseling')}",
        f"Distorted thought: {client.get('distorted_thought')}",
    ]
    if profile.get("resistance"):
        lines.append(f"Resistance style: {profile['resistance']}")
    return "\n".join(lines)


def transcript_text(turns: list[dict[str, Any]]) -> str:
    """The session as the judge reads it: the client's stage directions are kept (the judge, unlike the
    therapist, may know what the client's face showed), therapist turns are what the client was shown."""
    lines = []
    for turn in turns:
        speaker = "Therapist" if turn["speaker"] == "therapist" else "Client"
        direction = f"[{turn['stage_direction']}] " if turn.get("stage_direction") else ""
        lines.append(f"{speaker}: {direction}{turn.get('statement') or ''}".rstrip())
    return "\n".join(lines)


class JudgeCache:
    """One JSON file per answer under `root`, written atomically; keyed by judge model, rubric version, item and
    the prompt (so a changed transcript, profile or rubric wording is a new key)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def key(judge_model: str, item: JudgeItem) -> str:
        payload = json.dumps([judge_model, item.rubric, item.version, item.key, item.prompt], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write(self._path(key), json.dumps(value, ensure_ascii=False))


@dataclass
class Judge:
    """Rates sessions with rubrics through any ChatBackend (not a therapist under test), one call per item at
    temperature 0. `cache_dir=None` disables caching; `max_retries` extra asks follow an unreadable answer or a
    failed call, after `backoff` seconds, doubled each round."""

    backend: Any
    rubrics: list[Rubric]
    cache_dir: str | os.PathLike | None = None
    max_retries: int = 2
    backoff: float = 1.0
    max_new_tokens: int = 256
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.cache = JudgeCache(self.cache_dir) if self.cache_dir is not None else None

    def judge_session(self, record: dict[str, Any]) -> dict[str, Any]:
        """Scores of every rubric item for one session record (see evaluation/README.md for the layout)."""
        from inference.backends.base import GenerationConfig, text_message

        profile, transcript = profile_text(record["profile"]), transcript_text(record["turns"])
        items = [item for rubric in self.rubrics for item in rubric.items(profile, transcript)]
        results: dict[str, dict[str, Any]] = {}
        pending = []
        for item in items:
            key = JudgeCache.key(self.backend.name, item)
            cached = self.cache.get(key) if self.cache else None
            if cached is not None:
                results[item.key] = {**cached, "cached": True}
            else:
                pending.append((item, key, []))
        config = GenerationConfig(temperature=0.0, top_p=1.0, max_new_tokens=self.max_new_tokens)
        errors: dict[str, str] = {}
        for round_index in range(self.max_retries + 1):
            if not pending:
                break
            if round_index and self.backoff > 0:
                self.sleep(self.backoff * 2 ** (round_index - 1))
            conversations = []
            for item, _, raws in pending:
                messages = [text_message("user", item.prompt)]
                if raws and raws[-1] is not None:  # show the unreadable answer and remind the format
                    messages += [text_message("assistant", raws[-1]), text_message("user", item.retry_instruction)]
                conversations.append(messages)
            try:
                answers = self.backend.chat_batch(conversations, [[] for _ in conversations], config)
            except Exception as error:  # a failed call is retried like an unreadable answer
                logger.warning("judge %s: call failed (round %d): %s", self.backend.name, round_index + 1, error)
                for item, _, raws in pending:
                    raws.append(None)
                    errors[item.key] = f"{type(error).__name__}: {error}"
                continue
            still = []
            for (item, key, raws), answer in zip(pending, answers, strict=True):
                raws.append(answer)
                score = parse_score(answer, item.low, item.high)
                if score is None:
                    still.append((item, key, raws))
                    continue
                errors.pop(item.key, None)
                results[item.key] = self._settle(item, key, score, raws)
            pending = still
        for item, key, raws in pending:
            results[item.key] = self._settle(item, key, None, raws, errors.get(item.key))
        return {
            "judge_model": self.backend.name,
            "rubrics": [f"{rubric.name}/{rubric.version}" for rubric in self.rubrics],
            "items": {item.key: results[item.key] for item in items},
        }

    def _settle(self, item: JudgeItem, key: str, score: int | None, raws: list[str | None], error: str | None = None):
        """The item's result, cached unless the call failed (unreadable answers are cached; failed calls are not)."""
        result = {
            "score": score,
            "rubric": f"{item.rubric}/{item.version}",
            "group": item.group,
            "low": item.low,
            "high": item.high,
            "attempts": len(raws),
            "raw": list(raws),
            "error": error,
        }
        if self.cache and error is None:
            self.cache.put(key, result)
        return {**result, "cached": False}
