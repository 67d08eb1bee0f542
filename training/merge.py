"""`mirror merge`: fold a trained LoRA adapter (and its trained projector) into the base model's weights.

    mirror merge --adapter_dir outputs/mirror-llava-1.5-7b-base --output_dir outputs/mirror-llava-1.5-7b-base-merged
    python -m training.merge --adapter_dir ... --output_dir ...

The merged folder is self-contained and Hub-ready: safetensors weights, processor/tokenizer with the chat template,
generation_config.json and a README.md model card (library transformers instead of peft).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MergeArguments", "main", "make_parser", "merge_adapter"]


@dataclass
class MergeArguments:
    """Arguments of `mirror merge`."""

    adapter_dir: str = field(metadata={"help": "LoRA adapter folder written by `mirror train`."})
    output_dir: str = field(metadata={"help": "Where to write the merged model folder."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base model id or folder; default: `base_model_name_or_path` of adapter_config.json."},
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the merged weights (auto, bfloat16, float16, float32); default: the training dtype.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The `mirror merge` parser: standalone a `trl.TrlParser` over `MergeArguments`; with `subparsers`, a `merge`
    subcommand whose arguments go to `cli()` (`args.func(args)` merges), as for `mirror train`."""
    if subparsers is not None:
        from training.train import add_passthrough_subcommand

        return add_passthrough_subcommand(subparsers, "merge", "Merge a LoRA adapter into its base model.", cli)
    from trl import TrlParser

    return TrlParser(MergeArguments, prog=prog, description="Merge a MIRROR LoRA adapter into its base model.")


def _read_record(adapter_dir: Path) -> dict:
    from training.train import TRAINING_RECORD

    path = adapter_dir / TRAINING_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def merge_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    base_model: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Merge the adapter in `adapter_dir` into its base model and save a Hub-ready folder; returns `output_dir`."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from model_cards import render_model_card
    from training.train import TRAINING_RECORD

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{str(adapter_dir)!r} holds no adapter_config.json: not a LoRA adapter folder")
    if output_dir.resolve() == adapter_dir.resolve():
        raise ValueError("output_dir must differ from adapter_dir")
    record = _read_record(adapter_dir)
    mirror_args = record.get("mirror_args", {})
    peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    base_model = base_model or peft_config.base_model_name_or_path
    dtype = dtype or mirror_args.get("dtype") or "auto"
    vision = (
        mirror_args.get("variant", "base") != "text"
        if mirror_args
        else (adapter_dir / "processor_config.json").exists()
    )

    model_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = model_class.from_pretrained(base_model, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model = model.merge_and_unload()

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processing_class = (AutoProcessor if vision else AutoTokenizer).from_pretrained(str(adapter_dir))
    processing_class.save_pretrained(output_dir)
    generation_config = adapter_dir / "generation_config.json"
    if generation_config.is_file():
        (output_dir / "generation_config.json").write_text(
            generation_config.read_text(encoding="utf-8"), encoding="utf-8"
        )

    if record:
        record = {**record, "merged_from": str(adapter_dir), "base_model": base_model, "merged_dtype": dtype}
        card = dict(record.get("card", {}), adapter=False)
        card["model_name"] = output_dir.name
        record["card"] = card
        (output_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        (output_dir / "README.md").write_text(render_model_card(card), encoding="utf-8")
    return output_dir


def main(args: MergeArguments) -> Path:
    """Run `mirror merge` with parsed arguments; returns the merged folder."""
    output_dir = merge_adapter(
        args.adapter_dir,
        args.output_dir,
        base_model=args.base_model,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"Merged model saved to {output_dir}")
    return output_dir


def cli(argv: list[str] | None = None, prog: str | None = None) -> Path:
    """Entry point of `python -m training.merge` and `mirror merge`."""
    parser = make_parser(prog=prog)
    (args,) = parser.parse_args_and_config(list(sys.argv[1:] if argv is None else argv))
    return main(args)


if __name__ == "__main__":
    cli()
