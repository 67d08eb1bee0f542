"""Image backends: anything that renders a client's face for an expression behind one interface.

`get_image_backend(name, **options)` is the one registry: `embedded` (the offline Pillow renderer) and
`diffusers` (SDXL + an identity adapter; `model=<SDXL id or folder>`, see `diffusers_backend.py`).
Options whose value is None are dropped, so a CLI can forward `--model` unconditionally.
"""

from .base import FaceRequest, ImageBackend

IMAGE_BACKENDS = ("embedded", "diffusers")


def get_image_backend(name: str = "embedded", **options) -> ImageBackend:
    """Instantiate an image backend by name with its options (e.g. `get_image_backend("diffusers", model=...)`)."""
    options = {key: value for key, value in options.items() if value is not None}
    if name == "diffusers":
        from .diffusers_backend import DiffusersFaceBackend

        return DiffusersFaceBackend(**options)
    if name == "embedded":
        if "model" in options:
            raise ValueError(
                f"the embedded renderer takes no model (got model={options['model']!r}); "
                "use --backend diffusers to render with a diffusion model"
            )
        from .face_renderer import EmbeddedFaceRenderer

        return EmbeddedFaceRenderer(**options)
    raise ValueError(f"Unknown image backend {name!r}; available: {list(IMAGE_BACKENDS)}")


__all__ = ["IMAGE_BACKENDS", "FaceRequest", "ImageBackend", "get_image_backend"]
