"""The `mirror` command: one subcommand per stage, plus `mirror quickstart`, the whole chain offline on a CPU."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# (subcommand, module, parser factory, help) for stages whose module provides `make_parser(subparsers)`. Listed
# here rather than imported so `mirror --help` stays fast and a stage's heavy imports happen only when it runs.
STAGES = [
    ("build", "dataset_builder.cli", "make_build_parser"),
    ("render-faces", "dataset_builder.cli", "make_render_parser"),
    ("train", "training.train", "make_parser"),
    ("merge", "training.merge", "make_parser"),
    ("chat", "inference.chat", "make_parser"),
    ("serve", "inference.server", "make_parser"),
    ("demo", "inference.web_demo", "make_parser"),
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mirror", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module_name, factory in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith(module_name.split(".")[0]):
                continue  # a stage not installed in this checkout
            raise
        getattr(module, factory)(subparsers)
    quick = subparsers.add_parser("quickstart", help="Run the whole chain offline on embedded defaults.",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    quick.add_argument("--output", type=Path, default=Path("mirror_quickstart"), help="Working folder.")
    quick.add_argument("--max-steps", type=int, default=8, help="Training steps for the tiny model.")
    quick.add_argument("--skip-training", action="store_true", help="Stop after building the dataset.")
    quick.set_defaults(func=quickstart)
    return parser


def quickstart(args: argparse.Namespace) -> int:
    """Sample data -> faces -> Hub-ready dataset folder -> tiny LLaVA fine-tuned with TRL -> one therapist reply."""
    import json

    from dataset_builder.build import SAMPLE_DIR, BuildOptions, build_dataset, render_faces
    from dataset_builder.cli import print_load_hint

    root = args.output.resolve()
    steps = 2 if args.skip_training else 4
    print(f"[1/{steps}] Rendering client faces for the bundled sample into {root / 'raw'}")
    render_faces(SAMPLE_DIR, root / "raw")
    print(f"[2/{steps}] Building the Hub-ready dataset folder {root / 'dataset'}")
    result = build_dataset(root / "raw", root / "dataset", BuildOptions(pretty_name="Mirror sample"))
    print("Dataset: " + ", ".join(f"{k}={v}" for k, v in sorted(result.num_rows.items())))
    print_load_hint(result.output_dir)
    if args.skip_training:
        return 0

    from training.train import train_tiny

    print(f"[3/{steps}] Fine-tuning a tiny random LLaVA (built from config, offline) for {args.max_steps} steps")
    model_dir = train_tiny(result.output_dir, root / "training", max_steps=args.max_steps)
    print(f"Model folder: {model_dir}\n  AutoModelForImageTextToText.from_pretrained({str(model_dir)!r})")

    from PIL import Image

    from inference.therapist import MirrorTherapist

    print(f"[4/{steps}] Loading the tiny therapist and answering one client turn with a face image")
    profile = json.loads((root / "raw" / "profiles.jsonl").read_text(encoding="utf-8").splitlines()[0])
    face = root / "raw" / profile["identity"]["image"]
    therapist = MirrorTherapist.from_pretrained(str(model_dir))
    session = therapist.start_session(profile["client"])
    print(f"  {session.disclosure}")
    session.respond("", image=Image.open(face))
    statement = "[Shrugs, looks at the floor] I don't really know why I'm here."
    reply = session.respond(statement, image=Image.open(face))
    print(f"  Client ({profile['client']['name']}, face: {face.name}): {statement}")
    print(f"  Therapist (tiny random model, so the words are noise): {reply.text}")
    print("Done. Next: `mirror train --config recipes/llava-1.5-7b/base.yaml` on a GPU, then `mirror chat`.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
