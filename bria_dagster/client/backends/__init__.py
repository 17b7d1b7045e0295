"""Backends: ``FalBackend`` (fal.ai through fal-client) and ``LocalBackend`` (embedded engine)."""

from .base import Backend, BackendResult, OutputImage

__all__ = ["Backend", "BackendResult", "OutputImage"]
