"""MIRROR evaluation: resistant virtual clients with a face loop, CTRS / alliance / PANAS judges, reference metrics
and reports (see evaluation/README.md). `mirror evaluate --config recipes/eval/<name>.yaml` runs it all.

Importing this package is cheap: heavy libraries load inside the functions that need them.
"""

from __future__ import annotations

__all__ = ["model_index_results", "parse_score", "run_evaluation", "run_quickstart_evaluation"]


def __getattr__(name: str):
    if name == "parse_score":
        from .judges import parse_score

        return parse_score
    if name == "run_evaluation":
        from .pipeline import run_evaluation

        return run_evaluation
    if name == "run_quickstart_evaluation":
        from .quickstart import run_quickstart_evaluation

        return run_quickstart_evaluation
    if name == "model_index_results":
        from .report import model_index_results

        return model_index_results
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
