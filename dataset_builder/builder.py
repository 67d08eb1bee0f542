"""`MirrorBuilder`: a `datasets.GeneratorBasedBuilder` that reads raw records and yields the Mirror configs.

`datasets` >= 4 refuses loading scripts, so `dataset_builder.build` instantiates it directly
(`MirrorBuilder(config_name=..., raw_dir=...)`) and exports its output as a parquet folder for the Hub. The raw
folder holds `sessions*.jsonl` and `profiles*.jsonl`; image paths in records are relative to it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets

from inference.prompts import (
    DEFAULT_PROMPT_VERSION,
    PLAN_VARIANTS,
    VISION_VARIANTS,
    emotion_caption_messages,
    plan_messages,
    therapist_messages,
)

from .cues import cue_warning_flags
from .filters import apply_filters
from .schema import CONFIG_FEATURES, CONFIG_SPLITS, SFT_VARIANTS
from .validation import ImagePolicy, RecordError, iter_jsonl, validate_profile, validate_session

logger = logging.getLogger(__name__)

ON_BAD_RECORD = ("raise", "skip")


@dataclass
class MirrorConfig(datasets.BuilderConfig):
    """One Mirror config (`sessions`, `sft`, `profiles`, `filtered`) plus how to read the raw records."""

    raw_dir: str | None = None
    on_bad_record: str = "raise"
    require_images: bool = True
    max_pixels: int = ImagePolicy.max_pixels
    apply_filters: bool = True
    sft_variants: tuple[str, ...] = SFT_VARIANTS
    prompt_version: str = DEFAULT_PROMPT_VERSION

    def __post_init__(self):
        super().__post_init__()
        if self.on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"on_bad_record must be one of {list(ON_BAD_RECORD)}, got {self.on_bad_record!r}")
        unknown = [v for v in self.sft_variants if v not in SFT_VARIANTS]
        if unknown:
            raise ValueError(f"Unknown sft variants {unknown}; allowed values: {list(SFT_VARIANTS)}")


def raw_files(raw_dir: Path, kind: str) -> list[Path]:
    """The raw JSONL files of one kind (`sessions` or `profiles`), in a stable order."""
    return sorted(raw_dir.glob(f"{kind}*.jsonl"))


class MirrorBuilder(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = MirrorConfig
    BUILDER_CONFIGS = [MirrorConfig(name=name) for name in CONFIG_FEATURES]  # noqa: RUF012 (datasets API)
    DEFAULT_CONFIG_NAME = "sessions"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="Mirror: synthetic multimodal first CBT sessions with client resistance (research use only).",
            features=CONFIG_FEATURES[self.config.name],
            license="cc-by-4.0",
        )

    def _split_generators(self, dl_manager):
        if not self.config.raw_dir:
            raise ValueError("MirrorBuilder needs raw_dir=<folder with sessions*.jsonl / profiles*.jsonl>")
        raw_dir = Path(self.config.raw_dir)
        if not raw_dir.is_dir():
            raise FileNotFoundError(f"Raw record folder not found: {raw_dir}")
        return [datasets.SplitGenerator(name=CONFIG_SPLITS[self.config.name], gen_kwargs={"raw_dir": raw_dir})]

    def _generate_examples(self, raw_dir: Path):
        if self.config.name in ("sessions", "profiles"):
            for record, failure in self._iter_records(raw_dir, self.config.name, encode=True):
                if failure is None:
                    record.pop("_origin")
                    yield record["id"], record
        elif self.config.name == "filtered":
            # Validation without re-encoding images: the same decisions as `sessions`, at a fraction of the cost.
            for kind in ("session", "profile"):
                for index, (record, failure) in enumerate(self._iter_records(raw_dir, f"{kind}s", encode=False)):
                    yield f"{kind}-{index}", failure if failure is not None else _kept_row(record, kind)
        elif self.config.name == "sft":
            for record, failure in self._iter_records(raw_dir, "sessions", encode=True):
                if failure is None:
                    for row in sft_rows(record, self.config.sft_variants, self.config.prompt_version):
                        yield row["id"], row
        else:  # pragma: no cover - BUILDER_CONFIGS lists every name
            raise ValueError(f"Unknown config {self.config.name!r}")

    def _iter_records(self, raw_dir: Path, kind: str, encode: bool) -> Iterator[tuple[dict | None, dict | None]]:
        """Yield `(record, None)` for good records of `kind` and `(None, filtered_row)` for dropped ones."""
        policy = ImagePolicy(require_images=self.config.require_images, max_pixels=self.config.max_pixels)
        validate = validate_session if kind == "sessions" else validate_profile
        seen: dict[str, int] = {}
        for path in raw_files(raw_dir, kind):
            for line, raw in iter_jsonl(path, name=path.relative_to(raw_dir).as_posix()):
                try:
                    if isinstance(raw, RecordError):
                        raise raw
                    record = validate(raw, raw_dir, policy, encode=encode)
                    if record["id"] in seen:
                        problem = f"duplicate id (first seen at line {seen[record['id']]})"
                        raise RecordError(record["id"], "id", problem)
                    seen[record["id"]] = line
                except RecordError as err:
                    err.source, err.line = err.source or str(path.relative_to(raw_dir)), err.line or line
                    if self.config.on_bad_record == "raise":
                        raise
                    logger.warning("Skipping bad record: %s", err)
                    yield None, _filtered_row(err.raw_text if isinstance(raw, RecordError) else raw, err.record_id,
                                              kind, path.name, line, "validation", err.field, err.problem)
                    continue
                if kind == "sessions" and self.config.apply_filters:
                    results, failed = apply_filters(record)
                    scores = {s["filter"]: s["score"] for s in record["quality"]["scores"]}
                    scores.update({result.name: result.score for result in results})
                    record["quality"]["scores"] = [{"filter": k, "score": float(v)} for k, v in scores.items()]
                    # Warning level (cues.py): the session stays; each finding is listed in its quality.flags.
                    record["quality"]["flags"] += cue_warning_flags(record)
                    if failed:
                        reason = "; ".join(f"{r.name}: {r.reason}" for r in failed)
                        yield None, _filtered_row(raw, record["id"], kind, path.name, line, "filter", failed[0].name,
                                                  reason, record["quality"]["scores"])
                        continue
                record["_origin"] = (path.name, line)
                yield record, None


def _filtered_row(raw, record_id, kind, source_file, line, stage, field, reason, scores=()) -> dict:
    # ASCII JSON of the record, or the line's own text when it was no JSON object: what was dropped stays auditable.
    text = json.dumps(raw, ensure_ascii=True, sort_keys=True) if isinstance(raw, dict) else raw
    return {"id": record_id, "kind": kind.rstrip("s"), "kept": False, "source_file": source_file, "line": line,
            "stage": stage, "field": field, "reason": reason, "scores": list(scores), "record": text}


def _kept_row(record: dict, kind: str) -> dict:
    source_file, line = record["_origin"]
    return {"id": record["id"], "kind": kind, "kept": True, "source_file": source_file, "line": line, "stage": "kept",
            "field": None, "reason": None, "scores": record.get("quality", {}).get("scores", []), "record": None}


def sft_rows(record: dict, variants=SFT_VARIANTS, prompt_version: str = DEFAULT_PROMPT_VERSION) -> Iterator[dict]:
    """One SFT row per therapist turn and variant, plus emotion-caption rows for `ec_planning` and one `plan` row
    per session and plan variant.

    The image of a vision row is the client's face at the latest client turn before the therapist speaks; a
    therapist turn with no client turn before it has no face to read and gets rows of the text variants only. A
    `plan` row (profile in, technique + plan out) is text only for every variant, as the therapist asks for the plan
    at session start, before any face is seen; it teaches a fine-tuned planning model to write its own plan.
    """
    turns = record["turns"]
    plan = {"cbt_technique": record["cbt_technique"], "cbt_plan": record["cbt_plan"]}

    def row(variant: str, task: str, index: int, messages: list, images: list) -> dict:
        return {"session_id": record["id"], "resistance": record["resistance"], "variant": variant, "task": task,
                "id": f"{record['id']}/{variant}/{task}/{index:02d}", "turn_index": index, "messages": messages,
                "images": images}

    for variant in variants:
        if variant in PLAN_VARIANTS:
            yield row(variant, "plan", 0, plan_messages(record["client"], **plan, version=prompt_version), [])
    last_client = None
    for index, turn in enumerate(turns):
        if turn["speaker"] == "client":
            last_client = turn
            if "ec_planning" in variants and turn["image"] is not None and turn["stage_direction"]:
                messages = emotion_caption_messages(turn["stage_direction"], prompt_version)
                yield row("ec_planning", "emotion_caption", index, messages, [turn["image"]])
            continue
        image = last_client["image"] if last_client is not None else None
        emotion = (last_client["stage_direction"] or last_client["expression"]) if last_client else None
        for variant in variants:
            vision = variant in VISION_VARIANTS
            if (vision and image is None) or (variant == "ec_planning" and not emotion):
                continue
            messages = therapist_messages(
                record["client"], turns[:index], variant, reply=turn["statement"],
                emotion=emotion if variant == "ec_planning" else None,
                version=prompt_version, **(plan if variant in PLAN_VARIANTS else {}),
            )
            yield row(variant, "response", index, messages, [image] if vision else [])
