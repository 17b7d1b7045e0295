"""``ProductImagesComponent``: the whole pipeline from a ``defs.yaml`` in a ``dg`` project.

.. code-block:: yaml

    # src/<project>/defs/spring/defs.yaml, begun by
    # dg scaffold defs bria_dagster.ProductImagesComponent spring
    type: bria_dagster.ProductImagesComponent
    attributes:
      name: spring                     # prefix of every asset key, job, sensor, ...
      catalog_dir: catalogs/spring     # one <batch>.csv|.parquet|.jsonl per batch
      storage: s3://my-bucket/bria     # or a folder; images/ and tables/ go here
      steps: [remove, replace, expand]
      prompt_template: "{category} on a light oak table, soft daylight"
      aspect_ratios: ["1:1", "4:5"]
      checks: {max_failure_rate: 0.05}
      resource: {max_concurrency: 16, budget_usd: 50}
      translation: {group_name: catalog, owners: ["team:catalog"]}

It builds what :meth:`ProductImagePipeline.build_definitions` builds (the assets, their
checks, the job, ``BriaResource`` and the Parquet IO manager) and, unless
``operations: false``, the catalog sensor and the retry and refresh schedules.
Relative ``catalog_dir``, ``storage`` and ``file_roots`` are taken from the project
root. ``resource`` and ``checks`` are typed: an unknown key fails ``dg check yaml``.
The ``bria`` resource is one per code location: components that leave ``resource`` out
use the one another component sets; two that set different ones are an error naming both.
The fal key is read from the ``FAL_KEY`` environment variable only: a key written
into YAML would be shown with the resource's configuration.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import dagster as dg
from dagster.components.utils.translation import (
    ComponentTranslator,
    TranslationFn,
    TranslationFnResolver,
    create_component_translator_cls,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ..client.prices import PriceTable
from ..errors import ConfigurationError, SecretInConfigError
from ..steps.packshot import PackshotSettings
from ..steps.registry import all_steps
from ..steps.settings import CheckSettings, PipelineSettings
from .pipeline import DEFAULT_PIPELINE_NAME, ProductImagePipeline, require_catalog_dir
from .resource import BriaResource
from .translator import BriaStepProps, BriaTranslator, StepName

__all__ = ["BriaResourceSettings", "ProductImagesComponent", "ProductImagesScaffolder"]

# Keys that look like resource settings but must not be given in YAML, and what to do.
_REFUSED: dict[str, tuple[type[Exception], str]] = {
    "fal_key": (
        SecretInConfigError,
        "ProductImagesComponent: remove `fal_key` from `resource`; the key is read from the "
        "FAL_KEY environment variable (a key in YAML would be shown with the resource's "
        "configuration)",
    ),
    "storage": (
        ConfigurationError,
        "ProductImagesComponent: set `storage` at the top level, not in `resource` (it "
        "belongs to the pipeline: tables, images and journal share it)",
    ),
}


class _StrictSettings(BaseModel):
    # Unknown keys are errors (``additionalProperties: false`` for ``dg check yaml``).
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        # Before pydantic's own checks, whose errors would repeat the value (the key).
        if isinstance(data, dict):
            for key, (error, message) in _REFUSED.items():
                if key in data:
                    raise error(message)
        return data


def _resource_field(name: str, info: Any) -> tuple[Any, Any]:
    if name == "prices":  # BriaResource's PriceSettings is a dg.Config: it ignores typos
        return PriceTable, Field(default_factory=PriceTable, description=info.description)
    return info.annotation, info


BriaResourceSettings = create_model(
    "BriaResourceSettings",
    __base__=_StrictSettings,
    __doc__="The component's ``resource``: every :class:`~bria_dagster.BriaResource` "
    "setting except ``fal_key`` (from the FAL_KEY environment variable only).",
    **{
        name: _resource_field(name, info)
        for name, info in BriaResource.model_fields.items()
        if name not in _REFUSED
    },
)


def _step_settings() -> dict[str, Any]:
    """Each step's own settings (replace's ``prompt_template``, expand's ``aspect_ratios``,
    ...) as optional attributes: left out, the step's default applies."""
    return {
        name: info
        for step in all_steps()
        if step.settings is not None
        for name, info in step.settings.model_fields.items()
    }


_OPTIONAL_SETTINGS = {
    **_step_settings(),
    **{
        name: PipelineSettings.model_fields[name]
        for name in ("seed", "fetch_concurrency", "report_url_base", "preview_rows")
    },
}
"""Attributes that are :class:`PipelineSettings` fields as they are: optional, passed on
when given (left out, the settings' default applies)."""

# Attributes passed to PipelineSettings when given; left out, its defaults apply.
_SETTINGS_FIELDS = ("steps", *_OPTIONAL_SETTINGS)


def _typed(model: type[BaseModel]) -> Any:
    """A nested settings model as an attribute type: ``dg check yaml`` validates it against
    ``model``'s own schema (unknown keys, types and ranges), ``{{ ... }}`` templates in its
    string values are resolved at load.

    The Python type is ``Any`` (``ProductImagesComponent._settings_models`` validates it)
    because Dagster 1.13 refuses a plain pydantic model with constrained fields
    (``Field(ge=0)``) as an annotated type; ``model_field_type`` has no such limit.
    """

    def resolve(context: Any, value: Any) -> BaseModel:
        raw = value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value
        return model.model_validate(context.resolve_value(raw))

    return Annotated[Any, dg.Resolver(resolve, model_field_type=model)]


def _name_bad_values(schema: dict[str, Any]) -> None:
    """Rewrite a field's ``anyOf: [<model or list>, string(, null)]`` as ``if: string/null,
    else: <model or list>``: the same values validate, but ``dg check yaml`` then reports an
    unknown key as itself and points at its line, and a value outside an ``enum`` with the
    allowed ones (``attributes.steps.1 'replce' is not one of ['remove', 'replace',
    'expand']``), where a failed ``anyOf`` only says that the whole value "is not valid
    under any of the given schemas"."""
    options = schema.get("anyOf", [])
    scalars = [o["type"] for o in options if o.get("type") in ("string", "null")]
    models = [o for o in options if o.get("type") not in ("string", "null")]
    if len(models) == 1 and scalars:
        del schema["anyOf"]
        schema["if"] = {"type": scalars}
        schema["else"] = models[0]


def _checked_field(description: str, **default: Any) -> Any:
    """A ``Field`` (default ``None``) whose bad values ``dg check yaml`` reports by name
    (see :func:`_name_bad_values`): for lists of names and nested settings."""
    return Field(
        **(default or {"default": None}),
        description=description,
        json_schema_extra=_name_bad_values,
    )


_TranslationFn = Annotated[
    TranslationFn[BriaStepProps],
    TranslationFnResolver[BriaStepProps](
        lambda props: {
            "props": props,
            "pipeline": props.pipeline,
            "step": props.step,
            "asset_name": props.asset_name,
        }
    ),
]


class ProductImagesScaffolder(dg.Scaffolder):
    """``dg scaffold defs bria_dagster.ProductImagesComponent <path>``: a ``defs.yaml`` that
    loads as written (``name`` from the last part of ``<path>``, ``catalog_dir:
    catalogs/<name>``) and that catalog folder, created empty."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = _pipeline_name(request.target_path.name)
        catalog_dir = f"catalogs/{name}"
        catalogs = Path(request.project_root or Path.cwd()) / catalog_dir
        catalogs.mkdir(parents=True, exist_ok=True)
        (catalogs / ".gitkeep").touch()  # the sensor skips dotfiles; git keeps the folder
        dg.scaffold_component(request, {"name": name, "catalog_dir": catalog_dir})


@dg.scaffold_with(ProductImagesScaffolder)
class ProductImagesComponent(dg.Component, dg.Model, dg.Resolvable):
    """Bria product images: catalog batch -> cutouts -> scenes -> expansions, as assets."""

    name: str = Field(
        default=DEFAULT_PIPELINE_NAME,
        description="The pipeline's name: prefix of its asset keys, and the name of its job, "
        "partitions, sensor, schedules and IO manager (one per component instance).",
    )
    catalog_dir: str = Field(
        default="catalogs",
        description="Folder or fsspec URL with one catalog file per batch (relative: to the "
        "project root). A folder must exist when the definitions load.",
    )
    storage: str = Field(
        default="bria_data",
        description="Folder or fsspec URL for images/ and tables/ (relative: to the project root).",
    )
    steps: list[StepName] | None = _checked_field(
        "The steps to run (each needs its parent step, unless that is the source images); "
        "default [remove, replace, expand]."
    )
    # Every step's own settings and the pipeline's plain settings, optional (see
    # _OPTIONAL_SETTINGS): declared from where they are defined, with their descriptions.
    __annotations__.update(
        {name: info.annotation | None for name, info in _OPTIONAL_SETTINGS.items()}
    )
    vars().update(
        {name: _checked_field(info.description or "") for name, info in _OPTIONAL_SETTINGS.items()}
    )
    checks: _typed(CheckSettings) = _checked_field(  # type: ignore[valid-type]
        "Asset check thresholds (CheckSettings)."
    )
    resource: _typed(BriaResourceSettings) = _checked_field(  # type: ignore[valid-type]
        "BriaResource settings (backend, max_concurrency, budget_usd, prices, ...); "
        "never fal_key: set the FAL_KEY environment variable. One resource serves the code "
        "location: set it in one component (the others use it) or alike in each.",
        default_factory=BriaResourceSettings,
    )
    translation: _TranslationFn | None = _checked_field(
        "How the steps appear as assets: key, key_prefix, group_name, owners, "
        "tags, kinds, metadata, description ... applied to each step's spec; templates "
        "see {{ pipeline }}, {{ step }}, {{ asset_name }}, {{ props }} and {{ spec }}.",
    )
    packshots: _typed(PackshotSettings) = _checked_field(  # type: ignore[valid-type]
        "Channel packshots from the cutouts and their export (PackshotSettings): "
        "channels, custom presets, export_to (relative: to the project root), "
        "filename_template.",
    )
    report: bool = Field(
        default=True, description="Write each batch's HTML audit report (asset audit_report)."
    )
    operations: bool = Field(
        default=True, description="Also build the catalog sensor and the two schedules."
    )

    # Where dg loaded it from (from the project root), to name it in errors.
    _defs_path: Path | None = PrivateAttr(default=None)

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> Any:
        component = super().load(attributes, context)
        path = Path(context.path)
        if path.is_relative_to(context.project_root):
            path = path.relative_to(context.project_root)
        component._defs_path = path
        return component

    @field_validator("checks", "resource", "packshots", mode="before")
    @classmethod
    def _settings_models(cls, value: Any, info: ValidationInfo) -> Any:
        model = {
            "checks": CheckSettings,
            "resource": BriaResourceSettings,
            "packshots": PackshotSettings,
        }[info.field_name]
        return value if value is None or isinstance(value, model) else model.model_validate(value)

    def get_asset_spec(self, props: BriaStepProps) -> dg.AssetSpec:
        """A step's spec before ``translation``; override in a subclass to change every
        instance's assets in Python (the default: :class:`BriaTranslator`'s)."""
        return BriaTranslator().get_asset_spec(props)

    def pipeline_settings(self, root: Path) -> PipelineSettings:
        """The :class:`PipelineSettings` these attributes describe (paths from ``root``)."""
        given = {name: getattr(self, name) for name in _SETTINGS_FIELDS}
        given = {name: value for name, value in given.items() if value is not None}
        if self.checks is not None:
            given["checks"] = self.checks
        if self.packshots is not None:
            packshots = self.packshots
            if packshots.export_to is not None:
                packshots = packshots.model_copy(
                    update={"export_to": _under(root, packshots.export_to)}
                )
            given["packshots"] = packshots
        return PipelineSettings(
            catalog_dir=_under(root, self.catalog_dir), report=self.report, **given
        )

    def bria_resource(self, root: Path, settings: BaseModel | None = None) -> BriaResource:
        """The :class:`BriaResource`: ``resource`` settings (or ``settings``, a
        :class:`BriaResourceSettings`), the key from ``FAL_KEY``."""
        options = (settings or self.resource).model_dump(exclude_unset=True)
        options["file_roots"] = [_under(root, p) for p in options.get("file_roots", ["."])]
        if os.environ.get("FAL_KEY"):
            options["fal_key"] = dg.EnvVar("FAL_KEY")
        return BriaResource(**options)

    def pipeline(self, root: Path) -> ProductImagePipeline:
        """The :class:`ProductImagePipeline` these attributes describe (paths from ``root``)."""
        return ProductImagePipeline(
            name=self.name,
            settings=self.pipeline_settings(root),
            storage=_under(root, self.storage),
            translator=ProductImagesTranslator(self),
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        root = Path(context.project_root)
        pipeline = self.pipeline(root)
        # Checked here too, to name the component and catalog_dir as written in defs.yaml.
        require_catalog_dir(
            pipeline.settings.catalog_dir,
            owner=f"ProductImagesComponent {self.name!r}",
            written=self.catalog_dir,
        )
        bria = self.bria_resource(root, self._shared_resource_settings(context))
        return pipeline.build_definitions(bria, operations=self.operations)

    def _shared_resource_settings(self, context: dg.ComponentLoadContext) -> BaseModel:
        """The ``resource`` of the code location: a code location has one ``bria``
        resource, so the components that set ``resource`` must agree, and the ones that
        leave it out use theirs (the defaults when none sets it). Two that differ are an
        error naming both, where Dagster would only say "Definitions objects 1 and 2 have
        different resources with same key 'bria'"."""
        components: list[ProductImagesComponent] = [self]
        if self._defs_path is not None:  # loaded by dg: its siblings are in the same tree
            siblings = context.component_tree.get_all_components(ProductImagesComponent)
            components += [c for c in siblings if c is not self]
        setters = sorted(
            (c for c in components if "resource" in c.model_fields_set), key=_component_label
        )
        if not setters:
            return self.resource
        first = setters[0]
        for other in setters[1:]:
            differ = _differences(first.resource, other.resource)
            if differ:
                raise ConfigurationError(
                    f"{_component_label(first)} and {_component_label(other)} set different "
                    f"`resource` settings ({differ}), but a code location has one `bria` "
                    "resource that every pipeline shares: set `resource` in one of them and "
                    "leave it out of the others (they then use that one), or set it alike in "
                    "each"
                )
        return first.resource


class ProductImagesTranslator(
    create_component_translator_cls(ProductImagesComponent, BriaTranslator),
    ComponentTranslator[ProductImagesComponent],
):
    """The component's :meth:`~ProductImagesComponent.get_asset_spec`, then its
    ``translation`` (the dagster-dlt / dagster-sling component idiom)."""

    def __init__(self, component: ProductImagesComponent) -> None:
        self._component = component

    def get_asset_spec(self, props: BriaStepProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        translation = self._component.translation
        return spec if translation is None else translation(spec, props)


def _under(root: Path, location: str) -> str:
    """``location`` as given when it is a URL or absolute, else under ``root``."""
    if "://" in location or os.path.isabs(location):
        return location
    return str(root / location)


def _component_label(component: ProductImagesComponent) -> str:
    """``ProductImagesComponent 'spring' (src/shop/defs/spring)``: its pipeline name and,
    when dg loaded it, its defs path."""
    label = f"ProductImagesComponent {component.name!r}"
    path = component._defs_path
    return label if path is None else f"{label} ({path})"


def _differences(a: BaseModel, b: BaseModel) -> str:
    """``max_concurrency 16 / 32, budget_usd None / 50.0``: the settings that differ."""
    left, right = a.model_dump(), b.model_dump()
    return ", ".join(
        f"{key} {left[key]!r} / {right[key]!r}" for key in left if left[key] != right[key]
    )


def _pipeline_name(text: str) -> str:
    """A usable pipeline name from a scaffold path (``spring-catalog`` -> ``spring_catalog``)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if name[:1].isalpha() else f"p_{name}"
