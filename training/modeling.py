"""Model-side pieces of `mirror train`: checks, chat template, LoRA targets, the projector and its learning rate.

Everything here works on any transformers VLM that exposes its language model through `get_decoder()` (LLaVA,
Qwen2.5-VL, Idefics3/SmolVLM, Gemma 3, ...), not only on LLaVA.
"""

from __future__ import annotations

import logging
import re
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
    bundled = BUNDLED_CHAT_TEMPLATES / f"{spec}.jinja"
    if bundled.is_file():
        return bundled.read_text(encoding="utf-8")
    path = Path(spec).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    known = sorted(p.stem for p in BUNDLED_CHAT_TEMPLATES.glob("*.jinja"))
    raise MirrorConfigError(f"Chat template {spec!r} is neither a bundled template {known} nor a file")


def resolve_chat_template(processing_class, spec: str | None, assistant_only_loss: bool) -> str:
    """Pick the chat template to train (and ship) with, and check it can teach the model to stop.

    `spec` overrides the model's template (e.g. `llava_eos` instead of the stock llava-1.5 template, whose generation
    block lacks EOS). Without an override and with assistant-only loss, a template lacking `{% generation %}` markers
    is swapped for TRL's training version of it. With assistant-only loss the assistant's end-of-turn token must be
    inside the loss mask, otherwise the model never learns to stop: that is an error here, not a warning.
    """
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
    """A peft `target_modules` regex matching every linear layer of the language model and nothing else.

    peft has no LoRA default for VLMs, and a plain `["q_proj", ...]` list also hits the vision tower, whose layers
    share those names (ARCHITECTURE §7). The regex is anchored on the decoder's qualified name, so the vision tower,
    the projector and the LM head are never adapted.
    """
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


def freeze_modules(model, module_names: list[str], keep: list[str] = ()) -> int:
    """Set `requires_grad=False` on every parameter inside `module_names` but outside `keep` (e.g. Qwen2.5-VL's
    projector sits inside its vision tower); returns how many tensors were frozen."""
    count = 0
    for name, param in model.named_parameters():
        if any(is_in_module(name, module) for module in module_names) and not any(
            is_in_module(name, module) for module in keep
        ):
            param.requires_grad_(False)
            count += 1
    return count


def parameter_groups(
    model,
    *,
    learning_rate: float,
    weight_decay: float,
    decay_parameter_names: set[str],
    projector_modules: list[str],
    projector_lr: float | None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the rest of the trainable parameters first (so logs show the main learning rate),
    then the projector at `projector_lr`; each split into weight-decay and no-decay groups."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        projector = projector_lr is not None and any(is_in_module(name, m) for m in projector_modules)
        groups.setdefault((projector, name in decay_parameter_names), []).append(param)
    result = []
    for projector in (False, True):
        for decay in (True, False):
            params = groups.get((projector, decay))
            if not params:
                continue
            group = {"params": params, "weight_decay": weight_decay if decay else 0.0}
            group["lr"] = projector_lr if projector else learning_rate
            group["name"] = ("projector" if projector else "model") + ("" if decay else "_no_decay")
            result.append(group)
    return result


def _sft_trainer_class():
    from trl import SFTTrainer

    class MirrorSFTTrainer(SFTTrainer):
        """TRL's `SFTTrainer` with one addition: the multimodal projector trains at its own learning rate.

        The projector's parameters get their own optimizer param group (LLaVA's `mm_projector_lr`, 2e-5 in the
        paper, against 2e-4 for LoRA). The learning-rate schedule scales every group alike. Everything else, the
        collator included, is TRL's.
        """

        def __init__(self, *args, projector_modules: list[str] | None = None, projector_lr: float | None = None, **kw):
            self.projector_modules = list(projector_modules or [])
            self.projector_lr = projector_lr
            super().__init__(*args, **kw)

        def create_optimizer(self, model=None):
            if self.projector_lr is None or not self.projector_modules:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            if self.optimizer is None:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
                groups = parameter_groups(
                    opt_model,
                    learning_rate=self.args.learning_rate,
                    weight_decay=self.args.weight_decay,
                    decay_parameter_names=set(self.get_decay_parameter_names(opt_model)),
                    projector_modules=self.projector_modules,
                    projector_lr=self.projector_lr,
                )
                if not any(group["name"].startswith("projector") for group in groups):
                    raise MirrorConfigError(
                        f"projector_lr is set but no trainable parameter lies in {self.projector_modules}"
                    )
                self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer

    return MirrorSFTTrainer


def __getattr__(name: str):
    # `MirrorSFTTrainer` subclasses TRL's trainer, whose import is heavy: build the class on first use.
    if name == "MirrorSFTTrainer":
        cls = _sft_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
