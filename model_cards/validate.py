"""Offline checks of a rendered card before anything is uploaded, and the Hub's own check when it can be reached.

Offline (`check_card`): the YAML metadata parses, licence ids are Hub ids, the required sections are there and a
dataset folder is publishable (no CelebA faces, no unknown provenance unless allowed). `RepoCard.validate()` posts
the card to the Hub, so `validate_on_hub` runs it only when the Hub is reachable (not in offline mode).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, ModelCard, constants

from model_cards.dataset_card import UNKNOWN_PROVENANCE_LICENSE_NAME
from model_cards.licenses import HUB_LICENSES

REQUIRED_SECTIONS = {
    "dataset": (
        "Configs",
        "Fields",
        "Synthetic data disclosure",
        "Faces",
        "Composition: demographics per resistance style",
        "Filtering",
        "Licence and sources",
        "Intended use",
        "Limitations and risks",
        "Citation",
    ),
    "model": (
        "Intended use",
        "Out-of-scope use",
        "Crisis safety",
        "Model details",
        "How to use",
        "Training",
        "Evaluation",
        "Limitations and risks",
        "Licence",
        "Citation",
    ),
}
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


class CardValidationError(ValueError):
    """A card that must not be published; the message lists every problem."""


def load_card(card: str | Path, repo_type: str):
    """Parse card text or a README.md path into a `ModelCard` / `DatasetCard` (raises on broken YAML)."""
    cls = DatasetCard if repo_type == "dataset" else ModelCard
    text = card.read_text(encoding="utf-8") if isinstance(card, Path) else card
    if not text.startswith("---"):
        raise CardValidationError("the card has no YAML metadata block (it must start with '---')")
    try:
        return cls(text, ignore_metadata_errors=False)
    except Exception as err:  # yaml.YAMLError, ValueError from the model-index parser...
        raise CardValidationError(f"the card's YAML metadata does not parse: {' '.join(str(err).split())}") from None


def card_problems(
    card: str | Path, repo_type: str, *, folder: Path | None = None, allow_unknown_license: bool = False
) -> list[str]:
    """Every reason the card is not fit to publish (empty when it is)."""
    if repo_type not in REQUIRED_SECTIONS:
        raise ValueError(f"repo_type must be one of {sorted(REQUIRED_SECTIONS)}, got {repo_type!r}")
    try:
        parsed = load_card(card, repo_type)
    except CardValidationError as err:
        return [str(err)]
    data: dict[str, Any] = parsed.data.to_dict()
    problems = []
    licenses = data.get("license") or []
    licenses = [licenses] if isinstance(licenses, str) else licenses
    if not licenses:
        problems.append("no `license:` in the metadata")
    for license_id in licenses:
        if license_id not in HUB_LICENSES:
            problems.append(
                f"licence id {license_id!r} is not a Hub licence id (see model_cards/licenses.py, from "
                "https://huggingface.co/docs/hub/repositories-licenses)"
            )
    if "other" in licenses and not data.get("license_name"):
        hint = " (for a model: the recipe's `model_license`, the base model's Hub licence id)"
        problems.append(f"`license: other` needs a `license_name`{hint if repo_type == 'model' else ''}")
    if data.get("license_name") == UNKNOWN_PROVENANCE_LICENSE_NAME and not allow_unknown_license:
        problems.append(
            "the data has records of unknown provenance, so its licence is unknown (see the card's Licence "
            "section); settle it, or pass allow_unknown_license after checking it yourself"
        )
    headings = {match.strip() for match in _HEADING.findall(parsed.text)}
    missing = [section for section in REQUIRED_SECTIONS[repo_type] if section not in headings]
    if missing:
        problems.append(f"missing section(s): {', '.join(missing)}")
    if repo_type == "dataset":
        celeba = (data.get("mirror") or {}).get("celeba_reference_faces") or 0
        if celeba:
            problems.append(f"{celeba} record(s) use CelebA reference faces, which may not be redistributed")
        configs = data.get("configs") or []
        if not configs:
            problems.append("no `configs:` in the metadata")
        if folder is not None:
            for config in configs:
                for entry in config.get("data_files") or []:
                    paths = entry.get("path")
                    for pattern in [paths] if isinstance(paths, str) else paths or []:
                        if not any(p.is_file() for p in folder.glob(pattern)):
                            problems.append(f"config {config.get('config_name')!r}: no file matches {pattern!r}")
    if repo_type == "model" and not data.get("pipeline_tag"):
        problems.append("no `pipeline_tag:` in the metadata")
    return problems


def check_card(
    card: str | Path, repo_type: str, *, folder: Path | None = None, allow_unknown_license: bool = False
) -> None:
    """Raise `CardValidationError` listing every problem of the card (offline)."""
    problems = card_problems(card, repo_type, folder=folder, allow_unknown_license=allow_unknown_license)
    if problems:
        where = f"{card}" if isinstance(card, Path) else f"{repo_type} card"
        raise CardValidationError(f"{where}: " + "; ".join(problems))


def hub_reachable() -> bool:
    """False in offline mode (`HF_HUB_OFFLINE=1`): then `RepoCard.validate()` is not attempted."""
    return not constants.HF_HUB_OFFLINE


def validate_on_hub(card: str | Path, repo_type: str) -> bool:
    """`RepoCard.validate()` (the Hub's own YAML check) when the Hub is reachable; returns whether it ran."""
    if not hub_reachable():
        return False
    load_card(card, repo_type).validate(repo_type=repo_type)
    return True
