"""The evaluation stage of `mirror quickstart`: the tiny therapist on the held-out sample profiles, offline, fast.

What "offline" means here, honestly: the therapist is the real model folder under test (a tiny model trained for a
few steps from random weights, so its replies are noise and so are its scores); the virtual client is the
scripted stand-in (`evaluation.scripted`: fixed lines per resistance style) and the judge is the scripted judge
whose "scores" are a hash of its prompt. The run exercises every stage of the real pipeline (client validation,
face loop, safety screening, judging with cache, reference metrics with the bundled MiniLM, report and plots),
but no number in it says anything about therapy quality.
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
    """Evaluate the tiny therapist in `model_dir` on `dataset_dir`'s profiles; returns the report folder.

    One short simulated session per profile (first `max_profiles` held-out profiles), reference metrics on a few
    gold turns, then report.json / report.md / PNG plots under `output_dir/report`. A finished `output_dir` is not
    overwritten (FileExistsError).
    """
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
