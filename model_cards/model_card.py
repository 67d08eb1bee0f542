"""Model cards for MIRROR therapist models: `ModelCardData` metadata + a Jinja template, fed with plain data.

The template's quick-start snippet is tested: tests/test_cards.py runs it against a tiny model folder.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from model_cards.dataset_card import PAPER_CITATION
from model_cards.licenses import license_name

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
    eval_results: list[Any] = field(
        default_factory=list,
        metadata={
            "help": "Evaluation results for the `model-index` metadata: `huggingface_hub.EvalResult`s (e.g. from "
            "`evaluation.report.model_index_results`) or dicts of EvalResult's fields."
        },
    )
    evaluation_notes: list[str] = field(
        default_factory=list, metadata={"help": "Caveats of the evaluation run, shown with its results."}
    )
    evaluation_report: str | None = field(
        default=None, metadata={"help": "Where the full evaluation report lives (a file in the repo or a URL)."}
    )

    def __post_init__(self):
        if self.finetuning not in FINETUNING_METHODS:
            raise ValueError(f"Unknown fine-tuning method {self.finetuning!r}; expected one of {FINETUNING_METHODS}")
        if not self.model_name or not self.base_model or not self.variant:
            raise ValueError("A model card needs model_name, base_model and variant")
        self.eval_results = [self._public_dataset(_as_eval_result(result)) for result in self.eval_results]

    def _public_dataset(self, result):
        """An evaluation on a local dataset folder names it by Hub id (or folder name), never by local path."""
        if is_hub_id(result.dataset_type):
            return result
        return dataclasses.replace(result, dataset_type=self.dataset_hub_id or display_name(result.dataset_type))


def _as_eval_result(result: Any):
    if isinstance(result, EvalResult):
        return result
    if isinstance(result, dict):
        try:
            return EvalResult(**result)
        except TypeError as err:
            raise ValueError(f"Bad evaluation result {result!r}: {err}") from None
    raise ValueError(f"Evaluation results must be EvalResult objects or dicts, got {type(result).__name__}")


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


# Terms a reader must know about the base model's licence, for the ones MIRROR recipes use.
BASE_LICENSE_TERMS = {
    "llama2": "Use is governed by the Llama 2 Community License and Meta's Acceptable Use Policy "
    "(https://ai.meta.com/llama/license/), which, among other things, forbid uses that harm people and require "
    "a separate licence above 700 million monthly active users.",
    "llama3": "Use is governed by the Meta Llama 3 Community License and its Acceptable Use Policy "
    '(https://llama.meta.com/llama3/license/); redistributions must say "Built with Meta Llama 3".',
    "apache-2.0": "The Apache License 2.0 applies (https://www.apache.org/licenses/LICENSE-2.0): keep the licence "
    "and notices, state changes.",
    "other": "The base model's own terms apply: read its model card before use or redistribution.",
}


def _card_data(info: ModelCardInfo):
    tags = ["mirror", "cognitive-behavioral-therapy", "counseling-research", "research-only", "trl", "sft"]
    tags += [info.finetuning, f"variant-{info.variant}", "vision-language" if info.vision else "text-only"]
    tags += [tag for tag in info.tags if tag not in tags]
    return ModelCardData(
        license=info.license,
        language=list(info.language),
        library_name="peft" if info.adapter else "transformers",
        pipeline_tag="image-text-to-text" if info.vision else "text-generation",
        tags=tags,
        base_model=info.base_model if is_hub_id(info.base_model) else None,
        datasets=[info.dataset_hub_id] if info.dataset_hub_id else None,
        model_name=info.hub_model_id or info.model_name,
        eval_results=info.eval_results or None,
        mirror={"variant": info.variant},
        base_model_relation=None if info.adapter else "finetune",  # None: left out of the metadata
    )


def display_name(name: str | None) -> str:
    """A Hub id as is; a local path as its folder name only (a card must not leak the machine's paths)."""
    return name if is_hub_id(name) else Path(name or "").name


def _recipe_display(recipe: str | None) -> str | None:
    """`recipes/<model>/<variant>.yaml` for a bundled recipe (wherever the package lives), else the file name."""
    if not recipe:
        return None
    posix = Path(recipe).as_posix()
    return posix[posix.rindex("recipes/") :] if "recipes/" in posix else Path(recipe).name


def render_model_card(info: ModelCardInfo | dict[str, Any]) -> str:
    """The model card for `info` (YAML front matter + Markdown), from `huggingface_hub.ModelCard.from_template`."""
    info = _as_info(info)
    results = [
        {
            "dataset": f"{r.dataset_name} ({r.dataset_config or 'default'}, {r.dataset_split or 'n/a'})",
            "metric": r.metric_name or r.metric_type,
            "value": r.metric_value,
        }
        for r in info.eval_results
    ]
    card = ModelCard.from_template(
        _card_data(info),
        template_path=str(MODEL_CARD_TEMPLATE),
        info=info,
        base_model_display=display_name(info.base_model),
        base_model_is_hub_id=is_hub_id(info.base_model),
        dataset_display=info.dataset_hub_id or display_name(info.dataset),
        recipe_display=_recipe_display(info.recipe),
        model_ref=info.hub_model_id or f"<user>/{info.model_name}",
        dataset_ref=info.dataset_hub_id or "<user>/mirror",
        variant_description=info.variant_description or VARIANT_DESCRIPTIONS.get(info.variant, ""),
        method={"lora": "LoRA", "qlora": "QLoRA (4-bit base model)", "full": "full fine-tuning"}[info.finetuning],
        license_full_name=license_name(info.license),
        license_terms=BASE_LICENSE_TERMS.get(info.license, BASE_LICENSE_TERMS["other"]),
        results=results,
        citation=PAPER_CITATION,
    )
    return str(card)
