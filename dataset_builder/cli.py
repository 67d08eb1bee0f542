"""`mirror build` and `mirror render-faces`: each a `make_parser()` + `main()`, usable standalone or as a subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def make_build_parser(subparsers=None) -> argparse.ArgumentParser:
    description = "Validate raw records (JSONL + images) and export a Hub-ready Mirror dataset folder."
    kwargs = {"description": description, "formatter_class": argparse.ArgumentDefaultsHelpFormatter}
    parser = subparsers.add_parser("build", help=description, **kwargs) if subparsers else argparse.ArgumentParser(
        prog="mirror build", **kwargs)
    parser.add_argument("--input", required=True, type=Path,
                        help="Raw record folder with sessions*.jsonl and profiles*.jsonl (image paths relative to it).")
    parser.add_argument("--output", required=True, type=Path, help="Dataset folder to write (replaced atomically).")
    parser.add_argument("--on-bad-record", choices=["raise", "skip"], default="raise",
                        help="raise: stop at the first bad record; skip: build the rest and list it in `filtered`.")
    parser.add_argument("--allow-missing-images", action="store_true",
                        help="Accept client turns without an image (their vision SFT rows are left out).")
    parser.add_argument("--max-pixels", type=int, default=25_000_000, help="Pixel cap per image (bomb guard).")
    parser.add_argument("--sft-variants", default="base,planning,ec_planning,text",
                        help="Comma-separated SFT variants to export (each vision variant embeds its own images).")
    parser.add_argument("--no-filters", action="store_true", help="Skip the text quality filters.")
    parser.add_argument("--pretty-name", default="Mirror", help="Dataset name on the card.")
    parser.set_defaults(func=build_main)
    return parser


def build_main(args: argparse.Namespace) -> int:
    from .build import BuildOptions, build_dataset
    from .validation import RecordError

    options = BuildOptions(on_bad_record=args.on_bad_record, require_images=not args.allow_missing_images,
                           max_pixels=args.max_pixels, apply_filters=not args.no_filters, pretty_name=args.pretty_name,
                           sft_variants=tuple(v.strip() for v in args.sft_variants.split(",") if v.strip()))
    try:
        result = build_dataset(args.input, args.output, options)
    except (RecordError, FileNotFoundError, ValueError) as err:
        print(f"mirror build: error: {err}", file=sys.stderr)
        return 2
    if result.up_to_date:
        print(f"{result.output_dir} is up to date (inputs unchanged).")
    print(f"Built {result.output_dir}: " + ", ".join(f"{k}={v}" for k, v in sorted(result.num_rows.items())))
    if result.skipped or result.filtered:
        print(f"Skipped {result.skipped} bad record(s) and dropped {result.filtered} session(s) by filters; "
              f"see the `filtered` config.")
    print_load_hint(result.output_dir)
    return 0


def print_load_hint(folder: Path) -> None:
    print("Load it with:\n"
          "  from datasets import load_dataset\n"
          f"  load_dataset({str(folder)!r})                      # sessions\n"
          f"  load_dataset({str(folder)!r}, 'sft', split='train')  # also 'profiles', 'filtered'")


def make_render_parser(subparsers=None) -> argparse.ArgumentParser:
    description = "Render a face image for every client turn that has none (paper step 3) with an image backend."
    kwargs = {"description": description, "formatter_class": argparse.ArgumentDefaultsHelpFormatter}
    parser = subparsers.add_parser("render-faces", help=description, **kwargs) if subparsers else (
        argparse.ArgumentParser(prog="mirror render-faces", **kwargs))
    parser.add_argument("--input", required=True, type=Path, help="Raw record folder.")
    parser.add_argument("--output", required=True, type=Path, help="Folder for the records with images (resumable).")
    parser.add_argument("--backend", default="embedded", help="Image backend name.")
    parser.add_argument("--overwrite", action="store_true", help="Re-render images that already exist.")
    parser.set_defaults(func=render_main)
    return parser


def render_main(args: argparse.Namespace) -> int:
    from .build import render_faces
    from .images import get_image_backend

    out = render_faces(args.input, args.output, get_image_backend(args.backend), overwrite=args.overwrite)
    print(f"Records with faces written to {out}")
    return 0
