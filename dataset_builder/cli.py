"""`mirror build` and `mirror render-faces`: their arguments (`BUILD_ARGUMENTS`, `RENDER_ARGUMENTS`) and mains."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .build import BuildOptions
from .schema import SFT_VARIANTS
from .validation import ImagePolicy


def _help(cls: type, name: str) -> str:
    """The help text of `cls.name`, so an option that maps to a library field is described once, there."""
    return cls.__dataclass_fields__[name].metadata["help"]


@dataclass
class BuildArguments:
    """Validate raw records (JSONL + images) and export a Hub-ready Mirror dataset folder."""

    input: Path = field(
        metadata={"help": "Raw record folder with sessions*.jsonl and profiles*.jsonl (image paths relative to it)."}
    )
    output: Path = field(
        metadata={"help": "Dataset folder to write: a new or empty folder, or a previous Mirror build (replaced)."}
    )
    on_bad_record: str = field(
        default=BuildOptions.on_bad_record,
        metadata={"help": _help(BuildOptions, "on_bad_record"), "choices": ["raise", "skip"]},
    )
    allow_missing_images: bool = field(
        default=False, metadata={"help": "Accept client turns without an image (their vision SFT rows are left out)."}
    )
    max_pixels: int = field(default=ImagePolicy.max_pixels, metadata={"help": _help(ImagePolicy, "max_pixels")})
    sft_variants: list[str] = field(
        default_factory=lambda: list(SFT_VARIANTS),
        metadata={"help": _help(BuildOptions, "sft_variants") + " Space- or comma-separated."},
    )
    no_filters: bool = field(default=False, metadata={"help": "Skip the text quality filters."})
    pretty_name: str = field(default=BuildOptions.pretty_name, metadata={"help": _help(BuildOptions, "pretty_name")})


@dataclass
class RenderArguments:
    """Render a face image for every client turn that has none (paper step 3) with an image backend."""

    input: Path = field(metadata={"help": "Raw record folder."})
    output: Path = field(metadata={"help": "Folder for the records with images (resumable)."})
    backend: str = field(
        default="embedded", metadata={"help": "Image backend: embedded (offline, Pillow) or diffusers (a model)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Re-render images that already exist."})


@dataclass
class ImageBackendOptions:
    """Options forwarded to the image backend (`get_image_backend(backend, **options)`); unset ones are left out,
    so each backend keeps its own defaults."""

    model: str | None = field(default=None, metadata={"help": "Diffusion model id or folder (diffusers backend)."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    device: str | None = field(default=None, metadata={"help": "Device of a model backend (cuda, cpu, mps)."})
    dtype: str | None = field(default=None, metadata={"help": "Weights dtype of a model backend (e.g. float16)."})
    num_inference_steps: int | None = field(default=None, metadata={"help": "Denoising steps per image."})
    guidance_scale: float | None = field(default=None, metadata={"help": "Classifier-free guidance scale."})


BUILD_ARGUMENTS = (BuildArguments,)
RENDER_ARGUMENTS = (RenderArguments, ImageBackendOptions)


def build_main(args: BuildArguments) -> int:
    """Validate raw records (JSONL + images) and export a Hub-ready Mirror dataset folder."""
    from .build import build_dataset

    variants = tuple(v.strip() for item in args.sft_variants for v in item.split(",") if v.strip())
    options = BuildOptions(
        on_bad_record=args.on_bad_record, require_images=not args.allow_missing_images, max_pixels=args.max_pixels,
        apply_filters=not args.no_filters, pretty_name=args.pretty_name, sft_variants=variants,
    )
    result = build_dataset(args.input, args.output, options)
    if result.up_to_date:
        print(f"{result.output_dir} is up to date (inputs unchanged).")
    print(f"Built {result.output_dir}: " + ", ".join(f"{k}={v}" for k, v in sorted(result.num_rows.items())))
    if result.skipped or result.filtered:
        print(
            f"Skipped {result.skipped} bad record(s) and dropped {result.filtered} session(s) by filters; "
            "see the `filtered` config."
        )
        for line in result.drop_summary():
            print(line)
    folder = str(result.output_dir)
    print(
        "Load it with:\n"
        "  from datasets import load_dataset\n"
        f"  load_dataset({folder!r})                      # sessions\n"
        f"  load_dataset({folder!r}, 'sft', split='train')  # also 'profiles', 'filtered'"
    )
    return 0


def render_main(args: RenderArguments, backend_options: ImageBackendOptions) -> int:
    """Render a face image for every client turn that has none (paper step 3) with an image backend."""
    from .build import render_faces
    from .images import get_image_backend

    options = {name: value for name, value in asdict(backend_options).items() if value is not None}
    try:
        backend = get_image_backend(args.backend, **options)
    except TypeError as error:  # an option this backend does not take
        raise ValueError(f"image backend {args.backend!r} does not take {sorted(options)}: {error}") from error
    out = render_faces(args.input, args.output, backend, overwrite=args.overwrite)
    print(f"Records with faces written to {out}")
    return 0
