"""Price tables: budgets, backend costs and record prices follow the table in force."""

from __future__ import annotations

from pathlib import Path

import pytest

from bria_dagster import BriaResource
from bria_dagster.backends.base import BackendResult
from bria_dagster.backends.fal import FalBackend
from bria_dagster.endpoints import (
    BriaRequest,
    PriceTable,
    RemoveBackgroundRequest,
    RemoveBackgroundResponse,
    endpoint_for,
)
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import BudgetExceededError
from bria_dagster.retry import RetryPolicy
from bria_dagster.runner import run_batch
from bria_dagster.steps import RequestPlanner, StepContext, run_step
from bria_dagster.store import ImageStore

CONTRACT = PriceTable(
    remove_usd_per_call=0.5,
    replace_usd_per_image=0.25,
    expand_usd_per_call=0.75,
    source="test contract",
    as_of="2026-12-01",
)


class PaidNothing:
    """A backend that answers every request at once, free."""

    name = "free"

    async def run(self, request: BriaRequest, *, journal: object = None) -> BackendResult:
        payload = {"image": {"url": "https://cdn.example/x.png"}}
        return BackendResult(
            endpoint_id=request.endpoint_id,
            backend=self.name,
            request_id="r",
            response=RemoveBackgroundResponse.model_validate(payload),
            images=[],
            seed=None,
            cost_usd=0.0,
            duration_s=0.0,
        )

    async def aclose(self) -> None:
        pass


async def test_the_budget_is_counted_at_the_given_prices():
    items = [
        (i, RemoveBackgroundRequest(image_url=f"https://cdn.example/{i}.jpg")) for i in range(3)
    ]
    outcomes = [o async for o in run_batch(PaidNothing(), items, budget_usd=1.0, prices=CONTRACT)]
    refused = [o for o in outcomes if isinstance(o.error, BudgetExceededError)]
    assert len(refused) == 1  # two removes at 0.5 fit a 1.0 budget, the third does not
    assert "$1.500" in str(refused[0].error)
    # At list prices (0.018) all three fit.
    outcomes = [o async for o in run_batch(PaidNothing(), items, budget_usd=1.0)]
    assert all(o.ok for o in outcomes)


async def test_fal_backend_charges_its_price_table(fal_server):
    photo = make_product_photo("white_studio", 0, (64, 48))[0]
    fal = FalBackend(
        "test-key-0",
        retry=RetryPolicy(max_attempts=4, base_delay_s=0.02, max_delay_s=0.1),
        poll_interval_s=0.02,
        prices=CONTRACT,
    )
    try:
        result = await fal.run(RemoveBackgroundRequest(image_url=photo))
    finally:
        await fal.aclose()
    assert result.cost_usd == 0.5


def test_records_carry_the_unit_price_and_local_calls_cost_nothing(tmp_path: Path):
    store = ImageStore(tmp_path / "images")
    parent = store.put(make_product_photo("white_studio", 1, (64, 48))[0], "image/jpeg")
    planner = RequestPlanner()
    row = {"image_sha256": parent.sha256, "root_source_uri": "a.jpg", "catalog_row": "{}"}
    jobs = [
        planner.plan("A1", "cutout", row, "remove", {}),
        planner.plan("A1", "scene", row, "replace", {"prompt": "on oak", "num_images": 2}),
    ]
    ctx = StepContext(
        partition="b1", run_id="run-1", asset_key="product_cutouts", code_version="1", step="remove"
    )
    bria = BriaResource(backend="local", prices=CONTRACT.model_dump())
    frame, report = run_step(ctx, bria, store, jobs)
    assert report.estimated_cost_usd == pytest.approx(0.5 + 2 * 0.25)
    prices = dict(zip(frame["endpoint_id"], frame["unit_price_usd"], strict=False))
    assert prices == {
        endpoint_for("remove").endpoint_id: 0.5,
        endpoint_for("replace").endpoint_id: 0.25,
    }
    assert len(frame) == 3 and (frame["status"] == "ok").all()
    assert (frame["cost_usd"] == 0.0).all()  # the local engine is free; the price is kept
