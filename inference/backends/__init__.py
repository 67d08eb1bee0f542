"""Chat backends: one small interface for the therapist, the virtual client, the judges and data generation."""

from .base import ChatBackend, GenerationConfig

__all__ = ["ChatBackend", "GenerationConfig"]
