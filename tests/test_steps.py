"""Planning a step: each distinct argument set validated once, fingerprints as the runner's."""

from __future__ import annotations

import hashlib

import pytest

from bria_dagster import steps
from bria_dagster.endpoints import build_request, request_fingerprint
from bria_dagster.errors import RequestValidationError
from bria_dagster.steps import RequestPlanner

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
