"""Chat backends: one small interface for the therapist, the virtual client, the judges and data generation.

Backends load lazily: importing this package does not import torch, transformers, huggingface_hub or vLLM.
"""

from __future__ import annotations

from typing import Any

from .base import ChatBackend, GenerationConfig, ModelLoadArguments

__all__ = ["BACKENDS", "ChatBackend", "GenerationConfig", "ModelLoadArguments", "load_backend"]

BACKENDS = ("transformers", "vllm")


def load_backend(
    model: str,
    *,
    backend: str = "transformers",
    revision: str | None = None,
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> ChatBackend:
    """Build a local backend by name for a model folder or Hub id (merged model or PEFT LoRA adapter), the same
    way for every command; for a remote server use `EndpointBackend(base_url, model)` directly."""
    if backend == "transformers":
        from .transformers_backend import TransformersBackend

        return TransformersBackend.from_pretrained(
            model, revision=revision, device=device, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
        )
    if backend == "vllm":
        from .vllm_backend import VLLMBackend

        if device not in (None, "cuda"):
            raise ValueError("the vLLM backend places the model itself; leave device unset")
        return VLLMBackend(
            model, revision=revision, dtype=dtype or "auto", trust_remote_code=trust_remote_code, **kwargs
        )
    raise ValueError(f"Unknown backend {backend!r}; expected one of {list(BACKENDS)}")
