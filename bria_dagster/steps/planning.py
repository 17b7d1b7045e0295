"""What a step asks of Bria for one parent row: the step's jobs, from its declaration.

A parent row is a record of the step before (a source, a cutout, a scene). The step's
module (:class:`~bria_dagster.steps.step.Step`) plans its requests from a
:class:`~bria_dagster.steps.step.Parent`: the row, its catalog row (whose columns
override the pipeline's defaults) and the settings. A failed parent becomes one failed
job per variant it would have had (``UpstreamFailed``), so every sku stays accounted for
in every step.
"""

from __future__ import annotations

from typing import Any

from ..errors import BriaError
from ..records.schema import FAILED, UPSTREAM_FAILED
from .catalog import CatalogRow
from .registry import step_named
from .rows import PARSED_CATALOG, Job, RequestPlanner
from .step import Parent, Step

__all__ = ["StepPlanner", "catalog_of"]


def catalog_of(row: dict[str, Any]) -> CatalogRow:
    """The catalog row a record came from, parsed once: kept on ``row`` (and handed to the
    rows made from it, see :data:`~bria_dagster.steps.rows.PARSED_CATALOG`)."""
    parsed = row.get(PARSED_CATALOG)
    if parsed is None:
        parsed = row[PARSED_CATALOG] = CatalogRow.from_json(row.get("catalog_row"))
    return parsed


class StepPlanner:
    """Plans one step's jobs during one run (validation is cached for the run)."""

    def __init__(self, settings: Any, step: Step | str) -> None:
        self.settings = settings
        self.step = step if isinstance(step, Step) else step_named(step)
        self._planner = RequestPlanner()

    def jobs(self, row: dict[str, Any]) -> list[Job]:
        """The jobs ``row`` needs in this step (failed ones for a failed parent)."""
        parent = Parent(row, catalog_of(row), self.settings, self.step, self._planner)
        if row["status"] != FAILED:
            try:
                return self.step.plan(parent)
            except BriaError as exc:  # e.g. a template naming a column the row lacks
                return [parent.failed(variant, exc) for variant in self.step.variants(parent)]
        message = (
            row["error_message"]
            if row["error_class"] == UPSTREAM_FAILED
            else f"upstream {row['step']} failed for this sku: "
            f"{row['error_class']}: {row['error_message']}"
        )
        return [
            Job(parent.sku, variant, row, error=BriaError(message), error_class=UPSTREAM_FAILED)
            for variant in self.step.variants(parent)
        ]
