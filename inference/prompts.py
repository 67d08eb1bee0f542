"""The therapist prompt format, written once.

`dataset_builder` renders the `sft` rows of the dataset with these functions and `inference` prompts a therapist
with them, so a model is always asked at inference time exactly what it was trained on. Messages use TRL's
structured multimodal format: `{"role": ..., "content": [{"type": "image"}, {"type": "text", "text": ...}]}`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml

from .backends.base import text_message

PROMPT_DIR = Path(__file__).parent / "prompts"
DEFAULT_PROMPT_VERSION = "v1"

# Therapist prompt variants. Vision variants show the model the client's face; `text` and `cactus_plan` are the
# text-only baselines (`cactus_plan`: a CACTUS-style therapist that plans first, the `text` prompt plus the plan).
VARIANTS = ("base", "planning", "ec_planning", "text", "cactus_plan")
VISION_VARIANTS = ("base", "planning", "ec_planning")
PLAN_VARIANTS = ("planning", "ec_planning", "cactus_plan")
# Tasks of the `sft` rows: `response` (the therapist's next statement), `emotion_caption` (ec_planning: the client's
# face in words) and `plan` (planning variants: the session's CBT technique and plan from the client profile).
SFT_TASKS = ("response", "emotion_caption", "plan")
# The record `mirror train` writes into a model folder (resolved configuration, variant); inference reads the
# variant from it. Defined here because `inference` imports no other project package.
TRAINING_RECORD_NAME = "mirror_training.json"
# How the text blocks of one message are joined when a text-only chat template needs a plain string content.
TEXT_BLOCK_SEPARATOR = "\n"

CBT_TECHNIQUES = (
    "Efficiency Evaluation",
    "Pie Chart Technique",
    "Alternative Perspective",
    "Decatastrophizing",
    "Pros and Cons Analysis",
    "Evidence-Based Questioning",
    "Reality Testing",
    "Continuum Technique",
    "Changing Rules to Wishes",
    "Behavior Experiment",
    "Problem-Solving Skills Training",
    "Systematic Exposure",
)

# A stage direction is any bracketed span; a statement may carry several ("[sighs] fine. [looks away]").
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")
_SPACES = re.compile(r"\s+")


@functools.cache
def load_prompt(version: str = DEFAULT_PROMPT_VERSION) -> dict[str, Any]:
    """Load a versioned prompt file (`inference/prompts/therapist_<version>.yaml`)."""
    path = PROMPT_DIR / f"therapist_{version}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("therapist_") for p in PROMPT_DIR.glob("therapist_*.yaml"))
        raise ValueError(f"Unknown prompt version {version!r}; available: {known}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def strip_stage_directions(text: str | None) -> str:
    """Remove bracketed stage directions: the therapist only ever sees verbal content."""
    if not text:
        return ""
    return _SPACES.sub(" ", _STAGE_DIRECTION.sub(" ", text)).strip()


def join_text_blocks(content: str | list[dict[str, Any]], *, strict: bool = False) -> str | list[dict[str, Any]]:
    """The one text flattening of a message content, used by training (text variants) and every backend.

    A string stays as is; a list of only text blocks becomes their texts joined with `TEXT_BLOCK_SEPARATOR`. A list
    with other blocks (an image) is returned unchanged, or raises `ValueError` with `strict=True`.
    """
    if isinstance(content, str):
        return content
    if any(block.get("type") != "text" for block in content):
        if strict:
            kinds = sorted({str(block.get("type")) for block in content})
            raise ValueError(f"Expected text-only content, found block types {kinds}")
        return content
    return TEXT_BLOCK_SEPARATOR.join(block.get("text") or "" for block in content)


def flatten_text_messages(messages: list[dict[str, Any]], *, strict: bool = False) -> list[dict[str, Any]]:
    """Messages with every text-only content turned into a plain string (`join_text_blocks`), the form stock
    text-LM chat templates and OpenAI-compatible text servers expect; other contents are left as they are."""
    return [
        {**message, "content": join_text_blocks(message.get("content") or "", strict=strict)} for message in messages
    ]


def format_history(history: list[dict[str, Any]], version: str = DEFAULT_PROMPT_VERSION) -> str:
    """Render the verbal history, one `Speaker: statement` line per turn, stage directions removed."""
    prompt = load_prompt(version)
    if not history:
        return prompt["history_empty"]
    lines = []
    for turn in history:
        speaker = turn["speaker"]
        if speaker not in prompt["speaker_names"]:
            raise ValueError(f"Unknown speaker {speaker!r}; expected one of {sorted(prompt['speaker_names'])}")
        statement = strip_stage_directions(turn.get("statement")) or prompt["silent_statement"]
        lines.append(f"{prompt['speaker_names'][speaker]}: {statement}")
    return "\n".join(lines)


def _profile_fields(client: dict[str, Any]) -> dict[str, str]:
    """The `personal_info` and `reason_for_counseling` fields of the prompts that show the client's profile."""
    facts = [str(client[key]) for key in ("name", "age", "gender", "occupation") if client.get(key) not in (None, "")]
    personal = strip_stage_directions(client.get("personal_info"))
    return {
        "personal_info": ", ".join(facts) + (". " + personal if personal else ""),
        "reason_for_counseling": strip_stage_directions(client.get("reason_for_counseling")),
    }


def therapist_prompt_text(
    client: dict[str, Any],
    history: list[dict[str, Any]],
    variant: str = "base",
    *,
    cbt_technique: str | None = None,
    cbt_plan: str | None = None,
    emotion: str | None = None,
    version: str = DEFAULT_PROMPT_VERSION,
) -> str:
    """The text of the therapist's user turn for one reply.

    `variant` is one of `VARIANTS`. The plan variants (`planning`, `ec_planning`, `cactus_plan`) need the session's
    technique and plan; `ec_planning` also needs `emotion`, a caption of the client's current face (the model's own
    at inference). `cactus_plan` is the `text` prompt with the plan section: no image, the text instruction.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown therapist variant {variant!r}; expected one of {list(VARIANTS)}")
    prompt = load_prompt(version)
    parts = []
    if variant in VISION_VARIANTS:
        parts.append(prompt["image_preamble"])
    parts.append(prompt["profile"].format(**_profile_fields(client)))
    if variant in PLAN_VARIANTS:
        if not cbt_technique or not cbt_plan:
            raise ValueError(f"Variant {variant!r} needs both cbt_technique and cbt_plan")
        parts.append(prompt["plan"].format(cbt_technique=cbt_technique, cbt_plan=cbt_plan))
    if variant == "ec_planning":
        if not emotion:
            raise ValueError("Variant 'ec_planning' needs an emotion caption of the client's current image")
        parts.append(prompt["emotion"].format(emotion=strip_stage_directions(emotion.strip("[] "))))
    parts.append(prompt["history_header"] + "\n" + format_history(history, version))
    parts.append(prompt["instruction_vision" if variant in VISION_VARIANTS else "instruction_text"])
    return "\n\n".join(part.strip() for part in parts)


def therapist_messages(
    client: dict[str, Any],
    history: list[dict[str, Any]],
    variant: str = "base",
    *,
    reply: str | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Chat messages for one therapist reply (`options`: those of `therapist_prompt_text`); with `reply`, the
    assistant turn (the SFT target) is appended. Vision variants put one image placeholder before the text: the
    client's face at the latest client turn."""
    text = therapist_prompt_text(client, history, variant, **options)
    image = [{"type": "image", "text": None}] if variant in VISION_VARIANTS else []
    messages = [{"role": "user", "content": [*image, {"type": "text", "text": text}]}]
    if reply is not None:
        messages.append(text_message("assistant", strip_stage_directions(reply)))
    return messages


def emotion_caption_messages(
    caption: str | None = None, version: str = DEFAULT_PROMPT_VERSION
) -> list[dict[str, Any]]:
    """Messages asking for a caption of the client's face (the `ec_planning` recognition task)."""
    instruction = {"type": "text", "text": load_prompt(version)["emotion_caption_instruction"]}
    messages = [{"role": "user", "content": [{"type": "image", "text": None}, instruction]}]
    if caption is not None:
        messages.append(text_message("assistant", caption.strip("[] ")))
    return messages


def plan_messages(
    client: dict[str, Any],
    *,
    cbt_technique: str | None = None,
    cbt_plan: str | None = None,
    version: str = DEFAULT_PROMPT_VERSION,
) -> list[dict[str, Any]]:
    """The once-per-session request for the session's CBT technique and plan (text only, also for VLMs: the plan
    depends on the profile alone); with `cbt_technique` and `cbt_plan`, the answer in the format the therapist
    parses (`Technique: ...` / `Plan: ...`) is appended (the `plan` task rows of the `sft` config)."""
    prompt = load_prompt(version)
    request = prompt["plan_request"].format(**_profile_fields(client), techniques=", ".join(CBT_TECHNIQUES))
    messages = [text_message("user", request)]
    if cbt_technique is None and cbt_plan is None:
        return messages
    technique, plan = cbt_technique or "", strip_stage_directions(cbt_plan)
    if technique not in CBT_TECHNIQUES:
        raise ValueError(f"Unknown CBT technique {technique!r}; expected one of {list(CBT_TECHNIQUES)}")
    if not plan:
        raise ValueError("A plan answer needs a non-empty cbt_plan")
    answer = prompt["plan_answer"].format(cbt_technique=technique, cbt_plan=plan)
    return [*messages, text_message("assistant", answer)]
