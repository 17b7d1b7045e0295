"""BriaClient from a plain script: sync and async calls, batches, usage, a clean close,
and no Dagster anywhere."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bria_dagster import BriaClient
from bria_dagster.client.contracts import build_request
from bria_dagster.client.fetch_policy import FetchPolicy
from bria_dagster.client.images import decode_image
from bria_dagster.client.prices import PriceTable
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import BudgetExceededError, ConfigurationError


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "mug.jpg"
    path.write_bytes(make_product_photo("white_studio", 7, (160, 128))[0])
    return path


def _session_threads() -> int:
    return sum(t.name == "bria-session" and t.is_alive() for t in threading.enumerate())


def test_a_script_chains_the_three_calls_and_counts_its_usage(photo, tmp_path):
    before = _session_threads()
    policy = FetchPolicy(file_roots=(str(tmp_path),))
    with BriaClient(backend="local", fetch_policy=policy) as bria:
        cut = bria.remove_background(photo)
        scenes = bria.replace_background(cut.images[0].data, prompt="on oak", num_images=2)
        wide = bria.expand_image(scenes.images[1].data, aspect_ratio="16:9", canvas_size=(16, 9))
        square = make_product_photo("white_studio", 1, (64, 64))[0]
        same = bria.expand_image(square, aspect_ratio="1:1", canvas_size=(64, 64))
        assert _session_threads() == before + 1
    assert _session_threads() == before  # the session's loop thread is gone
    assert decode_image(cut.images[0].data).mode == "RGBA"
    assert abs(wide.images[0].width / wide.images[0].height - 16 / 9) < 0.01
    assert same.backend == "noop"  # already 1:1: answered, not sent, not counted
    assert bria.usage.metadata() == {
        "bria.expand.calls": 1,
        "bria.expand.cost_usd": 0.0,
        "bria.expand.images": 1,
        "bria.remove.calls": 1,
        "bria.remove.cost_usd": 0.0,
        "bria.remove.images": 1,
        "bria.replace.calls": 1,
        "bria.replace.cost_usd": 0.0,
        "bria.replace.images": 2,
        "bria.retries": 0,
    }


async def test_async_calls_run_at_once_and_async_with_closes(photo):
    data = photo.read_bytes()
    before = _session_threads()
    async with BriaClient(backend="local", max_concurrency=2) as bria:
        results = await asyncio.gather(
            bria.aremove_background(data),
            bria.areplace_background(data, prompt="white studio", seed=4),
            bria.aexpand_image(data, canvas_size=[320, 160]),
        )
    assert _session_threads() == before
    assert [r.endpoint_id.rsplit("/", 1)[-1] for r in results] == ["remove", "replace", "expand"]
    assert results[1].seed == 4
    assert sum(bria.usage.calls.values()) == 3


def test_a_batch_keeps_to_its_budget_and_adds_to_the_usage(photo):
    data = photo.read_bytes()
    items = [
        (sku, build_request("replace", image_url=data, prompt=f"scene {sku}", num_images=2))
        for sku in range(3)
    ]
    outcomes = []
    prices = PriceTable(replace_usd_per_image=0.5)
    with BriaClient(backend="local", budget_usd=2.0, prices=prices) as bria:
        batch = bria.run_batch(items, outcomes.append, total=len(items))
    # Two requests of $1 fit the $2 budget; the third is refused unsent.
    errors = sorted(type(o.error).__name__ for o in outcomes if o.error is not None)
    assert len(outcomes) == 3 and errors == [BudgetExceededError.__name__]
    assert batch.calls["replace"] == 2 and batch.images["replace"] == 4
    assert bria.usage.metadata() == batch.metadata()


def test_fal_without_a_key_says_where_the_key_goes(monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="FAL_KEY"):
        BriaClient(backend="fal")
    assert BriaClient().backend_name == "local"
    monkeypatch.setenv("FAL_KEY", "test-key-0")
    assert BriaClient().backend_name == "fal"
    assert "test-key-0" not in repr(BriaClient())


def test_the_client_imports_no_dagster():
    code = (
        "import sys; import bria_dagster.client.client; from bria_dagster import BriaClient; "
        "print(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
