"""The evaluation stage of `mirror quickstart`: the tiny therapist on the held-out sample profiles, offline, fast.

The therapist is the real (tiny, barely trained) model folder; the client and the judge are the scripted stand-ins
(`evaluation.scripted`). Every stage of the real pipeline runs, but no number in it says anything about therapy.
"""

from __future__ import annotations

import os
from pathlib import Path

NOTES = [
    "Quickstart (offline): the therapist is a tiny model trained for a few steps on the bundled sample, so it "
    "scores noise. The client is a scripted stand-in and the judge's scores are a hash of its prompt, not a "
    "judgement. Use recipes/eval/paper.yaml with a real client and judge for meaningful numbers.",
    "Reference metrics run on the sample's training sessions (the sample has no held-out sessions), so they "
    "measure fit, not generalisation.",
]


def run_quickstart_evaluation(
    model_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    strategy: str | None = None,
    max_profiles: int = 1,
    max_turns: int = 6,
    reference_sessions: int = 2,
    reference_turns: int = 2,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> Path:
    """Evaluate the tiny therapist in `model_dir` on the first `max_profiles` profiles of `dataset_dir` (one short
    session each, reference metrics on a few gold turns); returns the report folder. A finished `output_dir` is not
    overwritten (FileExistsError)."""
    from .config import EvalConfig, from_dict
    from .pipeline import run_evaluation

    config = from_dict(
        EvalConfig,
        {
            "output_dir": str(output_dir),
            "dataset": str(dataset_dir),
            "max_profiles": max_profiles,
            "concurrency": 1,
            "safety_use_embeddings": False,
            "therapists": [
                {
                    "name": "tiny-mirror",
                    "model": {"backend": "transformers", "model": str(model_dir), "device": "cpu"},
                    "strategy": strategy,
                    "max_new_tokens": max_new_tokens,
                }
            ],
            "client_model": {"backend": "scripted", "model": "client"},
            "judge_model": {"backend": "scripted", "model": "judge"},
            "client": {"max_turns": max_turns},
            "judge": {"max_retries": 1, "backoff": 0.0},
            "reference": {
                "split": "train",
                "max_sessions": reference_sessions,
                "max_turns_per_session": reference_turns,
            },
            "report": {"bootstrap_samples": 200, "notes": NOTES},
        },
        "quickstart evaluation",
    )
    return run_evaluation(config, progress=progress)
