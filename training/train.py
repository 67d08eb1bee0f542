"""`mirror train`: fine-tune a MIRROR therapist with TRL's `SFTTrainer` (LoRA, QLoRA or full fine-tuning).

A TRL-style script: `TrlParser((MirrorScriptArguments, SFTConfig, ModelConfig))`; a YAML recipe (`--config`, a path
or a bundled name such as `llava-1.5-7b/base`) sets their values and command-line flags override it. Every
configuration error is raised before the first training step. The model folder (`output_dir`) holds only what is
published; resumable checkpoints (torch pickles) go to `checkpoint_dir`, by default `<output_dir>-checkpoints`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id
from trl import ModelConfig, ScriptArguments, TrlParser

from dataset_builder.files import check_output_folder
from inference.prompts import TRAINING_RECORD_NAME, VARIANTS, VISION_VARIANTS
from model_cards import render_model_card
from model_cards.model_card import is_hub_id
from recipes import RECIPES_DIR, resolve_recipe
from training import modeling
from training.modeling import MirrorConfigError

logger = logging.getLogger(__name__)

TINY_RECIPE = RECIPES_DIR / "tiny" / "base.yaml"
TRAINING_RECORD = TRAINING_RECORD_NAME  # defined once, in inference.prompts (inference reads it)


@dataclass
class MirrorScriptArguments(ScriptArguments):
    """What MIRROR adds to TRL's `ScriptArguments`: variant and rows, projector, chat template, model folder."""

    # Data (dataset_train_split comes from ScriptArguments)
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Mirror dataset: a local folder built by `mirror build`, or a Hub dataset id."},
    )
    dataset_config: str | None = field(default="sft", metadata={"help": "Dataset config holding the SFT rows."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset."})
    variant: str = field(
        default="base", metadata={"help": "Which `sft` variant to train on.", "choices": list(VARIANTS)}
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
    # Model additions
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template to train and ship with: a bundled name (`llava_eos`) or a path to a .jinja file; "
            "default: the model's own (patched by TRL with generation markers when needed)."
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
    pad_to_square: bool = field(
        default=False,
        metadata={
            "help": "Pad each image to a square with the image mean before resizing, as LLaVA-1.5's own training did "
            "(default: the processor's centre crop, the same for square faces). Saved with the processor."
        },
    )
    # Output
    checkpoint_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where resumable checkpoints (checkpoint-*/, holding torch pickles) are written; default: "
            "`<output_dir>-checkpoints`, next to the model folder, never inside it, so publishing the model folder "
            "cannot upload them. `resume_from_checkpoint: last` resumes from the newest one there."
        },
    )
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


def _trl_dataclasses() -> tuple[type, ...]:
    return (MirrorScriptArguments, modeling.MirrorSFTConfig, ModelConfig)  # SFTConfig + MIRROR's speed settings


def __getattr__(name: str):
    # `ARGUMENTS` for the `mirror` CLI, resolved on first use: importing SFTConfig imports transformers' Trainer.
    if name == "ARGUMENTS":
        return _trl_dataclasses()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_parser():
    """A bare `trl.TrlParser` over the three dataclasses (`mirror_cli` builds the one with help and usage)."""
    return TrlParser(_trl_dataclasses())


def parse_args(argv: list[str] | None = None, parser=None):
    """(script_args, training_args, model_args) from `argv`; `--config` may name a bundled recipe. TrlParser
    refuses recipe keys that no dataclass field takes (ValueError naming them)."""
    parser = parser or make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [part for item in argv for part in (item.split("=", 1) if item.startswith("--config=") else [item])]
    recipe = None
    if "--config" in argv:
        index = argv.index("--config") + 1
        if index >= len(argv):
            raise MirrorConfigError("--config needs a recipe: a path or a bundled name such as llava-1.5-7b/base")
        recipe = argv[index]
        argv[index] = str(resolve_recipe(recipe))
    elif not {"-h", "--help"} & set(argv):  # no recipe: the defaults alone cannot train (and want bf16 on a GPU)
        missing = [flag for flag in ("--dataset_name", "--model_name_or_path") if not _flag_given(argv, flag)]
        if missing:
            raise MirrorConfigError(
                f"--config is required (a recipe: a path or a bundled name such as tiny/base or llava-1.5-7b/base), "
                f"or else {' and '.join(missing)} with the training options; see `{parser.prog} --help`"
            )
    try:
        *arguments, recipe_unknown, argv_unknown = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as error:  # e.g. TrainingArguments refusing bf16 without a GPU
        if "bf16" not in str(error):
            raise
        raise MirrorConfigError(f"{error} (on a CPU: --use_cpu true --bf16 false, as in recipe tiny/base)") from None
    if recipe_unknown:
        raise MirrorConfigError(f"Unknown arguments from config file: {recipe_unknown} (see `{parser.prog} --help`)")
    if argv_unknown:
        raise MirrorConfigError(f"unrecognized arguments: {' '.join(argv_unknown)} (see `{parser.prog} --help`)")
    script_args, training_args, model_args = arguments
    if recipe is not None and script_args.recipe is None:
        script_args.recipe = recipe
    return script_args, training_args, model_args


def _flag_given(argv: list[str], flag: str) -> bool:
    """`--snake_name`, `--kebab-name`, either with `=value`, is in `argv`."""
    spellings = (flag, "--" + flag[2:].replace("_", "-"))
    return any(item == name or item.startswith(f"{name}=") for item in argv for name in spellings)


def finetuning_mode(model_args) -> str:
    """`lora`, `qlora` or `full`, from ModelConfig's `use_peft` and `load_in_4bit` (for the card and the record)."""
    return ("qlora" if model_args.load_in_4bit else "lora") if model_args.use_peft else "full"


def checkpoint_dir(script_args: MirrorScriptArguments, training_args) -> Path:
    """Where the trainer writes `checkpoint-*/`: `checkpoint_dir`, else `<output_dir>-checkpoints` beside it."""
    model_dir = Path(training_args.output_dir)
    folder = Path(script_args.checkpoint_dir or f"{model_dir}-checkpoints")
    if folder.resolve().is_relative_to(model_dir.resolve()):  # the model folder itself included
        raise MirrorConfigError(
            f"checkpoint_dir {str(folder)!r} is inside the model folder {str(model_dir)!r}: checkpoints hold torch "
            "pickles and would be published with the model. Pick a folder outside it (or leave it unset)."
        )
    return folder


def check_model_output_dir(output_dir: str | os.PathLike) -> Path:
    """`output_dir` must be new, empty or a model folder of ours (its `mirror_training.json`): saving the model
    writes README.md, config.json and weights there, which must never replace a user's files."""
    return check_output_folder(
        output_dir,
        flag="--output_dir",
        ours=lambda folder: (folder / TRAINING_RECORD).is_file(),
        what=f"a model folder made by `mirror train` or `mirror merge` (no {TRAINING_RECORD})",
    )


def check_arguments(script_args: MirrorScriptArguments, training_args, model_args) -> None:
    """Configuration errors that can be found from the arguments alone, before anything is loaded."""
    if not script_args.dataset_name:
        raise MirrorConfigError("--dataset_name is required: a Mirror dataset folder (from `mirror build`) or Hub id")
    if not model_args.model_name_or_path:
        raise MirrorConfigError(
            "--model_name_or_path is required: a model folder (e.g. one written by "
            "`training.tiny.build_tiny_llava(folder)` or `mirror merge`) or a Hub model id such as "
            "llava-hf/llava-1.5-7b-hf"
        )
    if Path(script_args.dataset_name).expanduser().is_file():
        raise NotADirectoryError(
            f"--dataset_name {script_args.dataset_name} is a file, not a dataset folder; pass the folder `mirror "
            "build` wrote (README.md and data/), or a Hub dataset id"
        )
    _check_model_source(model_args.model_name_or_path)
    if script_args.variant not in VARIANTS:
        raise MirrorConfigError(f"Unknown variant {script_args.variant!r}; expected one of {list(VARIANTS)}")
    if script_args.dataset_streaming:
        raise MirrorConfigError("dataset_streaming is not supported: Mirror datasets are small enough to load whole")
    if model_args.load_in_8bit:
        raise MirrorConfigError("load_in_8bit is not supported: use load_in_4bit (QLoRA) or a 16-bit base model")
    if model_args.load_in_4bit and not model_args.use_peft:
        raise MirrorConfigError("load_in_4bit (QLoRA) trains LoRA adapters on a frozen 4-bit model: set use_peft")
    if model_args.load_in_4bit:  # QLoRA needs a CUDA GPU and bitsandbytes: refuse before anything is loaded
        import torch

        if not torch.cuda.is_available():
            raise MirrorConfigError(
                "QLoRA (load_in_4bit) loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU, and "
                "none is available. Use `--load_in_4bit false` (LoRA) or `--use_peft false` (full) on this machine."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise MirrorConfigError("QLoRA (load_in_4bit) needs bitsandbytes: pip install bitsandbytes")
    checkpoint_dir(script_args, training_args)
    vision = script_args.variant in VISION_VARIANTS
    if vision and not training_args.assistant_only_loss:
        raise MirrorConfigError(
            f"Variant {script_args.variant!r} needs assistant_only_loss=True: without it the image and prompt tokens "
            "are trained on."
        )
    if training_args.push_to_hub:
        raise MirrorConfigError(
            "push_to_hub is not done by `mirror train`: the Trainer would push before the model card and generation "
            "config are written. Publish the finished folder with `mirror push`."
        )
    if vision and (training_args.packing or training_args.padding_free):
        raise MirrorConfigError("packing and padding_free are not supported for vision variants")


def _check_model_source(name: str) -> None:
    """A local model path that cannot be one fails here, not as a Hub lookup of a path-looking name."""
    path = Path(name).expanduser()
    if path.is_file():
        raise NotADirectoryError(f"--model_name_or_path {name} is a file, not a model folder")
    if path.exists():
        return
    try:
        validate_repo_id(name)
    except HFValidationError:  # not a Hub id either, so a mistyped folder
        raise FileNotFoundError(
            f"--model_name_or_path {name}: no such folder; pass a model folder or a Hub model id such as owner/name"
        ) from None


def _resolve_resume(script_args: MirrorScriptArguments, training_args) -> str | None:
    """`resume_from_checkpoint`: a checkpoint folder, or `last`/`true` for the newest one in the checkpoint folder."""
    resume = training_args.resume_from_checkpoint
    if resume is None or str(resume).lower() in ("false", "none", ""):
        return None
    if str(resume).lower() in ("last", "true"):
        from transformers.trainer_utils import get_last_checkpoint

        folder = checkpoint_dir(script_args, training_args)
        last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
        if last is None:
            raise MirrorConfigError(f"resume_from_checkpoint={resume!r} but {str(folder)!r} has no checkpoint")
        return last
    if not os.path.isdir(resume):
        raise MirrorConfigError(f"Checkpoint folder {resume!r} not found")
    return resume


def load_processing_class(script_args: MirrorScriptArguments, training_args, model_args, vision: bool):
    """`AutoProcessor` for vision variants, `AutoTokenizer` for the text baselines."""
    from transformers import AutoProcessor, AutoTokenizer

    kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code}
    if vision:
        try:
            return AutoProcessor.from_pretrained(model_args.model_name_or_path, **kwargs)
        except (OSError, ValueError) as error:
            raise MirrorConfigError(
                f"Variant {script_args.variant!r} needs a processor with an image processor, but none could be "
                f"loaded for {model_args.model_name_or_path!r}: {error}"
            ) from error
    return AutoTokenizer.from_pretrained(model_args.model_name_or_path, **kwargs)


def load_model(script_args: MirrorScriptArguments, training_args, model_args, vision: bool):
    """`AutoModelForImageTextToText` (vision) or `AutoModelForCausalLM` (text), 4-bit for QLoRA (TRL's helpers)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from trl import get_quantization_config

    from inference.backends.transformers_backend import parse_dtype

    kwargs: dict[str, Any] = {
        **(training_args.model_init_kwargs or {}),  # e.g. {use_kernels: true}, as TRL passes them
        "use_safetensors": True,
        "revision": model_args.model_revision,
        "dtype": parse_dtype(model_args.dtype),
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        if model_args.dtype in ("auto", None):  # 4-bit matmuls need a real compute dtype
            quantization_config.bnb_4bit_compute_dtype = torch.bfloat16
        # The vision tower and the projector (trained fully) stay in 16 bit, as does the LM head.
        projectors = [name.rsplit(".", 1)[-1] for name in modeling.PROJECTOR_NAMES]
        quantization_config.llm_int8_skip_modules = [*modeling.VISION_TOWER_NAMES, *projectors, "lm_head"]
        kwargs["quantization_config"] = quantization_config
        if training_args.distributed_state.distributed_type not in ("DEEPSPEED", "FSDP"):
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}  # one GPU per process
    model_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    try:
        return model_class.from_pretrained(model_args.model_name_or_path, **kwargs)
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            kind = "a vision-language model" if vision else "a causal language model"
            raise MirrorConfigError(
                f"Variant {script_args.variant!r} trains {kind} ({model_class.__name__}), which "
                f"{model_args.model_name_or_path!r} is not: {error}"
            ) from error
        raise


def build_trainer(
    script_args: MirrorScriptArguments,
    training_args,
    model_args,
    *,
    model=None,
    processing_class=None,
    train_dataset=None,
    callbacks: list | None = None,
):
    """Check the configuration, load what is not passed in (data, processor, model) and return a ready
    `MirrorSFTTrainer`; no training step runs. The trainer's `output_dir` is the checkpoint folder."""
    from transformers import AutoConfig
    from trl import get_peft_config

    from training.data import load_sft_dataset, longest_row_length

    check_arguments(script_args, training_args, model_args)
    check_model_output_dir(training_args.output_dir)  # before hours of training, not at the end
    _resolve_resume(script_args, training_args)  # a missing checkpoint is a config error too
    vision = script_args.variant in VISION_VARIANTS

    if train_dataset is None:
        with training_args.main_process_first(desc="loading the Mirror dataset"):  # one process fills the cache
            train_dataset = load_sft_dataset(
                script_args.dataset_name,
                script_args.variant,
                config=script_args.dataset_config,
                split=script_args.dataset_train_split,
                revision=script_args.dataset_revision,
                tasks=script_args.tasks,
                max_samples=script_args.max_samples,
            )
    if processing_class is None:
        processing_class = load_processing_class(script_args, training_args, model_args, vision)
    if vision:
        kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code}
        config = getattr(model, "config", None) or AutoConfig.from_pretrained(model_args.model_name_or_path, **kwargs)
        modeling.check_vision_model(model_args.model_name_or_path, config, processing_class, script_args.variant)

    template = modeling.resolve_chat_template(
        processing_class, script_args.chat_template, training_args.assistant_only_loss
    )
    modeling.set_chat_template(processing_class, template)
    if vision and script_args.pad_to_square:
        modeling.set_pad_to_square(processing_class)

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
        model = load_model(script_args, training_args, model_args, vision)

    projector_modules: list[str] = []
    if vision and script_args.train_projector:
        projector_modules = modeling.find_projector_modules(model, script_args.projector_modules)
        if not projector_modules:
            raise MirrorConfigError(
                f"No multimodal projector found in {type(model).__name__}; set `projector_modules` or "
                "`train_projector: false`"
            )

    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        # A string target is a regex (peft matches it with re.fullmatch); the default never reaches the vision
        # tower, the projector or the LM head.
        peft_config.target_modules = model_args.lora_target_modules or modeling.default_lora_target_regex(model)
        matched = modeling.modules_matching(model, peft_config.target_modules)
        if not matched:
            raise MirrorConfigError(
                f"lora_target_modules {peft_config.target_modules!r} matches no module of {type(model).__name__}"
            )
        towers = modeling.find_vision_tower_modules(model)
        outside = [name for name in matched if any(name.startswith(tower + ".") for tower in towers)]
        if outside:
            logger.warning(
                "lora_target_modules also adapts %d vision-tower module(s), e.g. %s", len(outside), outside[0]
            )
        peft_config.modules_to_save = [*projector_modules, *(model_args.lora_modules_to_save or [])] or None
    else:
        if vision and script_args.freeze_vision_tower:
            modeling.freeze_modules(model, modeling.find_vision_tower_modules(model), keep=projector_modules)
        if vision and not script_args.train_projector:
            modeling.freeze_modules(model, modeling.find_projector_modules(model, script_args.projector_modules))

    trainer_args = dataclasses.replace(training_args, output_dir=str(checkpoint_dir(script_args, training_args)))
    trainer = modeling.MirrorSFTTrainer(
        model=model,
        args=trainer_args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        callbacks=callbacks,
        projector_modules=projector_modules,
        projector_lr=script_args.projector_lr if projector_modules else None,
    )
    return trainer


def main(script_args: MirrorScriptArguments, training_args, model_args, callbacks: list | None = None) -> int:
    """`mirror train`: train as configured and save a Hub-ready model folder in `training_args.output_dir`."""
    trainer = build_trainer(script_args, training_args, model_args, callbacks=callbacks)
    train_and_save(trainer, script_args, training_args, model_args)
    return 0


def train_and_save(trainer, script_args: MirrorScriptArguments, training_args, model_args) -> Path:
    """Run `trainer.train()` (resuming if asked) and write the model folder; returns its path."""
    result = trainer.train(resume_from_checkpoint=_resolve_resume(script_args, training_args))
    output_dir = save_model_folder(trainer, script_args, training_args, model_args, metrics=result.metrics)
    trainer.accelerator.print(f"Model saved to {output_dir} (checkpoints for resuming: {trainer.args.output_dir})")
    return output_dir


def _framework_versions() -> dict[str, str]:
    packages = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")  # all imported by training
    return {"python": platform.python_version(), **{name: importlib.metadata.version(name) for name in packages}}


def card_hyperparameters(trainer, script_args: MirrorScriptArguments, training_args, model_args) -> dict:
    """The hyperparameters a reader of the model card needs, in recipe names."""
    names = ["learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "num_train_epochs"]
    names += ["per_device_train_batch_size", "gradient_accumulation_steps", "world_size", "total_train_batch_size"]
    names += ["max_length", "bf16", "gradient_checkpointing", "optim", "seed", "assistant_only_loss"]
    args = training_args
    total = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    hp: dict[str, Any] = {"finetuning": finetuning_mode(model_args)}
    for name in names:
        value = total if name == "total_train_batch_size" else getattr(args, name)
        hp[name] = getattr(value, "value", value)  # enums (lr_scheduler_type, optim) by their string value
    if training_args.max_steps and training_args.max_steps > 0:
        hp["max_steps"] = training_args.max_steps
    if script_args.variant in VISION_VARIANTS:
        hp["train_projector"] = script_args.train_projector
        hp["projector_lr"] = script_args.projector_lr if script_args.train_projector else None
    if model_args.use_peft:
        hp.update(lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout)
        peft_config = getattr(trainer.model, "peft_config", {}).get("default")
        if peft_config is not None:
            hp["lora_target_modules"] = peft_config.target_modules
            hp["modules_to_save"] = sorted(peft_config.modules_to_save or [])
    if script_args.chat_template:
        hp["chat_template"] = script_args.chat_template
    return hp


def generation_settings(script_args: MirrorScriptArguments) -> dict[str, Any]:
    return {key: getattr(script_args, f"generation_{key}") for key in ("temperature", "top_p", "max_new_tokens")}


def write_generation_config(folder: Path, model, tokenizer, script_args: MirrorScriptArguments) -> None:
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
    config.update(**{"do_sample": True, **generation_settings(script_args)})
    config.save_pretrained(folder)


def save_model_folder(
    trainer, script_args: MirrorScriptArguments, training_args, model_args, metrics: dict | None = None
) -> Path:
    """Save a Hub-ready folder in `training_args.output_dir`: safetensors weights (adapter or full), processor with
    the chat template, generation config, `mirror_training.json` (for `mirror merge`) and the model card; no pickle
    (checkpoints are in the trainer's own `output_dir`)."""
    from accelerate.utils import is_peft_model

    output_dir = check_model_output_dir(training_args.output_dir)  # again: it may have changed while training
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return output_dir
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: the JSON record below replaces it
    model = trainer.model
    adapter = is_peft_model(model)
    base = model.get_base_model() if adapter else model
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    write_generation_config(output_dir, base, tokenizer, script_args)
    metrics = metrics or {}
    dataset = script_args.dataset_name
    local_dataset = not is_hub_id(dataset) or os.path.exists(dataset)
    keys = ("train_loss", "train_runtime", "train_samples_per_second", "epoch")
    card = {  # plain data for `model_cards.render_model_card`
        "model_name": training_args.hub_model_id.split("/")[-1] if training_args.hub_model_id else output_dir.name,
        "base_model": model_args.model_name_or_path,
        "variant": script_args.variant,
        "finetuning": finetuning_mode(model_args),
        "adapter": adapter,
        "vision": script_args.variant in VISION_VARIANTS,
        "license": script_args.model_license,
        "dataset": dataset,
        "dataset_hub_id": script_args.dataset_hub_id or (None if local_dataset else dataset),
        "hub_model_id": training_args.hub_model_id,
        "recipe": script_args.recipe,
        "hyperparameters": card_hyperparameters(trainer, script_args, training_args, model_args),
        "training_results": {key: round(float(metrics[key]), 4) for key in keys if key in metrics},
        "framework_versions": _framework_versions(),
        "generation": generation_settings(script_args),
    }
    record = {
        "mirror_args": dataclasses.asdict(script_args),
        "model_args": dataclasses.asdict(model_args),
        "training_args": json.loads(training_args.to_json_string()),
        "card": card,
        "metrics": metrics,
    }
    (output_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    (output_dir / "README.md").write_text(render_model_card(card), encoding="utf-8")
    return output_dir


def train_tiny_model(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    max_steps: int = 10,
    *,
    variant: str = "base",
    merge: bool = True,
    **overrides: Any,
) -> Path:
    """Fine-tune a tiny random LLaVA (built offline) with `recipes/tiny/base.yaml` on CPU; `overrides` are recipe
    keys. Writes `output_dir/tiny-llava` (the base), `adapter` (+ `adapter-checkpoints`) and, with `merge=True`,
    `model`, the merged folder, which is returned (the adapter folder otherwise)."""
    from training.tiny import build_tiny_llava

    output_dir = Path(output_dir)
    values = {**yaml.safe_load(TINY_RECIPE.read_text(encoding="utf-8")), "recipe": str(TINY_RECIPE)}
    values.update(model_name_or_path=str(build_tiny_llava(output_dir / "tiny-llava")), dataset_name=str(dataset_dir))
    values.update(variant=variant, output_dir=str(output_dir / "adapter"), max_steps=max_steps, **overrides)
    script_args, training_args, model_args = make_parser().parse_dict(values)
    trainer = build_trainer(script_args, training_args, model_args)
    adapter_dir = train_and_save(trainer, script_args, training_args, model_args)
    if not merge:
        return adapter_dir
    from training.merge import merge_adapter

    return merge_adapter(adapter_dir, output_dir / "model")


if __name__ == "__main__":  # `python -m training.train`, as `accelerate launch -m training.train` runs it
    import mirror_cli

    raise SystemExit(mirror_cli.main(["train", *sys.argv[1:]], prog="python -m training.train"))
