"""`mirror import`: the official Mirror release (Hub `multimodal-reframing/mirror`) as raw records for `mirror build`.

The release's exact columns cannot be checked from here, so known names and their CACTUS aliases are mapped
(`COLUMN_ALIASES`), extra columns are accepted, and a missing needed column fails with the expected and the found
columns. A Hub id is downloaded with `huggingface_hub` (the file, not a loading script) and read like a local file.
Screenplays are parsed as the paper's own post-processing did (`parse_screenplay`). CelebA reference faces
(`celeba_dir`) are used by path, never copied, and flagged `reference_face:celeba`: CelebA may not be
redistributed. See README.md for the details.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.prompts import CBT_TECHNIQUES, DEFAULT_PROMPT_VERSION

from .files import check_not_a_file

logger = logging.getLogger(__name__)

RELEASE_REPO_ID = "multimodal-reframing/mirror"
RELEASE_LICENSE = "gpl-2.0"
TRAIN_FILES = ("mirror_data.csv", "mirror_data.json", "mirror_data.jsonl")
TEST_FILES = ("mirror_test.csv", "mirror_test.json", "mirror_test.jsonl")

# Our field -> column names accepted for it, first match wins (release names first, then CACTUS's).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "idx": ("idx", "id"),
    "personal_info": ("personal_info", "intake_form"),
    "distorted_thought": ("distorted_thought", "thought"),
    "thinking_trap": ("thinking_trap", "thinking_traps", "patterns"),
    "reason_for_seeking_counseling": ("reason_for_seeking_counseling", "reason_for_counseling"),
    "cbt_plan": ("cbt_plan",),
    "dialogue": ("dialogue", "proc_dialogue"),  # raw screenplay text, else the paper's parsed turns
    # optional
    "cbt_technique": ("cbt_technique",),
    "personality": ("personality", "attitude"),
    "resistance": ("resistance",),
    "model": ("model",),
    "cactus_index": ("cactus_idx", "cactus_index", "cactus_id", "cactus_row"),
    "celeba_index": ("celeba_idx", "celeba_index", "celeba_id", "image_idx", "celeb_idx"),
}
NEEDED_PROFILE_COLUMNS = ("idx", "personal_info", "distorted_thought", "thinking_trap")
NEEDED_PROFILE_COLUMNS += ("reason_for_seeking_counseling", "cbt_plan")
NEEDED_SESSION_COLUMNS = (*NEEDED_PROFILE_COLUMNS, "dialogue")

# Style words in the release (`cactus-12-no-resistance`, "Emotional Resistance") -> our labels.
RESISTANCE_WORDS = {"emotional": "emotional", "cognitive": "cognitive", "behavioral": "behavioral"}
RESISTANCE_WORDS |= {"behavioural": "behavioral", "no": "none", "none": "none"}
_IDX = re.compile(r"^cactus-(?P<row>\d+)-(?P<style>[a-z]+)-resistance$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------
# Screenplay parsing (shared with `mirror generate`)


@dataclass
class ParsedScreenplay:
    turns: list[dict[str, Any]]
    dropped_lines: list[str] = field(default_factory=list)

    @property
    def num_dropped(self) -> int:
        return len(self.dropped_lines)


def _name_alternatives(client_name: str | None) -> list[str]:
    """The client's full name and each part of it ("Laura Saunders" -> full, "Laura", "Saunders")."""
    if not client_name:
        return []
    parts = [p for p in re.split(r"\s+", client_name.strip()) if len(p.strip(".")) >= 2]
    names = [client_name.strip(), *parts]
    return sorted({re.escape(n) for n in names}, key=len, reverse=True)


def parse_screenplay(text: str, client_name: str | None = None) -> ParsedScreenplay:
    """Parse `Therapist|Client|<client name>: [stage direction] statement` lines into turns.

    Tolerates what the paper's parser tolerated (the client's name or part of it instead of `Client`, a missing
    direction) plus markdown emphasis around the speaker (`**Therapist:**`). Consecutive lines of one speaker form
    one turn (the generator may write a reply over two lines). Every other non-empty line is dropped and returned.
    """
    names = _name_alternatives(client_name)
    client_pattern = "|".join(["Client", *(rf"(?:(?:Mr|Mrs|Ms|Miss|Dr)\.?\s+)?{n}" for n in names)])
    line_re = re.compile(
        rf"^[\s*_#>-]*(?P<speaker>Therapist|Counsel(?:l)?or|{client_pattern})[\s*_]*:[\s*_]*(?P<rest>.*)$",
        re.IGNORECASE,
    )
    turns: list[dict[str, Any]] = []
    dropped: list[str] = []
    for raw_line in (text or "").splitlines():
        line = raw_line.strip()
        if not line:
            continue
        match = line_re.match(line)
        if not match:
            dropped.append(line)
            continue
        speaker_word = match["speaker"].lower()
        speaker = "therapist" if speaker_word.startswith(("therapist", "counsel")) else "client"
        rest = match["rest"].strip()
        bracket = re.match(r"^\[(?P<direction>[^\]]*)\]\s*(?P<statement>.*)$", rest)
        direction = (bracket["direction"].strip() or None) if bracket else None
        statement = bracket["statement"].strip() if bracket else rest
        if not statement and not direction:
            dropped.append(line)
            continue
        if turns and turns[-1]["speaker"] == speaker:  # a reply written over two lines
            previous = turns[-1]
            previous["statement"] = " ".join(s for s in (previous["statement"], statement) if s)
            if direction:
                previous["stage_direction"] = "; ".join(d for d in (previous["stage_direction"], direction) if d)
            continue
        turns.append(new_turn(speaker, statement, direction))
    return ParsedScreenplay(turns, dropped)


def new_turn(speaker: str, statement: str, stage_direction: str | None = None) -> dict[str, Any]:
    """A record turn as a screenplay gives it: no face, expression or contrasting expression yet."""
    turn = {"speaker": speaker, "statement": statement, "stage_direction": stage_direction}
    return turn | {"image": None, "expression": None, "contrast_expression": None}


def parse_dialogue_cell(value: Any, client_name: str | None = None) -> ParsedScreenplay:
    """A `dialogue` cell: screenplay text, or (the `proc_dialogue` column) the paper's parsed turns as a JSON or
    Python-literal list of `{speaker, stage_direction, statement}`, rendered back to lines and parsed the same way."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        import ast

        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass  # not a list after all: parse as text
    if isinstance(value, list):
        lines = []
        for turn in value:
            if not isinstance(turn, dict):
                lines.append(str(turn))
                continue
            direction = turn.get("stage_direction") or turn.get("direction")
            speaker = str(turn.get("speaker") or turn.get("role") or "").strip()
            lines.append(f"{speaker}: {f'[{direction}] ' if direction else ''}{turn.get('statement') or ''}")
        value = "\n".join(lines)
    return parse_screenplay(str(value or ""), client_name)


# ---------------------------------------------------------------------------------------------------------------
# Profile fields

_INTAKE_KEYS = {key: key for key in ("name", "age", "gender", "occupation", "education", "family")}
_INTAKE_KEYS |= {"sex": "gender", "marital status": "marital_status", "family details": "family"}
_INTAKE_LINE = re.compile(
    r"^\s*(?:\d+\.\s*)?(?P<key>name|age|gender|sex|occupation|education|marital status|"
    r"family details|family)\s*:\s*(?P<value>.*)$",
    re.IGNORECASE,
)
_GENDERS = {"female": "female", "woman": "female", "f": "female", "male": "male", "man": "male", "m": "male"}
_GENDERS |= {"non-binary": "non-binary", "nonbinary": "non-binary", "non binary": "non-binary"}


def parse_personal_info(text: str) -> dict[str, Any]:
    """Split a CACTUS-style intake form into the schema's client fields; unlabelled text becomes `personal_info`.

    Accepts `Key: value` and `Key:` followed by the value on the next line (both occur in CACTUS).
    """
    fields: dict[str, Any] = {}
    rest: list[str] = []
    lines = (text or "").splitlines()
    index = 0
    while index < len(lines):
        match = _INTAKE_LINE.match(lines[index])
        if match:
            key, value = _INTAKE_KEYS[match["key"].lower()], match["value"].strip()
            if not value and index + 1 < len(lines) and not _INTAKE_LINE.match(lines[index + 1]):
                index += 1
                value = lines[index].strip()
            fields.setdefault(key, value)
        elif lines[index].strip():
            rest.append(lines[index].strip())
        index += 1
    if "age" in fields:
        digits = re.search(r"\d+", str(fields["age"]))
        fields["age"] = int(digits.group()) if digits else None
    if "gender" in fields:
        fields["gender"] = _GENDERS.get(str(fields["gender"]).strip().lower(), str(fields["gender"]).strip().lower())
    body = " ".join(line for line in rest if not re.fullmatch(r"\d+\.\s*[A-Za-z ]+", line))  # section headers
    fields["personal_info"] = body or None
    return fields


def client_record(fields: dict[str, Any], reason: str | None, thought: str | None, traps: Any) -> dict[str, Any]:
    """The schema's client fields: a parsed intake form (`parse_personal_info`) plus the profile's other columns."""
    keys = ("name", "age", "gender", "occupation", "education", "marital_status", "family", "personal_info")
    items = traps if isinstance(traps, list) else re.split(r"[,;\n]|\band\b", str(traps or ""))
    items = [item.strip().strip("'\"[]") for item in items if item]
    return {
        **{key: fields.get(key) for key in keys},
        "reason_for_counseling": reason or None,
        "distorted_thought": thought or None,
        "thinking_traps": [item.lower() for item in items if item],
    }


def source_record(dataset: str, row: str, generator: str | None, **provenance: Any) -> dict[str, Any]:
    """A record's `source`; `provenance` sets generator_revision, image_backend, seed or prompt_version."""
    source = {"dataset": dataset, "row": row, "generator": generator, "generator_revision": None}
    return source | {"image_backend": None, "seed": None, "prompt_version": DEFAULT_PROMPT_VERSION} | provenance


def find_technique(*texts: str | None) -> str | None:
    """The first of the 12 CACTUS techniques named in `texts` (the release's plan text names it)."""
    for text in texts:
        if not text:
            continue
        lowered = text.lower()
        positions = [(lowered.find(t.lower()), t) for t in CBT_TECHNIQUES if t.lower() in lowered]
        if positions:
            return min(positions)[1]
    return None


def resistance_of(idx: str, resistance: Any = None, personality: Any = None) -> str | None:
    """Resistance label from the `resistance` column, else the record id, else `personality`."""
    candidates = [str(resistance or "")]
    match = _IDX.match(str(idx))
    candidates += [match["style"] if match else "", str(personality or "")]
    for text in candidates:
        words = text.strip().lower().replace("-", " ").split()
        if words and words[0] in RESISTANCE_WORDS:
            return RESISTANCE_WORDS[words[0]]
    return None


# ---------------------------------------------------------------------------------------------------------------
# Reading release files


def read_release_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a release file: CSV, a JSON array, a JSON object of column lists or of a split's rows, or JSONL."""
    if path.suffix.lower() == ".csv":
        csv.field_size_limit(1 << 30)  # dialogues are long cells
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: neither JSON nor JSON Lines ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict):
        values = list(data.values())
        if (
            values
            and all(isinstance(v, list) for v in values)
            and len({len(v) for v in values}) == 1
            and not all(v and isinstance(v[0], dict) for v in values)
        ):  # {"column": [values...]}
            return [dict(zip(data, row, strict=True)) for row in zip(*values, strict=True)]
        if len(values) == 1 and isinstance(values[0], list):  # {"train": [rows...]}
            data = values[0]
        elif values and all(isinstance(v, dict) for v in values):  # {"0": {...}, "1": {...}}
            data = list(values)
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{path}: expected a list of row objects")
    return data


def map_columns(found: Iterable[str], needed: tuple[str, ...], path: Path | str) -> dict[str, str]:
    """Our field -> the file's column; raises ValueError listing expected and found columns if one is missing."""
    found = list(found)
    lowered = {column.strip().lower(): column for column in found}
    matches = {name: [lowered[a] for a in aliases if a in lowered] for name, aliases in COLUMN_ALIASES.items()}
    mapping = {name: columns[0] for name, columns in matches.items() if columns}  # first alias found wins
    missing = [name for name in needed if name not in mapping]
    if missing:
        expected = [" or ".join(COLUMN_ALIASES[n]) for n in needed]
        raise ValueError(
            f"{path}: missing needed column(s) {missing}; expected columns: {expected}; found columns: {found}"
        )
    return mapping


def resolve_release(source: str, revision: str | None = None) -> tuple[Path | None, Path | None, str]:
    """(train file, test file, provenance) from a local folder, a local file, or a Hub dataset id."""
    path = Path(source).expanduser()
    if path.is_file():
        is_test = path.name.lower().startswith("mirror_test")
        return (None, path, str(path)) if is_test else (path, None, str(path))
    if path.is_dir():
        train = next((path / n for n in TRAIN_FILES if (path / n).is_file()), None)
        test = next((path / n for n in TEST_FILES if (path / n).is_file()), None)
        if train is None and test is None:
            raise FileNotFoundError(f"{path}: no release files (expected one of {[*TRAIN_FILES, *TEST_FILES]})")
        return train, test, str(path)
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: not a file or folder, and not a Hub dataset id (owner/name)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def download(names):
        for name in names:
            try:
                return Path(hf_hub_download(source, name, repo_type="dataset", revision=revision))
            except EntryNotFoundError:
                continue
        return None

    train, test = download(TRAIN_FILES), download(TEST_FILES)
    if train is None and test is None:
        raise FileNotFoundError(f"Hub dataset {source}: none of {[*TRAIN_FILES, *TEST_FILES]} found")
    return train, test, f"hf://datasets/{source}" + (f"@{revision}" if revision else "")


# ---------------------------------------------------------------------------------------------------------------
# Rows -> raw records


class RowError(ValueError):
    """A release row that cannot become a record; names the file, the row and the problem."""


def _celeba_path(celeba_dir: Path, index: Any) -> Path:
    number = int(float(str(index).strip()))
    for name in (f"{number:06d}.jpg", f"{number:06d}.png", f"{number}.jpg", f"{number}.png"):
        if (celeba_dir / name).is_file():
            return celeba_dir / name
    raise FileNotFoundError(f"CelebA image {number:06d}.jpg not found in {celeba_dir}")


def row_to_record(
    row: dict[str, Any],
    columns: dict[str, str],
    *,
    with_dialogue: bool,
    source_name: str,
    line: int,
    celeba_dir: Path | None = None,
) -> tuple[dict[str, Any], ParsedScreenplay | None]:
    def get(name: str) -> Any:
        column = columns.get(name)
        value = row.get(column) if column else None
        return None if value is None or (isinstance(value, float) and value != value) else value

    idx = str(get("idx") or "").strip()
    where = f"{source_name} row {line} (idx {idx or '<empty>'!r})"
    if not idx:
        raise RowError(f"{where}: empty idx")
    match = _IDX.match(idx)
    cactus_row = str(get("cactus_index") or (match["row"] if match else idx)).strip()
    profile = parse_personal_info(str(get("personal_info") or ""))
    missing = [key for key in ("name", "age") if not profile.get(key)]
    if missing:
        raise RowError(f"{where}: personal_info has no {' or '.join(missing)} (expected 'Name: ...', 'Age: ...')")
    resistance = resistance_of(idx, get("resistance"), get("personality"))
    if resistance is None:
        raise RowError(f"{where}: no resistance style in the resistance/personality columns or the idx")
    plan = str(get("cbt_plan") or "").strip()
    technique = find_technique(get("cbt_technique"), plan)
    if technique is None:
        raise RowError(f"{where}: no CBT technique named in cbt_technique/cbt_plan (one of {list(CBT_TECHNIQUES)})")
    reason, thought = (str(get(key) or "").strip() for key in ("reason_for_seeking_counseling", "distorted_thought"))
    client = client_record(profile, reason, thought, get("thinking_trap"))
    celeba = get("celeba_index")
    flags = []
    if celeba_dir is not None and celeba not in (None, ""):
        identity = {"key": f"celeba-{int(float(str(celeba))):06d}", "image": str(_celeba_path(celeba_dir, celeba))}
        flags.append("reference_face:celeba")  # not redistributable: never publish a dataset built with it
    else:
        identity = {"key": f"cactus-{cactus_row}", "image": None}
        flags.append("reference_face:embedded-renderer")
    record = {
        "id": idx,
        "source": source_record("mirror-release", cactus_row, str(get("model") or "") or None),
        "client": client,
        "resistance": resistance,
        "cbt_technique": technique,
        "cbt_plan": plan or technique,
        "identity": identity,
    }
    parsed = None
    if with_dialogue:
        parsed = parse_dialogue_cell(get("dialogue"), client["name"])
        if not parsed.turns:
            raise RowError(f"{where}: the dialogue has no parsable line ({parsed.num_dropped} line(s) dropped)")
        record["turns"] = parsed.turns
        record["quality"] = {"scores": {"dropped_screenplay_lines": float(parsed.num_dropped)}, "flags": flags}
    return record, parsed


@dataclass
class ImportArguments:
    """Arguments of `mirror import`."""

    source: str = field(
        metadata={
            "help": f"Release folder (mirror_data.csv|json, mirror_test.csv), one such file, "
            f"or a Hub dataset id (e.g. {RELEASE_REPO_ID}; needs network)."
        }
    )
    output: str = field(metadata={"help": "Raw record folder to write (sessions.jsonl, profiles.jsonl, images/)."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    celeba_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of CelebA images (img_align_celeba, 000001.jpg ...) for reference faces by index. Used by "
            "path, never copied; CelebA may not be redistributed, so do not publish a dataset built with it. "
            "Without it the embedded renderer draws the identities."
        },
    )
    render_faces: bool = field(
        default=True,
        metadata={"help": "Render a face for every client turn (and identity) so `mirror build` accepts the folder."},
    )
    image_backend: str = field(default="embedded", metadata={"help": "Image backend for the faces."})
    image_model: str | None = field(
        default=None, metadata={"help": "Model id or folder of a model-based image backend (e.g. an SDXL pipeline)."}
    )
    device: str | None = field(default=None, metadata={"help": "Device of a model-based image backend."})
    on_bad_row: str = field(default="raise", metadata={
        "help": "raise: stop at the first unusable row; skip: leave it out and list it in import-report.json."})
    limit: int | None = field(default=None, metadata={"help": "Import only the first N rows of each file."})
    overwrite: bool = field(default=False, metadata={
        "help": "Write into a non-empty output folder (the files import writes are replaced; nothing else is "
        "touched)."})


@dataclass
class ImportResult:
    output: Path
    sessions: int
    profiles: int
    skipped_rows: list[dict[str, Any]]
    dropped_lines: int


def import_release(args: ImportArguments) -> ImportResult:
    """Read the release and write a raw record folder (faces rendered unless `render_faces=False`)."""
    if args.on_bad_row not in ("raise", "skip"):
        raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {args.on_bad_row!r}")
    output = check_not_a_file(args.output, flag="--output")
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{output} exists and is not empty (pass --overwrite to replace what import wrote)")
    celeba_dir = Path(args.celeba_dir).expanduser() if args.celeba_dir else None
    if celeba_dir is not None and not celeba_dir.is_dir():
        raise FileNotFoundError(f"CelebA folder not found: {celeba_dir}")
    train, test, provenance = resolve_release(args.source, args.revision)
    skipped: list[dict[str, Any]] = []
    dropped_lines = 0
    outputs: dict[str, list[dict[str, Any]]] = {"sessions": [], "profiles": []}
    for kind, path in (("sessions", train), ("profiles", test)):
        if path is None:
            continue
        rows = read_release_file(path)
        if not rows:
            raise ValueError(f"{path}: no rows")
        needed = NEEDED_SESSION_COLUMNS if kind == "sessions" else NEEDED_PROFILE_COLUMNS
        columns = map_columns(rows[0].keys(), needed, path)
        first_row: dict[str, int] = {}
        for line, row in enumerate(rows[: args.limit] if args.limit else rows, start=1):
            try:
                record, parsed = row_to_record(row, columns, with_dialogue=kind == "sessions", source_name=path.name,
                                               line=line, celeba_dir=celeba_dir)
                if record["id"] in first_row:
                    first = first_row[record["id"]]
                    raise RowError(f"{path.name} row {line}: duplicate idx {record['id']!r} (first at row {first})")
                first_row[record["id"]] = line
            except (RowError, FileNotFoundError, ValueError) as err:
                if args.on_bad_row == "raise":
                    raise
                logger.warning("Skipping row: %s", err)
                skipped.append({"file": path.name, "row": line, "reason": str(err)})
                continue
            if parsed is not None:
                dropped_lines += parsed.num_dropped
            outputs[kind].append(record)
    if not outputs["sessions"] and not outputs["profiles"]:
        raise ValueError(f"{args.source}: no usable rows (skipped: {len(skipped)})")

    texts = {kind: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
             for kind, records in outputs.items() if records}
    output.mkdir(parents=True, exist_ok=True)
    if args.render_faces:  # render_faces reads the records from a staging folder and writes them with their faces
        from .build import render_faces
        from .images import get_image_backend

        backend = get_image_backend(args.image_backend, model=args.image_model, device=args.device)
        with tempfile.TemporaryDirectory(prefix="mirror-import-") as staging:
            for kind, text in texts.items():
                (Path(staging) / f"{kind}.jsonl").write_text(text, encoding="utf-8")
            # The folder was vetted above under import's own rule (empty, or --overwrite).
            render_faces(staging, output, backend, check_output=False)
    else:
        for kind, text in texts.items():
            (output / f"{kind}.jsonl").write_text(text, encoding="utf-8")
    report = {
        "source": provenance,
        "license": RELEASE_LICENSE,
        "files": {"train": train and train.name, "test": test and test.name},
        "sessions": len(outputs["sessions"]),
        "profiles": len(outputs["profiles"]),
        "dropped_screenplay_lines": dropped_lines,
        "skipped_rows": skipped,
        "reference_faces": "celeba (not redistributable; do not publish)" if celeba_dir else "embedded-renderer",
        "image_backend": args.image_backend if args.render_faces else None,
    }
    (output / "import-report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return ImportResult(output, len(outputs["sessions"]), len(outputs["profiles"]), skipped, dropped_lines)


ARGUMENTS = (ImportArguments,)


def main(args: ImportArguments) -> int:
    result = import_release(args)
    print(
        f"Imported {result.sessions} session(s) and {result.profiles} profile(s) into {result.output}; "
        f"{result.dropped_lines} unparsable screenplay line(s) dropped, {len(result.skipped_rows)} row(s) skipped "
        f"(see import-report.json)."
    )
    print(f"Next: mirror build --input {result.output} --output <dataset folder>")
    return 0
