"""Build chat backends from `ModelSpec`s (one instance per distinct spec, shared across roles)."""

from __future__ import annotations

import logging
from typing import Any

from .config import ModelSpec

logger = logging.getLogger(__name__)


def build_backend(spec: ModelSpec) -> Any:
    """A ChatBackend for `spec`: the project's own backends, or a scripted offline stand-in."""
    if spec.backend == "scripted":
        from .scripted import ScriptedBackend

        return ScriptedBackend(spec.model, latency=spec.latency)
    if spec.backend == "endpoint":
        from inference.backends.endpoint import EndpointBackend, api_key_from_env

        return EndpointBackend(
            spec.base_url,
            spec.model,
            api_key=api_key_from_env(spec.api_key_env),
            timeout=spec.timeout,
            max_retries=spec.max_retries,
            supports_images=spec.supports_images,
            max_concurrency=spec.max_concurrency,
        )
    from inference.backends import load_backend

    return load_backend(spec.model, backend=spec.backend, revision=spec.revision, device=spec.device, dtype=spec.dtype)


class BackendPool:
    """Loads each distinct model once (a therapist checkpoint used by three strategies is loaded once)."""

    def __init__(self) -> None:
        self._backends: dict[str, Any] = {}

    def register(self, spec: ModelSpec, backend: Any) -> None:
        """Use `backend` for `spec` (e.g. a wrapped backend that records prompts)."""
        self._backends[repr(spec)] = backend

    def get(self, spec: ModelSpec) -> Any:
        key = repr(spec)
        if key not in self._backends:
            logger.info("loading %s model %s", spec.backend, spec.model)
            self._backends[key] = build_backend(spec)
        return self._backends[key]
