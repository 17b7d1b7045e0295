"""How a pipeline's steps appear in Dagster: key, group, description, owners, tags, kinds.

Subclass :class:`BriaTranslator` and override :meth:`~BriaTranslator.get_asset_spec`
(the dagster-dlt / dagster-sling / dagster-dbt idiom)::

    class MyTranslator(BriaTranslator):
        def get_asset_spec(self, props: BriaStepProps) -> dg.AssetSpec:
            spec = super().get_asset_spec(props)
            return spec.replace_attributes(owners=["team:catalog"], group_name="catalog")

The factory applies the spec's key, group, description, owners, tags, kinds and
metadata; a step's upstream dependency follows its parent's (translated) key.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from ..steps.registry import all_steps
from ..steps.settings import API_STEPS, STEP_ASSETS, StepName

__all__ = ["API_STEPS", "STEP_ASSETS", "BriaStepProps", "BriaTranslator", "StepName"]

_KINDS = {"export": {"bria", "csv"}, "report": {"bria", "html"}}

_DESCRIPTIONS = {
    "source": "The catalog batch: one source record per row (fetched, hashed, stored) and a "
    "failed record for every rejected row.",
    **{step.name: step.description for step in all_steps()},
    "packshot": "Channel packshots: each cutout on each channel's canvas (background, size, "
    "fill, format, file-size limit), checked against the channel's rules; composed locally.",
    "export": "The compliant packshots of the batch as files per channel, named by "
    "filename_template, with a manifest.csv each; only changed files are written.",
    "report": "The batch's audit report: one self-contained HTML page with every sku's chain "
    "(thumbnails, parameters, backend, request ids, cost, producing run) and every failure.",
}


@dataclass(frozen=True)
class BriaStepProps:
    """What the translator knows about one step of one pipeline."""

    pipeline: str
    """The pipeline's name."""
    step: str
    """``source``, a declared step (``remove``, ``replace``, ...), ``packshot``, ``export``
    or ``report``."""
    endpoint_id: str | None
    """The Bria endpoint the step calls (``None`` for ``source``)."""

    @property
    def asset_name(self) -> str:
        return STEP_ASSETS[self.step]


class BriaTranslator:
    """Default names: ``<pipeline>/<asset name>`` in group ``<pipeline>``, kinds bria and
    parquet; the endpoint in the metadata."""

    def get_asset_spec(self, props: BriaStepProps) -> dg.AssetSpec:
        metadata = {"bria/step": props.step}
        if props.endpoint_id:
            metadata["bria/endpoint"] = props.endpoint_id
        return dg.AssetSpec(
            key=dg.AssetKey([props.pipeline, props.asset_name]),
            group_name=props.pipeline,
            description=_DESCRIPTIONS[props.step],
            kinds=_KINDS.get(props.step, {"bria", "parquet"}),
            metadata=metadata,
        )
