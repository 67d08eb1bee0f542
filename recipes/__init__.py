"""Bundled recipes (YAML), shipped as package data so `--config <name>` works from any folder.

Layout follows alignment-handbook: `recipes/<model>/<variant>.yaml` for training, `recipes/eval/<name>.yaml` for
evaluation, `recipes/data/<name>.yaml` for generation, `recipes/accelerate/<launcher>.yaml` for `accelerate launch`.
This module imports nothing from the project, so every package may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def available_recipes(kind: str | None = None) -> list[str]:
    """Names of the bundled recipes (`llava-1.5-7b/base`, `eval/tiny`, ...), optionally only those under `kind/`."""
    root = RECIPES_DIR / kind if kind else RECIPES_DIR
    return sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_recipe(name_or_path: str | os.PathLike, kind: str | None = None) -> Path:
    """A recipe file from a path (absolute, or relative to the working folder) or a bundled recipe name.

    A path that exists wins. Otherwise the name is looked up among the bundled recipes, with or without `.yaml`,
    with or without the leading `recipes/` (so the README's `recipes/llava-1.5-7b/base.yaml` works from any folder)
    and, when `kind` is given (`eval`, `data`), also relative to `recipes/<kind>/`. Raises FileNotFoundError naming
    the closest bundled recipes when nothing matches.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml").removeprefix("./").removeprefix("recipes/")
    candidates = [name] + ([f"{kind}/{name}"] if kind and not name.startswith(f"{kind}/") else [])
    for candidate in candidates:
        bundled = RECIPES_DIR / f"{candidate}.yaml"
        if bundled.is_file():
            return bundled
    known = available_recipes(kind)
    raise FileNotFoundError(
        f"no recipe {str(name_or_path)!r}: not a file, and not a bundled recipe name"
        + (f" (bundled{' ' + kind if kind else ''} recipes: {', '.join(known)})" if known else "")
    )
