"""Endpoint contracts: fal's defaults and limits, validated before any network call."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bria_dagster.client.endpoints import (
    ENDPOINTS,
    EXPAND,
    LIST_PRICES,
    REMOVE,
    REPLACE,
    AspectRatio,
    ExpandRequest,
    PriceTable,
    RemoveBackgroundRequest,
    ReplaceBackgroundRequest,
    build_request,
    endpoint_for,
    input_fingerprint,
    request_fingerprint,
)
from bria_dagster.errors import RequestValidationError

URL = "https://example.com/shoe.jpg"


def test_endpoint_ids_and_list_prices():
    assert set(ENDPOINTS) == {
        "fal-ai/bria/background/remove",
        "fal-ai/bria/background/replace",
        "fal-ai/bria/expand",
    }
    assert RemoveBackgroundRequest(image_url=URL).estimated_cost_usd() == 0.018
    replace = ReplaceBackgroundRequest(image_url=URL, prompt="x", num_images=3)
    assert replace.estimated_cost_usd() == pytest.approx(0.069)  # per output image
    assert ExpandRequest(image_url=URL, canvas_size=(1200, 674)).estimated_cost_usd() == 0.04
    assert (REMOVE.price_usd, REPLACE.price_usd, EXPAND.price_usd) == (0.018, 0.023, 0.04)
    assert endpoint_for("replace") is REPLACE
    assert endpoint_for("fal-ai/bria/expand") is EXPAND


def test_a_price_table_sets_costs_and_says_where_its_prices_come_from():
    assert LIST_PRICES.as_of == "2026-11-30" and "fal.ai" in LIST_PRICES.source
    contract = PriceTable(
        remove_usd_per_call=0.01,
        replace_usd_per_image=0.02,
        expand_usd_per_call=0.03,
        source="ACME enterprise contract 2026-17",
        as_of="2026-12-01",
    )
    replace = ReplaceBackgroundRequest(image_url=URL, prompt="x", num_images=2)
    assert contract.cost_usd(replace) == pytest.approx(0.04)
    assert replace.estimated_cost_usd(contract) == pytest.approx(0.04)
    assert contract.unit_price_usd(replace) == 0.02
    assert contract.unit_price_usd("fal-ai/bria/expand") == 0.03
    assert contract.unit_price_usd("remove") == 0.01
    with pytest.raises(ValidationError):
        PriceTable(remove_usd_per_call=-1)
    with pytest.raises(ValidationError):
        PriceTable(remov_usd_per_call=0.01)  # a misspelt price is an error, not ignored
    with pytest.raises(ValidationError):
        contract.remove_usd_per_call = 0.5  # frozen: a shared table cannot drift


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
