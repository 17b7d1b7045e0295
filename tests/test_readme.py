"""The README is executed: every Python and YAML example runs offline on the shipped samples.

Blocks run in order in one folder holding a copy of ``examples/`` (as a reader would run
them from the repo root), with no FAL_KEY, so every example uses the embedded engine.
A block that defines ``defs`` is loaded and each of its pipelines' jobs materializes the
``home_goods`` batch; a block that defines assets materializes them; a block that defines
``test_*`` functions (a test a reader copies into their suite) calls them, each with a
fresh ``tmp_path`` if it asks for one; a component
``defs.yaml`` loads through dg and launches; a ``dagster.yaml`` loads as an instance.
Every step table an example writes must hold ok (or reused) rows.
"""

import inspect
import re
import shutil
import types
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from bria_dagster import BriaResource, ProductImagesComponent

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BATCH = "home_goods"
BLOCKS = re.findall(r"```(python|yaml)\n(.*?)```", README, re.S)

pytestmark = [
    pytest.mark.filterwarnings("ignore::dagster.BetaWarning"),
    pytest.mark.filterwarnings("ignore:`parse_obj_as` is deprecated"),
]


def _ok_tables(result: dg.ExecuteInProcessResult) -> int:
    """Check every step table the run wrote holds usable rows; return how many there were."""
    tables = 0
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        path = mat.metadata.get("table") if mat else None
        if path is None:
            continue
        frame = pd.read_parquet(path.value)
        usable = frame["status"].isin(["ok", "reused"])
        assert usable.any(), (mat.asset_key, frame["error_message"].tolist())
        tables += 1
    return tables


def _run_definitions(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    dg.Definitions.validate_loadable(defs)
    jobs = [defs.resolve_job_def(job.name) for job in defs.jobs or []]
    pipeline_jobs = [job for job in jobs if job.partitions_def is not None]
    assert pipeline_jobs, "an example's Definitions has no pipeline job to run"
    for job in pipeline_jobs:
        partitions = job.partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition)
        if BATCH not in instance.get_dynamic_partitions(partitions.name):
            instance.add_dynamic_partitions(partitions.name, [BATCH])
        result = job.execute_in_process(partition_key=BATCH, instance=instance)
        assert result.success, job.name
        assert _ok_tables(result) >= 2  # catalog_batch and at least one step
    own = [
        a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition) and not a.partitions_def
    ]
    if own:
        assert dg.materialize(own, instance=instance).success


def _run_python(code: str, instance: dg.DagsterInstance) -> None:
    module = types.ModuleType("readme_example")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    values = [v for k, v in vars(module).items() if not k.startswith("__")]
    defs = [v for v in values if isinstance(v, dg.Definitions)]
    assets = [v for v in values if isinstance(v, dg.AssetsDefinition)]
    frames = [v for v in values if isinstance(v, pd.DataFrame)]
    if defs:
        _run_definitions(defs[-1], instance)
    elif assets:
        result = dg.materialize(assets, resources={"bria": BriaResource()}, instance=instance)
        assert result.success
        for asset in assets:
            output = result.output_for_node(asset.node_def.name)
            assert output, asset.key
    for frame in frames:  # a query example: it found what it looked for
        assert len(frame), "an example's query returned no rows"
    for name, test in vars(module).items():
        if name.startswith("test_") and callable(test):
            _run_test(name, test)


def _run_test(name: str, test: Callable[..., None]) -> None:
    """Call a pytest-style test function; ``tmp_path`` is the only fixture offered."""
    params = inspect.signature(test).parameters
    unknown = set(params) - {"tmp_path"}
    assert not unknown, f"{name} asks for fixtures the README test does not give: {unknown}"
    kwargs = {}
    if "tmp_path" in params:
        kwargs["tmp_path"] = Path.cwd() / name
        kwargs["tmp_path"].mkdir()
    test(**kwargs)


def _run_yaml(text: str, folder: Path, instance: dg.DagsterInstance) -> None:
    document = yaml.safe_load(text)
    if isinstance(document, dict) and document.get("type") == "bria_dagster.ProductImagesComponent":
        with create_defs_folder_sandbox() as sandbox:
            shutil.copytree(folder / "examples", sandbox.project_root / "examples")
            sandbox.scaffold_component(
                component_cls=ProductImagesComponent,
                defs_path="product_images",
                defs_yaml_contents=document,
            )
            with sandbox.build_all_defs() as defs:
                _run_definitions(defs, instance)
    elif isinstance(document, dict) and "storage" in document:  # the Postgres dagster.yaml
        # Needs a Postgres server: tests/test_scale_out.py runs this very text.
        assert "postgres" in document["storage"]
    elif isinstance(document, dict) and "concurrency" in document:  # a dagster.yaml
        home = folder / "yaml_home"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text(text)
        dg.DagsterInstance.from_config(str(home)).dispose()
    else:
        assert document is not None


def test_every_readme_example_runs_offline_and_makes_ok_rows(tmp_path, monkeypatch):
    assert sum(lang == "python" for lang, _ in BLOCKS) >= 4
    assert sum(lang == "yaml" for lang, _ in BLOCKS) >= 2
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FAL_KEY", raising=False)
    instance = dg.DagsterInstance.ephemeral()
    try:
        for number, (lang, code) in enumerate(BLOCKS, start=1):
            try:
                if lang == "python":
                    _run_python(code, instance)
                else:
                    _run_yaml(code, tmp_path, instance)
            except Exception as exc:  # name the example that broke
                raise AssertionError(f"README {lang} example #{number} failed:\n{code}") from exc
    finally:
        instance.dispose()
