"""Optional in-process vLLM engine with the `ChatBackend` interface (Linux + CUDA; `pip install vllm`), for
throughput (whole evaluation runs). vLLM is imported only when this backend is built.

Prompts are rendered and tokenised exactly as `TransformersBackend` does, then handed to vLLM as token ids plus
images, so both backends give a model the same prompt (vLLM's own chat front end, whose API has changed across
releases, is not used). LoRA adapters run on their base model through vLLM's LoRA support (no merge needed).
"""

from __future__ import annotations

import json
import os
from typing import Any

from PIL import Image

from .base import ChatBackend, GenerationConfig, ImageLists, Messages
from .transformers_backend import (
    ADAPTER_CONFIG_NAME,
    attach_images,
    flatten_text_content,
    is_vision_config,
    load_processor,
    resolve_model_source,
    truncate_at_stop,
)


class VLLMBackend(ChatBackend):
    """A `ChatBackend` running vLLM in this process on a merged model or a PEFT LoRA adapter (folder or Hub id).

    `dtype` is vLLM's ("auto", "bfloat16", "float16"); `base_model` overrides an adapter's base model;
    `max_model_len` is the context to reserve KV cache for (default: the model's maximum); `engine_kwargs` go to
    `vllm.LLM` (tensor_parallel_size, quantization, ...).
    """

    def __init__(
        self,
        path_or_id: str | os.PathLike,
        revision: str | None = None,
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        base_model: str | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        **engine_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                "VLLMBackend needs vLLM, which is not installed. Install it with `pip install vllm` (Linux with a CUDA "
                "GPU), or use TransformersBackend (any machine) or EndpointBackend (a running `vllm serve` / "
                "`mirror serve`)."
            ) from error
        from transformers import AutoConfig

        path_or_id = str(path_or_id)
        adapter_dir, model_source, model_revision = resolve_model_source(path_or_id, revision, base_model)
        config = AutoConfig.from_pretrained(model_source, revision=model_revision, trust_remote_code=trust_remote_code)
        self.supports_images = is_vision_config(config)
        self.name = path_or_id + (f"@{revision}" if revision else "")
        self.processor = load_processor(
            adapter_dir, model_source, model_revision, self.supports_images, trust_remote_code
        )
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)

        self.lora_request = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            rank = json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8")).get("r", 16)
            engine_kwargs.setdefault("enable_lora", True)
            engine_kwargs.setdefault("max_lora_rank", rank)
            self.lora_request = LoRARequest("mirror-adapter", 1, str(adapter_dir))
        if max_model_len is not None:
            engine_kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(
            model=model_source,
            revision=model_revision,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            gpu_memory_utilization=gpu_memory_utilization,
            **engine_kwargs,
        )

    def _prompt(self, messages: Messages, images: list[Image.Image]) -> dict[str, Any]:
        """Token ids of the chat-templated prompt (one `<image>` token per image; vLLM expands it) plus images."""
        if self.supports_images:
            text = self.processor.apply_chat_template(
                attach_images(messages, images), add_generation_prompt=True, tokenize=False
            )
        else:
            text = self.tokenizer.apply_chat_template(
                flatten_text_content(messages), add_generation_prompt=True, tokenize=False
            )
        prompt: dict[str, Any] = {"prompt_token_ids": self.tokenizer(text, add_special_tokens=False)["input_ids"]}
        if images:
            prompt["multi_modal_data"] = {"image": images[0] if len(images) == 1 else list(images)}
        return prompt

    def _sampling_params(self, config: GenerationConfig):
        from vllm import SamplingParams

        greedy = config.temperature <= 0
        return SamplingParams(
            temperature=0.0 if greedy else config.temperature,
            top_p=1.0 if greedy else config.top_p,
            max_tokens=config.max_new_tokens,
            seed=config.seed,
            stop=list(config.stop) if config.stop else None,
        )

    def generate_batch(self, conversations: list[Messages], images: ImageLists, config: GenerationConfig) -> list[str]:
        prompts = [self._prompt(m, imgs) for m, imgs in zip(conversations, images, strict=True)]
        outputs = self.llm.generate(
            prompts, self._sampling_params(config), use_tqdm=False, lora_request=self.lora_request
        )
        return [truncate_at_stop(output.outputs[0].text, config.stop).strip() for output in outputs]
