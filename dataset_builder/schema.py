"""The Mirror schema as `datasets.Features` (ARCHITECTURE §3), one definition per config.

Labels (resistance, CBT technique) are stored as strings and validated against the allowed values, so rows stay
readable and filterable (`ds.filter(lambda r: r["resistance"] == "emotional")`) without a ClassLabel lookup.
"""

from __future__ import annotations

from datasets import Features, Image, List, Value

from inference.prompts import CBT_TECHNIQUES, VARIANTS
from inference.prompts import SFT_TASKS as SFT_TASKS  # re-exported: the task names are defined once, there

RESISTANCE_STYLES = ("none", "emotional", "cognitive", "behavioral")
SPEAKERS = ("therapist", "client")
TECHNIQUES = CBT_TECHNIQUES
SFT_VARIANTS = VARIANTS

# Field order here is the field order of the raw JSON record; validation uses these key sets.
SOURCE_FIELDS = {
    "dataset": Value("string"),
    "row": Value("string"),
    "generator": Value("string"),
    "generator_revision": Value("string"),
    "image_backend": Value("string"),
    "seed": Value("int64"),
    "prompt_version": Value("string"),
}
CLIENT_FIELDS = {
    "name": Value("string"),
    "age": Value("int32"),
    "gender": Value("string"),
    "occupation": Value("string"),
    "education": Value("string"),
    "marital_status": Value("string"),
    "family": Value("string"),
    "personal_info": Value("string"),
    "reason_for_counseling": Value("string"),
    "distorted_thought": Value("string"),
    "thinking_traps": List(Value("string")),
}
TURN_FIELDS = {
    "speaker": Value("string"),
    "statement": Value("string"),
    "stage_direction": Value("string"),
    "image": Image(),
    "expression": Value("string"),
    "contrast_expression": Value("string"),
}
IDENTITY_FIELDS = {"key": Value("string"), "image": Image()}
QUALITY_FEATURES = {
    "scores": List({"filter": Value("string"), "score": Value("float32")}),
    "flags": List(Value("string")),
}

PROFILE_FEATURES = Features(
    {
        "id": Value("string"),
        "source": SOURCE_FIELDS,
        "client": CLIENT_FIELDS,
        "resistance": Value("string"),
        "cbt_technique": Value("string"),
        "cbt_plan": Value("string"),
        "identity": IDENTITY_FIELDS,
    }
)
SESSION_FEATURES = Features({**PROFILE_FEATURES, "turns": List(TURN_FIELDS), "quality": QUALITY_FEATURES})

TEXT_PART = {"type": Value("string"), "text": Value("string")}
SFT_FEATURES = Features(
    {
        "id": Value("string"),
        "session_id": Value("string"),
        "variant": Value("string"),
        "task": Value("string"),
        "resistance": Value("string"),
        "turn_index": Value("int32"),
        "messages": List({"role": Value("string"), "content": List(TEXT_PART)}),
        "images": List(Image()),
    }
)

# One row per examined record, kept or dropped: an audit log of every decision (and never an empty split, which
# `datasets` cannot load). Dropped records carry the raw JSON so users can inspect exactly what was removed.
FILTERED_FEATURES = Features(
    {
        "id": Value("string"),
        "kind": Value("string"),  # "session" or "profile"
        "kept": Value("bool"),
        "source_file": Value("string"),
        "line": Value("int32"),
        "stage": Value("string"),  # "validation" (bad input), "filter" (quality filter) or "kept"
        "field": Value("string"),
        "reason": Value("string"),
        "scores": QUALITY_FEATURES["scores"],
        "record": Value("string"),
    }
)

RAW_SESSION_KEYS = tuple(SESSION_FEATURES)
RAW_PROFILE_KEYS = tuple(PROFILE_FEATURES)

CONFIG_FEATURES = {
    "sessions": SESSION_FEATURES,
    "sft": SFT_FEATURES,
    "profiles": PROFILE_FEATURES,
    "filtered": FILTERED_FEATURES,
}
CONFIG_SPLITS = {"sessions": "train", "sft": "train", "profiles": "test", "filtered": "train"}
