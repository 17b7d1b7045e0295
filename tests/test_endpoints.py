"""Endpoint contracts: fal's defaults and limits, validated before any network call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bria_dagster.client.contracts import ENDPOINTS, build_request, endpoint_for
from bria_dagster.client.contracts.expand import CONTRACT as EXPAND
from bria_dagster.client.contracts.expand import AspectRatio, ExpandRequest
from bria_dagster.client.contracts.remove import CONTRACT as REMOVE
from bria_dagster.client.contracts.remove import RemoveBackgroundRequest
from bria_dagster.client.contracts.replace import CONTRACT as REPLACE
from bria_dagster.client.contracts.replace import ReplaceBackgroundRequest
from bria_dagster.client.fingerprint import input_fingerprint, request_fingerprint
from bria_dagster.client.prices import LIST_PRICES, PriceTable
from bria_dagster.errors import RequestValidationError

URL = "https://example.com/shoe.jpg"


def test_endpoint_ids_and_list_prices():
    assert set(ENDPOINTS) == {
        "fal-ai/bria/background/remove",
        "fal-ai/bria/background/replace",
        "fal-ai/bria/expand",
        "fal-ai/bria/product-shot",
    }
    assert LIST_PRICES.cost_usd(RemoveBackgroundRequest(image_url=URL)) == 0.018
    replace = ReplaceBackgroundRequest(image_url=URL, prompt="x", num_images=3)
    assert LIST_PRICES.cost_usd(replace) == pytest.approx(0.069)  # per output image
    assert LIST_PRICES.cost_usd(ExpandRequest(image_url=URL, canvas_size=(1200, 674))) == 0.04
    prices = [c.list_price for c in (REMOVE, REPLACE, EXPAND)]
    assert [(p.usd, p.unit) for p in prices] == [(0.018, "call"), (0.023, "image"), (0.04, "call")]
    assert all("fal.ai" in p.source and p.as_of == "2026-11-30" for p in prices)
    assert endpoint_for("replace") is REPLACE
    assert endpoint_for("fal-ai/bria/expand") is EXPAND


def test_a_price_table_sets_costs_and_says_where_its_prices_come_from():
    # The table's date is its newest price's (product_shot's, read on 2026-12-06).
    assert LIST_PRICES.as_of == "2026-12-06" and "fal.ai" in LIST_PRICES.source
    contract = PriceTable(
        remove_usd_per_call=0.01,
        replace_usd_per_image=0.02,
        expand_usd_per_call=0.03,
        source="ACME enterprise contract 2026-17",
        as_of="2026-12-01",
    )
    replace = ReplaceBackgroundRequest(image_url=URL, prompt="x", num_images=2)
    assert contract.cost_usd(replace) == pytest.approx(0.04)
    assert contract.unit_price_usd(replace) == 0.02
    assert contract.unit_price_usd("fal-ai/bria/expand") == 0.03
    assert contract.unit_price_usd("remove") == 0.01
    with pytest.raises(ValidationError):
        PriceTable(remove_usd_per_call=-1)
    with pytest.raises(ValidationError):
        PriceTable(remov_usd_per_call=0.01)  # a misspelt price is an error, not ignored
    with pytest.raises(ValidationError):
        contract.remove_usd_per_call = 0.5  # frozen: a shared table cannot drift


def test_any_endpoint_is_priced_by_name_once():
    table = PriceTable(usd_per_unit={"expand": 0.023}, remove_usd_per_call=0.01)
    assert table.unit_price_usd("expand") == 0.023 and table.unit_price_usd("remove") == 0.01
    assert table.unit_price_usd("replace") == REPLACE.list_price.usd  # not named: list price
    with pytest.raises(ValidationError, match="unknown endpoint 'expnd'; known: expand"):
        PriceTable(usd_per_unit={"expnd": 0.02})
    with pytest.raises(ValidationError, match="given twice"):
        PriceTable(usd_per_unit={"remove": 0.02}, remove_usd_per_call=0.03)
    with pytest.raises(ValidationError, match=">= 0"):
        PriceTable(usd_per_unit={"remove": -1.0})


def test_fal_defaults():
    req = ReplaceBackgroundRequest(image_url=URL, prompt="marble table")
    args = req.arguments()
    assert args == {
        "image_url": URL,
        "prompt": "marble table",
        "negative_prompt": "",
        "refine_prompt": True,
        "fast": True,
        "num_images": 1,
        "sync_mode": False,
    }
    assert RemoveBackgroundRequest(image_url=URL).arguments() == {
        "image_url": URL,
        "sync_mode": False,
    }


@pytest.mark.parametrize(
    ("endpoint", "arguments", "needle"),
    [
        ("replace", {"prompt": "x", "seed": -1}, "seed: -1 is out of range; allowed 0..2147483647"),
        ("replace", {"prompt": "x", "seed": 2**31}, "allowed 0..2147483647"),
        (
            "replace",
            {"prompt": "x", "num_images": 0},
            "num_images: 0 is out of range; allowed 1..4",
        ),
        ("replace", {"prompt": "x", "num_images": 5}, "allowed 1..4"),
        ("replace", {}, "exactly one of ref_image_url or prompt (got neither)"),
        ("replace", {"prompt": "x", "ref_image_url": URL}, "(got both)"),
        ("replace", {"prompt": "   "}, "got neither"),
        ("expand", {"canvas_size": [5000, 5000]}, "must be under 5000x5000"),
        ("expand", {"canvas_size": [0, 10]}, "canvas_size must be positive"),
        ("expand", {"canvas_size": [10, 10], "aspect_ratio": "7:3"}, "aspect_ratio: '7:3'"),
        (
            "expand",
            {"canvas_size": [10, 10], "original_image_size": [5, 5]},
            "original_image_size and original_image_location go together",
        ),
        ("expand", {}, "canvas_size: Field required"),
        ("remove", {"bogus": 1}, "bogus: Extra inputs are not permitted"),
    ],
)
def test_invalid_requests_name_field_and_range(endpoint, arguments, needle):
    with pytest.raises(RequestValidationError) as info:
        build_request(endpoint, image_url=URL, **arguments)
    assert needle in str(info.value)
    assert endpoint_for(endpoint).endpoint_id in str(info.value)


def test_aspect_ratio_enum_is_fals():
    assert [a.value for a in AspectRatio] == [
        "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9",
    ]  # fmt: skip
    assert AspectRatio("16:9").ratio == pytest.approx(16 / 9)


def test_location_may_be_negative_and_pairs_together():
    req = build_request(
        "expand",
        image_url=URL,
        canvas_size=[1000, 1000],
        original_image_size=[800, 800],
        original_image_location=[-100, 400],
    )
    assert req.arguments()["original_image_location"] == [-100, 400]


def test_image_inputs_accept_urls_paths_and_bytes(tmp_path: Path):
    f = tmp_path / "a.png"
    f.write_bytes(b"png-bytes")
    assert RemoveBackgroundRequest(image_url=str(f)).image_url == f
    assert RemoveBackgroundRequest(image_url=f).image_url == f
    assert RemoveBackgroundRequest(image_url=b"raw").image_url == b"raw"
    with pytest.raises(RequestValidationError, match="unsupported URL scheme 'ftp'"):
        build_request("remove", image_url="ftp://host/x.png")
    with pytest.raises(RequestValidationError, match="image bytes are empty"):
        build_request("remove", image_url=b"")
    with pytest.raises(RequestValidationError, match="image URL is empty"):
        build_request("remove", image_url="  ")


def test_fingerprint_identity(tmp_path: Path):
    f = tmp_path / "a.png"
    f.write_bytes(b"same")
    by_path = request_fingerprint(RemoveBackgroundRequest(image_url=f))
    by_bytes = request_fingerprint(RemoveBackgroundRequest(image_url=b"same"))
    assert by_path == by_bytes  # same input bytes, same work
    assert input_fingerprint(URL) == "url:" + URL
    a = ReplaceBackgroundRequest(image_url=URL, prompt="wood", seed=1)
    b = ReplaceBackgroundRequest(image_url=URL, prompt="wood", seed=1)
    c = ReplaceBackgroundRequest(image_url=URL, prompt="wood", seed=2)
    assert request_fingerprint(a) == request_fingerprint(b) != request_fingerprint(c)
    assert request_fingerprint(a) != request_fingerprint(RemoveBackgroundRequest(image_url=URL))


def test_parameters_exclude_inputs():
    req = ReplaceBackgroundRequest(image_url=b"x", ref_image_url=URL, seed=7)
    params = req.parameters()
    assert "image_url" not in params and "ref_image_url" not in params
    assert params["seed"] == 7
    assert set(req.inputs()) == {"image_url", "ref_image_url"}


NEW_CONTRACT_MODULE = """
from typing import ClassVar, Self

from bria_dagster.client.contracts.base import (
    BriaRequest, BriaResponse, EndpointContract, Image, ListPrice,
)
from bria_dagster.client.images import encode_array


class ShineRequest(BriaRequest):
    endpoint_id: ClassVar[str] = "fal-ai/bria/shine"
    num_results: int = 1

    def output_count(self) -> int:
        return self.num_results


class ShineResponse(BriaResponse):
    images: list[Image]

    def output_images(self) -> list[Image]:
        return self.images

    @classmethod
    def from_outputs(cls, images: list[Image], seed: int | None) -> Self:
        return cls(images=images)


def render_local(request, inputs):
    return [encode_array(inputs.cutout(inputs.images["image_url"]))] * request.num_results


CONTRACT = EndpointContract(
    name="shine",
    request_model=ShineRequest,
    response_model=ShineResponse,
    list_price=ListPrice(usd=0.05, unit="image", source="a test", as_of="2026-12-06"),
    render_local=render_local,
)
"""

REGISTERS_IT = """
import asyncio, importlib.util, sys
spec = importlib.util.find_spec("bria_dagster.client.contracts")
spec.submodule_search_locations.append(sys.argv[1])  # as if the file sat in the package
package = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = package
spec.loader.exec_module(package)

from bria_dagster.client.backends.local import LocalBackend
from bria_dagster.client.contracts import build_request, endpoint_for
from bria_dagster.client.prices import PriceTable
from bria_dagster.engine.synthetic import make_product_photo

photo, _ = make_product_photo("white_studio", 1, (64, 64))
request = build_request("shine", image_url=photo, num_results=2)
assert endpoint_for("fal-ai/bria/shine").name == "shine"
assert PriceTable().cost_usd(request) == 0.1  # the contract's list price, per image
assert PriceTable(usd_per_unit={"shine": 0.01}).cost_usd(request) == 0.02

async def run():
    backend = LocalBackend()
    try:
        return await backend.run(request)
    finally:
        await backend.aclose()

result = asyncio.run(run())
assert len(result.images) == 2 and result.response.output_images()[0].width == 64
print("registered")
"""


def test_a_contract_module_dropped_into_the_package_is_an_endpoint(tmp_path: Path):
    """Discovery: one new module in ``client/contracts/`` and the endpoint validates, is
    priced and runs on the local engine, with no other edit."""
    (tmp_path / "shine.py").write_text(NEW_CONTRACT_MODULE)
    done = subprocess.run(
        [sys.executable, "-c", REGISTERS_IT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "registered"
