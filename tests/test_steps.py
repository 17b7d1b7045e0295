"""Planning a step: each distinct argument set validated once, fingerprints as the runner's."""

from __future__ import annotations

import hashlib

import pytest

from bria_dagster import PipelineSettings
from bria_dagster.client.contracts import build_request, endpoint_for
from bria_dagster.client.fingerprint import request_fingerprint
from bria_dagster.engine.outpaint import plan_expand
from bria_dagster.errors import ConfigurationError, RequestValidationError
from bria_dagster.records.schema import NOOP_BACKEND
from bria_dagster.records.tables import records_to_frame
from bria_dagster.steps import rows as steps
from bria_dagster.steps.catalog import CatalogRow, row_json
from bria_dagster.steps.planning import StepPlanner
from bria_dagster.steps.registry import all_steps, step_named, step_names
from bria_dagster.steps.rows import RequestPlanner
from bria_dagster.steps.step import SOURCE

EXPAND_ID = endpoint_for("expand").endpoint_id

IMAGE = b"\x89PNG stand-in for a parent image"
PARENT = {"sku": "SKU-1", "image_sha256": hashlib.sha256(IMAGE).hexdigest()}


@pytest.mark.parametrize(
    ("endpoint", "arguments"),
    [
        ("remove", {}),
        ("replace", {"prompt": "a marble table", "num_images": 2, "seed": 7}),
        ("expand", {"aspect_ratio": "4:5", "canvas_size": [800, 1000], "seed": 3}),
    ],
)
def test_planned_fingerprint_equals_the_fingerprint_of_the_real_request(endpoint, arguments):
    job = RequestPlanner().plan("SKU-1", "v", PARENT, endpoint, arguments)
    assert job.error is None and job.request is not None
    real = build_request(endpoint, image_url=IMAGE, **arguments)
    assert job.fingerprint == request_fingerprint(real)


def test_a_local_reference_image_is_part_of_the_fingerprint(tmp_path):
    ref = tmp_path / "backdrop.png"
    ref.write_bytes(b"backdrop one")
    first = RequestPlanner().plan("SKU-1", "scene", PARENT, "replace", {"ref_image_url": ref})
    real = build_request("replace", image_url=IMAGE, ref_image_url=ref)
    assert first.fingerprint == request_fingerprint(real)
    ref.write_bytes(b"backdrop two")  # a new planner (a new run) sees the new content
    second = RequestPlanner().plan("SKU-1", "scene", PARENT, "replace", {"ref_image_url": ref})
    assert second.fingerprint != first.fingerprint


def test_each_distinct_argument_set_is_validated_once(monkeypatch):
    calls: list[str] = []
    real_build = steps.build_request

    def counting_build(endpoint, **arguments):
        calls.append(endpoint)
        return real_build(endpoint, **arguments)

    monkeypatch.setattr(steps, "build_request", counting_build)
    planner = RequestPlanner()
    jobs = []
    for i in range(50):
        parent = {"sku": f"SKU-{i}", "image_sha256": f"{i:064x}"}
        for ratio, canvas in (("1:1", [1000, 1000]), ("4:5", [800, 1000])):
            arguments = {"aspect_ratio": ratio, "canvas_size": canvas}
            jobs.append(planner.plan(parent["sku"], ratio, parent, "expand", arguments))
    assert calls == ["expand", "expand"]
    assert len({j.fingerprint for j in jobs}) == 100  # every parent image is its own request


def test_invalid_arguments_become_a_failed_job_for_every_row_that_has_them():
    planner = RequestPlanner()
    jobs = [
        planner.plan(f"SKU-{i}", "scene", PARENT, "replace", {"prompt": "x", "num_images": 9})
        for i in range(3)
    ]
    for job in jobs:
        assert job.request is None and job.fingerprint is None
        assert isinstance(job.error, RequestValidationError)
        assert "num_images" in str(job.error)


def _scene(width: int, height: int) -> dict:
    return {
        "sku": "S1",
        "variant": "scene",
        "status": "ok",
        "width": width,
        "height": height,
        "image_sha256": hashlib.sha256(f"{width}x{height}".encode()).hexdigest(),
        "image_uri": "store/scene.jpg",
        "content_type": "image/jpeg",
        "catalog_row": "{}",
    }


@pytest.mark.parametrize(
    ("size", "ratio", "noop"),
    [
        ((640, 640), "1:1", True),
        ((640, 640), "4:5", False),
        ((800, 1000), "4:5", True),
        ((801, 1000), "4:5", False),  # the canvas would be 801x1002: two rows filled
        ((799, 1000), "4:5", False),  # 800x1000: one column filled
        ((1920, 1080), "16:9", True),
        ((641, 640), "1:1", False),
    ],
)
def test_an_expansion_is_a_noop_exactly_when_its_canvas_is_the_image(size, ratio, noop):
    settings = PipelineSettings(aspect_ratios=(ratio,))
    [job] = StepPlanner(settings, "expand").jobs(_scene(*size))
    canvas = plan_expand(size, canvas_size=None, aspect_ratio=ratio).canvas
    assert job.request is not None and list(job.request.canvas_size) == list(canvas)
    assert (job.noop is not None) == noop == (canvas == size)
    if noop:
        assert f"already {size[0]}x{size[1]}" in job.noop and ratio in job.noop


def test_a_noop_row_holds_its_parent_image_and_costs_nothing():
    settings = PipelineSettings(aspect_ratios=("1:1",))
    parent = _scene(640, 640)
    [job] = StepPlanner(settings, "expand").jobs(parent)
    ctx = steps.StepContext("b1", "run-1", "p/product_expansions", "1", "expand")
    row = steps.noop_row(ctx, job)
    assert row["status"] == "ok" and row["backend"] == NOOP_BACKEND
    assert row["image_sha256"] == row["parent_sha256"] == parent["image_sha256"]
    assert (row["image_uri"], row["width"], row["height"]) == ("store/scene.jpg", 640, 640)
    assert row["cost_usd"] == 0.0 and row["unit_price_usd"] == 0.0
    assert row.get("request_id") is None and row["noop_reason"] == job.noop
    assert row["request_fingerprint"] == job.fingerprint and row["endpoint_id"] == EXPAND_ID
    frame = records_to_frame([row])  # a complete record
    assert frame["noop_reason"].iloc[0] == job.noop


def test_the_registry_lists_every_step_module_parents_first():
    names = step_names()
    assert names[:3] == ("remove", "replace", "expand")
    for step in all_steps():
        assert step.parent == SOURCE or names.index(step.parent) < names.index(step.name)
        assert step_named(step.name) is step and step.asset
    with pytest.raises(ConfigurationError, match="step 'nope' is not one of remove, replace"):
        step_named("nope")


def test_a_catalog_row_is_parsed_once_and_travels_with_the_rows():
    text = row_json(
        {"sku": "S1", "image_url": "a.jpg", "prompt": None, "seed": 4, "category": "mug"}
    )
    parent = {**_scene(640, 640), "catalog_row": text}
    settings = PipelineSettings(prompt_template="a {category} on oak")
    [job] = StepPlanner(settings, "replace").jobs(parent)
    catalog = parent[steps.PARSED_CATALOG]
    assert catalog == CatalogRow.from_json(text) and catalog.extra == {"category": "mug"}
    assert job.request.prompt == "a mug on oak" and job.request.seed == 4
    ctx = steps.StepContext("b1", "run-1", "p/product_scenes", "1", "replace")
    child = steps.failed_row(ctx, job, "X", "y")
    assert child[steps.PARSED_CATALOG] is catalog  # the next step does not parse it again
    assert child["catalog_row"] == text  # the tables keep the JSON


def test_a_template_naming_a_missing_column_fails_the_row_not_the_batch():
    settings = PipelineSettings(prompt_template="a {category} on oak")
    [job] = StepPlanner(settings, "replace").jobs(_scene(640, 640))
    assert job.request is None and isinstance(job.error, RequestValidationError)
    assert "prompt_template needs catalog column(s) category" in str(job.error)
