"""`mirror evaluate --config recipes/eval/<name>.yaml`: simulated sessions, judges, reference metrics, report."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class EvaluateArguments:
    config: str = field(
        metadata={"help": "Evaluation YAML: a path, or a bundled recipe name (e.g. 'tiny', 'paper', 'eval/tiny')."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Run folder; overrides the config's output_dir."})
    dataset: str | None = field(default=None, metadata={"help": "Dataset folder or Hub id; overrides the config."})
    model: str | None = field(
        default=None,
        metadata={
            "help": "Therapist model folder or Hub id; replaces the model of the config's only therapist "
            "(a config with several therapists: edit its YAML)."
        },
    )
    max_profiles: int | None = field(default=None, metadata={"help": "Evaluate only the first N profiles."})
    concurrency: int | None = field(default=None, metadata={"help": "Sessions run at the same time."})
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bars."})


ARGUMENTS = (EvaluateArguments,)


def main(args: EvaluateArguments) -> int:
    from recipes import resolve_recipe

    from .config import load_eval_config
    from .pipeline import run_evaluation

    path = resolve_recipe(args.config, kind="eval")
    config = load_eval_config(
        path,
        output_dir=args.output_dir,
        dataset=args.dataset,
        max_profiles=args.max_profiles,
        concurrency=args.concurrency,
    )
    if args.model:
        config = _with_therapist_model(config, args.model, path)
    report_dir = run_evaluation(config, progress=not args.no_progress)
    print(f"Report: {report_dir / 'report.md'}")
    plots = ", ".join(p.name for p in sorted(report_dir.glob("*.png")))
    print(f"  JSON: {report_dir / 'report.json'}; plots: {plots}")
    return 0


def _with_therapist_model(config, model: str, path):
    """`--model`: one therapist only, so which model it replaces is never a guess."""
    from dataclasses import replace

    if len(config.therapists) != 1:
        names = ", ".join(spec.name for spec in config.therapists)
        raise ValueError(
            f"--model: {path} has {len(config.therapists)} therapists ({names}); edit each one's model in the YAML"
        )
    (spec,) = config.therapists
    return replace(config, therapists=[replace(spec, model=replace(spec.model, model=model))])
