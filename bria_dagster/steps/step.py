"""What a step is: one declaration that everything else reads.

A step turns each image of its parent step (or of the catalog's source images) into
zero or more images made by one Bria endpoint. Its module in
:mod:`bria_dagster.steps.endpoint_steps` declares one :class:`Step`: its name, its asset,
its parent, the endpoint contract it calls, how it plans requests from a parent row,
the variants it records, the image modes the checks expect and the settings it adds.
The chain, the settings, the records' lineage, the report, the checks, the metadata and
the translator read these declarations (through :mod:`bria_dagster.steps.registry`), so a
new step is one new module.

Dagster-free, and light: importing a declaration imports no pandas, pyarrow or numpy
(the lineage CLI's fast path orders steps by them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from ..errors import BriaError
    from .catalog import CatalogRow
    from .rows import Job, RequestPlanner

__all__ = ["SOURCE", "Parent", "Step"]

SOURCE = "source"
"""The step name of the catalog's source images: the parent of a step that starts from
them (no module declares it; the catalog ingest makes its records)."""


@dataclass(frozen=True)
class Parent:
    """One parent row as a step's ``plan`` and ``variants`` see it (built by
    :class:`~bria_dagster.steps.planning.StepPlanner`)."""

    row: dict[str, Any]
    catalog: CatalogRow
    settings: Any
    """The pipeline's :class:`~bria_dagster.steps.settings.PipelineSettings` (every step's
    own settings fields included)."""
    step: Step
    planner: RequestPlanner

    @property
    def sku(self) -> str:
        return str(self.row["sku"])

    @property
    def variant(self) -> str:
        """The parent row's variant (``cutout``, ``scene#1``, ...)."""
        return str(self.row["variant"])

    @property
    def size(self) -> tuple[int, int]:
        """The parent image's width and height."""
        return int(self.row["width"]), int(self.row["height"])

    @property
    def seed(self) -> int | None:
        """The catalog row's seed, else the settings' default seed."""
        return self.catalog.seed if self.catalog.seed is not None else self.settings.seed

    def request(self, variant: str, arguments: dict[str, Any]) -> Job:
        """A job for ``variant``: ``arguments`` validated against the step's contract (once
        per distinct set of arguments in the run) and fingerprinted with the parent image."""
        return self.planner.plan(self.sku, variant, self.row, self.step.endpoint, arguments)

    def failed(self, variant: str, error: BriaError) -> Job:
        """A job for ``variant`` that failed before any call (it becomes a failed record)."""
        from .rows import Job  # a job's module reads records: imported when planning

        return Job(self.sku, variant, self.row, error=error)


@dataclass(frozen=True)
class Step:
    """The declaration of one step (a module of :mod:`~bria_dagster.steps.endpoint_steps`
    holds one, as ``STEP``)."""

    name: str
    """How settings, records (``step`` column) and lineage spell it: ``replace``."""
    asset: str
    """The default asset name, under the pipeline's name: ``product_scenes``."""
    parent: str
    """The step whose images it takes: another step's name, or :data:`SOURCE`."""
    endpoint: str
    """The id of the endpoint contract it calls (``fal-ai/bria/background/replace``): its
    request model (validation), its price and how the local engine serves it."""
    description: str
    """What its asset holds, for the Dagster UI."""
    plan: Callable[[Parent], list[Job]]
    """The jobs of one ok parent row: each a request (``parent.request``) or a failure
    (``parent.failed``), one per output variant. A :class:`~bria_dagster.errors.BriaError`
    it raises fails every variant of the row (the batch goes on)."""
    variants: Callable[[Parent], list[str]]
    """The variants a parent row would have had: a failed parent records each as
    ``UpstreamFailed``, so every sku stays accounted for in every step."""
    image_modes: Sequence[str] = ("RGB",)
    """The modes its output images may have (``outputs_decode`` checks them)."""
    cutout: bool = False
    """Its outputs are cutouts: the checks decode them even when reused, and measure
    their alpha (``cutouts_have_alpha``)."""
    settings: type[BaseModel] | None = None
    """The settings it adds to :class:`~bria_dagster.steps.settings.PipelineSettings`
    (and to the component's YAML): a pydantic model whose fields (and validators) the
    pipeline's settings inherit. Field names are shared by every step: one name, one
    meaning."""
    on_by_default: bool = False
    """Whether ``PipelineSettings.steps`` includes it when left out (a new step is asked
    for by name)."""
    order: int = 100
    """Where it is listed among the steps (lower first; parents always come before their
    children): in settings' errors, the chain, lineage and the report."""
