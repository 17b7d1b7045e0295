"""The ``bria-dagster`` command line: batches, lineage, reuse, reports, the demo."""

from .commands import main

__all__ = ["main"]
