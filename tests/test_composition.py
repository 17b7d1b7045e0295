"""Drop-in: two pipelines, the user's own assets and an async asset in one code location."""

import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from bria_dagster import (
    BriaResource,
    PipelineSettings,
    ProductImagesComponent,
    build_definitions,
)
from bria_dagster.client.images import decode_image
from bria_dagster.records.storage import PipelineStorage
from bria_dagster.records.tables import read_table
from tests.test_component import write_batch

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.filterwarnings("ignore::dagster.BetaWarning"),
    pytest.mark.filterwarnings("ignore:`parse_obj_as` is deprecated"),
]


def user_definitions(photo: str) -> dg.Definitions:
    """What a data team already has: a plain asset on Dagster's default IO manager, and an
    async asset calling the resource's single-image methods in both forms."""

    @dg.asset
    def my_number() -> int:
        return 42

    @dg.asset
    async def hero_cutouts(context: dg.AssetExecutionContext, bria: BriaResource) -> list[int]:
        awaited = await bria.aremove_background(photo, context=context)
        # The sync form works inside the running event loop too.
        blocking = bria.remove_background(photo, context=context)
        return [len(awaited.images[0].data), len(blocking.images[0].data)]

    mine = dg.define_asset_job("my_assets", selection=[my_number, hero_cutouts])
    return dg.Definitions(assets=[my_number, hero_cutouts], jobs=[mine])


def two_pipelines(root: Path) -> dg.Definitions:
    """Two pipelines, each with its own catalog folder and storage, built separately with
    equal resource settings (as two modules of one project would)."""
    spring = build_definitions(
        PipelineSettings(catalog_dir=str(root / "spring"), steps=("remove",)),
        name="spring",
        storage=str(root / "spring_data"),
        bria=BriaResource(backend="local", file_roots=[str(root)]),
    )
    autumn = build_definitions(
        PipelineSettings(catalog_dir=str(root / "autumn"), steps=("remove",)),
        name="autumn",
        storage=str(root / "autumn_data"),
        bria=BriaResource(backend="local", file_roots=[str(root)]),
    )
    return dg.Definitions.merge(spring, autumn)


def test_two_pipelines_user_assets_and_an_async_asset_load_and_materialize(tmp_path):
    write_batch(tmp_path / "spring", "drop1", ["SP-1", "SP-2"])
    write_batch(tmp_path / "autumn", "drop9", ["AU-1"])
    photo = str(tmp_path / "spring" / "images" / "SP-1.jpg")
    defs = dg.Definitions.merge(two_pipelines(tmp_path), user_definitions(photo))
    dg.Definitions.validate_loadable(defs)

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"spring/product_cutouts", "autumn/product_cutouts", "my_number"} <= keys
    assert {s.name for s in defs.sensors} == {"spring_catalog_sensor", "autumn_catalog_sensor"}
    assert "io_manager" not in (defs.resources or {})  # Dagster's default stays the user's

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("spring_batches", ["drop1"])
    instance.add_dynamic_partitions("autumn_batches", ["drop9"])
    for job, batch, skus in (("spring", "drop1", ["SP-1", "SP-2"]), ("autumn", "drop9", ["AU-1"])):
        result = defs.resolve_job_def(job).execute_in_process(
            partition_key=batch, instance=instance
        )
        assert result.success
        storage = PipelineStorage(str(tmp_path / f"{job}_data"))
        cutouts = read_table(storage.table_path(dg.AssetKey([job, "product_cutouts"]), batch))
        assert cutouts is not None and sorted(cutouts["sku"]) == skus
        assert set(cutouts["status"]) == {"ok"}
    # Each pipeline wrote only into its own storage.
    assert not (tmp_path / "spring_data" / "tables" / "autumn__product_cutouts").exists()

    mine = defs.resolve_job_def("my_assets").execute_in_process(instance=instance)
    assert mine.success
    assert mine.output_for_node("my_number") == 42
    sizes = mine.output_for_node("hero_cutouts")
    assert sizes[0] == sizes[1] > 0  # the same cutout, async and sync
    usage = mine.asset_materializations_for_node("hero_cutouts")[-1].metadata
    assert usage["bria.remove.calls"].value == 2


def test_a_definitions_file_built_the_same_way_passes_dagster_validate(tmp_path):
    write_batch(tmp_path / "spring", "drop1", ["SP-1"])
    (tmp_path / "autumn").mkdir()  # each catalog folder must exist when the code loads
    code = f"""
        import sys
        from pathlib import Path

        import dagster as dg

        sys.path.insert(0, {str(REPO)!r})
        from tests.test_composition import two_pipelines, user_definitions

        root = Path({str(tmp_path)!r})
        defs = dg.Definitions.merge(
            two_pipelines(root), user_definitions(str(root / "spring/images/SP-1.jpg"))
        )
    """
    (tmp_path / "defs.py").write_text(textwrap.dedent(code))
    dagster_cli = str(Path(sys.executable).parent / "dagster")
    out = subprocess.run(
        [dagster_cli, "definitions", "validate", "-f", str(tmp_path / "defs.py")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr


def test_resources_with_equal_settings_merge_and_different_ones_say_so(tmp_path):
    settings = PipelineSettings(catalog_dir=str(tmp_path))
    a = build_definitions(settings, name="a", bria=BriaResource(max_concurrency=8))
    b = build_definitions(settings, name="b", bria=BriaResource(max_concurrency=8))
    dg.Definitions.validate_loadable(dg.Definitions.merge(a, b))
    c = build_definitions(settings, name="c", bria=BriaResource(max_concurrency=4))
    with pytest.raises(dg.DagsterInvariantViolationError, match="same key 'bria'"):
        dg.Definitions.merge(a, c)


def test_two_component_instances_in_one_project_load_and_launch(monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    with create_defs_folder_sandbox() as sandbox:
        for name in ("spring", "autumn"):
            sandbox.scaffold_component(
                component_cls=ProductImagesComponent,
                defs_path=name,
                defs_yaml_contents={
                    "type": "bria_dagster.ProductImagesComponent",
                    "attributes": {
                        "name": name,
                        "catalog_dir": f"catalogs_{name}",
                        "storage": f"data_{name}",
                        "steps": ["remove"],
                    },
                },
            )
        root = sandbox.project_root
        write_batch(root / "catalogs_spring", "b1", ["S-1"])
        write_batch(root / "catalogs_autumn", "b2", ["A-1", "A-2"])
        with sandbox.build_all_defs() as defs:
            dg.Definitions.validate_loadable(defs)
            instance = dg.DagsterInstance.ephemeral()
            for name, batch, count in (("spring", "b1", 1), ("autumn", "b2", 2)):
                instance.add_dynamic_partitions(f"{name}_batches", [batch])
                result = defs.resolve_job_def(name).execute_in_process(
                    partition_key=batch, instance=instance
                )
                assert result.success
                storage = PipelineStorage(str(root / f"data_{name}"))
                table = read_table(
                    storage.table_path(dg.AssetKey([name, "product_cutouts"]), batch)
                )
                assert table is not None and len(table) == count


def test_one_session_serves_every_call_of_a_step(tmp_path, monkeypatch):
    """Backend, HTTP pool and journal are built once per execution, closed at its end."""
    from bria_dagster.client.backends.local import LocalBackend

    made, closed = [], []
    original_init, original_close = LocalBackend.__init__, LocalBackend.aclose

    def init(self, *args, **kwargs):
        made.append(self)
        original_init(self, *args, **kwargs)

    async def aclose(self):
        closed.append(self)
        await original_close(self)

    monkeypatch.setattr(LocalBackend, "__init__", init)
    monkeypatch.setattr(LocalBackend, "aclose", aclose)
    write_batch(tmp_path, "b", ["X-1"])
    photo = str(tmp_path / "images" / "X-1.jpg")

    @dg.asset
    def many_calls(context: dg.AssetExecutionContext, bria: BriaResource) -> int:
        cuts = [bria.remove_background(photo, context=context) for _ in range(3)]
        wide = bria.expand_image(cuts[0].images[0].data, aspect_ratio="1:1", canvas_size=[96, 96])
        return len(cuts) + len(wide.images)

    bria = BriaResource(backend="local", file_roots=[str(tmp_path)])
    result = dg.materialize([many_calls], resources={"bria": bria})
    assert result.success and result.output_for_node("many_calls") == 4
    assert len(made) == 1 and closed == made  # one backend for four calls, closed after
    assert decode_image(bria.remove_background(photo).images[0].data).mode == "RGBA"
    bria.close()
