"""Bria Product Shot as a step: settings, validation, cost, the offline engine, lineage, reuse."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from bria_dagster import BriaResource, PipelineSettings, derived, trace
from bria_dagster.client.contracts import build_request
from bria_dagster.client.prices import LIST_PRICES, PriceTable
from bria_dagster.engine.product_shot import PLACEMENTS, product_shots
from bria_dagster.errors import RequestValidationError
from bria_dagster.lineage.report import write_audit_report
from bria_dagster.steps.planning import StepPlanner
from tests.test_component import causes
from tests.test_component import loaded as loaded  # a fixture
from tests.test_pipeline import BATCH, CountingBackends, materialize, product, table, write_catalog

SHOTS = "product_images/product_shots"
ENDPOINT = "fal-ai/bria/product-shot"

# Loading a component emits warnings from Dagster's own code (as in test_component).
pytestmark = [
    pytest.mark.filterwarnings("ignore::dagster.BetaWarning"),
    pytest.mark.filterwarnings("ignore:`parse_obj_as` is deprecated"),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rows = [
        {"sku": "P1", "image_url": product(tmp_path, "P1", 1), "material": "marble"},
        {"sku": "P2", "image_url": product(tmp_path, "P2", 2, "colored"), "material": "oak"},
    ]
    write_catalog(tmp_path, rows)
    return tmp_path


def settings_for(folder: Path, **options) -> PipelineSettings:
    return PipelineSettings(
        catalog_dir=str(folder / "catalogs"),
        steps=("remove", "product_shot"),
        scene_template="on {material}, soft daylight",
        shot_size=(160, 120),
        **options,
    )


def shots(folder: Path):
    return table(str(folder / "data"), "product_shots")


def test_offline_product_shots_trace_to_their_source_and_are_reused(folder, monkeypatch):
    calls = CountingBackends(monkeypatch)
    result, instance = materialize(folder, settings=settings_for(folder))
    rows = shots(folder)
    assert list(rows["status"]) == ["ok", "ok"] and set(rows["variant"]) == {"shot"}
    assert list(rows["step"]) == ["product_shot"] * 2 and set(rows["endpoint_id"]) == {ENDPOINT}
    assert set(zip(rows["width"], rows["height"], strict=True)) == {(160, 120)}
    meta = result.asset_materializations_for_node("product_images_image_steps")
    shot_meta = next(m for m in meta if m.asset_key.to_user_string() == SHOTS).metadata
    assert shot_meta["list_price_usd"].value == pytest.approx(2 * 0.04)
    assert "bria.product_shot.calls" in shot_meta  # usage per endpoint, as for the others
    assert "P1" in shot_meta["preview"].value and "shot" in shot_meta["preview"].value  # the UI's
    checks = [
        c for c in result.get_asset_check_evaluations() if c.asset_key.path[-1] == "product_shots"
    ]
    assert checks and all(c.passed for c in checks)

    storage = str(folder / "data")
    chain = trace(rows["image_sha256"][0], storage)
    assert list(chain.step) == ["product_shot", "source"]  # a product shot's parent: the source
    made = derived("P1", storage)
    assert {"remove", "product_shot"} <= set(made.step)
    html = Path(write_audit_report(storage, BATCH, pipeline="product_images").path).read_text()
    assert "product_shots" in html and "scene_description" in html

    assert calls.calls.count(ENDPOINT) == 2
    calls.calls.clear()
    again, _ = materialize(folder, settings=settings_for(folder), instance=instance)
    assert calls.calls == []  # an unchanged re-run: every image reused, nothing called
    meta = again.asset_materializations_for_node("product_images_image_steps")
    shot_meta = next(m for m in meta if m.asset_key.to_user_string() == SHOTS).metadata
    assert shot_meta["rows_reused"].value == 2 and not shot_meta["table_written"].value
    assert shots(folder).equals(rows)  # the table as the run that made the shots wrote it


def test_automatic_placement_costs_ten_shots_per_result_before_any_call(folder):
    settings = settings_for(folder, placement_type="automatic", num_results=2)
    source = {
        "sku": "P1",
        "variant": "source",
        "status": "ok",
        "step": "source",
        "width": 128,
        "height": 112,
        "image_sha256": "ab" * 32,
        "catalog_row": '{"sku": "P1", "material": "oak"}',
    }
    [job] = StepPlanner(settings, "product_shot").jobs(source)
    assert job.request.output_count() == 20
    assert LIST_PRICES.cost_usd(job.request) == pytest.approx(20 * 0.04)
    # The reference page's comparison figure, set as the price: the estimate follows it.
    assert PriceTable(usd_per_unit={"product_shot": 0.023}).cost_usd(job.request) == 0.46


def test_the_budget_holds_back_what_automatic_placement_would_overspend(folder):
    settings = settings_for(folder, placement_type="automatic")
    bria = BriaResource(backend="local", file_roots=[str(folder)], budget_usd=0.5)
    result, _ = materialize(folder, settings=settings, bria=bria)
    rows = shots(folder)
    assert (rows["status"] == "ok").sum() == len(PLACEMENTS) == 10  # one call's ten shots
    assert (rows["error_class"] == "BudgetExceededError").sum() == 1  # 2 x $0.40 > $0.50
    [budget] = [
        c
        for c in result.get_asset_check_evaluations()
        if c.asset_key.path[-1] == "product_shots" and c.check_name == "within_budget"
    ]
    assert not budget.passed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"placement_type": "manual_padding"}, "manual_padding needs padding_values"),
        ({"num_results": 5}, "less than or equal to 4"),
        ({"manual_placement_selection": "middle"}, "bottom_center"),
        ({"shot_size": (0, 100)}, "shot_size must be positive"),
        ({"steps": ("replace", "product_shot")}, "add 'remove' to steps"),
    ],
)
def test_bad_product_shot_settings_fail_when_the_settings_are_made(options, message):
    with pytest.raises(ValueError, match=message):
        PipelineSettings(**{"steps": ("product_shot",), **options})


def test_a_request_needs_exactly_one_scene_and_a_row_without_template_columns_fails_alone():
    with pytest.raises(RequestValidationError, match="exactly one of ref_image_url or scene"):
        build_request("product_shot", image_url=b"x")
    with pytest.raises(
        RequestValidationError, match=r"num_results: 0 is out of range; allowed 1\.\.4"
    ):
        build_request("product_shot", image_url=b"x", scene_description="oak", num_results=0)
    settings = PipelineSettings(steps=("product_shot",), scene_template="on {material}")
    row = {"sku": "P9", "status": "ok", "width": 8, "height": 8, "image_sha256": "cd" * 32}
    [job] = StepPlanner(settings, "product_shot").jobs({**row, "catalog_row": '{"sku": "P9"}'})
    assert job.request is None and "scene_template needs catalog column(s) material" in str(
        job.error
    )
    described = '{"sku": "P9", "scene_description": "on a rock by the sea"}'
    [job] = StepPlanner(settings, "product_shot").jobs({**row, "catalog_row": described})
    assert job.request.scene_description == "on a rock by the sea"  # the row's own wins


def test_the_component_yaml_turns_product_shots_on(loaded, monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    component, defs, root = loaded(
        {
            "name": "spring",
            "steps": ["remove", "product_shot"],
            "scene_template": "{category} on a rock by the sea",
            "placement_type": "automatic",
            "shot_size": [800, 600],
        }
    )
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "spring/product_shots" in keys and "spring/product_scenes" not in keys
    settings = component.pipeline_settings(root)
    assert settings.steps == ("remove", "product_shot")
    assert (settings.placement_type, settings.shot_size) == ("automatic", (800, 600))
    with pytest.raises(Exception) as info:  # dg wraps it in its own error, cause kept
        loaded({"steps": ["product_shot"], "placement_type": "manual_padding"})
    assert any("manual_padding needs padding_values" in text for text in causes(info.value))


def is_product(shot: np.ndarray) -> np.ndarray:
    """Where the red test product is (colours shift a little toward the scene's)."""
    return (shot[..., 0] > 150) & (shot[..., 1] < 80) & (shot[..., 2] < 80)


def test_the_engine_places_the_cutout_as_each_placement_type_says():
    cutout = np.zeros((300, 200, 4), np.uint8)
    cutout[50:250, 60:140] = (200, 30, 30, 255)  # an 80x200 product
    shoot = functools.partial(product_shots, cutout, scene_description="marble", seed=3)
    [original] = shoot(placement_type="original")
    assert original.shape[:2] == (1225, 816)  # scaled to about 1 MP, the same ratio
    assert shoot(placement_type="original", original_quality=True)[0].shape[:2] == (300, 200)
    [padded] = shoot(placement_type="manual_padding", padding_values=(10, 20, 30, 40))
    assert padded.shape[:2] == (30 + 200 + 40, 10 + 80 + 20)
    assert is_product(padded)[30 + 100, 10 + 40]  # the product, where the padding puts it
    automatic = shoot(placement_type="automatic", shot_size=(160, 120), num_results=2)
    assert len(automatic) == 20 and {a.shape for a in automatic} == {(120, 160, 3)}
    [left] = shoot(manual_placement_selection="bottom_left", shot_size=(160, 120))
    assert np.array_equal(
        left, shoot(manual_placement_selection="bottom_left", shot_size=(160, 120))[0]
    )
    red = np.argwhere(is_product(left))
    assert red[:, 1].max() < 80 and red[:, 0].max() > 60  # bottom left of the canvas
