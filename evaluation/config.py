"""The evaluation config: one YAML file (`recipes/eval/<name>.yaml`) read into dataclasses, unknown keys refused."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .client import ClientConfig
from .faces import FaceLoopConfig

MODEL_BACKENDS = ("endpoint", "transformers", "vllm", "scripted")


@dataclass
class ModelSpec:
    """A chat model: a local folder / Hub id (transformers, vllm), an OpenAI-compatible server, or a scripted
    offline stand-in (`evaluation.scripted`, for smoke runs and tests)."""

    model: str = field(metadata={"help": "Model folder, Hub id, served model name, or scripted role."})
    backend: str = field(default="endpoint", metadata={"help": "endpoint | transformers | vllm | scripted"})
    base_url: str | None = field(
        default=None, metadata={"help": "Server URL (endpoint), e.g. http://127.0.0.1:8000/v1"}
    )
    api_key_env: str | None = field(default=None, metadata={"help": "Environment variable holding the API key."})
    revision: str | None = field(default=None, metadata={"help": "Model revision (transformers, vllm)."})
    supports_images: bool = field(default=False, metadata={"help": "The endpoint model sees images."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds per endpoint request."})
    max_retries: int = field(default=3, metadata={"help": "Endpoint retries of transient failures."})
    max_concurrency: int = field(default=8, metadata={"help": "Parallel endpoint requests in a batch."})
    device: str | None = field(default=None, metadata={"help": "Torch device (transformers)."})
    dtype: str | None = field(default=None, metadata={"help": "Torch dtype (transformers, vllm)."})
    latency: float = field(default=0.0, metadata={"help": "Scripted backends only: seconds each call sleeps."})

    def __post_init__(self) -> None:
        if self.backend not in MODEL_BACKENDS:
            raise ValueError(f"model backend must be one of {list(MODEL_BACKENDS)}, got {self.backend!r}")
        if self.backend == "endpoint" and not self.base_url:
            raise ValueError(f"model {self.model!r}: backend 'endpoint' needs base_url")

    @property
    def identity(self) -> tuple[str, str]:
        """What makes two specs the same model (used to keep the judge apart from the therapists)."""
        where = (self.base_url or "").rstrip("/").removesuffix("/v1") if self.backend == "endpoint" else self.backend
        return (where, str(Path(self.model).expanduser().resolve()) if Path(self.model).exists() else self.model)


@dataclass
class TherapistSpec:
    """One therapist under test: a model and a strategy."""

    name: str = field(metadata={"help": "Label in reports and folder names (letters, digits, . _ -)."})
    model: ModelSpec = field(metadata={"help": "The therapist model."})
    strategy: str | None = field(
        default=None, metadata={"help": "base | planning | ec_planning | text | cactus_plan; default: the model's."}
    )
    prompt_version: str = field(default="v1", metadata={"help": "Therapist prompt version."})
    temperature: float = field(default=0.7, metadata={"help": "Therapist sampling temperature."})
    top_p: float = field(default=0.9, metadata={"help": "Therapist nucleus sampling mass."})
    max_new_tokens: int = field(default=128, metadata={"help": "Therapist reply budget."})

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            raise ValueError(f"therapist name {self.name!r}: use letters, digits, '.', '_' or '-'")


@dataclass
class JudgeConfig:
    rubrics: list[str] = field(
        default_factory=lambda: ["ctrs", "alliance", "panas"], metadata={"help": "Rubric names or YAML paths."}
    )
    rubric_version: str = field(default="v1", metadata={"help": "Version of the bundled rubrics."})
    max_retries: int = field(default=2, metadata={"help": "Extra asks after an unreadable answer."})
    backoff: float = field(default=1.0, metadata={"help": "First wait (s) before a retry round; doubles."})
    max_new_tokens: int = field(default=256, metadata={"help": "Judge answer budget."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Response cache folder; default <output_dir>/judge_cache."}
    )


@dataclass
class ReferenceConfig:
    enabled: bool = field(default=True, metadata={"help": "Compute reference metrics on gold sessions."})
    sessions_config: str = field(default="sessions", metadata={"help": "Dataset config with gold sessions."})
    split: str = field(default="test", metadata={"help": "Held-out split of gold sessions."})
    max_sessions: int | None = field(default=None, metadata={"help": "Cap on gold sessions (None: all)."})
    max_turns_per_session: int | None = field(default=None, metadata={"help": "Cap on therapist turns per session."})
    batch_size: int = field(default=8, metadata={"help": "Therapist replies generated per batch."})


@dataclass
class ReportConfig:
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap resamples for confidence intervals."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    seed: int = field(default=0, metadata={"help": "Bootstrap seed."})
    notes: list[str] = field(default_factory=list, metadata={"help": "Lines added to the report (caveats)."})
    dataset_id: str | None = field(
        default=None, metadata={"help": "Hub dataset id cited in model-index results; default: `dataset`."}
    )


@dataclass
class EvalConfig:
    """`mirror evaluate --config recipes/eval/<name>.yaml`."""

    output_dir: str = field(metadata={"help": "Run folder (sessions, judgements, report, manifest)."})
    dataset: str = field(metadata={"help": "Mirror dataset folder or Hub id (profiles and gold sessions)."})
    therapists: list[TherapistSpec] = field(metadata={"help": "Therapists under test."})
    client_model: ModelSpec | None = field(default=None, metadata={"help": "The virtual client's model."})
    judge_model: ModelSpec | None = field(default=None, metadata={"help": "The judge model (not a therapist)."})
    expression_model: ModelSpec | None = field(
        default=None, metadata={"help": "Model writing face expressions (faces.expression_source: llm)."}
    )
    profiles_config: str = field(default="profiles", metadata={"help": "Dataset config of the test profiles."})
    profiles_split: str = field(default="test", metadata={"help": "Split of the test profiles."})
    max_profiles: int | None = field(default=None, metadata={"help": "Cap on profiles (None: all)."})
    resistance: list[str] | None = field(default=None, metadata={"help": "Only these resistance styles."})
    concurrency: int = field(default=4, metadata={"help": "Sessions run at the same time."})
    seed: int = field(default=0, metadata={"help": "Base seed of clients, therapists and faces."})
    simulate: bool = field(default=True, metadata={"help": "Run simulated sessions (client + judge)."})
    safety_screening: bool = field(
        default=True,
        metadata={"help": "Record the crisis detector's verdict on every client turn (the layer never acts)."},
    )
    safety_use_embeddings: bool = field(
        default=True, metadata={"help": "Crisis screening with the MiniLM crisis classifier (else the lexicon only)."}
    )
    retry_failed: bool = field(default=False, metadata={"help": "On resume, run failed sessions again."})
    allow_judge_is_therapist: bool = field(
        default=False, metadata={"help": "Allow a judge that is also a therapist under test (biased; warned)."}
    )
    client: ClientConfig = field(default_factory=ClientConfig, metadata={"help": "Virtual client settings."})
    faces: FaceLoopConfig = field(default_factory=FaceLoopConfig, metadata={"help": "Face loop settings."})
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Judge settings."})
    reference: ReferenceConfig = field(default_factory=ReferenceConfig, metadata={"help": "Reference metrics."})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "Report settings."})

    def __post_init__(self) -> None:
        if not self.therapists:
            raise ValueError("config lists no therapists")
        names = [t.name for t in self.therapists]
        if len(set(names)) != len(names):
            raise ValueError(f"therapist names must be unique, got {names}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.simulate and (self.client_model is None or self.judge_model is None):
            raise ValueError("simulate: true needs client_model and judge_model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_dict(cls: type, data: Any, where: str = "config"):
    """Build dataclass `cls` from plain data, recursively; unknown keys and missing required keys are errors."""
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise ValueError(f"{where}: {error}") from None


def _convert(hint: Any, value: Any, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        return [from_dict(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def load_eval_config(path: str | os.PathLike, **overrides: Any) -> EvalConfig:
    """Read an eval YAML; relative paths in `dataset` and `output_dir` are kept as written (relative to the
    working folder), `overrides` replace top-level keys."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(EvalConfig, data, str(path))
