"""The image-backend interface shared by dataset generation (paper step 3) and simulated evaluation.

A backend turns a `FaceRequest` (who the client is, what their face shows) into a 336x336 RGB image. The
embedded Pillow renderer needs no weights; a diffusers backend (identity-preserving SDXL) implements the same
protocol, so the pipeline and the virtual client never know which one they use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image

DEFAULT_IMAGE_SIZE = 336  # LLaVA-1.5's CLIP input resolution


@dataclass(frozen=True)
class FaceRequest:
    """What to draw: the same `identity_key` (with its gender and age) must always give the same person.

    `expression` is the turn's facial description ("sceptical, small smirk, gaze averted"). `seed` is the turn's
    variation: backends may use it for pose, gaze or sampling noise, never for who the person is, so two turns of a
    session differ while the client stays recognisable.
    """

    identity_key: str
    expression: str
    gender: str | None = None
    age: int | None = None
    contrast_expression: str | None = None
    seed: int = 0
    size: int = DEFAULT_IMAGE_SIZE


@runtime_checkable
class ImageBackend(Protocol):
    """Renders client faces. `name` goes into each record's provenance."""

    name: str

    def render(self, request: FaceRequest) -> Image.Image:
        """Return an RGB image of `request.size` x `request.size` pixels."""
        ...
