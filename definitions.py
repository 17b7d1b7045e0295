"""The example pipeline: `dagster dev -f definitions.py` shows the asset graph.

Runs offline on the embedded engine by default; with FAL_KEY set, the same
assets call Bria on fal.ai. Sample catalogs live in examples/catalogs (one file
per batch = one partition; the sensor picks up new files there); outputs and
lineage tables go to ./bria_data.
"""

from pathlib import Path

from bria_dagster import PipelineSettings, build_definitions

HERE = Path(__file__).resolve().parent

defs = build_definitions(
    PipelineSettings(catalog_dir=str(HERE / "examples" / "catalogs")),
    name="product_images",
    storage=str(HERE / "bria_data"),
)
