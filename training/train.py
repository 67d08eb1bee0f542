"""`mirror train`: fine-tune a MIRROR therapist with TRL's `SFTTrainer` (LoRA, QLoRA or full fine-tuning).

A thin TRL-style script: a YAML recipe (`--config recipes/<model>/<variant>.yaml`) sets the arguments of two
dataclasses, `MirrorTrainArguments` (data, model, fine-tuning mode) and TRL's `SFTConfig` (the training loop), and
command-line flags override the recipe:

    mirror train --config recipes/llava-1.5-7b/base.yaml --dataset_name ./mirror_dataset
    python -m training.train --config recipes/tiny/base.yaml --dataset_name ./mirror_dataset --max_steps 5
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m training.train --config recipes/...

Vision variants (`base`, `planning`, `ec_planning`) train a VLM through `AutoModelForImageTextToText` and
`AutoProcessor` with TRL's own vision collator; the `text` baselines train a causal LM with its tokenizer. Every
configuration error (unknown recipe key, a variant the dataset lacks, a text-only model for a vision variant, a
`max_length` that would cut image tokens, QLoRA without a GPU) is raised before the first training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.prompts import VARIANTS, VISION_VARIANTS
from training.modeling import MirrorConfigError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO_ROOT / "recipes"
TINY_RECIPE = RECIPES_DIR / "tiny" / "base.yaml"
FINETUNING_MODES = ("lora", "qlora", "full")
DTYPES = ("auto", "bfloat16", "float16", "float32")
TRAINING_RECORD = "mirror_training.json"
# Keys a recipe may hold besides the dataclass fields: `config` is TrlParser's own, `env` sets environment variables.
RESERVED_RECIPE_KEYS = ("env",)

__all__ = [
    "MirrorTrainArguments",
    "build_trainer",
    "cli",
    "main",
    "make_parser",
    "parse_args",
    "save_model_folder",
    "train_and_save",
    "train_tiny",
]


@dataclass
class MirrorTrainArguments:
    """What `mirror train` adds to TRL's `SFTConfig`: the Mirror data, the model and the fine-tuning mode."""

    # Data
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Mirror dataset: a local folder built by the dataset builder, or a Hub dataset id."},
    )
    dataset_config: str = field(default="sft", metadata={"help": "Dataset config holding the SFT rows."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the dataset config to train on."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset."})
    variant: str = field(
        default="base",
        metadata={"help": "Which `sft` variant to train on.", "choices": list(VARIANTS)},
    )
    tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Keep only these `task` values (`response`, `emotion_caption`); default: every task of the "
            "variant (ec_planning trains both)."
        },
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N rows of the variant (quick runs, benchmarks)."}
    )
    dataset_hub_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the dataset to name in the model card; defaults to dataset_name if it is one."},
    )
    # Model
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model to fine-tune: a Hub id or a local folder."}
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the model."})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the weights are loaded in (bfloat16 on GPU, float32 on CPU).",
            "choices": list(DTYPES),
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention implementation (e.g. sdpa, flash_attention_2); default: auto."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template to train and ship with: a bundled name (`llava_eos`) or a path to a .jinja file; "
            "default: the model's own (patched by TRL with generation markers when needed)."
        },
    )
    # Fine-tuning mode
    finetuning: str = field(
        default="lora",
        metadata={
            "help": "lora: LoRA on the language model; qlora: LoRA on a 4-bit base model (CUDA + bitsandbytes); "
            "full: every language-model weight.",
            "choices": list(FINETUNING_MODES),
        },
    )
    lora_r: int = field(default=128, metadata={"help": "LoRA rank (paper: 128)."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha (paper: 256)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "peft `target_modules` regex (matched with re.fullmatch); default: every linear layer of the "
            "language model, never the vision tower, the projector or the LM head."
        },
    )
    train_projector: bool = field(
        default=True, metadata={"help": "Train the multimodal projector fully (peft `modules_to_save` under LoRA)."}
    )
    projector_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Qualified module name(s) of the projector; default: auto-detected (multi_modal_projector…)."
        },
    )
    projector_lr: float | None = field(
        default=2e-5,
        metadata={"help": "Learning rate of the projector's param group (paper: 2e-5); null: same as learning_rate."},
    )
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Keep the vision encoder frozen in full fine-tuning (always frozen in LoRA)."}
    )
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "QLoRA 4-bit quantization type.", "choices": ["nf4", "fp4"]}
    )
    # Output
    generation_temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature written to generation_config.json (paper: 0.7)."}
    )
    generation_top_p: float = field(
        default=0.9, metadata={"help": "Nucleus sampling top_p written to generation_config.json (paper: 0.9)."}
    )
    generation_max_new_tokens: int = field(
        default=128, metadata={"help": "max_new_tokens written to generation_config.json (paper: 128)."}
    )
    model_license: str = field(
        default="other", metadata={"help": "License in the model card metadata (the base model's license)."}
    )
    recipe: str | None = field(
        default=None, metadata={"help": "Recipe this run was configured from (filled in from --config)."}
    )


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    """The `mirror train` parser.

    Standalone (`subparsers=None`): a `trl.TrlParser` over (`MirrorTrainArguments`, `SFTConfig`); parse it with
    `parse_args(argv, parser)`, which handles `--config` and rejects unknown recipe keys, then call `main(*args)`.

    With `subparsers` (the `mirror` CLI): registers a `train` subcommand that hands every argument after `train`
    (`--config`, overrides, `-h`) to `cli()`, with `func` set, so `args.func(args)` trains; returns that subparser.
    Registering imports nothing heavy, so `mirror --help` stays fast.
    """
    if subparsers is not None:
        return add_passthrough_subcommand(subparsers, "train", "Fine-tune a therapist model (TRL SFT).", cli)
    from trl import SFTConfig, TrlParser

    return TrlParser(
        (MirrorTrainArguments, SFTConfig),
        prog=prog,
        description="Fine-tune a MIRROR therapist model with TRL's SFTTrainer.",
        epilog="--config RECIPE.yaml sets defaults from a recipe (e.g. recipes/llava-1.5-7b/base.yaml); flags given "
        "on the command line override it. See training/README.md.",
    )


def add_passthrough_subcommand(subparsers: argparse._SubParsersAction, name: str, help_text: str, run):
    """A subcommand whose arguments all go, unparsed, to `run(argv)` (which owns the real parser and `-h`)."""
    # No option prefix on this parser: `--config`, `--max_steps 3`, `-h` are all collected as plain strings.
    parser = subparsers.add_parser(name, help=help_text, description=help_text, add_help=False, prefix_chars="\x00")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help=f"arguments of `{name}`; see `{name} -h`")

    def func(args: argparse.Namespace) -> int:
        run(args.argv, prog=parser.prog)
        return 0

    parser.set_defaults(func=func)
    return parser


def _config_path(argv: list[str]) -> str | None:
    if "--config" not in argv:
        return None
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise MirrorConfigError("--config needs a recipe path")
    return argv[index + 1]


def check_recipe_keys(parser, config_path: str | os.PathLike) -> dict[str, Any]:
    """Load a recipe and raise, naming the key, if it holds a key no dataclass field knows (typos never pass)."""
    import difflib

    import yaml

    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {str(path)!r} not found")
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(recipe, dict):
        raise MirrorConfigError(f"Recipe {str(path)!r} must be a YAML mapping of argument names to values")
    known = {action.dest for action in parser._actions}
    unknown = [key for key in recipe if key not in known and key not in RESERVED_RECIPE_KEYS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise MirrorConfigError(f"Unknown key(s) in recipe {str(path)!r}: {', '.join(hints)}")
    return recipe


def parse_args(argv: list[str] | None = None, parser=None):
    """Parse `argv` (default `sys.argv[1:]`) with an optional `--config` recipe into the two dataclasses."""
    parser = parser or make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = _config_path(argv)
    if config_path is not None:
        check_recipe_keys(parser, config_path)
    script_args, training_args = parser.parse_args_and_config(argv, fail_with_unknown_args=True)
    if config_path is not None and script_args.recipe is None:
        script_args.recipe = config_path
    return script_args, training_args


def cli(argv: list[str] | None = None, prog: str | None = None) -> Path:
    """Entry point of `python -m training.train` and `mirror train`: parse, train, save; returns the model folder.

    Configuration errors end the process with a one-line message instead of a traceback.
    """
    name = prog or "mirror train"
    try:
        # Any ValueError while parsing is a configuration error (e.g. TrainingArguments refusing bf16 on a CPU).
        script_args, training_args = parse_args(argv, make_parser(prog=prog))
    except (ValueError, FileNotFoundError) as error:
        hint = " (on a CPU: --use_cpu true --bf16 false, as in recipes/tiny/base.yaml)" if "bf16" in str(error) else ""
        raise SystemExit(f"{name}: error: {error}{hint}") from error
    try:
        return main(script_args, training_args)
    except (MirrorConfigError, FileNotFoundError) as error:
        raise SystemExit(f"{name}: error: {error}") from error


# ----------------------------------------------------------------------------------------------------------------------
# Checks that need nothing loaded


def check_arguments(script_args: MirrorTrainArguments, training_args) -> None:
    """Configuration errors that can be found from the arguments alone, before anything is loaded."""
    if not script_args.dataset_name:
        raise MirrorConfigError("dataset_name is required: a Mirror dataset folder or Hub id")
    if not script_args.model_name_or_path:
        raise MirrorConfigError("model_name_or_path is required")
    if script_args.variant not in VARIANTS:
        raise MirrorConfigError(f"Unknown variant {script_args.variant!r}; expected one of {list(VARIANTS)}")
    if script_args.finetuning not in FINETUNING_MODES:
        raise MirrorConfigError(f"Unknown finetuning {script_args.finetuning!r}; expected one of {FINETUNING_MODES}")
    if script_args.dtype not in DTYPES:
        raise MirrorConfigError(f"Unknown dtype {script_args.dtype!r}; expected one of {DTYPES}")
    if script_args.finetuning == "qlora":
        check_qlora_available()
    vision = script_args.variant in VISION_VARIANTS
    if vision and not training_args.assistant_only_loss:
        raise MirrorConfigError(
            f"Variant {script_args.variant!r} needs assistant_only_loss=True: without it the image and prompt tokens "
            "are trained on."
        )
    if training_args.push_to_hub:
        raise MirrorConfigError(
            "push_to_hub is not done by `mirror train`: the Trainer would push before the model card, generation "
            "config and cleanup are written. Publish the finished folder with push_to_hub.py (or `hf upload REPO "
            "FOLDER --exclude 'checkpoint-*'`)."
        )
    if vision and (training_args.packing or training_args.padding_free):
        raise MirrorConfigError("packing and padding_free are not supported for vision variants")


def check_qlora_available() -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes; refuse clearly before anything is loaded."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise MirrorConfigError(
            "QLoRA (finetuning: qlora) loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU, and "
            "none is available. Use `--finetuning lora` or `--finetuning full` on this machine."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MirrorConfigError("QLoRA (finetuning: qlora) needs bitsandbytes: pip install bitsandbytes")


def _resolve_resume(training_args) -> str | None:
    """`resume_from_checkpoint`: a checkpoint folder, or `last`/`true` for the newest one in output_dir."""
    resume = training_args.resume_from_checkpoint
    if resume is None or str(resume).lower() in ("false", "none", ""):
        return None
    if str(resume).lower() in ("last", "true"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise MirrorConfigError(
                f"resume_from_checkpoint={resume!r} but {training_args.output_dir!r} has no checkpoint"
            )
        return last
    if not os.path.isdir(resume):
        raise MirrorConfigError(f"Checkpoint folder {resume!r} not found")
    return resume


# ----------------------------------------------------------------------------------------------------------------------
# Building the trainer


def load_processing_class(script_args: MirrorTrainArguments, training_args, vision: bool):
    """`AutoProcessor` for vision variants, `AutoTokenizer` for the text baselines."""
    from transformers import AutoProcessor, AutoTokenizer

    kwargs = {"revision": script_args.model_revision, "trust_remote_code": training_args.trust_remote_code}
    if vision:
        try:
            return AutoProcessor.from_pretrained(script_args.model_name_or_path, **kwargs)
        except (OSError, ValueError) as error:
            raise MirrorConfigError(
                f"Variant {script_args.variant!r} needs a processor with an image processor, but none could be "
                f"loaded for {script_args.model_name_or_path!r}: {error}"
            ) from error
    return AutoTokenizer.from_pretrained(script_args.model_name_or_path, **kwargs)


def _torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_model(script_args: MirrorTrainArguments, training_args, vision: bool):
    """`AutoModelForImageTextToText` (vision) or `AutoModelForCausalLM` (text), 4-bit for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from training.modeling import PROJECTOR_NAMES, VISION_TOWER_NAMES

    kwargs: dict[str, Any] = {
        "revision": script_args.model_revision,
        "dtype": _torch_dtype(script_args.dtype),
        "trust_remote_code": training_args.trust_remote_code,
    }
    if script_args.attn_implementation:
        kwargs["attn_implementation"] = script_args.attn_implementation
    if script_args.finetuning == "qlora":
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        compute_dtype = (
            torch.bfloat16 if script_args.dtype in ("auto", "bfloat16") else _torch_dtype(script_args.dtype)
        )
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=script_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            # The vision tower and the projector (trained fully) stay in 16 bit, as does the LM head.
            llm_int8_skip_modules=[*VISION_TOWER_NAMES, *(n.rsplit(".", 1)[-1] for n in PROJECTOR_NAMES), "lm_head"],
        )
        if training_args.distributed_state.distributed_type not in ("DEEPSPEED", "FSDP"):
            kwargs["device_map"] = {"": PartialState().local_process_index}
    model_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    try:
        return model_class.from_pretrained(script_args.model_name_or_path, **kwargs)
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            kind = "a vision-language model" if vision else "a causal language model"
            raise MirrorConfigError(
                f"Variant {script_args.variant!r} trains {kind} ({model_class.__name__}), which "
                f"{script_args.model_name_or_path!r} is not: {error}"
            ) from error
        raise


def build_trainer(
    script_args: MirrorTrainArguments,
    training_args,
    *,
    model=None,
    processing_class=None,
    train_dataset=None,
    callbacks: list | None = None,
):
    """Check the configuration, load data, processor and model, and return a ready `MirrorSFTTrainer`.

    `model`, `processing_class` and `train_dataset` may be passed in already built (benchmarks, tests); otherwise
    they are loaded from `script_args`. Nothing here runs a training step.
    """
    from transformers import AutoConfig

    from training.data import load_sft_dataset, longest_row_length
    from training.modeling import (
        MirrorSFTTrainer,
        check_vision_model,
        default_lora_target_regex,
        find_projector_modules,
        find_vision_tower_modules,
        freeze_modules,
        modules_matching,
        resolve_chat_template,
        set_chat_template,
    )

    check_arguments(script_args, training_args)
    _resolve_resume(training_args)  # a missing checkpoint is a config error too
    vision = script_args.variant in VISION_VARIANTS

    if train_dataset is None:
        with training_args.main_process_first(desc="loading the Mirror dataset"):  # one process fills the cache
            train_dataset = load_sft_dataset(
                script_args.dataset_name,
                script_args.variant,
                config=script_args.dataset_config,
                split=script_args.dataset_split,
                revision=script_args.dataset_revision,
                tasks=script_args.tasks,
                max_samples=script_args.max_samples,
            )
    if processing_class is None:
        processing_class = load_processing_class(script_args, training_args, vision)
    config = (
        model.config
        if model is not None
        else AutoConfig.from_pretrained(
            script_args.model_name_or_path,
            revision=script_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
    )
    if vision:
        check_vision_model(script_args.model_name_or_path, config, processing_class, script_args.variant)

    template = resolve_chat_template(processing_class, script_args.chat_template, training_args.assistant_only_loss)
    set_chat_template(processing_class, template)

    if training_args.max_length is not None:
        longest = longest_row_length(train_dataset, processing_class, template, vision)
        if longest > training_args.max_length:
            what = "image tokens and the reply" if vision else "the reply"
            raise MirrorConfigError(
                f"max_length={training_args.max_length} would cut {what}: the longest row of variant "
                f"{script_args.variant!r} has {longest} tokens (image tokens included). Set max_length to null "
                f"(no truncation, recommended for vision variants) or to at least {longest}."
            )

    if model is None:
        model = load_model(script_args, training_args, vision)

    projector_modules: list[str] = []
    if vision and script_args.train_projector:
        projector_modules = find_projector_modules(model, script_args.projector_modules)
        if not projector_modules:
            raise MirrorConfigError(
                f"No multimodal projector found in {type(model).__name__}; set `projector_modules` or "
                "`train_projector: false`"
            )

    peft_config = None
    if script_args.finetuning in ("lora", "qlora"):
        from peft import LoraConfig

        target = script_args.lora_target_modules or default_lora_target_regex(model)
        matched = modules_matching(model, target)
        if not matched:
            raise MirrorConfigError(f"lora_target_modules {target!r} matches no module of {type(model).__name__}")
        outside = [name for name in matched if any(name.startswith(v + ".") for v in find_vision_tower_modules(model))]
        if outside:
            logger.warning(
                "lora_target_modules also adapts %d vision-tower module(s), e.g. %s", len(outside), outside[0]
            )
        peft_config = LoraConfig(
            r=script_args.lora_r,
            lora_alpha=script_args.lora_alpha,
            lora_dropout=script_args.lora_dropout,
            target_modules=target,
            modules_to_save=projector_modules or None,
            bias="none",
            task_type="CAUSAL_LM",
        )
    else:
        if vision and script_args.freeze_vision_tower:
            freeze_modules(model, find_vision_tower_modules(model), keep=projector_modules)
        if vision and not script_args.train_projector:
            freeze_modules(model, find_projector_modules(model, script_args.projector_modules))

    trainer = MirrorSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        callbacks=callbacks,
        projector_modules=projector_modules,
        projector_lr=script_args.projector_lr if projector_modules else None,
    )
    trainer.mirror_args = script_args
    return trainer


# ----------------------------------------------------------------------------------------------------------------------
# Training and the model folder


def main(script_args: MirrorTrainArguments, training_args, callbacks: list | None = None) -> Path:
    """Train as configured and save a Hub-ready model folder in `training_args.output_dir`; returns its path."""
    trainer = build_trainer(script_args, training_args, callbacks=callbacks)
    return train_and_save(trainer, script_args, training_args)


def train_and_save(trainer, script_args: MirrorTrainArguments, training_args) -> Path:
    """Run `trainer.train()` (resuming if asked) and write the model folder."""
    result = trainer.train(resume_from_checkpoint=_resolve_resume(training_args))
    output_dir = save_model_folder(trainer, script_args, training_args, metrics=result.metrics)
    trainer.accelerator.print(f"Model saved to {output_dir}")
    return output_dir


def _framework_versions() -> dict[str, str]:
    import importlib.metadata
    import platform

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def card_hyperparameters(script_args: MirrorTrainArguments, training_args, trainer=None) -> dict[str, Any]:
    """The hyperparameters a reader of the model card needs, in recipe names."""
    world_size = training_args.world_size
    hp: dict[str, Any] = {
        "finetuning": script_args.finetuning,
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warmup_steps": training_args.warmup_steps,
        "weight_decay": training_args.weight_decay,
        "num_train_epochs": training_args.num_train_epochs,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "world_size": world_size,
        "total_train_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world_size,
        "max_length": training_args.max_length,
        "bf16": training_args.bf16,
        "gradient_checkpointing": training_args.gradient_checkpointing,
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "seed": training_args.seed,
        "assistant_only_loss": training_args.assistant_only_loss,
    }
    if training_args.max_steps and training_args.max_steps > 0:
        hp["max_steps"] = training_args.max_steps
    if script_args.variant in VISION_VARIANTS:
        hp["train_projector"] = script_args.train_projector
        hp["projector_lr"] = script_args.projector_lr if script_args.train_projector else None
    if script_args.finetuning != "full":
        hp.update(lora_r=script_args.lora_r, lora_alpha=script_args.lora_alpha, lora_dropout=script_args.lora_dropout)
        peft_config = getattr(getattr(trainer, "model", None), "peft_config", {}).get("default") if trainer else None
        if peft_config is not None:
            hp["lora_target_modules"] = peft_config.target_modules
            hp["modules_to_save"] = sorted(peft_config.modules_to_save or [])
    if script_args.chat_template:
        hp["chat_template"] = script_args.chat_template
    return hp


def write_generation_config(folder: Path, model, tokenizer, script_args: MirrorTrainArguments) -> None:
    """generation_config.json with the paper's therapist sampling defaults and the tokenizer's EOS as a stop."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
    eos = config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.insert(0, tokenizer.eos_token_id)
    config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    config.do_sample = True
    config.temperature = script_args.generation_temperature
    config.top_p = script_args.generation_top_p
    config.max_new_tokens = script_args.generation_max_new_tokens
    config.save_pretrained(folder)


def model_card_info(
    script_args: MirrorTrainArguments,
    training_args,
    *,
    adapter: bool,
    model_name: str,
    hyperparameters: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plain data for `model_cards.render_model_card`."""
    from model_cards.model_card import is_hub_id

    dataset_hub_id = script_args.dataset_hub_id or (
        script_args.dataset_name
        if is_hub_id(script_args.dataset_name) and not os.path.exists(script_args.dataset_name)
        else None
    )
    results = {}
    for key in ("train_loss", "train_runtime", "train_samples_per_second", "epoch"):
        if metrics and key in metrics:
            results[key] = round(float(metrics[key]), 4)
    return {
        "model_name": model_name,
        "base_model": script_args.model_name_or_path,
        "variant": script_args.variant,
        "finetuning": script_args.finetuning,
        "adapter": adapter,
        "vision": script_args.variant in VISION_VARIANTS,
        "license": script_args.model_license,
        "dataset": script_args.dataset_name,
        "dataset_hub_id": dataset_hub_id,
        "hub_model_id": training_args.hub_model_id,
        "recipe": script_args.recipe,
        "hyperparameters": hyperparameters,
        "training_results": results,
        "framework_versions": _framework_versions(),
        "generation": {
            "temperature": script_args.generation_temperature,
            "top_p": script_args.generation_top_p,
            "max_new_tokens": script_args.generation_max_new_tokens,
        },
    }


def save_model_folder(trainer, script_args: MirrorTrainArguments, training_args, metrics: dict | None = None) -> Path:
    """Save the trained model as a Hub-ready folder in `training_args.output_dir`.

    Holds safetensors weights only (a LoRA adapter, or full weights), the processor or tokenizer with the chat
    template, generation_config.json with the paper's sampling defaults, `mirror_training.json` (the resolved
    configuration, for `mirror merge` and reproducibility) and the README.md model card. Checkpoint folders stay
    next to it for resuming; leave them out when pushing.
    """
    from accelerate.utils import is_peft_model

    from model_cards import render_model_card

    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return output_dir
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: the JSON record below replaces it
    model = trainer.model
    adapter = is_peft_model(model)
    base = model.get_base_model() if adapter else model
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    write_generation_config(output_dir, base, tokenizer, script_args)
    hyperparameters = card_hyperparameters(script_args, training_args, trainer)
    name = training_args.hub_model_id.split("/")[-1] if training_args.hub_model_id else output_dir.name
    card = model_card_info(
        script_args, training_args, adapter=adapter, model_name=name, hyperparameters=hyperparameters, metrics=metrics
    )
    record = {
        "mirror_args": dataclasses.asdict(script_args),
        "training_args": json.loads(training_args.to_json_string()),
        "card": card,
        "metrics": metrics or {},
    }
    (output_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    (output_dir / "README.md").write_text(render_model_card(card), encoding="utf-8")
    return output_dir


# ----------------------------------------------------------------------------------------------------------------------
# Tiny end-to-end run (quickstart)


def train_tiny(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    max_steps: int = 10,
    *,
    variant: str = "base",
    merge: bool = True,
    extra_args: list[str] | None = None,
) -> Path:
    """Fine-tune a tiny random LLaVA, built from config offline, on the sample `sft` rows; returns a model folder.

    Uses `recipes/tiny/base.yaml` (LoRA + projector, like the paper's recipe, at toy scale, on CPU). Layout:
    `output_dir/tiny-llava` (the random base model), `output_dir/adapter` (the LoRA adapter folder with its
    checkpoints) and, with `merge=True`, `output_dir/model`: the merged, self-contained folder that
    `AutoModelForImageTextToText.from_pretrained` loads; that is what is returned (the adapter folder otherwise).
    """
    from training.tiny import build_tiny_llava

    output_dir = Path(output_dir)
    base = build_tiny_llava(output_dir / "tiny-llava")
    argv = [
        "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(base),
        "--dataset_name", str(dataset_dir),
        "--variant", variant,
        "--output_dir", str(output_dir / "adapter"),
        "--max_steps", str(max_steps),
        *(extra_args or []),
    ]  # fmt: skip
    adapter_dir = main(*parse_args(argv))
    if not merge:
        return adapter_dir
    from training.merge import merge_adapter

    return merge_adapter(adapter_dir, output_dir / "model")


if __name__ == "__main__":
    cli()
