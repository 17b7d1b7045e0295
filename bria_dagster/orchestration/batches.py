"""Catalog batches by hand: add and list a pipeline's partitions without the sensor.

A batch is a dynamic partition of the pipeline's ``<name>_batches`` partitions
definition, kept in the Dagster instance (``DAGSTER_HOME``). The sensor adds one per
new catalog file; ``bria-dagster batches add`` does the same on request, after which
``dagster asset materialize --partition`` / ``dg launch --partition`` can run it.

Which pipeline: the one named (``--pipeline``), else the one pipeline of the code
location, loaded as Dagster loads it (``-f`` file, ``-m`` module, or the nearest
``pyproject.toml`` with ``[tool.dagster]`` / ``[tool.dg.project]``). A pipeline is found
by its ``catalog_batch`` asset, whose definition metadata names the pipeline and its
catalog folder (:func:`pipeline_marker`) and whose partitions are ``<name>_batches``.
"""

from __future__ import annotations

import os
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec

from ..errors import CatalogError, CodeLocationError, ConfigurationError, PipelineChoiceError
from ..steps.catalog import FORMATS

__all__ = [
    "Added",
    "CodeLocation",
    "Pipeline",
    "add_batches",
    "catalog_batches",
    "catalog_listing",
    "choose_pipeline",
    "dagster_home",
    "find_code_location",
    "list_batches",
    "partitions_name",
    "pipeline_marker",
]

PIPELINE_KEY = "bria/pipeline"
CATALOG_DIR_KEY = "bria/catalog_dir"


def partitions_name(pipeline: str) -> str:
    """The name of a pipeline's dynamic partitions definition."""
    return f"{pipeline}_batches"


def pipeline_marker(pipeline: str, catalog_dir: str) -> dict[str, str]:
    """The definition metadata of a pipeline's ``catalog_batch`` asset that names the
    pipeline and its catalog folder (read back by :meth:`CodeLocation.pipelines`)."""
    return {PIPELINE_KEY: pipeline, CATALOG_DIR_KEY: catalog_dir}


@dataclass(frozen=True)
class Pipeline:
    """A pipeline batches are added to: its name and, when read from its code location,
    its catalog folder (None when only the name is known)."""

    name: str
    catalog_dir: str | None = None

    @property
    def partitions(self) -> str:
        return partitions_name(self.name)


@dataclass(frozen=True)
class CodeLocation:
    """Where the definitions come from: a Python file, or modules (with ``autoload``, a
    dg project's ``defs`` module loaded as a defs folder)."""

    description: str
    working_directory: str
    python_file: str | None = None
    modules: tuple[str, ...] = ()
    autoload: bool = False

    def pipelines(self) -> dict[str, Pipeline]:
        """Load the definitions (as ``dagster``/``dg`` do) and return their pipelines."""
        from dagster._core.definitions.reconstruct import repository_def_from_target_def
        from dagster._grpc.utils import get_loadable_targets

        sources = (
            [(self.python_file, None)] if self.python_file else [(None, m) for m in self.modules]
        )
        repositories = []
        try:
            with warnings.catch_warnings():  # beta/preview warnings: not this command's output
                warnings.simplefilter("ignore")
                for python_file, module in sources:
                    targets = get_loadable_targets(
                        python_file=python_file,
                        module_name=None if self.autoload else module,
                        package_name=None,
                        autoload_defs_module_name=module if self.autoload else None,
                        working_directory=self.working_directory,
                        attribute=None,
                        resolve_lazy_defs=True,
                    )
                    repositories += [
                        repository_def_from_target_def(t.target_definition) for t in targets
                    ]
                nodes = [
                    node for repo in repositories if repo for node in repo.asset_graph.asset_nodes
                ]
        except Exception as exc:  # anything user code raises while it loads
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise CodeLocationError(
                f"the code location {self.description} does not load ({detail[:600]}); fix it "
                "(`dagster definitions validate` or `dg check defs` shows the whole error), or "
                "name the pipeline with --pipeline NAME"
            ) from None
        found: dict[str, Pipeline] = {}
        for node in nodes:
            name, catalog_dir = (
                _text(node.metadata.get(k)) for k in (PIPELINE_KEY, CATALOG_DIR_KEY)
            )
            partitions = node.partitions_def
            if name and getattr(partitions, "name", None) == partitions_name(name):
                found[name] = Pipeline(name, catalog_dir)
        return dict(sorted(found.items()))


def _text(value: object) -> str | None:
    value = getattr(value, "value", value)  # a TextMetadataValue, or the string itself
    return value if isinstance(value, str) and value else None


def find_code_location(
    python_file: str | None = None, module_name: str | None = None, cwd: str | None = None
) -> CodeLocation | None:
    """The code location given (``-f`` / ``-m``), else the one of the nearest
    ``pyproject.toml`` (this folder or a parent) with ``[tool.dagster]`` ``module_name`` /
    ``modules`` or a ``[tool.dg.project]`` (``code_location_target_module``, default
    ``<root_module>.definitions``; with ``autoload_defs``, ``defs_module``), as ``dagster``
    and ``dg`` find it; None when there is none."""
    here = Path(cwd or os.getcwd()).resolve()
    if python_file:
        if not Path(python_file).is_file():
            raise CodeLocationError(
                f"-f {python_file}: no such file (from {here}); give the path of the file that "
                "defines your Definitions, e.g. -f definitions.py"
            )
        return CodeLocation(f"-f {python_file}", str(here), python_file=python_file)
    if module_name:
        return CodeLocation(f"-m {module_name}", str(here), modules=(module_name,))
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            location = _pyproject_location(pyproject)
            if location is not None:
                return location
    return None


def _pyproject_location(pyproject: Path) -> CodeLocation | None:
    try:
        tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CodeLocationError(
            f"{pyproject} cannot be read ({exc}); fix it, or give -f FILE / -m MODULE"
        ) from None
    root = _module_root(pyproject.parent, tool)
    dagster_block = tool.get("dagster", {})
    if dagster_block.get("module_name"):
        module = dagster_block["module_name"]
        return CodeLocation(f"{module} ({pyproject} [tool.dagster])", root, modules=(module,))
    listed = [m["name"] for m in dagster_block.get("modules", []) if m.get("type") == "module"]
    if listed:
        return CodeLocation(
            f"{', '.join(listed)} ({pyproject} [tool.dagster])", root, modules=tuple(listed)
        )
    project = tool.get("dg", {}).get("project", {})
    if not project.get("root_module"):
        return None
    if project.get("autoload_defs"):
        module = project.get("defs_module", f"{project['root_module']}.defs")
        return CodeLocation(
            f"{module} ({pyproject} [tool.dg])", root, modules=(module,), autoload=True
        )
    module = project.get("code_location_target_module", f"{project['root_module']}.definitions")
    return CodeLocation(f"{module} ({pyproject} [tool.dg])", root, modules=(module,))


def _module_root(folder: Path, tool: dict) -> str:
    """Where the project's modules import from: ``src/`` in a src layout (so that a project
    not installed yet loads too), else the project folder."""
    project = tool.get("dg", {}).get("project", {})
    top = project.get("root_module") or str(tool.get("dagster", {}).get("module_name", ""))
    src = folder / "src"
    return str(src if top and (src / top.split(".")[0]).is_dir() else folder)


def choose_pipeline(
    name: str | None = None,
    *,
    python_file: str | None = None,
    module_name: str | None = None,
    cwd: str | None = None,
) -> Pipeline:
    """The pipeline meant: ``name`` as given when no code location is given (nothing is
    loaded); else the code location's pipeline called ``name``, or its only one."""
    if name and not (python_file or module_name):
        return Pipeline(name)
    location = find_code_location(python_file, module_name, cwd)
    if location is None:
        raise PipelineChoiceError(
            f"no code location found in {Path(cwd or os.getcwd()).resolve()} or its parents "
            "(no pyproject.toml with [tool.dg] or [tool.dagster]) to tell which pipeline: "
            "name it with --pipeline NAME, or give -f definitions.py / -m MODULE"
        )
    found = location.pipelines()
    names = ", ".join(found) or "none"
    if name:
        if name not in found:
            raise PipelineChoiceError(
                f"no pipeline {name!r} in the code location {location.description}; its "
                f"pipelines: {names}"
            )
        return found[name]
    if not found:
        raise PipelineChoiceError(
            f"the code location {location.description} has no bria-dagster pipeline (no "
            "catalog_batch asset with <name>_batches partitions); add one "
            "(build_definitions or ProductImagesComponent), or name one with --pipeline NAME"
        )
    if len(found) > 1:
        raise PipelineChoiceError(
            f"the code location {location.description} has {len(found)} pipelines ({names}): "
            "choose one with --pipeline NAME"
        )
    return next(iter(found.values()))


def catalog_batches(catalog_dir: str) -> dict[str, str]:
    """batch name -> catalog file, for every catalog file in ``catalog_dir``."""
    return {batch: info["path"] for batch, info in catalog_listing(catalog_dir).items()}


def catalog_listing(catalog_dir: str) -> dict[str, dict]:
    """batch name -> the listing entry of its catalog file (``fs.ls(detail=True)``: size,
    mtime / ETag / LastModified, ...), with ``"path"`` the file's full path or URL.

    One fresh listing: the filesystem's listing cache for the folder is dropped first
    (s3fs keeps listings forever by default, so a long-lived process would miss new files).
    """
    fs, root = fsspec.core.url_to_fs(catalog_dir)
    fs.invalidate_cache(root)
    if not fs.isdir(root):
        raise CatalogError(
            f"catalog_dir {catalog_dir} does not exist or is not a folder: create it and put "
            f"one <batch>{{{','.join(FORMATS)}}} file per batch in it"
        )
    prefix = catalog_dir.split("://", 1)[0] + "://" if "://" in catalog_dir else ""
    found: dict[str, dict] = {}
    for info in sorted(fs.ls(root, detail=True), key=lambda entry: entry["name"]):
        name = PurePosixPath(info["name"])
        if info.get("type", "file") != "directory" and (
            name.suffix.lower() in FORMATS and not name.name.startswith(".")
        ):
            found.setdefault(name.stem, {**info, "path": prefix + info["name"]})
    return found


def dagster_home() -> str:
    """``DAGSTER_HOME``, which must be set and absolute (batches live in the instance)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise ConfigurationError(
            "DAGSTER_HOME is not set: batches live in the Dagster instance; export "
            "DAGSTER_HOME=/absolute/path/to/your/dagster/home (the one `dagster dev` uses)"
        )
    if not os.path.isabs(home):
        raise ConfigurationError(f"DAGSTER_HOME must be an absolute path, got {home!r}")
    return home


def _instance():
    import dagster as dg

    os.makedirs(dagster_home(), exist_ok=True)
    return dg.DagsterInstance.get()


@dataclass(frozen=True)
class Added:
    """What :func:`add_batches` did."""

    pipeline: Pipeline
    added: list[str]
    known: list[str]
    """Named batches the pipeline already had (left as they were)."""
    checked_in: str | None
    """The catalog folder the new batches' files were checked in; None: not checked (only
    the pipeline's name was known, and no ``catalog_dir`` was given)."""


def add_batches(
    pipeline: str | Pipeline, batches: Sequence[str] = (), *, catalog_dir: str | None = None
) -> Added:
    """Add ``batches`` (all catalog files of the catalog folder when none are named) as
    partitions of ``pipeline``.

    The catalog folder is ``catalog_dir``, else the pipeline's own. Each new batch's file
    must be there and load as a catalog (readable, ``sku`` and ``image_url`` columns):
    otherwise nothing is added. A ``catalog_dir`` other than the pipeline's own is refused,
    since its runs read their file from the pipeline's folder.
    """
    pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)
    own = pipeline.catalog_dir
    if catalog_dir and own and not _same_place(catalog_dir, own):
        raise ConfigurationError(
            f"--catalog-dir {catalog_dir} is not the catalog_dir of pipeline {pipeline.name} "
            f"({own}), where its runs read each batch's file: put the files there and leave "
            "--catalog-dir out"
        )
    folder = catalog_dir or own
    files = catalog_batches(folder) if folder else None
    wanted = list(dict.fromkeys(batches)) or sorted(files or {})
    if not wanted:
        raise CatalogError(
            f"no batch to add to pipeline {pipeline.name}: name batches, or put catalog files "
            f"in {folder or 'the folder given with --catalog-dir'}"
        )
    if files is not None:
        missing = [b for b in wanted if b not in files]
        if missing:
            raise CatalogError(
                f"no catalog file for batch(es) {', '.join(missing)} in {folder} "
                f"(looked for <batch>{{{','.join(FORMATS)}}}); add the file first"
            )
    instance = _instance()
    try:
        known = set(instance.get_dynamic_partitions(pipeline.partitions))
        added = [b for b in wanted if b not in known]
        if files is not None:
            _check_catalogs({b: files[b] for b in added}, pipeline)
        if added:
            instance.add_dynamic_partitions(pipeline.partitions, added)
    finally:
        instance.dispose()
    return Added(pipeline, added, [b for b in wanted if b in known], folder if files else None)


def _check_catalogs(files: dict[str, str], pipeline: Pipeline) -> None:
    """Load each catalog file as its run will (nothing is added when one fails)."""
    from ..steps.catalog import load_catalog

    for batch, path in files.items():
        try:
            load_catalog(path, batch=batch)
        except CatalogError as exc:
            todo = "" if "fix the file" in str(exc) else "; fix the file and add it again"
            raise CatalogError(
                f"batch {batch} not added to pipeline {pipeline.name} (nor any other): {exc}{todo}"
            ) from None


def _same_place(a: str, b: str) -> bool:
    def norm(location: str) -> str:
        location = location.removeprefix("file://")
        if "://" in location:
            return location.rstrip("/")
        return os.path.realpath(location)

    return norm(a) == norm(b)


def list_batches(pipeline: str | Pipeline) -> list[str]:
    """The batches (partitions) ``pipeline`` has in the instance."""
    name = pipeline.partitions if isinstance(pipeline, Pipeline) else partitions_name(pipeline)
    instance = _instance()
    try:
        return list(instance.get_dynamic_partitions(name))
    finally:
        instance.dispose()
