"""Local `evaluate` metric modules; load one with `evaluate.load(str(METRICS_DIR / "rouge_l"))`."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent
METRICS = ("semantic_similarity", "rouge_l", "distinct_n")


def metric_path(name: str) -> str:
    """The folder of a bundled metric module, for `evaluate.load`."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; bundled: {list(METRICS)}")
    return str(METRICS_DIR / name)
