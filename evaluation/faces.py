"""The face loop for vision therapists: expression -> face image -> verification, up to N attempts (ARCHITECTURE §6).

The expression is the stage direction, or an LLM's expression and contrasting one; the face comes from any
`ImageBackend`; the paper's checks run where their models are configured (CLIP similarity with "A facial photo with
{stage direction}" >= 0.2, identity similarity to the reference face >= 0.3, NSFW). Every attempt (new seed) is
recorded with each check's score; when none passes, `use_last` keeps the last image unverified, `fail` fails.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

logger = logging.getLogger(__name__)

PROMPT_DIR = Path(__file__).parent / "prompts"
CLIP_TEMPLATE = "A facial photo with {text}"


@dataclass
class Check:
    """One verifier's verdict on one image."""

    name: str
    passed: bool
    score: float | None
    threshold: float | None
    detail: str | None = None


@runtime_checkable
class FaceVerifier(Protocol):
    name: str

    def check(self, image: Image.Image, *, description: str, reference: Image.Image | None) -> Check: ...


def _cosine(a, b) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).reshape(-1)[0])


class ClipTextVerifier:
    """CLIP image-text similarity of the face with "A facial photo with {stage direction}" (paper: >= 0.2)."""

    def __init__(self, model: str, threshold: float = 0.2, template: str = CLIP_TEMPLATE, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.name = f"clip_text({model})"
        self.threshold, self.template, self.device = threshold, template, device
        self.model = CLIPModel.from_pretrained(model, use_safetensors=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(model)

    def check(self, image: Image.Image, *, description: str, reference: Image.Image | None = None) -> Check:
        import torch

        text = [self.template.format(text=description)]
        inputs = self.processor(text=text, images=[image], return_tensors="pt", padding=True, truncation=True)
        inputs = inputs.to(self.device)
        with torch.no_grad():
            output = self.model(**inputs)
        score = _cosine(output.image_embeds, output.text_embeds)
        return Check(self.name, score >= self.threshold, score, self.threshold)


class IdentityVerifier:
    """Cosine similarity of image embeddings of the face and the client's reference face (paper: >= 0.3).

    Any transformers vision model by id or path: CLIP-style models use their projected image features, others the
    pooled output (a face-recognition backbone is the right choice for real runs).
    """

    def __init__(self, model: str, threshold: float = 0.3, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModel

        self.name = f"identity({model})"
        self.threshold, self.device = threshold, device
        self.model = AutoModel.from_pretrained(model, use_safetensors=True).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model)

    def embed(self, image: Image.Image):
        import torch

        inputs = self.processor(images=[image.convert("RGB")], return_tensors="pt").to(self.device)
        with torch.no_grad():
            if hasattr(self.model, "get_image_features"):
                features = self.model.get_image_features(**inputs)
                return getattr(features, "pooler_output", features)
            output = self.model(**inputs)
        pooled = getattr(output, "image_embeds", None)
        if pooled is None:
            pooled = getattr(output, "pooler_output", None)
        return pooled if pooled is not None else output.last_hidden_state.mean(dim=1)

    def check(self, image: Image.Image, *, description: str, reference: Image.Image | None) -> Check:
        if reference is None:
            raise ValueError("the identity check needs the client's reference face")
        score = _cosine(self.embed(image), self.embed(reference))
        return Check(self.name, score >= self.threshold, score, self.threshold)


class NSFWVerifier:
    """An image-classification model by id or path; fails when its NSFW labels' probability reaches the threshold."""

    NSFW_LABELS = ("nsfw", "porn", "hentai", "sexy", "explicit", "unsafe")

    def __init__(
        self,
        model: str,
        threshold: float = 0.5,
        device: str = "cpu",
        labels: tuple[str, ...] | list[str] = NSFW_LABELS,
    ):
        from transformers import pipeline

        self.name = f"nsfw({model})"
        self.threshold = threshold
        self.labels = tuple(label.lower() for label in labels)
        self.pipe = pipeline(
            "image-classification", model=model, device=device, model_kwargs={"use_safetensors": True}
        )
        model_labels = [str(label) for label in self.pipe.model.config.id2label.values()]
        # A model without any configured label would score every image 0 and pass everything: refuse it up front.
        if not any(label.lower() in self.labels for label in model_labels):
            raise ValueError(
                f"NSFW model {model!r} has labels {model_labels}, none of the configured NSFW labels "
                f"{list(self.labels)} (faces.nsfw_labels)"
            )

    def check(self, image: Image.Image, *, description: str, reference: Image.Image | None = None) -> Check:
        # top_k=None means the top 5 in the image-classification pipeline: ask for every label so none is dropped.
        scores = self.pipe(image.convert("RGB"), top_k=self.pipe.model.config.num_labels)
        score = sum(s["score"] for s in scores if s["label"].lower() in self.labels)
        return Check(self.name, score < self.threshold, score, self.threshold)


@dataclass
class FaceLoopConfig:
    """Settings of the face loop (vision therapists only)."""

    image_backend: str = field(default="embedded", metadata={"help": "Image backend name (get_image_backend)."})
    image_backend_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Keyword arguments of the image backend."}
    )
    expression_source: str = field(
        default="stage_direction",
        metadata={
            "help": "stage_direction: draw the client's stage direction; llm: ask `expression_model` for an "
            "expression and a contrasting one (like the generation step)."
        },
    )
    expression_prompt_version: str = field(default="v1", metadata={"help": "evaluation/prompts/expression_*.yaml"})
    max_attempts: int = field(default=10, metadata={"help": "Renders per client turn, each with a new seed."})
    clip_model: str | None = field(default=None, metadata={"help": "CLIP model id/path for the image-text check."})
    clip_threshold: float = field(default=0.2, metadata={"help": "Minimum CLIP image-text similarity."})
    identity_model: str | None = field(default=None, metadata={"help": "Vision model id/path for the identity check."})
    identity_threshold: float = field(default=0.3, metadata={"help": "Minimum identity similarity to the reference."})
    nsfw_model: str | None = field(default=None, metadata={"help": "Image classifier id/path for the NSFW check."})
    nsfw_threshold: float = field(default=0.5, metadata={"help": "NSFW probability that fails an image."})
    nsfw_labels: list[str] = field(
        default_factory=lambda: list(NSFWVerifier.NSFW_LABELS),
        metadata={"help": "Labels of nsfw_model (any case) whose probabilities add up to the NSFW score."},
    )
    on_failure: str = field(
        default="use_last",
        metadata={"help": "When no attempt passes: use_last (keep the last image, mark it unverified) or fail."},
    )
    device: str = field(default="cpu", metadata={"help": "Torch device of the verifier models."})

    def __post_init__(self) -> None:
        if self.expression_source not in ("stage_direction", "llm"):
            raise ValueError(f"faces.expression_source must be stage_direction or llm, got {self.expression_source!r}")
        if self.on_failure not in ("use_last", "fail"):
            raise ValueError(f"faces.on_failure must be use_last or fail, got {self.on_failure!r}")
        if self.max_attempts < 1:
            raise ValueError("faces.max_attempts must be at least 1")
        if isinstance(self.nsfw_labels, str) or not self.nsfw_labels:
            raise ValueError(f"faces.nsfw_labels must be a non-empty list of labels, got {self.nsfw_labels!r}")

    def build_verifiers(self) -> list[FaceVerifier]:
        verifiers: list[FaceVerifier] = []
        if self.nsfw_model:
            verifiers.append(NSFWVerifier(self.nsfw_model, self.nsfw_threshold, self.device, self.nsfw_labels))
        if self.clip_model:
            verifiers.append(ClipTextVerifier(self.clip_model, self.clip_threshold, device=self.device))
        if self.identity_model:
            verifiers.append(IdentityVerifier(self.identity_model, self.identity_threshold, self.device))
        return verifiers


class FaceLoopFailure(RuntimeError):
    def __init__(self, reason: str, attempts: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


@dataclass
class FaceResult:
    image: Image.Image
    verified: bool
    expression: str
    contrast_expression: str | None
    attempts: list[dict[str, Any]]  # {"seed", "sha256", "passed", "checks": [...]}
    expression_raw: str | None = None


def image_sha256(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes() + repr((image.mode, image.size)).encode()).hexdigest()


@functools.cache
def _expression_prompt(version: str) -> dict[str, Any]:
    import yaml

    path = PROMPT_DIR / f"expression_{version}.yaml"
    if not path.is_file():
        raise ValueError(f"Unknown expression prompt version {version!r} ({path})")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


_EXPRESSION = re.compile(r"^\s*[*_]*expression[*_]*\s*:\s*(.+)$", re.I | re.M)
_CONTRAST = re.compile(r"^\s*[*_]*contrast[*_]*\s*:\s*(.+)$", re.I | re.M)


class FaceLoop:
    """Renders and verifies the client's face for each client turn."""

    def __init__(
        self,
        image_backend: Any,
        verifiers: list[FaceVerifier] | None = None,
        config: FaceLoopConfig | None = None,
        expression_backend: Any = None,
    ) -> None:
        self.image_backend = image_backend
        self.verifiers = list(verifiers or [])
        self.config = config or FaceLoopConfig()
        self.expression_backend = expression_backend
        if self.config.expression_source == "llm" and expression_backend is None:
            raise ValueError("faces.expression_source 'llm' needs an expression model (faces model in the config)")

    def expression(self, stage_direction: str, statement: str, seed: int) -> tuple[str, str | None, str | None]:
        """(expression, contrasting expression, the LLM's raw answer)."""
        if self.config.expression_source == "stage_direction":
            return stage_direction, None, None
        from inference.backends.base import GenerationConfig, text_message

        prompt = _expression_prompt(self.config.expression_prompt_version)["request"].format(
            stage_direction=stage_direction, statement=statement or "(nothing)"
        )
        config = GenerationConfig(temperature=0.7, top_p=0.9, max_new_tokens=64, seed=seed)
        raw = self.expression_backend.chat([text_message("user", prompt)], None, config)
        expression, contrast = _EXPRESSION.search(raw or ""), _CONTRAST.search(raw or "")
        if not expression:  # recorded: the stage direction stands in for an unreadable answer
            logger.warning("expression model answer has no 'Expression:' line; drawing the stage direction")
            return stage_direction, None, raw
        return expression.group(1).strip(), contrast.group(1).strip() if contrast else None, raw

    def render(
        self,
        *,
        identity_key: str,
        gender: str | None,
        age: int | None,
        stage_direction: str,
        statement: str,
        reference: Image.Image | None,
        seed: int,
    ) -> FaceResult:
        from dataset_builder.images import FaceRequest

        expression, contrast, raw = self.expression(stage_direction, statement, seed)
        request = FaceRequest(identity_key, expression, gender=gender, age=age, contrast_expression=contrast)
        attempts: list[dict[str, Any]] = []
        image = None
        for attempt in range(self.config.max_attempts):
            request = dataclasses.replace(request, seed=seed + attempt)
            image = self.image_backend.render(request)
            checks = [v.check(image, description=stage_direction, reference=reference) for v in self.verifiers]
            passed = all(c.passed for c in checks)
            attempt_record = {"seed": request.seed, "sha256": image_sha256(image), "passed": passed}
            attempts.append({**attempt_record, "checks": [c.__dict__ for c in checks]})
            if passed:
                return FaceResult(image, True, expression, contrast, attempts, raw)
        failed = sorted({c["name"] for a in attempts for c in a["checks"] if not c["passed"]})
        reason = f"no face passed {failed} in {len(attempts)} attempt(s)"
        if self.config.on_failure == "fail":
            raise FaceLoopFailure(reason, attempts)
        logger.warning("%s for %s; using the last image, recorded as unverified", reason, identity_key)
        return FaceResult(image, False, expression, contrast, attempts, raw)
