"""Build the Hub-ready Mirror dataset folder: parquet shards with embedded images plus a card with `configs:`.

The folder loads with `datasets.load_dataset(folder)` (the `sessions` config) and `load_dataset(folder, "sft" |
"profiles" | "filtered")`, and uploads as-is to a Hub dataset repo. Building is atomic (work happens in a hidden
sibling folder that replaces the output only when complete) and re-running on unchanged input is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from .builder import MirrorBuilder, raw_files
from .files import atomic_save_png, atomic_write, check_output_folder, read_jsonl
from .schema import CONFIG_FEATURES, CONFIG_SPLITS, SFT_VARIANTS
from .validation import ImagePolicy, RecordError

BUILD_FORMAT_VERSION = "1"
BUILD_STAMP = ".mirror-build.json"
RENDER_STAMP = ".mirror-render.json"  # marks a render-faces output folder, so a re-run may resume into it
SAMPLE_DIR = Path(__file__).parent / "sample"


@dataclass
class BuildOptions:
    """Options of `mirror build`."""

    on_bad_record: str = field(default="raise", metadata={"help": "raise: stop at the first bad record; skip: "
                                                               "build the rest and list it in `filtered`."})
    require_images: bool = field(default=True, metadata={"help": "Every client turn must have an image."})
    max_pixels: int = field(default=ImagePolicy.max_pixels, metadata={"help": "Pixel cap per image (bomb guard)."})
    apply_filters: bool = field(default=True, metadata={"help": "Run the text quality filters."})
    sft_variants: tuple[str, ...] = field(default=SFT_VARIANTS, metadata={
        "help": "SFT variants to export; each vision variant stores its own copy of every face image."})
    max_shard_size: int = field(default=500 << 20, metadata={"help": "Approximate bytes per parquet shard."})
    pretty_name: str = field(default="Mirror", metadata={"help": "Dataset name shown on the card."})


@dataclass
class BuildResult:
    output_dir: Path
    num_rows: dict[str, int]
    skipped: int  # bad records dropped by --on-bad-record skip
    filtered: int  # sessions dropped by the quality filters
    up_to_date: bool = False
    drop_reasons: dict[str, int] = field(default_factory=dict)  # "stage: field: problem" -> records dropped

    def drop_summary(self) -> list[str]:
        """One line per reason records were dropped, most frequent first (empty when nothing was dropped)."""
        ordered = sorted(self.drop_reasons.items(), key=lambda item: (-item[1], item[0]))
        return [f"{count:>6} x {reason}" for reason, count in ordered]


def drop_reason_key(stage: str, field_name: str | None, reason: str | None) -> str:
    """A reason with its record-specific details removed, so equal problems count together.

    `turns[3].statement` and `turns[7].statement` are one field; text after the first '(' or ';' (column numbers,
    file names, allowed values) is detail, and so are quoted values (`unknown value 'stubborn'`).
    """
    field_name = re.sub(r"\[\d+\]", "[]", field_name or "<record>")
    problem = re.split(r"[(;]", reason or "", maxsplit=1)[0]
    problem = re.sub(r"\s*(['\"]).*?\1", "", problem).strip().rstrip(":") or "unknown"
    return f"{stage}: {field_name}: {problem}" if stage != "filter" else f"filter: {field_name}"


def input_fingerprint(raw_dir: Path, options: BuildOptions) -> str:
    """Hash of every input byte (records and the images they reference) and of the build options."""
    digest = hashlib.sha256()
    options_dict = {**options.__dict__, "sft_variants": list(options.sft_variants)}
    settings = {"format": BUILD_FORMAT_VERSION, "options": options_dict}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(raw_dir)).encode("utf-8", "surrogateescape"))
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    here = Path(__file__).parent
    repo = here.parent  # the code, the prompts and the card template shape the output too
    for source in [*(here / name for name in ("builder.py", "schema.py", "validation.py", "filters.py", "cues.py")),
                   *sorted((repo / "inference" / "prompts").glob("*.yaml")), repo / "model_cards" / "dataset_card.py",
                   repo / "model_cards" / "templates" / "dataset_card.md.jinja"]:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def build_dataset(raw_dir: str | Path, output_dir: str | Path, options: BuildOptions | None = None,
                  force: bool = False) -> BuildResult:
    """Validate the raw records in `raw_dir` and export the Hub-ready folder `output_dir` (new, empty or a previous
    Mirror build, see `check_output_dir`); an unchanged input is a no-op unless `force`."""
    options = options or BuildOptions()
    raw_dir, output_dir = Path(raw_dir).resolve(), Path(output_dir).resolve()
    if raw_dir.is_file():
        raise NotADirectoryError(
            f"--input {raw_dir} is a file, not a folder of raw records: pass the folder holding it ({raw_dir.parent})"
        )
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"Raw record folder not found: {raw_dir}")
    check_output_dir(raw_dir, output_dir)
    session_files = raw_files(raw_dir, "sessions")
    if not session_files:
        raise FileNotFoundError(f"No sessions*.jsonl files in {raw_dir}")
    if not any(_has_content(path) for path in session_files):
        # `datasets` cannot load a config without rows, so an empty input would give a folder nobody can read.
        names = ", ".join(path.name for path in session_files)
        raise ValueError(f"{names} in {raw_dir} holds no session records: nothing to build")
    fingerprint = input_fingerprint(raw_dir, options)
    stamp_path = output_dir / BUILD_STAMP
    if stamp_path.is_file() and not force:
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("fingerprint") == fingerprint:
            return BuildResult(output_dir, stamp["num_rows"], stamp["skipped"], stamp["filtered"], up_to_date=True,
                               drop_reasons=stamp.get("drop_reasons", {}))

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    inner_bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()  # one progress bar of ours, not one per config and step
    work_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.building-", dir=output_dir.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="mirror-build-cache-") as cache_dir:
            num_rows, datasets_by_config = {}, {}
            progress = tqdm(list(CONFIG_FEATURES), desc="Building Mirror configs", unit="config")
            for config_name in progress:
                progress.set_postfix_str(config_name)
                passed = {key: getattr(options, key)
                          for key in ("on_bad_record", "require_images", "max_pixels", "apply_filters")}
                builder = MirrorBuilder(config_name=config_name, cache_dir=cache_dir, raw_dir=str(raw_dir), **passed,
                                        sft_variants=tuple(options.sft_variants))
                try:
                    builder.download_and_prepare(download_mode="force_redownload")
                except datasets.exceptions.DatasetGenerationError as err:
                    # Surface our own error (which names the record and field), not the generic wrapper.
                    cause = err.__cause__
                    raise (cause if isinstance(cause, RecordError | FileNotFoundError) else err) from None
                split = CONFIG_SPLITS[config_name]
                if builder.info.splits[split].num_examples:
                    dataset = builder.as_dataset(split=split)
                else:  # `as_dataset` refuses an empty split; an empty `filtered` config is the usual case
                    features = CONFIG_FEATURES[config_name]
                    dataset = datasets.Dataset.from_dict({key: [] for key in features}, features=features)
                datasets_by_config[config_name] = dataset
                num_rows[config_name] = len(dataset)
                _write_parquet(dataset, work_dir / "data" / config_name, CONFIG_SPLITS[config_name], options)
            filtered = datasets_by_config["filtered"]
            stages = Counter(filtered["stage"])
            skipped, dropped = stages["validation"], stages["filter"]
            rows = filtered.select_columns(["stage", "field", "reason"])
            reasons = Counter(drop_reason_key(row["stage"], row["field"], row["reason"])
                              for row in rows if row["stage"] != "kept")
            if not num_rows["sessions"]:
                # Every record was dropped: a folder without sessions cannot be loaded, so fail and say why.
                raise ValueError("no session record survived validation and filters: " + "; ".join(
                    f"{count} x {reason}" for reason, count in reasons.most_common()))
            drop_reasons = dict(reasons)
            _write_card(work_dir, datasets_by_config, options)
        stamp = {"fingerprint": fingerprint, "num_rows": num_rows, "skipped": skipped, "filtered": dropped,
                 "drop_reasons": drop_reasons,
                 "files": sorted(p.relative_to(work_dir).as_posix() for p in work_dir.rglob("*") if p.is_file())}
        (work_dir / BUILD_STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        check_output_dir(raw_dir, output_dir)  # again: the folder may have changed during a long build
        _set_folder_permissions(work_dir)
        _replace_dir(work_dir, output_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    finally:
        if inner_bars:
            datasets.utils.logging.enable_progress_bar()
    return BuildResult(output_dir, num_rows, skipped, dropped, drop_reasons=drop_reasons)


def _has_content(path: Path) -> bool:
    """Whether a JSONL file has a non-blank line (a byte-order mark alone is blank); stops at the first one."""
    with open(path, "rb") as handle:
        return any(line.removeprefix(b"\xef\xbb\xbf").strip() for line in handle)


def check_output_dir(raw_dir: Path, output_dir: Path) -> None:
    """Refuse any output folder whose replacement could destroy something the build did not make.

    A build swaps a whole folder into place, so the old one is deleted: allowed only for an empty folder or one that
    holds a previous Mirror build (recognised by its stamp), and never when input and output overlap.
    """
    if output_dir == raw_dir:
        raise ValueError(f"--output is the input folder ({raw_dir}); building there would delete the raw records. "
                         "Choose a new folder.")
    if raw_dir.is_relative_to(output_dir):
        raise ValueError(f"the input folder {raw_dir} is inside --output {output_dir}; replacing the output would "
                         "delete the raw records. Choose a folder outside the input.")
    if output_dir.is_relative_to(raw_dir):
        raise ValueError(f"--output {output_dir} is inside the input folder {raw_dir}; the build would read its own "
                         "output as input. Choose a folder outside the input.")
    stamp_path = output_dir / BUILD_STAMP
    check_output_folder(output_dir, flag="--output", ours=lambda folder: (folder / BUILD_STAMP).is_file(),
                        what=f"a previous Mirror build (no {BUILD_STAMP})", action="replace")
    if not stamp_path.is_file():
        return  # new or empty
    try:
        built = set(json.loads(stamp_path.read_text(encoding="utf-8"))["files"]) | {BUILD_STAMP}
    except (ValueError, KeyError, TypeError) as err:
        raise FileExistsError(f"--output {output_dir} has an unreadable {BUILD_STAMP} ({err}); refusing to replace "
                              "it. Choose a new or empty folder.") from None
    foreign = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*")
                     if p.is_file() and p.relative_to(output_dir).as_posix() not in built)
    if foreign:
        raise FileExistsError(f"--output {output_dir} is a previous Mirror build but also holds files the build did "
                              f"not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); refusing "
                              "to replace it. Move them away or choose a new folder.")


def _write_parquet(dataset: datasets.Dataset, folder: Path, split: str, options: BuildOptions) -> None:
    """Shards `<split>-00000-of-0000N.parquet`; `sft` per variant (`<variant>-...`), so the card can expose `sft`
    (all files) and `sft_<variant>` (one variant's files) over the same parquet, with no copies (`_write_card`)."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = {split: dataset}
    if folder.name == "sft":
        variants = dataset["variant"]
        groups = {variant: dataset.select([i for i, v in enumerate(variants) if v == variant])
                  for variant in _variant_order(variants, options)}
    for prefix, part in groups.items():
        nbytes = dataset.data.nbytes * len(part) / max(1, len(dataset))  # `select` keeps the whole table underneath
        num_shards = max(1, math.ceil(nbytes / options.max_shard_size))
        for index in range(num_shards):
            shard = part.shard(num_shards=num_shards, index=index, contiguous=True)
            shard.to_parquet(str(folder / f"{prefix}-{index:05d}-of-{num_shards:05d}.parquet"))


def _variant_order(variants, options: BuildOptions) -> list[str]:
    """The sft variants present, in the order `options` asks for them, then any others by name."""
    present = set(variants)
    wanted = [v for v in dict.fromkeys(options.sft_variants) if v in present]
    return wanted + sorted(present - set(wanted))


def _set_folder_permissions(folder: Path) -> None:
    """Give the finished folder the mode any new folder would get (`mkdtemp` makes it 0700: private to us)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap `new` into place: a reader never sees a half-written `target`."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _write_card(folder: Path, by_config: dict, options: BuildOptions) -> None:
    """README.md: `configs:` (plus `sft_<variant>` over the per-variant sft files), `dataset_info:` and the card.

    The licence and the provenance, generation, face, demographic and filter sections come from the rows themselves
    (`model_cards.dataset_card.summarize`).
    """
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    from model_cards.dataset_card import feature_columns, render_dataset_card, summarize

    descriptions = {
        "sessions": "one session: profile, resistance style, CBT technique and plan, identity face, turns with "
        "images, quality scores",
        "sft": "one training row in TRL's VLM chat format (`messages` + `images`), every variant",
        "profiles": "a client profile with a resistance style, for simulated evaluation sessions",
        "filtered": "the audit log: every examined record, kept or dropped, with the stage, field and reason",
    }
    counts = Counter(by_config["sft"]["variant"])
    variant_counts = {v: counts[v] for v in _variant_order(counts, options)}
    configs, data_files, table = {}, {}, []
    for name in CONFIG_FEATURES:
        split = CONFIG_SPLITS[name]
        data_files[name] = (f"data/{name}/*.parquet" if name == "sft" else f"data/{name}/{split}-*", split)
        table.append({"name": name, "split": split, "rows": len(by_config[name]), "description": descriptions[name]})
        if name == "sft":
            for variant, count in variant_counts.items():
                data_files[f"sft_{variant}"] = (f"data/sft/{variant}-*", split)
                table.append({"name": f"sft_{variant}", "split": split, "rows": count,
                              "description": f"the `{variant}` rows of `sft` (same files, no copy)"})
    for name, (path, split) in data_files.items():
        configs[name] = {"data_files": [{"split": split, "path": path}], **({"default": True} if name == "sessions"
                                                                             else {})}
    card_data = DatasetCardData()
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    infos = {}
    for row in table:
        base = row["name"] if row["name"] in by_config else "sft"
        dataset = by_config[base]
        nbytes = dataset.data.nbytes
        if base != row["name"]:  # an sft_<variant> config: its share of the sft files
            nbytes = round(nbytes * row["rows"] / len(dataset))
        splits = SplitDict()
        splits.add(SplitInfo(name=row["split"], num_examples=row["rows"], num_bytes=nbytes))
        infos[row["name"]] = DatasetInfo(features=CONFIG_FEATURES[base], splits=splits)
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    person_columns = ["source", "client", "resistance", "identity"]
    summary = summarize(
        by_config["sessions"].select_columns([*person_columns, "quality"]).to_list(),
        by_config["profiles"].select_columns(person_columns).to_list(),
        by_config["filtered"].select_columns(["kind", "stage", "field", "reason", "scores"]).to_list(),
    )
    card = render_dataset_card(
        card_data,
        pretty_name=options.pretty_name,
        summary=summary,
        configs=table,
        columns={name: feature_columns(CONFIG_FEATURES[name]) for name in CONFIG_FEATURES},
    )
    (folder / "README.md").write_text(card, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Faces for raw records (paper step 3, with any image backend)


def render_faces(raw_dir: str | Path, output_dir: str | Path, backend=None, overwrite: bool = False, *,
                 check_output: bool = True) -> Path:
    """Copy raw records to `output_dir`, rendering a face for every client turn (and identity) that has none.

    Writes atomically per file and skips images already on disk, so an interrupted run resumes where it stopped.
    `output_dir` must be new, empty or an earlier render-faces output (its `RENDER_STAMP`); `check_output=False`
    is for a caller that has vetted the folder under its own rule (`mirror import --overwrite`).
    """
    from .images import get_image_backend

    raw_dir, output_dir = Path(raw_dir), Path(output_dir)
    if not raw_dir.exists():
        raise FileNotFoundError(f"--input {raw_dir} not found: expected a folder of raw records (sessions*.jsonl)")
    if not raw_dir.is_dir():
        raise NotADirectoryError(f"--input {raw_dir} is a file, not a folder of raw records (sessions*.jsonl)")
    if output_dir.resolve() == raw_dir.resolve():
        raise ValueError(f"--output is the input folder ({raw_dir}); rendering there would rewrite the raw records. "
                         "Choose a new folder.")
    if not raw_files(raw_dir, "sessions") and not raw_files(raw_dir, "profiles"):
        raise FileNotFoundError(f"No sessions*.jsonl or profiles*.jsonl files in --input {raw_dir}")
    if check_output:
        check_output_folder(output_dir, flag="--output", ours=lambda folder: (folder / RENDER_STAMP).is_file(),
                            what=f"an earlier render-faces output (no {RENDER_STAMP})")
    backend = backend or get_image_backend("embedded")
    output_dir.mkdir(parents=True, exist_ok=True)
    if not (output_dir / RENDER_STAMP).is_file():  # first, so a killed run's folder is still recognised as ours
        atomic_write(output_dir / RENDER_STAMP, json.dumps({"made_by": "mirror render-faces"}) + "\n")
    for kind in ("sessions", "profiles"):
        for path in raw_files(raw_dir, kind):
            records = [_render_record(record, raw_dir, output_dir, backend, overwrite)
                       for record in tqdm(read_jsonl(path), desc=f"Rendering faces ({path.name})", unit="record")]
            atomic_write(output_dir / path.name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return output_dir


def _render_record(record, raw_dir, output_dir, backend, overwrite):
    from .images import FaceRequest

    client, key = record["client"], record["identity"]["key"]
    folder = Path("images") / key

    def render(name: str, expression: str, contrast: str | None, seed: int) -> str:
        relative = folder / f"{record['id']}-{name}.png" if name != "identity" else folder / "identity.png"
        target = output_dir / relative
        if overwrite or not target.exists():
            image = backend.render(FaceRequest(identity_key=key, expression=expression, gender=client.get("gender"),
                                               age=client.get("age"), contrast_expression=contrast, seed=seed))
            atomic_save_png(image, target)
        return relative.as_posix()

    if record["identity"].get("image") is None:
        record["identity"]["image"] = render("identity", "neutral", None, 0)
    elif not Path(record["identity"]["image"]).is_absolute():
        record["identity"]["image"] = _copy_relative(raw_dir, output_dir, record["identity"]["image"])
    for index, turn in enumerate(record.get("turns", [])):
        if turn.get("speaker") != "client":
            continue
        if turn.get("image") is None:
            # The face follows the turn's facial description; the stage direction only stands in when there is none.
            expression = turn.get("expression") or turn.get("stage_direction") or "neutral"
            turn["image"] = render(f"turn{index:02d}", expression, turn.get("contrast_expression"), index)
        elif not Path(turn["image"]).is_absolute():
            turn["image"] = _copy_relative(raw_dir, output_dir, turn["image"])
    record["source"]["image_backend"] = getattr(backend, "name", type(backend).__name__)
    return record


def _copy_relative(raw_dir: Path, output_dir: Path, relative: str) -> str:
    source, target = raw_dir / relative, output_dir / relative
    if source.resolve() != target.resolve() and source.is_file() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return relative


def build_sample_dataset(output_dir: str | Path, work_dir: str | Path | None = None,
                         options: BuildOptions | None = None) -> Path:
    """The embedded default: render the bundled sample's faces, then build the Hub-ready folder."""
    output_dir = Path(output_dir)
    work_dir = Path(work_dir) if work_dir else output_dir.parent / f"{output_dir.name}-raw"
    render_faces(SAMPLE_DIR, work_dir)
    build_dataset(work_dir, output_dir, options or BuildOptions(pretty_name="Mirror sample"))
    return output_dir
