"""`mirror merge`: fold a trained LoRA adapter (and its trained projector) into the base model's weights.

    mirror merge --model outputs/mirror-llava-1.5-7b-base --output_dir outputs/mirror-llava-1.5-7b-base-merged

The merged folder is self-contained and Hub-ready: safetensors weights, processor/tokenizer with the chat template,
generation_config.json and a README.md model card (library transformers instead of peft).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from inference.backends.base import ModelLoadArguments
from inference.prompts import VISION_VARIANTS
from model_cards import render_model_card

__all__ = ["ARGUMENTS", "MergeArguments", "main", "merge_adapter"]


@dataclass
class MergeArguments:
    """What `mirror merge` adds to the model options: `--model` is the LoRA adapter folder written by `mirror train`."""

    output_dir: str = field(metadata={"help": "Where to write the merged model folder."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Base model id or folder; default: `base_model_name_or_path` of adapter_config.json."},
    )


ARGUMENTS = (ModelLoadArguments, MergeArguments)


def merge_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    base_model: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
) -> Path:
    """Merge the adapter in `adapter_dir` into its base model and save a Hub-ready folder; returns `output_dir`."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from inference.backends.transformers_backend import parse_dtype
    from training.train import TRAINING_RECORD, check_model_output_dir

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not adapter_dir.exists():
        raise FileNotFoundError(f"--model {str(adapter_dir)!r}: no such folder; pass the LoRA adapter folder to merge")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{str(adapter_dir)!r} holds no adapter_config.json: not a LoRA adapter folder")
    if output_dir.resolve() == adapter_dir.resolve():
        raise ValueError("output_dir must differ from adapter_dir")
    check_model_output_dir(output_dir)  # new, empty or a model folder of ours: never the user's files
    record_path = adapter_dir / TRAINING_RECORD
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    mirror_args = record.get("mirror_args", {})
    base_model = base_model or PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    dtype = dtype or record.get("model_args", {}).get("dtype") or "auto"
    if mirror_args:
        vision = mirror_args.get("variant", "base") in VISION_VARIANTS
    else:
        vision = (adapter_dir / "processor_config.json").exists()

    model_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    kwargs = {"dtype": parse_dtype(dtype), "trust_remote_code": trust_remote_code, "device_map": device}
    model = model_class.from_pretrained(base_model, **kwargs, use_safetensors=True)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processing_class = (AutoProcessor if vision else AutoTokenizer).from_pretrained(str(adapter_dir))
    processing_class.save_pretrained(output_dir)
    if (adapter_dir / "generation_config.json").is_file():  # the paper's sampling defaults written by `mirror train`
        shutil.copyfile(adapter_dir / "generation_config.json", output_dir / "generation_config.json")

    merged = {"merged_from": str(adapter_dir), "base_model": base_model, "merged_dtype": dtype}
    if record:
        record = {**record, **merged, "card": dict(record.get("card", {}), adapter=False, model_name=output_dir.name)}
        (output_dir / "README.md").write_text(render_model_card(record["card"]), encoding="utf-8")
    # Always written: it also marks the folder as ours, so merging into it again is allowed (see check_model_output_dir).
    (output_dir / TRAINING_RECORD).write_text(
        json.dumps(record or merged, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return output_dir


def main(model: ModelLoadArguments, args: MergeArguments) -> int:
    """`mirror merge`: merge the adapter `model.model` into its base model and save it in `args.output_dir`."""
    if model.revision:
        raise ValueError("--revision: mirror merge takes a local adapter folder (download a Hub adapter first)")
    output_dir = merge_adapter(
        model.model,
        args.output_dir,
        base_model=args.base_model,
        dtype=model.dtype,
        trust_remote_code=model.trust_remote_code,
        device=model.device,
    )
    print(f"Merged model saved to {output_dir}")
    return 0
