"""BriaTranslator.get_asset_spec: one hook sets each step's key, group, owners, tags, ..."""

import dagster as dg

from bria_dagster import (
    BriaResource,
    BriaStepProps,
    BriaTranslator,
    PipelineSettings,
    ProductImagePipeline,
)
from bria_dagster.records.tables import read_table
from tests.test_component import write_batch


class CatalogTeamTranslator(BriaTranslator):
    def get_asset_spec(self, props: BriaStepProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        return spec.replace_attributes(
            key=dg.AssetKey(["shop", "images", props.step]),
            group_name="catalog",
            description=f"{props.step} for the web shop",
            owners=["team:catalog"],
            tags={"domain": "catalog"},
            kinds={"bria", "s3"},
            metadata={**spec.metadata, "sla": "24h"},
        )


def test_every_step_takes_the_translated_spec_and_runs_under_its_key(tmp_path):
    write_batch(tmp_path / "catalogs", "b1", ["T-1"])
    pipeline = ProductImagePipeline(
        name="shop",
        settings=PipelineSettings(catalog_dir=str(tmp_path / "catalogs"), steps=("remove",)),
        storage=str(tmp_path / "data"),
        translator=CatalogTeamTranslator(),
    )
    defs = pipeline.build_definitions(
        BriaResource(backend="local", file_roots=[str(tmp_path)]), operations=False
    )
    graph = defs.resolve_asset_graph()
    cutouts = graph.get(dg.AssetKey(["shop", "images", "remove"]))
    assert cutouts.group_name == "catalog"
    assert cutouts.description == "remove for the web shop"
    assert cutouts.owners == ["team:catalog"]
    assert cutouts.tags["domain"] == "catalog"
    assert cutouts.kinds == {"bria", "s3"}
    assert cutouts.metadata["sla"] == "24h"
    assert cutouts.metadata["bria/endpoint"] == "fal-ai/bria/background/remove"
    # The dependency follows the parent's translated key.
    assert cutouts.parent_keys == {dg.AssetKey(["shop", "images", "source"])}

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("shop_batches", ["b1"])
    result = defs.resolve_job_def("shop").execute_in_process(partition_key="b1", instance=instance)
    assert result.success
    table = read_table(pipeline.store.table_path(pipeline.asset_key("remove"), "b1"))
    assert table is not None and list(table["asset_key"]) == ["shop/images/remove"]


def test_the_default_spec_names_the_pipeline_group_and_bria_kind():
    spec = BriaTranslator().get_asset_spec(
        BriaStepProps(
            pipeline="spring", step="replace", endpoint_id="fal-ai/bria/background/replace"
        )
    )
    assert spec.key == dg.AssetKey(["spring", "product_scenes"])
    assert spec.group_name == "spring" and "bria" in spec.kinds
