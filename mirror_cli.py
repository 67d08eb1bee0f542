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
    quick.add_argument("--max-steps", type=int, default=4, help="Training steps for the tiny model.")
    quick.set_defaults(func=quickstart)
    return parser


def quickstart(args: argparse.Namespace) -> int:
    """Sample data -> faces -> Hub-ready dataset folder (-> tiny training -> one therapist reply)."""
    from dataset_builder.build import SAMPLE_DIR, BuildOptions, build_dataset, render_faces
    from dataset_builder.cli import print_load_hint

    root = args.output.resolve()
    print(f"[1/2] Rendering client faces for the bundled sample into {root / 'raw'}")
    render_faces(SAMPLE_DIR, root / "raw")
    print(f"[2/2] Building the Hub-ready dataset folder {root / 'dataset'}")
    result = build_dataset(root / "raw", root / "dataset", BuildOptions(pretty_name="Mirror sample"))
    print("Dataset: " + ", ".join(f"{k}={v}" for k, v in sorted(result.num_rows.items())))
    print_load_hint(result.output_dir)
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
