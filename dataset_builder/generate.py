"""`mirror generate --config recipes/data/<name>.yaml`: new Mirror sessions (paper steps 1-4) as raw records.

The stages (profiles, screenplays, expressions, faces, filters; see README.md) write atomic JSONL shards under
`<output_dir>/.work/<stage>/`, so a killed run resumes where it stopped and finishes with the same records. A
screenplay that stays unusable is kept as a flagged placeholder record, never silently dropped; a session failing
a filter is written with `failed:<filter>: <reason>` flags for `mirror build` to move to `filtered`. Under
`accelerate launch` only the faces stage runs, split between the processes. LLM replies are cached in
`.work/llm-cache.jsonl`; `manifest.json` records the config hash, models, package versions and seeds, and a rerun
with a different config is refused rather than mixing two configs in one folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from inference.backends.base import text_message

from .files import atomic_save_png, atomic_write, check_not_a_file, read_jsonl
from .filters import FAILED_FLAG, JUDGED_FLAG, DialogueSafety, FilterConfig, ModelFilters, apply_filters
from .importer import client_record, find_technique, new_turn, parse_personal_info, parse_screenplay, source_record

logger = logging.getLogger(__name__)

PROMPT_DIR = Path(__file__).parent / "prompts"
SAMPLE_PROFILES = Path(__file__).parent / "sample" / "profiles.jsonl"
RESISTANCE_STYLES = ("none", "emotional", "cognitive", "behavioral")  # as in schema.py, which imports datasets
CACTUS_REPO_ID = "LangAGI-Lab/cactus"
STAGE_GROUPS = ("text", "faces", "filters")  # text = profiles + screenplays + expressions (the LLM stages)
MANIFEST = "manifest.json"
MAX_RAW_CHARS = 20_000  # of an unusable model output kept for the audit trail


# ---------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class LLMConfig:
    """A chat model: an OpenAI-compatible server (`base_url`) or a local model folder / Hub id (`backend`)."""

    model: str = field(default="gpt-4o-mini", metadata={"help": "Model name (server) or folder/Hub id (local)."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server URL (vLLM, TGI, ...)."})
    api_key_env: str | None = field(default=None, metadata={"help": "Environment variable holding the API key."})
    backend: str = field(default="transformers", metadata={"help": "Local backend when base_url is not set."})
    revision: str | None = field(default=None, metadata={"help": "Model revision, recorded in provenance."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (paper: 0.7)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass (paper: 0.9)."})
    max_new_tokens: int = field(default=1536, metadata={"help": "Token budget of one reply."})
    max_concurrency: int = field(default=8, metadata={"help": "Parallel requests against the server."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds per request attempt."})
    max_attempts: int = field(default=3, metadata={"help": "Tries per item when the output is unusable."})
    request_retries: int = field(
        default=3, metadata={"help": "Retries of a request on timeouts, dropped connections and 5xx (with backoff)."}
    )


@dataclass
class GenerateConfig:
    """A data-generation recipe (`recipes/data/*.yaml`)."""

    output_dir: str = field(default="mirror_generated", metadata={"help": "Raw record folder to write."})
    profiles: str = field(
        default="sample",
        metadata={
            "help": "'sample' (bundled), a CACTUS CSV/JSONL export or MIRROR profile JSONL, or 'hub' "
            f"({CACTUS_REPO_ID}; needs network)."
        },
    )
    profiles_revision: str | None = field(default=None, metadata={"help": "Hub revision of the profile dataset."})
    max_profiles: int | None = field(default=None, metadata={"help": "Use only the first N distinct clients."})
    resistance_styles: list[str] = field(
        default_factory=lambda: list(RESISTANCE_STYLES), metadata={"help": "Styles each client is played with."}
    )
    identity_pool: str | None = field(
        default=None,
        metadata={"help": "JSONL of reference faces {key, gender, age, image}; default: the renderer's identities."},
    )
    llm: LLMConfig = field(default_factory=LLMConfig, metadata={"help": "Screenplay model (paper: gpt-4o-mini)."})
    expression_llm: LLMConfig | None = field(
        default=None, metadata={"help": "Expression model (paper: Llama-3-8B-Instruct); default: llm."}
    )
    prompt_version: str = field(default="v1", metadata={"help": "Version of dataset_builder/prompts/*_<v>.yaml."})
    image_backend: str = field(default="embedded", metadata={"help": "Image backend name (embedded, diffusers)."})
    image_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Options of the image backend."})
    filters: FilterConfig = field(default_factory=FilterConfig, metadata={"help": "Filter thresholds and models."})
    image_filters: bool = field(
        default=True, metadata={"help": "Run the model-based image filters (False is recorded as skipped)."}
    )
    seed: int = field(default=0, metadata={"help": "Base seed of every LLM call and image."})
    shard_size: int = field(default=64, metadata={"help": "Items per stage shard (the unit of atomic progress)."})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateConfig:
        _check_known(cls, data, "unknown generation config key(s) {}")
        data = dict(data)
        for key, kind in (("llm", LLMConfig), ("expression_llm", LLMConfig), ("filters", FilterConfig)):
            if isinstance(data.get(key), dict):
                _check_known(kind, data[key], f"unknown key(s) {{}} in {key}")
                data[key] = kind(**data[key])
        config = cls(**data)
        bad_styles = [s for s in config.resistance_styles if s not in RESISTANCE_STYLES]
        if bad_styles:
            raise ValueError(f"unknown resistance style(s) {bad_styles}; allowed: {list(RESISTANCE_STYLES)}")
        return config

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    def digest(self) -> str:
        """Hash of everything that shapes the records (the output folder itself excluded)."""
        data = self.to_dict()
        data.pop("output_dir")
        # Where and how fast, not what: a rerun may use another server URL, key, device or concurrency.
        for key in ("max_concurrency", "timeout", "request_retries", "base_url", "api_key_env"):
            data["llm"].pop(key)
            if data["expression_llm"]:
                data["expression_llm"].pop(key)
        data["image_options"].pop("device", None)
        data["filters"].pop("device", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _check_known(kind: type, data: dict[str, Any], message: str) -> None:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(message.format(unknown) + f"; known keys: {sorted(known)}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> GenerateConfig:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return GenerateConfig.from_dict(data)


def load_prompt(kind: str, version: str) -> dict[str, Any]:
    path = PROMPT_DIR / f"{kind}_{version}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPT_DIR.glob(f"{kind}_*.yaml"))
        raise ValueError(f"no {kind} prompt version {version!r}; available: {known}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Atomic shards, resumable stages and the LLM cache


def read_shards(folder: Path) -> dict[str, dict[str, Any]]:
    """The items a stage has done, by id, from its JSONL shards."""
    return {item["id"]: item for path in sorted(folder.glob("shard-*.jsonl")) for item in read_jsonl(path)}


def write_shard(folder: Path, items: list[dict[str, Any]]) -> None:
    """Write `items` atomically as the stage's next shard."""
    index = len(list(folder.glob("shard-*.jsonl")))
    while (folder / f"shard-{index:05d}.jsonl").exists():
        index += 1
    text = "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)
    atomic_write(folder / f"shard-{index:05d}.jsonl", text)


class ResponseCache:
    """Append-only JSONL cache of LLM replies keyed by the full request; a torn last line is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, str] = {}
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # a kill cut the last line: end it so the next entry stays whole
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write("\n")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                self._entries[entry["key"]] = entry["reply"]
        self.hits = 0

    @staticmethod
    def key(model: str, messages: list[dict[str, Any]], settings: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([model, messages, settings], sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        reply = self._entries.get(key)
        self.hits += reply is not None
        return reply

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._entries[key] = reply
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "reply": reply}) + "\n")


class CachedChat:
    """`backend.chat` through the response cache, with the recipe's sampling settings and a per-call seed;
    `get_backend` is called on the first cache miss only, so a fully cached rerun never loads or contacts a model."""

    def __init__(self, get_backend: Callable[[], Any], settings: LLMConfig, cache: ResponseCache):
        self.get_backend, self.settings, self.cache = get_backend, settings, cache
        # Requests in flight never exceed max_concurrency, however the stages nest their thread pools.
        self._slots = threading.BoundedSemaphore(max(1, settings.max_concurrency))

    def __call__(self, messages: list[dict[str, Any]], seed: int) -> str:
        from inference.backends import GenerationConfig
        from inference.backends.endpoint import EndpointError

        settings = {key: getattr(self.settings, key) for key in ("temperature", "top_p", "max_new_tokens")}
        settings["seed"] = seed
        key = ResponseCache.key(self.settings.model, messages, settings)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            with self._slots:
                reply = self.get_backend().chat(messages, config=GenerationConfig(**settings))
        except EndpointError as err:  # the server is down or refuses: an environment problem, not bad output
            raise ConnectionError(f"{err} (the stage shards written so far are kept: rerun to resume)") from err
        self.cache.put(key, reply)
        return reply


def make_backend(settings: LLMConfig):
    """The chat backend of an `LLMConfig`: an endpoint when `base_url` is set, else a local model."""
    if settings.base_url:
        from inference.backends.endpoint import EndpointBackend, api_key_from_env

        if settings.api_key_env and not os.environ.get(settings.api_key_env):
            raise ValueError(f"llm.api_key_env: the environment variable {settings.api_key_env} is empty or unset")
        return EndpointBackend(settings.base_url, settings.model, api_key=api_key_from_env(settings.api_key_env),
                               timeout=settings.timeout, max_retries=settings.request_retries,
                               max_concurrency=settings.max_concurrency, supports_images=False)
    from inference.backends import load_backend

    return load_backend(settings.model, backend=settings.backend, revision=settings.revision)


def derive_seed(base: int, *parts: Any) -> int:
    digest = hashlib.sha256(json.dumps([base, *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------------------------
# Step 1: profiles and identities


def _section(text: str, title: str) -> str | None:
    match = re.search(rf"{title}\s*:?\s*\n(.*?)(?:\n\s*\d+\.\s+[A-Z]|\Z)", text or "", re.IGNORECASE | re.DOTALL)
    return " ".join(match.group(1).split()) if match else None


def cactus_row_to_profile(row: dict[str, Any], index: int) -> dict[str, Any]:
    """A CACTUS row (intake_form, thought, patterns, cbt_technique, cbt_plan) as a MIRROR profile."""
    intake = str(row.get("intake_form") or row.get("personal_info") or "")
    fields = parse_personal_info(intake)
    if not fields.get("name") or not fields.get("age"):
        raise ValueError(f"CACTUS row {index}: intake form has no Name/Age")
    technique = find_technique(row.get("cbt_technique"), row.get("cbt_plan"))
    if technique is None:
        raise ValueError(f"CACTUS row {index}: no known CBT technique in cbt_technique/cbt_plan")
    reason = _section(intake, "Reason for Seeking Counsel+ing") or row.get("reason_for_seeking_counseling")
    thought = str(row.get("thought") or row.get("distorted_thought") or "")
    return {
        "row": str(row.get("idx", index)),
        "client": client_record(fields, reason, thought, row.get("patterns") or row.get("thinking_trap")),
        "cbt_technique": technique,
        "cbt_plan": str(row.get("cbt_plan") or technique),
    }


def _mirror_profiles(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Profiles from MIRROR profile/session records: their source row (else their id), client and CBT plan."""
    keys = ("client", "cbt_technique", "cbt_plan")
    return [{"row": r.get("source", {}).get("row") or r["id"], **{k: r[k] for k in keys}} for r in rows]


def load_profiles(config: GenerateConfig) -> tuple[str, list[dict[str, Any]]]:
    """(dataset name, distinct client profiles) from the configured source."""
    source = config.profiles
    if source == "sample":
        profiles = _mirror_profiles(read_jsonl(SAMPLE_PROFILES))
        name = "mirror-sample"
    elif source == "hub":
        import datasets

        rows = datasets.load_dataset(CACTUS_REPO_ID, split="train", revision=config.profiles_revision)
        profiles = _distinct_cactus(rows)
        name = "cactus"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"profiles: {source!r} is not 'sample', 'hub' or a CSV/JSONL file")
        from .importer import read_release_file

        rows = read_release_file(path)
        if rows and "client" in rows[0]:  # MIRROR profile/session records
            profiles = _mirror_profiles(rows)
            # Keep the records' own provenance (it decides the licence on the card); else name them by the file.
            sources = {(r.get("source") or {}).get("dataset") for r in rows}
            name = sources.pop() if len(sources) == 1 and None not in sources else path.stem
        else:
            profiles = _distinct_cactus(rows)
            name = "cactus"
    if config.max_profiles:
        profiles = profiles[: config.max_profiles]
    if not profiles:
        raise ValueError(f"profiles: no client profiles in {source!r}")
    return name, profiles


def _distinct_cactus(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """CACTUS has several rows per client (one per attitude); keep the first row of each intake form."""
    seen, profiles = set(), []
    for index, row in enumerate(rows):
        intake = str(row.get("intake_form") or row.get("personal_info") or "")
        digest = hashlib.sha256(intake.encode()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        profiles.append(cactus_row_to_profile(dict(row), index))
    return profiles


def match_identities(
    profiles: list[dict[str, Any]], pool: list[dict[str, Any]] | None, seed: int, dataset: str
) -> list[dict[str, Any]]:
    """One reference identity per client: same gender, nearest age, unused identities first (deterministic).

    Without a pool, each client gets its own embedded-renderer identity drawn for its gender and age.
    """
    if not pool:
        return [{"key": f"{dataset}-{p['row']}", "image": None, "source": "embedded-renderer"} for p in profiles]
    uses: dict[str, int] = {}
    matched = []
    for profile in profiles:
        gender, age, row = profile["client"].get("gender"), profile["client"].get("age") or 0, profile["row"]
        candidates = [c for c in pool if c.get("gender") == gender]
        if not candidates:
            logger.warning("identity pool has no %s face; %s gets the nearest age of any gender", gender, row)
        best = min(
            candidates or pool,
            key=lambda c: (uses.get(c["key"], 0), abs((c.get("age") or 0) - age), derive_seed(seed, c["key"], row)),
        )
        uses[best["key"]] = uses.get(best["key"], 0) + 1
        age_gap = abs((best.get("age") or 0) - age)
        matched.append({"key": best["key"], "image": best.get("image"), "source": "identity-pool", "age_gap": age_gap})
    return matched


def load_identity_pool(path: str | None) -> list[dict[str, Any]] | None:
    if not path:
        return None
    pool_path = Path(path)
    rows = read_jsonl(pool_path)
    for row in rows:
        missing = [k for k in ("key", "gender", "age", "image") if k not in row]
        if missing:
            raise ValueError(f"{pool_path}: identity {row.get('key')!r} lacks {missing}")
        image = Path(row["image"])
        row["image"] = str(image if image.is_absolute() else (pool_path.parent / image).resolve())
        if not Path(row["image"]).is_file():
            raise FileNotFoundError(f"{pool_path}: identity {row['key']!r}: image not found: {row['image']}")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Steps 2 and 3: screenplays and expressions


def screenplay_messages(job: dict[str, Any], prompt: dict[str, Any]) -> list[dict[str, Any]]:
    client, style = job["client"], job["resistance"]
    examples = "\n\n".join(f"Example {i + 1}:\n{text}" for i, text in enumerate(prompt["examples"]))
    texts = {key: client.get(key) or "" for key in ("personal_info", "reason_for_counseling", "distorted_thought")}
    unspecified = {key: client.get(key) or "unspecified" for key in ("gender", "occupation")}
    user = prompt["user"].format(
        name=client["name"], age=client["age"], **unspecified, **texts,
        thinking_traps=", ".join(client.get("thinking_traps") or []) or "unspecified",
        resistance=style, persona=prompt["resistance_personas"][style], cbt_technique=job["cbt_technique"],
        cbt_plan=job["cbt_plan"], examples=examples,
    )
    return [text_message("system", prompt["system"]), text_message("user", user)]


def check_screenplay(turns: list[dict[str, Any]]) -> str | None:
    """Why a parsed screenplay is unusable, or None."""
    if len(turns) < 2:
        return f"only {len(turns)} parsable line(s)"
    if not any(t["speaker"] == "client" for t in turns) or not any(t["speaker"] == "therapist" for t in turns):
        return "one speaker only"
    return None


_EXPRESSION = re.compile(r"^\W*expression\W*:\s*(?P<value>.+)$", re.IGNORECASE | re.MULTILINE)
_CONTRAST = re.compile(r"^\W*contrast(?:ing)?(?:\s+expression)?\W*:\s*(?P<value>.+)$", re.IGNORECASE | re.MULTILINE)


def parse_expressions(text: str) -> tuple[str, str] | None:
    found = [pattern.search(text or "") for pattern in (_EXPRESSION, _CONTRAST)]
    clean = [m["value"].strip().strip("\"'*").strip() if m else "" for m in found]
    return (clean[0], clean[1]) if all(clean) else None


def _line(turn: dict[str, Any]) -> str:
    speaker = "Therapist" if turn["speaker"] == "therapist" else "Client"
    direction = f"[{turn['stage_direction']}] " if turn.get("stage_direction") else ""
    return f"{speaker}: {direction}{turn['statement']}".strip()


def expression_messages(turns: list[dict[str, Any]], index: int, prompt: dict[str, Any]) -> list[dict[str, Any]]:
    history = "\n".join(_line(t) for t in turns[:index]) or "(nothing yet)"
    user = prompt["user"].format(history=history, current=_line(turns[index]))
    return [text_message("system", prompt["system"]), text_message("user", user)]


# ---------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class GenerateArguments:
    """Arguments of `mirror generate`."""

    config: str = field(metadata={"help": "Recipe YAML path or bundled name (recipes/data/<name>.yaml)."})
    output_dir: str | None = field(default=None, metadata={"help": "Override the recipe's output_dir."})
    max_profiles: int | None = field(default=None, metadata={"help": "Override the recipe's max_profiles."})
    base_url: str | None = field(default=None, metadata={"help": "Override the screenplay/expression server URL."})
    stages: str = field(
        default="text,faces,filters",
        metadata={
            "help": "Comma-separated stage groups to run: text (profiles, screenplays, expressions), faces, "
            "filters. Several GPUs: run faces alone under `accelerate launch` (see dataset_builder/README.md)."
        },
    )


class Generator:
    """Runs the stages of one recipe into `config.output_dir`."""

    def __init__(
        self,
        config: GenerateConfig,
        *,
        backend=None,
        expression_backend=None,
        image_backend=None,
        model_filters: ModelFilters | None = None,
        dialogue_safety: DialogueSafety | None = None,
    ):
        self.config = config
        self.output = Path(config.output_dir)
        self.work = self.output / ".work"
        self._backend, self._expression_backend, self._image_backend = backend, expression_backend, image_backend
        self._model_filters, self._dialogue_safety = model_filters, dialogue_safety
        self.screenplay_prompt = load_prompt("screenplay", config.prompt_version)
        self.expression_prompt = load_prompt("expression", config.prompt_version)

    @cached_property
    def backend(self):
        return self._backend or make_backend(self.config.llm)

    @cached_property
    def expression_backend(self):
        expression_llm = self.config.expression_llm
        return self._expression_backend or (make_backend(expression_llm) if expression_llm else self.backend)

    @cached_property
    def image_backend(self):
        from .images import get_image_backend

        return self._image_backend or get_image_backend(self.config.image_backend, **self.config.image_options)

    def _manifest(self, dataset: str, counts: dict[str, int] | None = None) -> dict[str, Any]:
        import importlib.metadata as metadata

        def version(package: str) -> str | None:
            try:
                return metadata.version(package)
            except metadata.PackageNotFoundError:
                return None

        packages = ("mirror-therapy", "transformers", "datasets", "huggingface-hub", "diffusers", "torch")
        config = self.config
        llms = (("screenplay", config.llm), ("expression", config.expression_llm or config.llm))
        prompt_files = sorted(PROMPT_DIR.glob(f"*_{config.prompt_version}.yaml"))
        models = ("clip_model", "age_model", "gender_model", "identity_model", "nsfw_model", "safety_model")
        filter_models = {key: getattr(config.filters, key) for key in models}
        return {
            "config": config.to_dict(),
            "config_sha256": config.digest(),
            "models": {
                **{role: {"model": m.model, "revision": m.revision, "base_url": m.base_url} for role, m in llms},
                "image_backend": {"name": config.image_backend, "options": config.image_options},
                "filters": filter_models if config.image_filters else {"image_filters": "disabled"},
                "pos_tagger": config.filters.pos_tagger,
            },
            "profiles": {"source": config.profiles, "dataset": dataset, "revision": config.profiles_revision},
            "prompts": {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in prompt_files},
            "packages": {package: version(package) for package in (*packages, "accelerate", "pillow")},
            "python": platform.python_version(),
            "seeds": {"base": config.seed, "per_item": "sha256([seed, id, stage, attempt])[:4]"},
            "counts": counts or {},
        }

    def _check_manifest(self) -> None:
        path = self.output / MANIFEST
        if path.is_file():
            previous = json.loads(path.read_text(encoding="utf-8"))
            if previous.get("config_sha256") != self.config.digest():
                raise ValueError(
                    f"{self.output} was generated with a different config (sha256 {previous.get('config_sha256')}, "
                    f"now {self.config.digest()}); use a new output_dir instead of mixing two configs"
                )
        elif self.output.exists() and any(p.name != ".work" for p in self.output.iterdir()):
            raise FileExistsError(f"{self.output} is not empty and has no {MANIFEST}: not a generation folder")

    def stage_profiles(self) -> tuple[str, list[dict[str, Any]]]:
        dataset, profiles = load_profiles(self.config)
        pool = load_identity_pool(self.config.identity_pool)
        identities = match_identities(profiles, pool, self.config.seed, dataset)
        jobs = [
            {
                "id": f"{dataset}-{profile['row']}-{style}",
                "dataset": dataset,
                "resistance": style,
                "identity": identity,
                **{key: profile[key] for key in ("row", "client", "cbt_technique", "cbt_plan")},
            }
            for profile, identity in zip(profiles, identities, strict=True)
            for style in self.config.resistance_styles
        ]
        ids = [job["id"] for job in jobs]
        if len(set(ids)) != len(ids):
            raise ValueError("profiles: duplicate client rows give duplicate session ids")
        self._run_stage("profiles", jobs, lambda job: job)
        return dataset, jobs

    def stage_screenplays(self, jobs: list[dict[str, Any]], chat: CachedChat) -> dict[str, dict[str, Any]]:
        attempts = max(1, self.config.llm.max_attempts)

        def work(job):
            messages = screenplay_messages(job, self.screenplay_prompt)
            reasons = []
            for attempt in range(attempts):
                seed = derive_seed(self.config.seed, job["id"], "screenplay", attempt)
                # A failed request (after the backend's own retries) stops the run instead of being recorded as
                # unusable output: the shards written so far are kept and a rerun resumes from them.
                text = chat(messages, seed)
                parsed = parse_screenplay(text, job["client"]["name"])
                problem = check_screenplay(parsed.turns)
                if problem is None:
                    ok = {"status": "ok", "turns": parsed.turns, "dropped_lines": parsed.dropped_lines}
                    return {"id": job["id"], **ok, "seed": seed, "attempts": attempt + 1}
                reasons.append(f"attempt {attempt + 1}: {problem}")
            logger.warning("screenplay %s unusable after %d attempt(s): %s", job["id"], attempts, reasons[-1])
            unusable = {"status": "unusable", "reason": "; ".join(reasons), "raw": text[:MAX_RAW_CHARS]}
            return {"id": job["id"], **unusable, "attempts": attempts, "seed": seed}

        return self._run_stage("screenplays", jobs, work, self.config.llm.max_concurrency)

    def stage_expressions(self, sessions: list[dict[str, Any]], chat: CachedChat) -> dict[str, dict[str, Any]]:
        settings = self.config.expression_llm or self.config.llm
        attempts = max(1, settings.max_attempts)

        def turn_expression(session: dict[str, Any], index: int) -> dict[str, Any]:
            messages = expression_messages(session["turns"], index, self.expression_prompt)
            parsed = None
            for attempt in range(attempts):
                parsed = parse_expressions(
                    chat(messages, derive_seed(self.config.seed, session["id"], "expression", index, attempt))
                )
                if parsed:
                    break
            if not parsed:
                logger.warning(
                    "expression %s turn %d unusable after %d attempt(s); the stage direction is used instead "
                    "(flagged in the record)", session["id"], index, attempts
                )
            expression, contrast = parsed or (None, None)
            return {"turn": index, "expression": expression, "contrast_expression": contrast}

        def work(session):
            # The turns of one session are independent requests (the screenplay is complete), so they run in
            # parallel too; CachedChat's semaphore keeps the total in flight at max_concurrency.
            indices = [i for i, turn in enumerate(session["turns"]) if turn["speaker"] == "client"]
            with ThreadPoolExecutor(max_workers=max(1, min(settings.max_concurrency, len(indices) or 1))) as pool:
                out = list(pool.map(lambda index: turn_expression(session, index), indices))
            return {"id": session["id"], "expressions": out}

        return self._run_stage("expressions", sessions, work, settings.max_concurrency)

    def _run_stage(self, name: str, jobs: list[dict], work: Callable[[dict], dict], concurrency: int = 1) -> dict:
        """Run `work` on every job whose id is not done yet, `concurrency` at a time; write shards as they fill."""
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        done = read_shards(folder)
        pending = [job for job in jobs if job["id"] not in done]
        progress = tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc=f"generate: {name}", unit="item")
        shard_size = max(1, self.config.shard_size)
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for start in range(0, len(pending), shard_size):
                results = []
                for result in pool.map(work, pending[start : start + shard_size]):
                    results.append(result)
                    progress.update(1)
                write_shard(folder, results)
                done.update({r["id"]: r for r in results})
        progress.close()
        return done

    def stage_faces(self, records: list[dict[str, Any]], state=None) -> None:
        """Render every missing face; with several accelerate processes, each takes its share of sessions."""
        from .images import FaceRequest

        backend = self.image_backend
        several = state is not None and state.num_processes > 1
        share = records
        if several:
            with state.split_between_processes(records) as part:
                share = list(part)
        for record in tqdm(share, desc="generate: faces", unit="session"):
            identity, client = record["identity"], record["client"]
            targets = []
            if Path(identity["image"]).is_absolute():  # a reference face from the identity pool, used in place
                if hasattr(backend, "register_reference"):
                    backend.register_reference(identity["key"], identity["image"])
            else:  # the backend draws the identity itself (a neutral portrait), rendered first
                targets.append((self.output / identity["image"], "neutral", None, 0))
            for index, turn in enumerate(record["turns"]):
                if turn["speaker"] == "client":
                    # The paper renders the LLM's facial-expression description; the stage direction stands in
                    # when that description was unusable (the record is flagged).
                    expression = turn.get("expression") or turn.get("stage_direction") or "neutral"
                    seed = record["source"]["seed"] + index
                    targets.append((self.output / turn["image"], expression, turn.get("contrast_expression"), seed))
            gender, age = client.get("gender"), client.get("age")
            for target, expression, contrast, seed in targets:
                if not target.exists():
                    request = FaceRequest(identity["key"], expression, gender, age, contrast, seed=seed)
                    atomic_save_png(backend.render(request), target)
        if several:
            state.wait_for_everyone()

    def assemble(self, job: dict[str, Any], screenplay: dict[str, Any], expressions: dict[str, Any]) -> dict:
        """The raw session record (images referenced by their final paths under the output folder)."""
        by_turn = {e["turn"]: e for e in expressions["expressions"]}
        # The backend's own name (it carries the renderer version), plus the model id for diffusion backends.
        image_backend = getattr(self.image_backend, "name", self.config.image_backend)
        if self.config.image_options.get("model"):
            image_backend += f":{self.config.image_options['model']}"
        identity = job["identity"]
        turns, flags = [], [f"reference_face:{identity['source']}"]
        for index, turn in enumerate(screenplay["turns"]):
            turn = dict(turn)
            if turn["speaker"] == "client":
                found = by_turn.get(index, {})
                turn.update(expression=found.get("expression"), contrast_expression=found.get("contrast_expression"))
                if not turn["expression"]:
                    flags.append(f"expression_from_stage_direction:turn {index}")  # logged choice, recorded
                turn["image"] = f"images/{identity['key']}/{job['id']}-turn{index:02d}.png"
            turns.append(turn)
        image = identity.get("image") or f"images/{identity['key']}/identity.png"
        scores = {"dropped_screenplay_lines": float(len(screenplay.get("dropped_lines", []))),
                  "screenplay_attempts": float(screenplay["attempts"])}
        return {
            **self.record_head(job, image_backend, screenplay["seed"]),
            "identity": {"key": identity["key"], "image": image},
            "turns": turns,
            "quality": {"scores": scores, "flags": flags},
        }

    def unusable_record(self, job: dict[str, Any], screenplay: dict[str, Any]) -> dict[str, Any]:
        """A placeholder for a screenplay that stayed unusable: one therapist turn holding the raw model output,
        flagged `failed:screenplay_unusable`, so `mirror build` lists it in `filtered` (never in `sessions`) with
        the reason and the text that could not be parsed."""
        return {
            **self.record_head(job, None, screenplay.get("seed")),
            "identity": {"key": job["identity"]["key"], "image": None},
            "turns": [new_turn("therapist", screenplay.get("raw", ""))],
            "quality": {
                "scores": {"screenplay_attempts": float(screenplay["attempts"])},
                "flags": [f"{FAILED_FLAG}screenplay_unusable: {screenplay['reason']}", JUDGED_FLAG],
            },
        }

    def record_head(self, job: dict[str, Any], image_backend: str | None, seed: int | None) -> dict[str, Any]:
        """What every generated record starts with: its id, its provenance and the profile it was written from."""
        return {
            "id": job["id"],
            "source": source_record(job["dataset"], str(job["row"]), self.config.llm.model, seed=seed,
                                    generator_revision=self.config.llm.revision, image_backend=image_backend,
                                    prompt_version=self.config.prompt_version),
            **{key: job[key] for key in ("client", "resistance", "cbt_technique", "cbt_plan")},
        }

    def stage_filters(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score every record in place: each result in `quality.scores`, each failure as a `failed:` flag."""
        from PIL import Image

        config = self.config
        safety = self._dialogue_safety or (DialogueSafety(config.filters) if config.filters.dialogue_safety else None)
        model_filters = self._model_filters or (ModelFilters(config.filters) if config.image_filters else None)
        for record in tqdm(records, desc="generate: filters", unit="session"):
            scores, flags = record["quality"]["scores"], record["quality"]["flags"]
            results, _ = apply_filters(record, config.filters)
            results = [r for r in results if r.name != "recorded_failures"]
            if safety is not None:
                results.append(safety(record))
            else:
                flags.append("skipped:dialogue_safety: disabled in the config")
            if model_filters is not None:
                images = {
                    i: Image.open(self.output / t["image"]).convert("RGB")
                    for i, t in enumerate(record["turns"])
                    if t["speaker"] == "client"
                }
                # An identity-pool face is absolute (joining keeps it as is); a rendered one is under the output.
                reference = Image.open(self.output / record["identity"]["image"]).convert("RGB")
                image_results, skipped = model_filters.score(record, images, reference)
                results += image_results
                flags += skipped
            else:
                flags.append("skipped:image_filters: disabled in the config (image_filters: false)")
            for result in results:
                scores[result.name] = float(result.score)
                if not result.passed:
                    flags.append(f"{FAILED_FLAG}{result.name}: {result.reason}")
            flags.append(JUDGED_FLAG)
        return records

    def run(self, stages: Iterable[str] = STAGE_GROUPS) -> dict[str, Any]:
        """Run the stage groups `text` (profiles, screenplays, expressions), `faces` and `filters`, in order.

        Under `accelerate launch` with several processes only `faces` may run (each process renders its share on
        its own device): the LLM stages would keep every other process waiting on a barrier for hours.
        """
        stages = tuple(stages)
        unknown = [s for s in stages if s not in STAGE_GROUPS]
        if unknown or not stages:
            raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGE_GROUPS)}")
        state = _partial_state()
        several = state is not None and state.num_processes > 1
        if several and set(stages) != {"faces"}:
            raise ValueError(
                "with several accelerate processes only the faces stage runs: `mirror generate --config X --stages "
                "text`, then `accelerate launch -m dataset_builder.generate --config X --stages faces`, then "
                "`mirror generate --config X --stages filters`"
            )
        main_process = state is None or state.is_main_process
        check_not_a_file(self.output, flag="--output_dir")  # before any stage touches it
        cache = ResponseCache(self.work / "llm-cache.jsonl")
        if "text" not in stages and not (self.output / MANIFEST).is_file():
            raise FileNotFoundError(f"{self.output} has no {MANIFEST}: run the text stage first (--stages text)")
        self._check_manifest()
        if "text" in stages:
            self.output.mkdir(parents=True, exist_ok=True)
            dataset, jobs = self.stage_profiles()
            atomic_write(self.output / MANIFEST, json.dumps(self._manifest(dataset), indent=2) + "\n")
            screenplays = self.stage_screenplays(jobs, CachedChat(lambda: self.backend, self.config.llm, cache))
            usable = [{"id": j["id"], "turns": screenplays[j["id"]]["turns"]} for j in jobs
                      if screenplays[j["id"]]["status"] == "ok"]
            settings = self.config.expression_llm or self.config.llm
            self.stage_expressions(usable, CachedChat(lambda: self.expression_backend, settings, cache))
        jobs, screenplays, records = self._records()
        if "faces" in stages:
            self.stage_faces(records, state)
        if "filters" not in stages or not main_process:
            return {"counts": {"sessions_planned": len(jobs), "screenplays_usable": len(records)}, "stages": stages}
        missing = [t["image"] for r in records for t in r["turns"]
                   if t["speaker"] == "client" and not (self.output / t["image"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} face image(s) missing (first: {missing[0]}): run the faces stage")
        records = self.stage_filters(records)
        failed = [j for j in jobs if screenplays[j["id"]]["status"] != "ok"]
        placeholders = {j["id"]: self.unusable_record(j, screenplays[j["id"]]) for j in failed}
        by_id = {r["id"]: r for r in records} | placeholders
        # The final shard is rewritten whole from the stage outputs: identical on every (re)run.
        shard = "".join(json.dumps(by_id[j["id"]], ensure_ascii=False) + "\n" for j in jobs)
        atomic_write(self.output / "sessions-00000.jsonl", shard)
        unusable = [{"id": j["id"], "reason": screenplays[j["id"]]["reason"]} for j in failed]
        counts = {
            "sessions_planned": len(jobs),
            "screenplays_usable": len(records),
            "unusable": len(unusable),
            "failed_filters": sum(any(f.startswith(FAILED_FLAG) for f in r["quality"]["flags"]) for r in records),
            "llm_cache_hits": cache.hits,
        }
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        report = {"counts": counts, "unusable": unusable, "finished_at": finished}
        atomic_write(self.output / "generation-report.json", json.dumps(report, indent=2) + "\n")
        dataset = jobs[0]["dataset"] if jobs else None
        atomic_write(self.output / MANIFEST, json.dumps(self._manifest(dataset, counts), indent=2) + "\n")
        return report

    def _records(self) -> tuple[list[dict], dict[str, dict], list[dict]]:
        """(jobs, screenplays, assembled records) from the finished text-stage shards; refuses incomplete ones."""
        jobs = list(read_shards(self.work / "profiles").values())
        screenplays, expressions = read_shards(self.work / "screenplays"), read_shards(self.work / "expressions")
        pending = [j["id"] for j in jobs if j["id"] not in screenplays]
        pending += [
            j["id"] for j in jobs if screenplays.get(j["id"], {}).get("status") == "ok" and j["id"] not in expressions
        ]
        if not jobs or pending:
            raise ValueError(
                f"the text stage is incomplete ({len(pending)} session(s) pending, e.g. "
                f"{pending[:1]}): run `mirror generate --config ... --stages text` first"
            )
        usable = [job for job in jobs if screenplays[job["id"]]["status"] == "ok"]
        return jobs, screenplays, [self.assemble(j, screenplays[j["id"]], expressions[j["id"]]) for j in usable]


def _partial_state():
    """accelerate's process state when launched with several processes, else None (plain single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return None
    from accelerate import PartialState

    return PartialState()


def generate(config: GenerateConfig, stages: Iterable[str] = STAGE_GROUPS, **parts: Any) -> dict[str, Any]:
    """Run a recipe; `parts` may inject ready backends (`backend`, `expression_backend`, `image_backend`, ...)."""
    return Generator(config, **parts).run(stages)


ARGUMENTS = (GenerateArguments,)


def main(args: GenerateArguments) -> int:
    from recipes import resolve_recipe

    config = load_config(
        resolve_recipe(args.config, kind="data"), {"output_dir": args.output_dir, "max_profiles": args.max_profiles}
    )
    if args.base_url:
        config.llm.base_url = args.base_url
        if config.expression_llm is not None:
            config.expression_llm.base_url = args.base_url
    stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    report = generate(config, stages=stages)
    counts = report["counts"]
    if "filters" not in stages or "unusable" not in counts:
        print(f"Ran {', '.join(stages)} for {counts['screenplays_usable']} session(s) in {config.output_dir}.")
        return 0
    print(
        f"Generated {counts['screenplays_usable']}/{counts['sessions_planned']} session(s) into "
        f"{config.output_dir} ({counts['unusable']} unusable, {counts['failed_filters']} failing a filter; "
        f"see generation-report.json and manifest.json)."
    )
    print(f"Next: mirror build --input {config.output_dir} --output <dataset folder>")
    return 0


if __name__ == "__main__":  # `accelerate launch -m dataset_builder.generate --config ... --stages faces`
    import sys

    import mirror_cli

    sys.exit(mirror_cli.main(["generate", *sys.argv[1:]], prog="python -m dataset_builder.generate"))
