"""Model-side pieces of `mirror train`: checks, chat template, LoRA targets, the projector and its learning rate.

Everything here works on any transformers VLM that exposes its language model through `get_decoder()` (LLaVA,
Qwen2.5-VL, Idefics3/SmolVLM, Gemma 3, ...), not only on LLaVA.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Module names of the vision-to-language projector in current transformers VLMs, most specific first:
# LLaVA / LLaVA-NeXT / Gemma 3 / PaliGemma: `multi_modal_projector`; Qwen2-VL / Qwen2.5-VL: `visual.merger`;
# Idefics3 / SmolVLM: `connector`.
PROJECTOR_NAMES = ("multi_modal_projector", "visual.merger", "connector", "mm_projector")
# Module names of the vision encoder, frozen in full fine-tuning unless asked otherwise.
VISION_TOWER_NAMES = ("vision_tower", "vision_model", "visual")

BUNDLED_CHAT_TEMPLATES = Path(__file__).parent / "chat_templates"
# Metrics TRL's SFTTrainer computes over the full vocabulary at every step (`log_token_metrics: false` skips them).
TOKEN_METRICS = ("entropy", "mean_token_accuracy")


class MirrorConfigError(ValueError):
    """A training configuration that cannot work, caught before any training step."""


def image_token_id(config) -> int | None:
    """The id of the image placeholder token of a VLM config, if it has one."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def check_vision_model(model_name: str, config, processing_class, variant: str) -> None:
    """A vision variant needs a VLM: a vision config, an image token, and a processor with an image processor."""
    from transformers import ProcessorMixin

    hint = "Pick a vision-language model, or the `text` variant for a text-only model."
    if getattr(config, "vision_config", None) is None:
        raise MirrorConfigError(
            f"Variant {variant!r} shows the model the client's face, but {model_name!r} ({type(config).__name__}) "
            f"has no vision tower. {hint}"
        )
    token_id = image_token_id(config)
    if token_id is None:
        raise MirrorConfigError(
            f"Variant {variant!r} needs a model with an image token, but the config of {model_name!r} defines "
            f"neither `image_token_id` nor `image_token_index`. {hint}"
        )
    if not isinstance(processing_class, ProcessorMixin) or getattr(processing_class, "image_processor", None) is None:
        raise MirrorConfigError(
            f"Variant {variant!r} needs a processor with an image processor, but {model_name!r} loads a "
            f"{type(processing_class).__name__}. {hint}"
        )
    tokenizer = processing_class.tokenizer
    if token_id >= len(tokenizer) and token_id >= getattr(config.get_text_config(), "vocab_size", 0):
        raise MirrorConfigError(
            f"The image token id {token_id} of {model_name!r} is outside both the tokenizer and the model vocabulary"
        )


def read_chat_template(spec: str) -> str:
    """A chat template from a bundled name (`llava_eos`) or a path to a `.jinja` file."""
    for path in (BUNDLED_CHAT_TEMPLATES / f"{spec}.jinja", Path(spec).expanduser()):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    known = sorted(p.stem for p in BUNDLED_CHAT_TEMPLATES.glob("*.jinja"))
    raise MirrorConfigError(f"Chat template {spec!r} is neither a bundled template {known} nor a file")


def resolve_chat_template(processing_class, spec: str | None, assistant_only_loss: bool) -> str:
    """The chat template to train (and ship) with: `spec` (e.g. `llava_eos`) or the model's own, which TRL swaps for
    its training version when it lacks `{% generation %}` markers. With assistant-only loss the end-of-turn token
    must be inside the loss mask, or the model never learns to stop: an error here, not a warning."""
    from trl.chat_template_utils import (
        get_training_chat_template,
        has_generation_markers,
        is_chat_template_stop_token_trained,
    )

    if spec is not None:
        template = read_chat_template(spec)
    else:
        template = processing_class.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise MirrorConfigError("The model ships no chat template; set `chat_template` in the recipe")
    if not assistant_only_loss:
        return template
    if not has_generation_markers(template):
        if spec is not None:
            raise MirrorConfigError(
                f"Chat template {spec!r} has no {{% generation %}} block, which assistant-only loss needs"
            )
        try:
            template = get_training_chat_template(processing_class) or template
        except ValueError as error:
            raise MirrorConfigError(
                "The model's chat template has no {% generation %} block and TRL has no training version of it. "
                "Set `chat_template` to a .jinja file whose generation block ends with the EOS token."
            ) from error
    if not is_chat_template_stop_token_trained(processing_class, chat_template=template):
        raise MirrorConfigError(
            "With this chat template the assistant's end-of-turn token falls outside the loss mask, so the model "
            "would never learn to stop. Use a template whose {% generation %} block ends with the EOS token "
            "(e.g. `chat_template: llava_eos` for LLaVA-1.5)."
        )
    return template


def set_chat_template(processing_class, template: str) -> None:
    """Attach the template to the processor and its tokenizer, so it is used for training and saved with the model."""
    processing_class.chat_template = template
    tokenizer = getattr(processing_class, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.chat_template = template


def language_model_prefix(model) -> str:
    """Qualified module name of the language model (decoder stack) inside `model`."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        raise MirrorConfigError(f"Cannot find the language model inside {type(model).__name__}")
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise MirrorConfigError(f"The language model of {type(model).__name__} is not one of its submodules")


def default_lora_target_regex(model) -> str:
    """A peft `target_modules` regex matching every linear layer of the language model and nothing else: peft has no
    LoRA default for VLMs, and a plain `["q_proj", ...]` list also hits the vision tower, whose layers share those
    names. Anchored on the decoder's qualified name, it never adapts the vision tower, projector or LM head."""
    import torch

    prefix = language_model_prefix(model)
    leaf_names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith(prefix + ".")
        }
    )
    if not leaf_names:
        raise MirrorConfigError(f"The language model {prefix!r} of {type(model).__name__} has no linear layers")
    return rf"{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, leaf_names))})"


def modules_matching(model, regex: str) -> list[str]:
    """Names of the modules of `model` that peft would adapt for a `target_modules` regex (`re.fullmatch`)."""
    return [name for name, _ in model.named_modules() if name and re.fullmatch(regex, name)]


def find_projector_modules(model, names: list[str] | None = None) -> list[str]:
    """Qualified names of the multimodal projector module(s) of a VLM (auto-detected unless `names` is given)."""
    modules = dict(model.named_modules())
    candidates = names if names is not None else PROJECTOR_NAMES
    found = []
    for candidate in candidates:
        hits = [name for name in modules if name == candidate or name.endswith("." + candidate)]
        if names is not None and not hits:
            raise MirrorConfigError(f"Projector module {candidate!r} not found in {type(model).__name__}")
        found.extend(hit for hit in hits if hit not in found)
        if found and names is None:
            break
    return found


def find_vision_tower_modules(model) -> list[str]:
    """Qualified names of the vision encoder module(s) of a VLM (outermost matches only)."""
    found = []
    for name, _ in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in VISION_TOWER_NAMES and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def is_in_module(param_name: str, module_name: str) -> bool:
    """Whether a (possibly wrapped, e.g. `base_model.model.`-prefixed) parameter name lies inside `module_name`."""
    return f".{module_name}." in f".{param_name}"


def freeze_modules(model, module_names: list[str], keep: list[str] = ()) -> None:
    """Set `requires_grad=False` on every parameter inside `module_names` but outside `keep` (e.g. Qwen2.5-VL's
    projector sits inside its vision tower)."""
    for name, param in model.named_parameters():
        inside = any(is_in_module(name, module) for module in module_names)
        if inside and not any(is_in_module(name, module) for module in keep):
            param.requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------------------
# Faithful training: fp32 trainable weights, a frozen vision tower without a graph, LLaVA's pad-to-square


def upcast_trainable_parameters(model) -> list[str]:
    """Cast every trainable floating-point parameter to float32; returns the names of those that were cast.

    With a bf16 base peft upcasts LoRA to fp32, but a fully trained projector (`modules_to_save`) stays bf16, and
    outside ZeRO-3 nothing keeps fp32 master weights: at lr 2e-5 most bf16 updates round away. Autocast still runs
    the matmuls in bf16. ZeRO-3 parameters (`ds_id`) are left to DeepSpeed's own fp32 master weights.
    """
    import torch

    cast = []
    for name, param in model.named_parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            if not hasattr(param, "ds_id"):
                param.data = param.data.float()
                cast.append(name)
    return cast


def run_frozen_vision_towers_without_graph(model) -> list[str]:
    """Run every fully frozen vision tower of `model` under `torch.no_grad()`; returns their module names.

    `enable_input_require_grads` (TRL: PEFT + activation checkpointing) hooks every sub-model's input embeddings, so
    a frozen CLIP builds an autograd graph, is recomputed and back-propagated through for nothing. A tower with a
    trainable parameter inside (LoRA on it, or Qwen2.5-VL's projector `visual.merger`) is left alone.
    """
    import torch

    wrapped = []
    for name in find_vision_tower_modules(model):
        module = model.get_submodule(name)
        params = list(module.parameters())
        if not params or any(param.requires_grad for param in params):
            if params:
                logger.info("Vision tower %s has trainable parameters: it keeps its autograd graph", name)
            continue
        if not getattr(module, "_mirror_runs_without_graph", False):
            forward = module.forward

            @functools.wraps(forward)
            def forward_without_graph(*args, _forward=forward, **kwargs):
                with torch.no_grad():
                    return _forward(*args, **kwargs)

            module.forward = forward_without_graph
            module._mirror_runs_without_graph = True
        wrapped.append(name)
    return wrapped


def pad_to_square_image_processor(image_processor):
    """A copy of a CLIP-style image processor that first pads each image to a square with the image mean (LLaVA-1.5's
    `expand2square`), then resizes and crops as before. transformers centre-crops by default, which cuts the sides
    of a non-square image; a `LlavaImageProcessor` with `do_pad=True` is saved with the model, so inference pads too.
    """
    from transformers import LlavaImageProcessorPil

    keys = ("size", "crop_size", "resample", "do_resize", "do_center_crop", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "do_convert_rgb")  # fmt: skip
    settings = {key: getattr(image_processor, key) for key in keys if getattr(image_processor, key, None) is not None}
    if "image_mean" not in settings:
        raise MirrorConfigError(
            f"pad_to_square needs an image processor with `image_mean` (the padding colour); "
            f"{type(image_processor).__name__} has none"
        )
    return LlavaImageProcessorPil(**settings, do_pad=True)


def set_pad_to_square(processing_class) -> None:
    """Make a VLM processor pad images to a square (see `pad_to_square_image_processor`) in place."""
    image_processor = getattr(processing_class, "image_processor", None)
    if image_processor is None:
        raise MirrorConfigError(
            f"pad_to_square needs a processor with an image processor; got {type(processing_class).__name__}"
        )
    processing_class.image_processor = pad_to_square_image_processor(image_processor)


def compile_decoder_layers(model, backend: str = "inductor", mode: str | None = None) -> int:
    """Regional compilation: `torch.compile` each decoder layer in place (one compiled graph reused by every layer,
    so compile time stays that of one layer); returns how many layers were compiled. Pair it with
    `pad_to_multiple_of` so sequence lengths vary in few steps and recompilations stay rare."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT-wrapped or not
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise MirrorConfigError(f"Cannot find the decoder layers of {type(base).__name__} to compile")
    for layer in layers:
        layer.compile(backend=backend, mode=mode, dynamic=True)
    return len(layers)


def without_token_metrics(model) -> None:
    """Skip TRL's per-step entropy and top-1 accuracy over the full vocabulary (its fused LM head computes them on
    every step only to log them): re-patch the fused LM head to compute log-probabilities only; the trainer then
    drops the two metrics from its logs (`log_token_metrics: false`)."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    add_fused_lm_head(base, outputs=("log_probs",))
    fused = base.forward

    @functools.wraps(fused)
    def forward(*args, **kwargs):
        output = fused(*args, **kwargs)
        if kwargs.get("fused_lm_head") and getattr(output, "entropy", 0) is None:
            # TRL's compute_loss reads these for its metrics; zeros cost nothing and the metrics are not logged.
            output.entropy = torch.zeros_like(output.log_probs.detach())
            output.is_top1 = torch.zeros_like(output.log_probs.detach(), dtype=torch.bool)
        return output

    base.forward = forward


def apply_training_speedups(trainer) -> dict[str, Any]:
    """What `MirrorSFTTrainer` does to its model once TRL has wrapped it: fp32 trainable weights, frozen vision
    towers without a graph and, on request, regional compilation and no token metrics; returns a summary."""
    import torch

    model, args = trainer.model, trainer.args
    cast = upcast_trainable_parameters(model)
    # Frozen weights in 16 bit next to fp32 trainable ones need autocast (`bf16`/`fp16`).
    half = any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters() if not p.requires_grad)
    if cast and half and not (args.bf16 or args.fp16):
        raise MirrorConfigError(
            "The model is loaded in 16 bit (dtype bfloat16/float16) but mixed precision is off: trainable weights "
            "are kept in fp32 and need autocast. Set `bf16: true` (or `fp16: true`), or load with dtype float32."
        )
    towers = run_frozen_vision_towers_without_graph(model)
    logger.info("fp32 trainable tensors cast: %d; vision towers without graph: %s", len(cast), towers)
    summary: dict[str, Any] = {"fp32_parameters": cast, "vision_towers_without_graph": towers}
    if getattr(args, "compile_decoder_layers", False):
        summary["compiled_layers"] = compile_decoder_layers(model, backend=args.compile_backend)
    if not getattr(args, "log_token_metrics", True):
        without_token_metrics(model)
    return summary


def _define_trl_subclasses() -> None:
    """Define `MirrorSFTConfig` and `MirrorSFTTrainer` in this module (TRL's imports are heavy: on first use)."""
    from trl import SFTConfig, SFTTrainer

    @dataclass
    class MirrorSFTConfig(SFTConfig):
        """TRL's `SFTConfig` with MIRROR's training-loop additions (all off by default, so the loss is TRL's)."""

        compile_decoder_layers: bool = field(
            default=False,
            metadata={
                "help": "Regional compilation: torch.compile each decoder layer (use with pad_to_multiple_of, e.g. 64)."
            },
        )
        compile_backend: str = field(
            default="inductor", metadata={"help": "torch.compile backend of compile_decoder_layers."}
        )
        log_token_metrics: bool = field(
            default=True,
            metadata={
                "help": "Log TRL's per-step entropy and token accuracy, computed over the full vocabulary; false "
                "skips that work (the loss is unchanged)."
            },
        )

    class MirrorSFTTrainer(SFTTrainer):
        """TRL's `SFTTrainer` (collator and loss included) plus `apply_training_speedups` and the projector's own
        optimizer param group at `projector_lr` (LLaVA's `mm_projector_lr`: 2e-5 in the paper, 2e-4 for LoRA)."""

        def __init__(self, *args, projector_modules: list[str] | None = None, projector_lr: float | None = None, **kw):
            self.projector_modules = list(projector_modules or [])
            self.projector_lr = projector_lr
            super().__init__(*args, **kw)
            # After TRL's PEFT wrap and input-grad hooks, before any optimizer or distributed wrapper exists: on every
            # launch path (single GPU, DDP, FSDP, DeepSpeed) the optimizer then sees fp32 trainable weights.
            self.mirror_speedups = apply_training_speedups(self)

        def log(self, logs, start_time=None):
            if not getattr(self.args, "log_token_metrics", True):
                for metrics in self._metrics.values():
                    for key in TOKEN_METRICS:
                        metrics.pop(key, None)
            return super().log(logs, start_time)

        def create_optimizer(self, model=None):
            if self.projector_lr is None or not self.projector_modules or self.optimizer is not None:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            decay_names = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}  # (projector, decay) -> parameters
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    projector = any(is_in_module(name, module) for module in self.projector_modules)
                    groups.setdefault((projector, name in decay_names), []).append(param)
            if not any(projector for projector, _ in groups):
                raise MirrorConfigError(
                    f"projector_lr is set but no trainable parameter lies in {self.projector_modules}"
                )
            # The rest first (so logs show the main learning rate), then the projector; decay before no decay.
            order = [(False, True), (False, False), (True, True), (True, False)]
            param_groups = [
                {
                    "params": groups[projector, decay],
                    "weight_decay": self.args.weight_decay if decay else 0.0,
                    "lr": self.projector_lr if projector else self.args.learning_rate,
                    "name": ("projector" if projector else "model") + ("" if decay else "_no_decay"),
                }
                for projector, decay in order
                if (projector, decay) in groups
            ]
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
            return self.optimizer

    for cls in (MirrorSFTConfig, MirrorSFTTrainer):
        # Picklable (the Trainer saves its arguments with every checkpoint): found again as `training.modeling.<name>`.
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
        globals()[cls.__name__] = cls


def __getattr__(name: str):
    if name in ("MirrorSFTTrainer", "MirrorSFTConfig"):
        _define_trl_subclasses()
        return globals()[name]
    raise AttributeError(name)
