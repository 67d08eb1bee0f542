"""Model cards for MIRROR therapist models: a Markdown template plus a small renderer fed with plain data.

The card carries the Hub metadata (license, base_model, datasets, tags, pipeline_tag, library_name) as YAML front
matter, then what a reader needs: intended use (non-clinical research only, not a medical device), a crisis-safety
note, how the model was trained (dataset, variant, recipe, hyperparameters, framework versions) and its limitations.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).parent / "templates"
MODEL_CARD_TEMPLATE = TEMPLATE_DIR / "model_card.md.jinja"

FINETUNING_METHODS = ("lora", "qlora", "full")

# What each `sft` variant teaches (ARCHITECTURE §5). Plain text: model_cards imports no other project package.
VARIANT_DESCRIPTIONS = {
    "base": "The prompt holds the client's current face image, their profile and the verbal history; the target is "
    "the therapist's next statement.",
    "planning": "As `base`, plus the session's CBT technique and plan in the prompt (at inference the plan is "
    "generated once per session).",
    "ec_planning": "As `planning`, plus an emotion-recognition task (target: a caption of the client's facial "
    "expression and body language); at inference the model first captions the client's face, then answers with "
    "that caption in the prompt.",
    "text": "Text-only baseline: the client's profile and verbal history, no image; the target is the therapist's "
    "next statement.",
}


@dataclass
class ModelCardInfo:
    """Everything a model card says, as plain data."""

    model_name: str = field(metadata={"help": "Title of the card, usually the output folder or Hub repo name."})
    base_model: str = field(metadata={"help": "Hub id (or path) of the model that was fine-tuned."})
    variant: str = field(metadata={"help": "Mirror `sft` variant the model was trained on."})
    finetuning: str = field(default="lora", metadata={"help": "One of lora, qlora, full."})
    adapter: bool = field(default=True, metadata={"help": "True for a PEFT adapter folder, False for full weights."})
    vision: bool = field(default=True, metadata={"help": "True for a vision-language model (image-text-to-text)."})
    license: str = field(default="other", metadata={"help": "License of the weights (inherits the base model's)."})
    dataset: str | None = field(default=None, metadata={"help": "Dataset the model was trained on (id or path)."})
    dataset_hub_id: str | None = field(
        default=None, metadata={"help": "Hub id of the dataset for the `datasets:` metadata; omitted when None."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id of this model, if pushed."})
    recipe: str | None = field(default=None, metadata={"help": "Recipe file the model was trained with."})
    hyperparameters: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Training hyperparameters, name -> value."}
    )
    training_results: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Final training metrics (train_loss, steps, runtime...)."}
    )
    framework_versions: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Package name -> version used for training."}
    )
    generation: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Default sampling settings stored in generation_config.json."}
    )
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra Hub tags."})
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Languages of the training data."})
    variant_description: str | None = field(
        default=None, metadata={"help": "Overrides the built-in description of the variant."}
    )

    def __post_init__(self):
        if self.finetuning not in FINETUNING_METHODS:
            raise ValueError(f"Unknown fine-tuning method {self.finetuning!r}; expected one of {FINETUNING_METHODS}")
        if not self.model_name or not self.base_model or not self.variant:
            raise ValueError("A model card needs model_name, base_model and variant")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repo id (`owner/name`) rather than a local path."""
    return bool(name) and _HUB_ID.match(name) is not None and ".." not in name


def _as_info(info: ModelCardInfo | dict[str, Any]) -> ModelCardInfo:
    if isinstance(info, ModelCardInfo):
        return info
    known = {f.name for f in dataclasses.fields(ModelCardInfo)}
    unknown = sorted(set(info) - known)
    if unknown:
        raise ValueError(f"Unknown model card fields: {unknown}; known fields: {sorted(known)}")
    return ModelCardInfo(**info)


def model_card_metadata(info: ModelCardInfo | dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata block (Hub model card spec), as a dict."""
    info = _as_info(info)
    tags = [
        "mirror",
        "cognitive-behavioral-therapy",
        "counseling-research",
        "trl",
        "sft",
        info.finetuning,
        f"variant-{info.variant}",
        "vision-language" if info.vision else "text-only",
    ]
    tags += [tag for tag in info.tags if tag not in tags]
    metadata: dict[str, Any] = {
        "license": info.license,
        "language": list(info.language),
        "library_name": "peft" if info.adapter else "transformers",
        "pipeline_tag": "image-text-to-text" if info.vision else "text-generation",
        "tags": tags,
    }
    if is_hub_id(info.base_model):
        metadata["base_model"] = info.base_model
    if info.dataset_hub_id:
        metadata["datasets"] = [info.dataset_hub_id]
    if not info.adapter:
        metadata["base_model_relation"] = "finetune"
    return metadata


def render_model_card(info: ModelCardInfo | dict[str, Any]) -> str:
    """Render the model card (YAML front matter + Markdown) for `info`."""
    import jinja2
    import yaml

    info = _as_info(info)
    metadata = yaml.safe_dump(model_card_metadata(info), sort_keys=False, allow_unicode=True).strip()
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    template = environment.get_template(MODEL_CARD_TEMPLATE.name)
    return template.render(
        metadata=metadata,
        info=info,
        base_model_is_hub_id=is_hub_id(info.base_model),
        variant_description=info.variant_description or VARIANT_DESCRIPTIONS.get(info.variant, ""),
        method={"lora": "LoRA", "qlora": "QLoRA (4-bit base model)", "full": "full fine-tuning"}[info.finetuning],
    )
