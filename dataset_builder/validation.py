"""Validation and normalisation of raw records (JSONL + image files) before anything is built.

Every problem raises `RecordError`, which names the file, line, record id and field, says what is wrong and,
for labels, lists the allowed values. Images are normalised rather than rejected when they are merely unusual
(RGBA, palette, CMYK, 16-bit greyscale, EXIF-rotated): the output is always RGB PNG bytes.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .schema import (
    CLIENT_FIELDS,
    IDENTITY_FIELDS,
    RAW_PROFILE_KEYS,
    RAW_SESSION_KEYS,
    RESISTANCE_STYLES,
    SOURCE_FIELDS,
    SPEAKERS,
    TECHNIQUES,
    TURN_FIELDS,
)

QUALITY_KEYS = ("scores", "flags")


class RecordError(ValueError):
    """A raw record that cannot be built. `str()` names where and what."""

    def __init__(self, record_id: str | None, field: str | None, problem: str, source: str | None = None, line=None):
        super().__init__(record_id, field, problem)
        self.record_id, self.field, self.problem, self.source, self.line = record_id, field, problem, source, line
        self.raw_text: str | None = None  # the line as read, when it could not be parsed into a record

    def __str__(self) -> str:
        # Built on demand: the builder fills in `source`/`line` after validation raised with only the record.
        where = f"{self.source}:{self.line}" if self.source and self.line else self.source
        where = f"{where}: " if where else ""
        record, field_name = self.record_id or "<unknown id>", self.field or "<record>"
        return f"{where}record {record!r}, field {field_name!r}: {self.problem}"


@dataclass(frozen=True)
class ImagePolicy:
    """How images are checked and normalised."""

    require_images: bool = field(default=True, metadata={"help": "Every client turn must have an image file."})
    max_pixels: int = field(
        default=25_000_000, metadata={"help": "Largest accepted width*height; larger files are refused as bombs."}
    )
    background: tuple[int, int, int] = field(
        default=(255, 255, 255), metadata={"help": "RGB colour that transparent pixels are composited onto."}
    )


# ---------------------------------------------------------------------------------------------------------------
# Reading JSONL


def iter_jsonl(path: Path, name: str | None = None) -> Iterator[tuple[int, dict[str, Any] | RecordError]]:
    """Yield `(line_number, record)` or `(line_number, RecordError)` for every non-blank line of `path`.

    A line that is not UTF-8 is still parsed (with surrogate escapes) so the error can name the record id and the
    field holding the bad bytes; a byte-order mark is accepted. Errors name the file as `name` (no absolute local
    path in a built dataset) and keep the line's text as `raw_text`.
    """
    name = name or str(path)
    with open(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            if line_number == 1:
                raw_line = raw_line.removeprefix(b"\xef\xbb\xbf")
            if not raw_line.strip():
                continue
            try:
                text, bad_utf8 = raw_line.decode("utf-8"), None
            except UnicodeDecodeError as err:
                text, bad_utf8 = raw_line.decode("utf-8", errors="surrogateescape"), err
            try:
                record = json.loads(text)
                problem = None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
            except json.JSONDecodeError as err:
                problem = f"not valid JSON ({err.msg} at column {err.colno})"
            if problem:
                error = RecordError(None, None, problem, name, line_number)
                error.raw_text = _printable(text.rstrip("\r\n"))
                yield line_number, error
                continue
            if bad_utf8 is not None:
                record_id = record.get("id") if isinstance(record.get("id"), str) else None
                field_path = _find_surrogates(record) or "<record>"
                yield line_number, RecordError(
                    _printable(record_id), field_path,
                    f"text is not valid UTF-8 (byte 0x{raw_line[bad_utf8.start]:02x} at byte offset {bad_utf8.start})",
                    name, line_number,
                )
                continue
            yield line_number, record


def _printable(text: str | None) -> str | None:
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8") if text else text


def _find_surrogates(value: Any, path: str = "") -> str | None:
    """Path of the first string holding an escaped (non-UTF-8) byte, e.g. `turns[3].statement`."""
    if isinstance(value, str):
        return path if any("\udc80" <= ch <= "\udcff" for ch in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_surrogates(key, path) and (f"{path}.{_printable(key)}".lstrip("."))
            found = found or _find_surrogates(item, f"{path}.{key}".lstrip("."))
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_surrogates(item, f"{path}[{index}]")
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------------------------------------
# Images


# Files (path, mtime, size, cap) already decoded in full and found to be clean RGB PNGs. Only verdicts are kept,
# never pixels, so memory stays small; a changed file has a new mtime/size and is checked again.
_CLEAN_PNGS: set[tuple] = set()
_MAX_VERDICTS = 1_000_000


def resolve_image_path(base_dir: Path, value: Any, *, record_id: str | None, field_name: str) -> Path:
    """The file an image field names, which must lie inside the input folder (no absolute or `..` escapes).

    Records are data from elsewhere: a path leaving the folder could make a build read, and publish, any file. The
    check is on the path as written (`..` resolved lexically), so a symlink the user placed in the folder on purpose
    (e.g. `images/` pointing at a large image store) still works.
    """
    relative = _check_str(value, record_id, field_name, non_empty=True)
    base = Path(os.path.abspath(base_dir))
    path = Path(os.path.normpath(base / relative))
    if not path.is_relative_to(base):
        raise RecordError(record_id, field_name, f"image path {relative!r} resolves outside the input folder; "
                          "image paths must be relative to the folder and stay inside it")
    return path


def load_image(path: Path, policy: ImagePolicy, *, record_id: str, field_name: str, encode: bool = True,
               display: str | None = None) -> bytes:
    """Check one image file and return it as RGB PNG bytes (or b"" when `encode` is False: validation only).

    `display` is how errors name the file (the record's relative path), so no absolute local path is recorded.
    """

    def fail(problem: str) -> RecordError:
        return RecordError(record_id, field_name, f"{problem} ({display or path})")

    if not path.is_file():
        raise fail("image file is missing")
    stat = path.stat()
    verdict_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, policy.max_pixels)
    if verdict_key in _CLEAN_PNGS:
        # A build reads each image in up to three configs; decoding it once is enough to trust it.
        return path.read_bytes() if encode else b""
    try:
        # Pillow warns past MAX_IMAGE_PIXELS and raises DecompressionBombError (not an OSError) past twice that.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise fail(f"image is too large to open safely (decompression bomb guard: {err})") from err
    except UnidentifiedImageError as err:
        raise fail("file is not an image Pillow can read") from err
    except OSError as err:
        raise fail(f"image cannot be opened: {err}") from err
    with image:
        width, height = image.size
        if width * height > policy.max_pixels:
            raise fail(f"image has {width}x{height} = {width * height} pixels, above the cap of {policy.max_pixels}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise fail(f"image is truncated or corrupt: {err}") from err
        already_clean = image.format == "PNG" and image.mode == "RGB" and not image.getexif().get(0x0112, 1) > 1
        if already_clean:
            if len(_CLEAN_PNGS) >= _MAX_VERDICTS:
                _CLEAN_PNGS.clear()
            _CLEAN_PNGS.add(verdict_key)
        if not encode:
            return b""
        if already_clean:
            # Keep the original bytes: cheaper, and re-running a build gives byte-identical parquet.
            return path.read_bytes()
        rgb = to_rgb(ImageOps.exif_transpose(image), policy.background)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is composited onto `background` rather than dropped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's own conversion clips 16-bit values at 255 (all-white images); scale the range down instead.
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if image.mode.startswith("I") else 255.0 / max(float(values.max()), 1.0)
        grey = np.clip(values * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------------------------
# Records


def _check_keys(value: Any, expected, record_id: str, field_name: str) -> None:
    if not isinstance(value, dict):
        raise RecordError(record_id, field_name, f"expected an object, got {type(value).__name__}")
    missing = [key for key in expected if key not in value]
    extra = [key for key in value if key not in expected]
    if missing:
        raise RecordError(record_id, f"{field_name}.{missing[0]}".lstrip("."), f"missing field (missing: {missing})")
    if extra:
        raise RecordError(record_id, f"{field_name}.{extra[0]}".lstrip("."),
                          f"unknown field (not in the schema; allowed: {list(expected)})")


def _check_str(value: Any, record_id: str, field_name: str, *, nullable: bool = False, non_empty: bool = False):
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise RecordError(record_id, field_name, f"expected a string, got {type(value).__name__}")
    if non_empty and not value.strip():
        raise RecordError(record_id, field_name, "must not be empty")
    return value


def _check_label(value: Any, allowed, record_id: str, field_name: str) -> str:
    if value not in allowed:
        raise RecordError(record_id, field_name, f"unknown value {value!r}; allowed values: {list(allowed)}")
    return value


def _validate_common(raw: dict, base_dir: Path, policy: ImagePolicy, keys, encode: bool) -> dict:
    record_id = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id").strip() else None
    _check_keys(raw, keys, record_id, "")
    _check_str(raw["id"], record_id, "id", non_empty=True)

    _check_keys(raw["source"], SOURCE_FIELDS, record_id, "source")
    source = dict(raw["source"])
    for key in SOURCE_FIELDS:
        if key == "seed":
            if source[key] is not None and not isinstance(source[key], int):
                raise RecordError(record_id, "source.seed", "expected an integer or null")
        else:
            _check_str(source[key], record_id, f"source.{key}", nullable=True)

    _check_keys(raw["client"], CLIENT_FIELDS, record_id, "client")
    client = dict(raw["client"])
    for key in CLIENT_FIELDS:
        if key == "age":
            if isinstance(client["age"], bool) or not isinstance(client["age"], int) or not 0 < client["age"] < 130:
                raise RecordError(record_id, "client.age", f"expected an integer age in 1..129, got {client['age']!r}")
        elif key == "thinking_traps":
            traps = client["thinking_traps"]
            if not isinstance(traps, list) or not all(isinstance(t, str) and t.strip() for t in traps):
                raise RecordError(record_id, "client.thinking_traps", "expected a list of non-empty strings")
        else:
            _check_str(client[key], record_id, f"client.{key}", nullable=key not in ("name",), non_empty=key == "name")

    _check_label(raw["resistance"], RESISTANCE_STYLES, record_id, "resistance")
    _check_label(raw["cbt_technique"], TECHNIQUES, record_id, "cbt_technique")
    _check_str(raw["cbt_plan"], record_id, "cbt_plan", non_empty=True)

    _check_keys(raw["identity"], IDENTITY_FIELDS, record_id, "identity")
    identity = raw["identity"]
    _check_str(identity["key"], record_id, "identity.key", non_empty=True)
    identity_image = None
    if identity["image"] is not None:
        identity_image = _embed_image(base_dir, identity["image"], policy, record_id, "identity.image", encode)
    labels = {key: raw[key] for key in ("resistance", "cbt_technique", "cbt_plan")}
    identity = {"key": identity["key"], "image": identity_image}
    return {"id": raw["id"], "source": source, "client": client, **labels, "identity": identity}


def _embed_image(base_dir: Path, value: Any, policy: ImagePolicy, record_id: str, field_name: str, encode: bool):
    """An image field as the `datasets.Image` feature stores it: checked PNG bytes, no local path."""
    path = resolve_image_path(base_dir, value, record_id=record_id, field_name=field_name)
    data = load_image(path, policy, record_id=record_id, field_name=field_name, encode=encode, display=value)
    return {"bytes": data, "path": None}


def validate_profile(raw: dict, base_dir: Path, policy: ImagePolicy = ImagePolicy(), encode: bool = True) -> dict:
    """Validate an evaluation profile (a session record without turns and quality)."""
    return _validate_common(raw, base_dir, policy, RAW_PROFILE_KEYS, encode)


def validate_session(raw: dict, base_dir: Path, policy: ImagePolicy = ImagePolicy(), encode: bool = True) -> dict:
    """Validate one session record and return it in the `sessions` schema, images as embedded PNG bytes."""
    record = _validate_common(raw, base_dir, policy, RAW_SESSION_KEYS, encode)
    record_id = record["id"]
    turns = raw["turns"]
    if not isinstance(turns, list):
        raise RecordError(record_id, "turns", f"expected a list of turns, got {type(turns).__name__}")
    if not turns:
        raise RecordError(record_id, "turns", "empty session: the record has no turns")
    out_turns = []
    for index, turn in enumerate(turns):
        where = f"turns[{index}]"
        _check_keys(turn, TURN_FIELDS, record_id, where)
        speaker = _check_label(turn["speaker"], SPEAKERS, record_id, f"{where}.speaker")
        statement = _check_str(turn["statement"], record_id, f"{where}.statement")
        stage_direction = _check_str(turn["stage_direction"], record_id, f"{where}.stage_direction", nullable=True)
        for key in ("expression", "contrast_expression"):
            _check_str(turn[key], record_id, f"{where}.{key}", nullable=True)
        image = None
        if speaker == "client":
            if not statement.strip() and not (stage_direction or "").strip():
                problem = "client turn has neither words nor a stage direction"
                raise RecordError(record_id, f"{where}.statement", problem)
            if turn["image"] is not None:
                image = _embed_image(base_dir, turn["image"], policy, record_id, f"{where}.image", encode)
            elif policy.require_images:
                problem = ("client turn has no image, and images are required (render faces first, e.g. "
                           "`mirror render-faces`, or build with --allow-missing-images)")
                raise RecordError(record_id, f"{where}.image", problem)
        elif turn["image"] is not None:
            raise RecordError(record_id, f"{where}.image", "therapist turns carry no image (only client turns do)")
        out_turns.append({**turn, "image": image})
    record["turns"] = out_turns

    quality = raw["quality"]
    _check_keys(quality, QUALITY_KEYS, record_id, "quality")
    scores = quality["scores"]
    if not isinstance(scores, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in scores.items()
    ):
        raise RecordError(record_id, "quality.scores", "expected an object mapping filter name to a number")
    flags = quality["flags"]
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise RecordError(record_id, "quality.flags", "expected a list of strings")
    scores = [{"filter": name, "score": float(value)} for name, value in scores.items()]
    record["quality"] = {"scores": scores, "flags": list(flags)}
    return record
