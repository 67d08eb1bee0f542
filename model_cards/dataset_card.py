"""Render the Mirror dataset card (README.md with YAML metadata) from plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TEMPLATE_DIR = Path(__file__).parent / "templates"


def render_dataset_card(
    metadata: dict[str, Any], *, licenses: list[str], pretty_name: str, stats: dict[str, Any]
) -> str:
    """Return the card text: YAML front matter (`configs:`, `dataset_info:`, licence, tags) and the body."""
    import jinja2

    front = {
        "pretty_name": pretty_name,
        "license": licenses[0] if len(licenses) == 1 else "other",
        "language": ["en"],
        "task_categories": ["image-text-to-text"],
        "tags": ["cbt", "psychotherapy", "synthetic", "multimodal", "resistance", "research-only"],
        "size_categories": [_size_category(stats["num_rows"]["sessions"])],
        **metadata,
    }
    if len(licenses) > 1:
        front["license_details"] = "Mixed: " + ", ".join(licenses)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), keep_trailing_newline=True,
                                     autoescape=False)
    body = environment.get_template("dataset_card.md.jinja").render(
        pretty_name=pretty_name, licenses=licenses, stats=stats
    )
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=119)
    return f"---\n{header}---\n\n{body}"


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"
