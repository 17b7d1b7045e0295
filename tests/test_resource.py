"""BriaResource from any op or asset: single-image methods, backend choice, usage metadata."""

from pathlib import Path

import dagster as dg
import pytest

from bria_dagster import BriaResource
from bria_dagster.client.images import decode_image
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import RequestValidationError


@pytest.fixture
def photo(tmp_path: Path) -> str:
    path = tmp_path / "mug.jpg"
    path.write_bytes(make_product_photo("white_studio", 7, (160, 128))[0])
    return str(path)


def _usage(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    metadata = result.asset_materializations_for_node(asset)[-1].metadata
    return {k: getattr(v, "value", v) for k, v in metadata.items() if k.startswith("bria.")}


def test_single_image_methods_chain_and_usage_lands_in_the_calling_asset(photo, tmp_path):
    @dg.asset
    def hero_image(context: dg.AssetExecutionContext, bria: BriaResource) -> bytes:
        cut = bria.remove_background(photo, context=context)
        scene = bria.replace_background(
            cut.images[0].data, prompt="on light oak", num_images=2, seed=3, context=context
        )
        wide = bria.expand_image(
            scene.images[1].data, aspect_ratio="16:9", canvas_size=[1600, 900], context=context
        )
        return wide.images[0].data

    @dg.asset
    def thumbnail_cutout(context: dg.AssetExecutionContext, bria: BriaResource) -> bytes:
        return bria.remove_background(photo, context=context).images[0].data

    bria = BriaResource(backend="local", file_roots=[str(tmp_path)])
    result = dg.materialize([hero_image, thumbnail_cutout], resources={"bria": bria})
    assert result.success

    wide = decode_image(result.output_for_node("hero_image"))
    assert abs(wide.width / wide.height - 16 / 9) < 0.01
    assert decode_image(result.output_for_node("thumbnail_cutout")).mode == "RGBA"

    # Each asset's metadata holds its own calls, not the other asset's.
    assert _usage(result, "hero_image") == {
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
    assert _usage(result, "thumbnail_cutout") == {
        "bria.remove.calls": 1,
        "bria.remove.cost_usd": 0.0,
        "bria.remove.images": 1,
        "bria.retries": 0,
    }


def test_through_fal_the_cost_is_the_list_price(photo, tmp_path, fal_server):
    @dg.op
    def cut_out(context: dg.OpExecutionContext, bria: BriaResource) -> int:
        return len(bria.remove_background(photo, context=context).images)

    @dg.job(
        resource_defs={
            "bria": BriaResource(
                fal_key="test-key-0",
                journal_path=str(tmp_path / "journal.sqlite"),
                file_roots=[str(tmp_path)],
                poll_interval_s=0.02,
            )
        }
    )
    def one_cutout():
        cut_out()

    result = one_cutout.execute_in_process()
    assert result.output_for_node("cut_out") == 1
    outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = outputs[-1].step_output_data.metadata
    assert metadata["bria.remove.calls"].value == 1
    assert metadata["bria.remove.cost_usd"].value == pytest.approx(0.018)
    assert fal_server.stats()["submissions"] == 1


def test_auto_is_fal_with_a_key_and_local_without(monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    assert BriaResource().selected_backend() == "local"
    assert BriaResource(fal_key="k-1:s-1").selected_backend() == "fal"
    monkeypatch.setenv("FAL_KEY", "k-2:s-2")
    assert BriaResource().selected_backend() == "fal"
    assert BriaResource(backend="local").selected_backend() == "local"


def test_invalid_arguments_are_refused_before_any_call(photo, tmp_path, monkeypatch):
    from bria_dagster.client.backends.local import LocalBackend

    calls = []

    async def counting_run(self, request, **kwargs):
        calls.append(request)

    monkeypatch.setattr(LocalBackend, "run", counting_run)
    bria = BriaResource(backend="local", file_roots=[str(tmp_path)])
    with pytest.raises(RequestValidationError, match="num_images"):
        bria.replace_background(photo, prompt="x", num_images=9)
    assert calls == []


def test_a_single_expansion_that_changes_nothing_is_answered_not_paid(tmp_path, fal_server):
    square = tmp_path / "square.jpg"
    square.write_bytes(make_product_photo("white_studio", 3, (96, 96))[0])
    wide = make_product_photo("white_studio", 4, (120, 96))[0]

    @dg.asset
    def formats(context: dg.AssetExecutionContext, bria: BriaResource) -> list[str]:
        same = bria.expand_image(
            str(square), aspect_ratio="1:1", canvas_size=[500, 500], context=context
        )
        assert same.images[0].data == square.read_bytes()  # its own bytes, untouched
        assert (same.images[0].width, same.images[0].height) == (96, 96)
        assert same.cost_usd == 0 and same.request_id == "" and same.attempts == 0
        from_bytes = bria.expand_image(
            square.read_bytes(), aspect_ratio="1:1", canvas_size=[500, 500], context=context
        )
        at_origin = bria.expand_image(
            square.read_bytes(),
            canvas_size=[96, 96],
            original_image_size=[96, 96],
            original_image_location=[0, 0],
            context=context,
        )
        squared = bria.expand_image(
            wide, aspect_ratio="1:1", canvas_size=[500, 500], context=context
        )  # 120x96: sent
        assert (squared.images[0].width, squared.images[0].height) == (120, 120)
        return [r.backend for r in (same, from_bytes, at_origin, squared)]

    bria = BriaResource(
        fal_key="test-key-0",
        journal_path=str(tmp_path / "journal.sqlite"),
        file_roots=[str(tmp_path)],
        poll_interval_s=0.02,
    )
    result = dg.materialize([formats], resources={"bria": bria})
    assert result.output_for_node("formats") == ["noop", "noop", "noop", "fal"]
    assert fal_server.stats()["submissions"] == 1  # only the 120x96 image went to fal
    usage = _usage(result, "formats")
    assert usage["bria.expand.calls"] == 1
    assert usage["bria.expand.cost_usd"] == pytest.approx(0.04)
