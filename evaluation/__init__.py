"""MIRROR evaluation: resistant virtual clients with a face loop, CTRS / alliance / PANAS judges, reference metrics
and reports (see evaluation/README.md). `mirror evaluate --config recipes/eval/<name>.yaml` runs it all.

Importing this package is cheap: heavy libraries load inside the functions that need them.
"""

from __future__ import annotations

import importlib

# Public name -> the submodule defining it (imported on first use).
_EXPORTS = {
    "model_index_results": "report",
    "parse_score": "judges",
    "run_evaluation": "pipeline",
    "run_quickstart_evaluation": "quickstart",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
