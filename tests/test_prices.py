"""Price tables: budgets, backend costs and record prices follow the table in force."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bria_dagster import BriaResource, PipelineSettings
from bria_dagster.client.backends.base import BackendResult
from bria_dagster.client.backends.fal import FalBackend
from bria_dagster.client.client import BriaClient
from bria_dagster.client.contracts.base import BriaRequest
from bria_dagster.client.contracts.remove import RemoveBackgroundRequest, RemoveBackgroundResponse
from bria_dagster.client.prices import PriceTable
from bria_dagster.client.retry import RetryPolicy
from bria_dagster.client.runner import run_batch
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import BudgetExceededError
from bria_dagster.records.store import ImageStore
from bria_dagster.steps.chain import ChainStep, StepChain
from bria_dagster.steps.planning import StepPlanner
from bria_dagster.steps.rows import StepContext

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
    source = {
        "sku": "A1",
        "step": "source",
        "variant": "source",
        "status": "ok",
        "image_sha256": parent.sha256,
        "width": 64,
        "height": 48,
        "root_source_uri": "a.jpg",
        "catalog_row": "{}",
    }
    settings = PipelineSettings(prompt_template="on oak", num_images=2)

    def step(name: str) -> ChainStep:
        ctx = StepContext(
            partition="b1", run_id="run-1", asset_key=name, code_version="1", step=name
        )
        return ChainStep(ctx, StepPlanner(settings, name).jobs, reuse=lambda fingerprints: {})

    with BriaClient(backend="local", prices=CONTRACT) as bria:
        (cutouts, removed), (scenes, replaced) = StepChain(
            [step("remove"), step("replace")], bria, store
        ).run([source])
    assert removed.estimated_cost_usd == pytest.approx(0.5)
    assert replaced.estimated_cost_usd == pytest.approx(2 * 0.25)
    assert list(cutouts["unit_price_usd"]) == [0.5]
    assert list(scenes["unit_price_usd"]) == [0.25, 0.25]
    frame = pd.concat([cutouts, scenes])
    assert len(frame) == 3 and (frame["status"] == "ok").all()
    assert (frame["cost_usd"] == 0.0).all()  # the local engine is free; the price is kept


def test_the_resource_prices_any_endpoint_by_name_and_hands_its_table_to_the_client():
    bria = BriaResource(
        backend="local", prices={"usd_per_unit": {"expand": 0.023}, "source": "contract 17"}
    )
    table = bria.price_table()
    assert table.unit_price_usd("expand") == 0.023 and table.source == "contract 17"
    assert table.unit_price_usd("remove") == 0.018  # not named: the list price
    assert bria.make_client().prices == table
