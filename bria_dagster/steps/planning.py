"""What each step asks of Bria for one parent row: the step's jobs, from the settings.

A parent row is a record of the step before (a source, a cutout, a scene). Its
catalog row's columns override the pipeline's defaults (prompt, reference image,
seed, aspect ratios). A failed parent becomes one failed job per variant it would
have had (``UpstreamFailed``), so every sku stays accounted for in every step.
"""

from __future__ import annotations

import json
import string
from typing import TYPE_CHECKING, Any

from ..engine.outpaint import plan_expand
from ..errors import BriaError, RequestValidationError
from ..records.schema import FAILED, UPSTREAM_FAILED
from .rows import Job, RequestPlanner

if TYPE_CHECKING:
    from .settings import PipelineSettings

__all__ = ["StepPlanner"]


def catalog_of(row: dict[str, Any]) -> dict[str, Any]:
    """The catalog row a record came from, as a dict."""
    return json.loads(row.get("catalog_row") or "{}")


class StepPlanner:
    """Plans one step's jobs during one run (validation is cached for the run)."""

    def __init__(self, settings: PipelineSettings, step: str) -> None:
        self.settings = settings
        self.step = step
        self._planner = RequestPlanner()

    def jobs(self, parent: dict[str, Any]) -> list[Job]:
        """The jobs ``parent`` needs in this step (failed ones for a failed parent)."""
        catalog = catalog_of(parent)
        if parent["status"] != FAILED:
            plan = {"remove": self._remove, "replace": self._replace, "expand": self._expand}
            return plan[self.step](parent, catalog)
        message = (
            parent["error_message"]
            if parent["error_class"] == UPSTREAM_FAILED
            else f"upstream {parent['step']} failed for this sku: "
            f"{parent['error_class']}: {parent['error_message']}"
        )
        return [
            Job(
                parent["sku"],
                variant,
                parent,
                error=BriaError(message),
                error_class=UPSTREAM_FAILED,
            )
            for variant in self._variants(parent, catalog)
        ]

    def _variants(self, parent: dict[str, Any], catalog: dict[str, Any]) -> list[str]:
        """The variants a parent would have had (each recorded as failed when it failed)."""
        if self.step == "expand":
            return [f"{parent['variant']}@{ratio}" for ratio in self._ratios(catalog)]
        return ["cutout" if self.step == "remove" else "scene"]

    def _ratios(self, catalog: dict[str, Any]) -> list[str]:
        return catalog.get("aspect_ratios") or list(self.settings.aspect_ratios)

    def _seed(self, catalog: dict[str, Any]) -> Any:
        return catalog.get("seed") if catalog.get("seed") is not None else self.settings.seed

    def _remove(self, parent: dict[str, Any], catalog: dict[str, Any]) -> list[Job]:
        return [self._planner.plan(parent["sku"], "cutout", parent, "remove", {})]

    def _replace(self, parent: dict[str, Any], catalog: dict[str, Any]) -> list[Job]:
        settings = self.settings
        seed = self._seed(catalog)
        ref = catalog.get("ref_image_url") or (
            None if catalog.get("prompt") else settings.ref_image_url
        )
        arguments: dict[str, Any] = {
            "num_images": settings.num_images,
            "negative_prompt": catalog.get("negative_prompt") or settings.negative_prompt,
        }
        if seed is not None:
            arguments["seed"] = int(seed)
        if ref:
            arguments["ref_image_url"] = ref
        else:
            try:
                arguments["prompt"] = self._prompt(catalog)
            except BriaError as exc:
                return [Job(parent["sku"], "scene", parent, error=exc)]
        return [self._planner.plan(parent["sku"], "scene", parent, "replace", arguments)]

    def _expand(self, parent: dict[str, Any], catalog: dict[str, Any]) -> list[Job]:
        seed = self._seed(catalog)
        jobs = []
        for ratio in self._ratios(catalog):
            variant = f"{parent['variant']}@{ratio}"
            size = (int(parent["width"]), int(parent["height"]))
            try:
                # The local engine's placement, which follows fal's: the same canvas.
                placement = plan_expand(size, canvas_size=None, aspect_ratio=ratio)
            except BriaError as exc:
                jobs.append(Job(parent["sku"], variant, parent, error=exc))
                continue
            arguments: dict[str, Any] = {
                "aspect_ratio": ratio,
                "canvas_size": list(placement.canvas),
            }
            if seed is not None:
                arguments["seed"] = int(seed)
            job = self._planner.plan(parent["sku"], variant, parent, "expand", arguments)
            if job.request is not None and placement.unchanged(size):
                job.noop = (
                    f"the image is already {size[0]}x{size[1]}, the {ratio} canvas: "
                    "expand would return it unchanged, so it was not sent"
                )
            jobs.append(job)
        return jobs

    def _prompt(self, catalog: dict[str, Any]) -> str:
        template = self.settings.prompt_template
        if catalog.get("prompt"):
            return str(catalog["prompt"])
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        missing = [f for f in fields if f not in catalog or catalog[f] is None]
        if missing:
            raise RequestValidationError(
                f"prompt_template needs catalog column(s) {', '.join(sorted(missing))}, "
                "which this row lacks; add them or change the template"
            )
        return template.format(**catalog)
