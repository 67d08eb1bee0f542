"""Loading the Mirror `sft` config for training: one variant, checked before any model is loaded."""

from __future__ import annotations

import os
from typing import Any

from inference.prompts import SFT_TASKS, VARIANTS, VISION_VARIANTS, flatten_text_messages
from training.modeling import MirrorConfigError

# Tasks whose rows carry no image in every variant: the plan is asked for before any face is seen.
TEXT_ONLY_TASKS = ("plan",)
_PATH_PREFIXES = (".", "/", "~")


def resolve_dataset_path(name: str) -> str:
    """A local folder stays a path; anything else is a Hub id. A path-looking name that does not exist is an error:
    `datasets.load_dataset` would take it for a Hub repo id and fail with a confusing network error."""
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return expanded
    if name.startswith(_PATH_PREFIXES) or name.count("/") > 1:
        raise FileNotFoundError(
            f"Dataset folder {name!r} does not exist. Pass a folder built by the Mirror dataset builder or a Hub id "
            "such as `owner/name`."
        )
    return name


def load_sft_dataset(
    dataset_name: str,
    variant: str,
    *,
    config: str = "sft",
    split: str = "train",
    revision: str | None = None,
    tasks: list[str] | None = None,
    max_samples: int | None = None,
):
    """Load the `sft` config of a Mirror dataset and keep the rows of one variant (and optionally some tasks)."""
    import datasets

    if variant not in VARIANTS:
        raise MirrorConfigError(f"Unknown variant {variant!r}; expected one of {list(VARIANTS)}")
    if tasks is not None:
        unknown = [task for task in tasks if task not in SFT_TASKS]
        if unknown:
            raise MirrorConfigError(f"Unknown sft task(s) {unknown}; expected a subset of {list(SFT_TASKS)}")

    path = resolve_dataset_path(dataset_name)
    dataset = datasets.load_dataset(path, config, split=split, revision=revision)
    missing = [column for column in ("variant", "task", "messages", "images") if column not in dataset.column_names]
    if missing:
        raise MirrorConfigError(
            f"{dataset_name!r} (config {config!r}) is not a Mirror `sft` dataset: missing column(s) {missing}; "
            f"found {dataset.column_names}"
        )

    available = sorted(set(dataset.unique("variant")))
    if variant not in available:
        raise MirrorConfigError(
            f"The dataset {dataset_name!r} has no rows for variant {variant!r}; it has variants {available}. "
            "Rebuild the dataset with that variant or pick one of these."
        )
    dataset = dataset.filter(lambda v: v == variant, input_columns="variant", desc=f"Selecting variant {variant}")
    if tasks is not None:
        dataset = dataset.filter(lambda t: t in tasks, input_columns="task", desc=f"Selecting tasks {tasks}")
        if len(dataset) == 0:
            raise MirrorConfigError(f"Variant {variant!r} of {dataset_name!r} has no rows for tasks {tasks}")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))

    if variant in VISION_VARIANTS:
        _check_images_per_row(dataset, variant)
        return dataset.select_columns(["messages", "images"])
    return to_text_messages(dataset.select_columns(["messages"]))


def _check_images_per_row(dataset, variant: str) -> None:
    """Vision rows carry exactly one image (the client's face), `plan` rows none; counted without decoding any
    image."""
    import datasets

    counts = dataset.select_columns(["images", "task"]).cast_column(
        "images", datasets.List(datasets.Image(decode=False))
    )
    expected = [0 if task in TEXT_ONLY_TASKS else 1 for task in counts["task"]]
    bad = [i for i, (images, n) in enumerate(zip(counts["images"], expected, strict=True)) if len(images) != n]
    if bad:
        raise MirrorConfigError(
            f"Variant {variant!r} needs exactly one image per row (none on `plan` rows); {len(bad)} row(s) differ "
            f"(first: row {bad[0]}). The dataset folder may be incomplete: rebuild it with images embedded."
        )


def _flatten_content(messages: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        flat = flatten_text_messages(messages, strict=True)
    except ValueError as error:
        raise ValueError(f"A text variant row holds a non-text content block: {error}") from error
    return {"messages": [{"role": message["role"], "content": message["content"]} for message in flat]}


def to_text_messages(dataset):
    """Text-only rows with plain-string contents, the form every stock text chat template accepts (flattened by
    `inference.prompts.flatten_text_messages`, exactly as the inference backends flatten a prompt)."""
    return dataset.map(_flatten_content, input_columns="messages", desc="Flattening text messages")


def longest_row_length(
    dataset, processing_class, chat_template: str | None, vision: bool, batch_size: int = 32
) -> int:
    """Length in tokens of the longest row, exactly as the trainer tokenizes it: vision rows through TRL's own
    collator (so the processor's image-token expansion counts), text rows through the chat template."""
    if vision:
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        collator = DataCollatorForVisionLanguageModeling(processor=processing_class, chat_template=chat_template)
        longest = 0
        for start in range(0, len(dataset), batch_size):
            rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
            batch = collator([dict(row) for row in rows])
            longest = max(longest, int(batch["attention_mask"].sum(dim=1).max()))
        return longest
    encoded = processing_class.apply_chat_template(
        dataset["messages"], chat_template=chat_template, tokenize=True, return_dict=True
    )
    return max(map(len, encoded["input_ids"]), default=0)
