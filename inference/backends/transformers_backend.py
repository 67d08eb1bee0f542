"""Local `transformers` backend: merged model folders, PEFT LoRA adapter folders, causal LMs and VLMs.

Prompts are rendered with the checkpoint's own chat template and the processor options TRL's SFT collator uses
(`add_special_tokens=False`), so a fine-tuned therapist sees the token layout it was trained on. Generation is
serialised by a lock (the server calls it from several threads) and seeded in a forked RNG, so a seed gives the
same reply without disturbing the caller's global random state.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..prompts import flatten_text_messages
from .base import ChatBackend, GenerationConfig, ImageLists, Messages, pair_images

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# Pickle-based weight files are never downloaded: loading them can execute code.
UNSAFE_WEIGHT_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.msgpack", "*.h5"]
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
# dtype names accepted everywhere a dtype is given as text (recipes, `mirror merge`, the backends): defined once.
DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class Usage:
    """Token counts of the last call, reported by the OpenAI-compatible server."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def resolve_device(device: str | None) -> str:
    """`None` picks the best local accelerator (CUDA, then Apple MPS, then CPU)."""
    if device is not None:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def parse_dtype(dtype: Any) -> Any:
    """A dtype name (`DTYPE_NAMES`) or a `torch.dtype` as `from_pretrained(dtype=...)` takes it: a `torch.dtype`, or
    "auto" (the checkpoint's own). The one dtype parser of training, merging and inference."""
    import torch

    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPE_NAMES:
        return getattr(torch, dtype)
    raise ValueError(f"Unknown dtype {dtype!r}; expected one of {list(DTYPE_NAMES)}")


def is_vision_config(config: Any) -> bool:
    """A config is vision-language when `AutoModelForImageTextToText` knows it or it carries a vision tower."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or hasattr(config, "vision_config")


def resolve_model_source(
    path_or_id: str, revision: str | None = None, base_model: str | None = None
) -> tuple[Path | None, str, str | None]:
    """(local PEFT adapter folder or None, model to load, its revision): an adapter loads its base model first.

    Hub adapters are downloaded without pickle files, so `adapter_model.safetensors` is the only weight file PEFT
    can find; a repository with pickled adapter weights only fails loudly instead of silently unpickling them.
    """
    from transformers.utils import find_adapter_config_file

    adapter_dir = Path(path_or_id).expanduser()
    if not adapter_dir.is_dir() and find_adapter_config_file(path_or_id, revision=revision) is not None:
        from huggingface_hub import snapshot_download

        adapter_dir = Path(snapshot_download(path_or_id, revision=revision, ignore_patterns=UNSAFE_WEIGHT_PATTERNS))
    if not (adapter_dir / ADAPTER_CONFIG_NAME).is_file():
        return None, path_or_id, revision
    adapter_config = json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    model_source = base_model or adapter_config.get("base_model_name_or_path")
    if not model_source:
        raise ValueError(f"Adapter {path_or_id!r} names no base model; pass base_model=...")
    if not (adapter_dir / ADAPTER_WEIGHTS_NAME).is_file():
        raise ValueError(f"Adapter {path_or_id!r} has no {ADAPTER_WEIGHTS_NAME}; only safetensors weights are loaded")
    return adapter_dir, model_source, None if base_model else adapter_config.get("revision")


# Text-only block lists become plain strings (most text-LM chat templates expect string contents): the same
# flattening as the training rows of the text variants.
flatten_text_content = flatten_text_messages


def attach_images(messages: Messages, images: list[Image.Image]) -> Messages:
    """Copy `messages`, filling each `{"type": "image"}` placeholder with its image, in order (as TRL does)."""
    remaining = iter(images)
    filled = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [
                {"type": "image", "image": next(remaining)} if block.get("type") == "image" else dict(block)
                for block in content
            ]
        filled.append({**message, "content": content})
    return filled


def sanitize_kwargs(apply_chat_template) -> dict[str, bool]:
    """`sanitize_control_tokens=True` where this transformers version has it (recent 5.x): special tokens typed by
    a user then stay plain text, so they can neither break the image-token count nor end the prompt early."""
    parameters = inspect.signature(apply_chat_template).parameters
    return {"sanitize_control_tokens": True} if "sanitize_control_tokens" in parameters else {}


def truncate_at_stop(text: str, stop: list[str] | None) -> str:
    """Cut `text` at the first stop string (excluded), as OpenAI-compatible servers do."""
    for marker in stop or []:
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text


def saved_chat_template(folder: Path) -> str | None:
    """The chat template saved in a model or adapter folder (`chat_template.jinja`, else the one inside
    `chat_template.json` / `processor_config.json` / `tokenizer_config.json`), or None."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str) and template:
                return template
    return None


def _processor_template(processor: Any) -> str | None:
    template = getattr(processor, "chat_template", None) or getattr(
        getattr(processor, "tokenizer", None), "chat_template", None
    )
    return template.get("default") if isinstance(template, dict) else template


def load_processor(
    adapter_dir: Path | None,
    model_source: str,
    revision: str | None,
    vision: bool,
    trust_remote_code: bool = False,
    *,
    processor_source: str | None = None,
):
    """The processor (VLMs) or tokenizer (LMs) the model was trained with; never a silent substitute.

    An adapter folder written by `mirror train` holds the processor with the chat template training used (e.g. the
    EOS-terminated LLaVA template): it is loaded from there, and a processor that is missing, incomplete (a VLM
    adapter without an image processor) or unreadable is an error, because the base model's processor may lay the
    prompt out differently from training. `processor_source` (a folder or Hub id) is the caller's explicit choice of
    another processor: it is logged, and refused when its chat template differs from the one saved with the
    adapter. A merged model folder loads its own processor.
    """
    from transformers import AutoProcessor, AutoTokenizer

    loader = AutoProcessor if vision else AutoTokenizer
    kind = "processor" if vision else "tokenizer"
    if processor_source is not None:
        logger.warning(
            "Loading the %s from %r, as asked (processor_source), not from the model folder", kind, processor_source
        )
        processor = loader.from_pretrained(processor_source, trust_remote_code=trust_remote_code)
        trained = saved_chat_template(adapter_dir) if adapter_dir is not None else None
        if trained is not None and _processor_template(processor) != trained:
            raise ValueError(
                f"processor_source {processor_source!r} has a different chat template from the one saved with the "
                f"adapter {str(adapter_dir)!r}: the model would be prompted in a layout it was not trained on. Use "
                "the adapter's own processor (leave processor_source unset)."
            )
        return processor
    if adapter_dir is None:
        return loader.from_pretrained(model_source, revision=revision, trust_remote_code=trust_remote_code)
    if not any((adapter_dir / name).is_file() for name in _PROCESSOR_FILES):
        raise ValueError(
            f"Adapter folder {str(adapter_dir)!r} holds no {kind} ({', '.join(_PROCESSOR_FILES)}): the base model's "
            f"{kind} may lay the prompt out differently from training. Save the training {kind} with the adapter "
            f"(`mirror train` does), or pass processor_source={model_source!r} to use the base model's on purpose."
        )
    try:
        processor = loader.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"The {kind} saved with adapter {str(adapter_dir)!r} cannot be loaded: {error}") from error
    if vision and getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"The processor saved with adapter {str(adapter_dir)!r} has no image processor (a tokenizer only?); "
            f"save the full training processor with the adapter, or pass processor_source={model_source!r}."
        )
    return processor


class TransformersBackend(ChatBackend):
    """A `ChatBackend` over a local `transformers` model (see the module docstring)."""

    def __init__(self, model: Any, processor: Any, *, name: str, supports_images: bool) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.name = name
        self.supports_images = supports_images
        self.last_usage = Usage()
        self._lock = threading.Lock()
        if getattr(self.processor, "chat_template", None) is None and self.tokenizer.chat_template is None:
            raise ValueError(
                f"{name!r} has no chat template; MIRROR prompts are chat messages. Save one with the model "
                "(training does) or set `processor.chat_template`."
            )
        # Left padding keeps every prompt's last token at the end of the row, which batched generation needs.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        revision: str | None = None,
        device: str | None = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
        *,
        base_model: str | None = None,
        merge_adapter: bool = True,
        processor_source: str | None = None,
    ) -> TransformersBackend:
        """Load a merged model folder / Hub id, or a PEFT LoRA adapter folder / Hub id on top of its base.

        `device`: "cuda", "cpu", "mps", "cuda:1", or "auto" (accelerate `device_map="auto"`); `None` picks the best
        available. `dtype`: a torch dtype or its name; `None` is float32 on CPU, the checkpoint's own elsewhere.
        For adapters `revision` is the adapter's and `base_model` overrides its `base_model_name_or_path`;
        `merge_adapter=False` keeps the `PeftModel` (e.g. to switch adapters). `processor_source`: see
        `load_processor`. `trust_remote_code` (off by default) runs repository code.
        """
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        path_or_id = str(path_or_id)
        device = resolve_device(device)
        # float32 on CPU by default: bf16 matmuls are slow there and fp16 is partly unsupported.
        torch_dtype = torch.float32 if dtype is None and device == "cpu" else parse_dtype(dtype)
        common = {"trust_remote_code": trust_remote_code}
        adapter_dir, model_source, model_revision = resolve_model_source(path_or_id, revision, base_model)
        config = AutoConfig.from_pretrained(model_source, revision=model_revision, **common)
        vision = is_vision_config(config)
        auto_model = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        device_map = {"device_map": "auto"} if device == "auto" else {}
        model = auto_model.from_pretrained(
            model_source, revision=model_revision, dtype=torch_dtype, use_safetensors=True, **device_map, **common
        )

        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
            if merge_adapter:
                model = model.merge_and_unload()
        if device != "auto":
            model = model.to(device)
        model.eval()

        processor = load_processor(
            adapter_dir, model_source, model_revision, vision, trust_remote_code, processor_source=processor_source
        )
        name = path_or_id + (f"@{revision}" if revision else "")
        return cls(model, processor, name=name, supports_images=vision)

    def render(self, messages: Messages) -> str:
        """The exact prompt string the model is given for `messages` (generation prompt included), for audits."""
        template_owner = self.processor if self.supports_images else self.tokenizer
        prepared = messages if self.supports_images else flatten_text_content(messages)
        return template_owner.apply_chat_template(prepared, add_generation_prompt=True, tokenize=False)

    def encode(self, conversations: list[Messages], images: list[list[Image.Image]] | None = None):
        """Tokenise a batch of conversations (left-padded) into model inputs on the model's device; special tokens a
        user types ("<image>", "</s>") stay plain text where transformers can (`sanitize_kwargs`)."""
        images = pair_images(conversations, images, self.supports_images, self.name)
        if self.supports_images:
            prepared = [attach_images(m, imgs) for m, imgs in zip(conversations, images, strict=True)]
            inputs = self.processor.apply_chat_template(
                prepared,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "left", "add_special_tokens": False},
                **sanitize_kwargs(self.processor.apply_chat_template),
            )
            return inputs.to(self.model.device, dtype=self.model.dtype)
        inputs = self.tokenizer.apply_chat_template(
            [flatten_text_content(m) for m in conversations],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding=True,
            **sanitize_kwargs(self.tokenizer.apply_chat_template),
        )
        return inputs.to(self.model.device)

    def generation_config(self, config: GenerationConfig):
        """A `transformers.GenerationConfig` for MIRROR's settings on top of the checkpoint's own (EOS ids etc.);
        `top_k` is off so local sampling matches OpenAI-compatible servers, which only know top_p."""
        generation = copy.deepcopy(self.model.generation_config)
        generation.max_new_tokens = config.max_new_tokens
        generation.pad_token_id = self.tokenizer.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = self.tokenizer.eos_token_id
        if config.temperature <= 0:
            # Neutral values, not None: generate() refills None from the checkpoint's sampling defaults and warns.
            generation.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=50)
        else:
            generation.update(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
        generation.stop_strings = list(config.stop) if config.stop else None
        return generation

    def generate_ids(self, inputs, config: GenerationConfig | None = None):
        """Run `model.generate` on encoded inputs and return only the new token ids (batch, new_tokens)."""
        import torch

        config = config or GenerationConfig()
        generation = self.generation_config(config)
        extra = {"tokenizer": self.tokenizer} if generation.stop_strings else {}
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        with self._lock, torch.inference_mode(), torch.random.fork_rng(devices=devices):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            output = self.model.generate(**inputs, generation_config=generation, **extra)
        prompt_length = inputs["input_ids"].shape[1]
        new_ids = output[:, prompt_length:]
        prompt_tokens = int(inputs["attention_mask"].sum())
        completion_tokens = int((new_ids != self.tokenizer.pad_token_id).sum())
        self.last_usage = Usage(prompt_tokens, completion_tokens)
        return new_ids

    def generate_batch(self, conversations: list[Messages], images: ImageLists, config: GenerationConfig) -> list[str]:
        """One left-padded `generate` call for all conversations; under greedy decoding the replies equal
        sequential `chat` calls (tested)."""
        new_ids = self.generate_ids(self.encode(conversations, images), config)
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        return [truncate_at_stop(text, config.stop).strip() for text in texts]
