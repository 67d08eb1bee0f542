"""Image backends: anything that renders a client's face for an expression behind one interface."""

from .base import FaceRequest, ImageBackend, get_image_backend

__all__ = ["FaceRequest", "ImageBackend", "get_image_backend"]
