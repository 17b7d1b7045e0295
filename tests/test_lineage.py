"""Lineage queries: trace an output back to its source, list what a source became."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bria_dagster.errors import BriaError, LineageNotFoundError, RecordTableError
from bria_dagster.lineage.frame import (
    derived,
    derived_images,
    load_records,
    trace,
    trace_image,
)
from bria_dagster.lineage.index import open_index
from bria_dagster.records.schema import (
    FAILED,
    NOOP_BACKEND,
    OK,
    TRACE_COLUMNS,
    canonical_json,
    make_record_id,
    reused_record,
)
from bria_dagster.records.tables import IMAGE_RECORD_SCHEMA, frame_to_table, records_to_frame

ENDPOINTS = {
    "source": (None, "catalog_batch", 0.0),
    "remove": ("fal-ai/bria/background/remove", "product_cutouts", 0.018),
    "replace": ("fal-ai/bria/background/replace", "product_scenes", 0.023),
    "expand": ("fal-ai/bria/expand", "product_expansions", 0.04),
}
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record(
    step: str,
    sku: str,
    image: str | None,
    parent: str | None,
    *,
    variant: str = "",
    status: str = OK,
    run_id: str = "run-1",
    partition: str = "batch-1",
    minutes: int = 0,
    parameters: dict[str, Any] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """One complete ImageRecord row, as the pipeline writes it."""
    endpoint_id, asset, price = ENDPOINTS[step]
    ok = status != FAILED
    params = canonical_json(parameters or {"sync_mode": False})
    return {
        "record_id": make_record_id(partition, step, sku, variant, sha(params + run_id)),
        "partition": partition,
        "sku": sku,
        "step": step,
        "variant": variant,
        "status": status,
        "error_class": None if ok else "FalRequestError",
        "error_message": None if ok else "fal rejected the request (422): canvas too large",
        "image_uri": f"bria_data/images/sha256/{image[:2]}/{image}.png" if image else None,
        "image_sha256": image,
        "width": 640 if ok else None,
        "height": 480 if ok else None,
        "content_type": "image/png" if ok else None,
        "parent_sha256": parent,
        "root_source_uri": f"https://cdn.example/{sku}.jpg",
        "root_source_sha256": sha(f"source-{sku}"),
        "endpoint_id": endpoint_id,
        "backend": "local",
        "parameters": params,
        "request_fingerprint": sha(f"{step}{sku}{variant}{params}"),
        "seed": seed,
        "request_id": f"req-{step}-{sku}-{variant}-{run_id}" if ok else None,
        "cost_usd": price if status == OK else 0.0,
        "unit_price_usd": price if ok and endpoint_id else None,
        "duration_s": 1.25,
        "attempts": 1,
        "run_id": run_id,
        "asset_key": asset,
        "code_version": "1",
        "created_at": T0 + timedelta(minutes=minutes),
        "catalog_row": canonical_json({"sku": sku}),
    }


def product_rows(sku: str) -> list[dict[str, Any]]:
    """remove -> 2 replace variants -> 2 expansions of variant 0, plus one failed expansion."""
    source = sha(f"source-{sku}")
    cutout = sha(f"cutout-{sku}")
    scenes = [sha(f"scene-{sku}-{i}") for i in range(2)]
    rows = [record("remove", sku, cutout, source)]
    rows += [
        record(
            "replace",
            sku,
            s,
            cutout,
            variant=str(i),
            minutes=1,
            seed=42 + i,
            parameters={"prompt": "on a marble table", "num_images": 2},
        )
        for i, s in enumerate(scenes)
    ]
    for ratio in ("1:1", "16:9"):
        rows.append(
            record(
                "expand",
                sku,
                sha(f"expand-{sku}-{ratio}"),
                scenes[0],
                variant=f"0-{ratio}",
                minutes=2,
                parameters={"aspect_ratio": ratio},
            )
        )
    rows.append(
        record(
            "expand",
            sku,
            None,
            scenes[1],
            variant="1-9:16",
            status=FAILED,
            minutes=2,
            parameters={"aspect_ratio": "9:16"},
        )
    )
    return rows


def reused_cutout() -> dict[str, Any]:
    """run-2 (batch-2) reused the cutout of sku-a that run-1 made: same sha, no cost."""
    made = record("remove", "sku-a", sha("cutout-sku-a"), sha("source-sku-a"))
    return reused_record(
        made,
        "run-2",
        record_id=make_record_id("batch-2", "remove", "sku-a", "", "reused"),
        partition="batch-2",
        created_at=made["created_at"] + timedelta(minutes=60),
    )


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return [*product_rows("sku-a"), *product_rows("sku-b"), reused_cutout()]


@pytest.fixture
def frame(rows) -> pd.DataFrame:
    return records_to_frame(rows)


def write_store(base: str, frame: pd.DataFrame) -> None:
    """Write ``frame`` in the storage layout: <base>/tables/<asset>/<partition>.parquet."""
    fs, root = fsspec.core.url_to_fs(base)
    for (asset, partition), part in frame.groupby(["asset_key", "partition"]):
        folder = f"{root}/tables/{asset}"
        fs.makedirs(folder, exist_ok=True)
        with fs.open(f"{folder}/{partition}.parquet", "wb") as fh:
            pq.write_table(frame_to_table(part.reset_index(drop=True)), fh)


# ----------------------------------------------------------------------------- loading


def test_load_records_reads_every_table_with_the_schema(tmp_path, frame):
    write_store(str(tmp_path), frame)
    loaded = load_records(tmp_path)
    assert list(loaded.columns) == IMAGE_RECORD_SCHEMA.names
    assert len(loaded) == len(frame)
    assert sorted(loaded["record_id"]) == sorted(frame["record_id"])
    some = load_records(tmp_path, columns=["sku", "image_sha256"])
    assert list(some.columns) == ["sku", "image_sha256"]


def test_load_records_of_an_empty_store_has_the_columns(tmp_path):
    loaded = load_records(tmp_path / "nothing-here")
    assert loaded.empty
    assert list(loaded.columns) == IMAGE_RECORD_SCHEMA.names


def test_load_records_rejects_unknown_columns(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        load_records(tmp_path, columns=["sku", "bogus"])


def test_memory_base_through_fsspec(frame):
    base = "memory://lineage-test-store"
    write_store(base, frame)
    try:
        assert len(load_records(base)) == len(frame)
        chain = trace(sha("expand-sku-b-16:9"), base)
        assert chain["step"].tolist() == ["expand", "replace", "remove", "source"]
        assert set(derived("sku-b", base)["sku"]) == {"sku-b"}
    finally:
        fsspec.filesystem("memory").rm("/lineage-test-store", recursive=True)


# ----------------------------------------------------------------------------- trace


def test_trace_by_sha_walks_back_to_the_source(frame):
    output = sha("expand-sku-a-16:9")
    chain = trace(output, frame)
    assert list(chain.columns) == list(TRACE_COLUMNS)
    assert chain["hop"].tolist() == [0, 1, 2, 3]
    assert chain["step"].tolist() == ["expand", "replace", "remove", "source"]
    assert chain["image_sha256"].tolist() == [
        output,
        sha("scene-sku-a-0"),
        sha("cutout-sku-a"),
        sha("source-sku-a"),
    ]
    # Each hop names its parent: the next row's image.
    assert chain["parent_sha256"].iloc[:3].tolist() == chain["image_sha256"].iloc[1:].tolist()
    assert chain["image_uri"].iloc[-1] == "https://cdn.example/sku-a.jpg"
    assert chain["endpoint_id"].iloc[0] == "fal-ai/bria/expand"
    assert '"aspect_ratio":"16:9"' in chain["parameters"].iloc[0]
    assert chain["seed"].iloc[1] == 42


def test_trace_of_a_reused_image_shows_the_row_that_made_it(frame):
    chain = trace(sha("expand-sku-a-1:1"), frame)
    remove_hop = chain[chain["step"] == "remove"].iloc[0]
    assert remove_hop["run_id"] == "run-1" and pd.isna(remove_hop["reused_in_run_id"])
    assert remove_hop["cost_usd"] == 0.018 and remove_hop["unit_price_usd"] == 0.018
    assert chain.attrs["total_cost_usd"] == pytest.approx(0.04 + 0.023 + 0.018)


def test_trace_of_a_reused_image_without_its_producing_row_names_the_producer(frame):
    # The producing table was rewritten (its partition re-ran and reused everything).
    reused_only = frame[~((frame["status"] == OK) & (frame["image_sha256"] == sha("cutout-sku-a")))]
    chain = trace(sha("expand-sku-a-1:1"), reused_only)
    remove_hop = chain[chain["step"] == "remove"].iloc[0]
    assert remove_hop["run_id"] == "run-1" and remove_hop["reused_in_run_id"] == "run-2"
    assert remove_hop["cost_usd"] == 0.0  # the reusing run paid nothing
    assert remove_hop["unit_price_usd"] == 0.018  # the price the producing call paid
    assert remove_hop["request_id"] == "req-remove-sku-a--run-1"


def test_trace_all_records_lists_every_run(frame):
    chain = trace(sha("expand-sku-a-1:1"), frame, all_records=True)
    remove_rows = chain[chain["step"] == "remove"]
    assert remove_rows["run_id"].tolist() == ["run-1", "run-1"]
    assert remove_rows["reused_in_run_id"].tolist()[1] == "run-2"
    assert pd.isna(remove_rows["reused_in_run_id"].iloc[0])
    assert remove_rows["hop"].nunique() == 1


def test_trace_by_unique_prefix(frame):
    output = sha("expand-sku-b-1:1")
    chain = trace(output[:10].upper(), frame)
    assert chain["image_sha256"].iloc[0] == output


def test_trace_by_stored_path_and_by_file_bytes(tmp_path, frame):
    output = sha("expand-sku-a-1:1")
    stored = tmp_path / "images" / "sha256" / output[:2] / f"{output}.png"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"stored by name")
    assert trace(str(stored), frame)["image_sha256"].iloc[0] == output

    # A copy under another name is found by hashing its bytes.
    data = b"the bytes of a scene"
    scene_sha = hashlib.sha256(data).hexdigest()
    rows = [record("remove", "sku-c", sha("cutout-sku-c"), sha("source-sku-c"))]
    rows.append(record("replace", "sku-c", scene_sha, sha("cutout-sku-c"), variant="0"))
    copy = tmp_path / "downloaded-scene.png"
    copy.write_bytes(data)
    chain = trace(str(copy), records_to_frame(rows))
    assert chain["step"].tolist() == ["replace", "remove", "source"]


def test_trace_by_image_uri(frame):
    output = sha("expand-sku-b-16:9")
    uri = frame.loc[frame["image_sha256"] == output, "image_uri"].iloc[0]
    assert trace(uri, frame)["image_sha256"].iloc[0] == output


def test_trace_of_a_source_image_is_the_source_alone(frame):
    chain = trace(sha("source-sku-b"), frame)
    assert chain["step"].tolist() == ["source"]
    assert chain["sku"].tolist() == ["sku-b"]


def test_unknown_image_is_a_clear_error(frame, tmp_path):
    with pytest.raises(LineageNotFoundError, match=r"no record of '0{64}'") as info:
        trace("0" * 64, frame)
    assert isinstance(info.value, BriaError)
    with pytest.raises(LineageNotFoundError, match="too short"):
        trace("abc", frame)
    with pytest.raises(LineageNotFoundError, match="image path or URI"):
        trace(str(tmp_path / "missing.png"), frame)


def test_ambiguous_prefix_asks_for_more(frame):
    shas = list(frame["image_sha256"].dropna().unique())
    # Two distinct shas sharing a forced prefix.
    clash = frame.copy()
    clash.loc[clash["image_sha256"] == shas[0], "image_sha256"] = "abcdef01" + "1" * 56
    clash.loc[clash["image_sha256"] == shas[1], "image_sha256"] = "abcdef01" + "2" * 56
    with pytest.raises(LineageNotFoundError, match="ambiguous"):
        trace("abcdef01", clash)


def test_unknown_image_in_a_base_names_the_location(tmp_path, frame):
    write_store(str(tmp_path), frame)
    with pytest.raises(LineageNotFoundError, match=str(tmp_path)):
        trace("f" * 64, tmp_path)


# ----------------------------------------------------------------------------- derived


def test_derived_by_sku_in_step_order(frame):
    rows = derived("sku-a", frame)
    assert set(rows["sku"]) == {"sku-a"}
    steps = rows["step"].tolist()
    assert steps == sorted(steps, key=["remove", "replace", "expand"].index)
    assert steps.count("remove") == 2  # the original and the reused row
    assert steps.count("replace") == 2
    assert steps.count("expand") == 2
    assert not rows["failed"].any()
    assert rows.attrs["total_cost_usd"] == pytest.approx(0.018 + 2 * 0.023 + 2 * 0.04)


def test_derived_flags_failed_rows_when_asked(frame):
    rows = derived("sku-b", frame, include_failed=True)
    failed = rows[rows["failed"]]
    assert failed["variant"].tolist() == ["1-9:16"]
    assert failed["status"].tolist() == [FAILED]
    assert failed["error_class"].tolist() == ["FalRequestError"]
    assert len(rows) == len(derived("sku-b", frame)) + 1


def test_derived_by_source_sha_and_uri(frame):
    by_sha = derived(sha("source-sku-b"), frame)
    by_uri = derived("https://cdn.example/sku-b.jpg", frame)
    by_sku = derived("sku-b", frame)
    assert by_sha["image_sha256"].tolist() == by_sku["image_sha256"].tolist()
    assert by_uri["image_sha256"].tolist() == by_sku["image_sha256"].tolist()


def test_derived_by_intermediate_sha_follows_parent_links(frame):
    rows = derived(sha("scene-sku-a-0"), frame, include_failed=True)
    assert sorted(rows["image_sha256"]) == sorted(
        [sha("expand-sku-a-1:1"), sha("expand-sku-a-16:9")]
    )
    cutout_children = derived(sha("cutout-sku-b"), frame, include_failed=True)
    assert cutout_children["step"].tolist() == ["replace", "replace", "expand", "expand", "expand"]
    assert cutout_children["failed"].sum() == 1


def test_derived_of_unknown_source_is_a_clear_error(frame):
    with pytest.raises(LineageNotFoundError, match="sku-zzz"):
        derived("sku-zzz", frame)


def test_index_is_reusable_and_wrappers_give_plain_rows(tmp_path, frame):
    write_store(str(tmp_path), frame)
    with open_index(tmp_path) as index:
        assert len(index) == len(frame)
        assert trace(sha("expand-sku-a-1:1"), index)["step"].iloc[0] == "expand"
        assert derived("sku-a", index)["sku"].unique().tolist() == ["sku-a"]
    chain = trace_image(sha("expand-sku-a-1:1"), base=tmp_path)
    assert chain[0]["step"] == "expand"
    assert isinstance(chain[0]["created_at"], str)
    assert chain[-1]["created_at"] is None
    images = derived_images("sku-a", base=tmp_path)
    assert {row["step"] for row in images} == {"remove", "replace", "expand"}
    assert all(isinstance(row["cost_usd"], float) for row in images)


def test_paths_are_accepted_as_base(tmp_path, frame):
    write_store(str(tmp_path), frame)
    assert len(derived("sku-a", Path(tmp_path))) == len(derived("sku-a", frame))


def test_an_image_stored_under_another_name_is_found_by_its_uri(tmp_path, rows):
    custom = record("replace", "sku-a", sha("custom"), sha("cutout-sku-a"), variant="9")
    custom["image_uri"] = "s3://shop-media/exports/sku-a-hero.png"
    frame = records_to_frame([*rows, custom])
    write_store(str(tmp_path), frame)
    chain = trace("s3://shop-media/exports/sku-a-hero.png", tmp_path)
    assert chain["image_sha256"].tolist()[:2] == [sha("custom"), sha("cutout-sku-a")]
    assert chain["parameters"].iloc[0] == custom["parameters"]
    assert chain["request_id"].iloc[0] == custom["request_id"]
    assert chain["request_id"].iloc[1] == "req-remove-sku-a--run-1"  # the producing row
    assert pd.isna(chain["request_id"].iloc[-1])
    by_uri = derived("https://cdn.example/sku-a.jpg", tmp_path)
    assert by_uri["image_sha256"].tolist() == derived("sku-a", frame)["image_sha256"].tolist()
    assert by_uri["endpoint_id"].tolist() == derived("sku-a", frame)["endpoint_id"].tolist()


def test_unreadable_table_is_named(tmp_path, frame):
    write_store(str(tmp_path), frame)
    bad = tmp_path / "tables" / "product_scenes" / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(RecordTableError, match=r"broken\.parquet"):
        load_records(tmp_path)


def test_a_recorded_catalog_source_ends_the_chain_once(rows):
    # The catalog step records the source image itself: step "source", no parent.
    catalog = record("source", "sku-a", sha("source-sku-a"), None, variant="source")
    frame = records_to_frame([*rows, catalog])
    chain = trace(sha("expand-sku-a-1:1"), frame)
    assert chain["step"].tolist() == ["expand", "replace", "remove", "source"]
    assert chain["run_id"].iloc[-1] == "run-1"  # the recorded row, not a synthetic one
    assert chain.attrs["source_uri"] == "https://cdn.example/sku-a.jpg"
    assert "source" not in derived("sku-a", frame)["step"].tolist()
    assert "source" not in derived(sha("source-sku-a"), frame)["step"].tolist()


def noop_expansion(sku: str, image: str, *, run_id: str = "run-1") -> dict[str, Any]:
    """An expansion recorded, not sent: its image is its parent's (same sha), nothing paid."""
    row = record("expand", sku, image, image, variant="0-4:3", minutes=2, run_id=run_id)
    row.update(
        backend=NOOP_BACKEND,
        noop_reason="the image is already 640x480, the 4:3 canvas: not sent",
        request_id=None,
        cost_usd=0.0,
        unit_price_usd=0.0,
        attempts=0,
        duration_s=0.0,
    )
    return row


def test_trace_of_a_noop_expansion_walks_on_to_the_source(tmp_path, rows):
    scene = sha("scene-sku-a-0")
    noop = noop_expansion("sku-a", scene)
    later = reused_record(
        noop,
        "run-2",
        record_id=make_record_id("batch-2", "expand", "sku-a", "0-4:3", "reused"),
        partition="batch-2",
    )
    frame = records_to_frame([*rows, noop, later])
    write_store(str(tmp_path), frame)
    with open_index(tmp_path) as index:
        chain = trace(scene, index)
        # The no-op hop first (the image is that expansion), then the row that made it.
        assert chain["step"].tolist() == ["expand", "replace", "remove", "source"]
        assert chain["image_sha256"].tolist()[:2] == [scene, scene]
        hop = chain.iloc[0]
        assert hop["backend"] == NOOP_BACKEND and "4:3 canvas" in hop["noop_reason"]
        assert hop["cost_usd"] == 0.0 and pd.isna(hop["request_id"])
        assert chain["parent_sha256"].iloc[1] == sha("cutout-sku-a")
        assert chain.attrs["total_cost_usd"] == pytest.approx(0.023 + 0.018)

        every = trace(scene, index, all_records=True)
        first = every[every["hop"] == 0]
        assert first["backend"].tolist() == [NOOP_BACKEND, NOOP_BACKEND]
        assert first["reused_in_run_id"].tolist()[1] == "run-2"
        assert every[every["hop"] == 1]["step"].tolist() == ["replace"]
        assert every["hop"].max() == 3

        # A sibling expansion of the same scene comes from the scene's maker, not from the
        # no-op that kept the scene's bytes.
        sibling = trace(sha("expand-sku-a-1:1"), index)
        assert sibling["step"].tolist() == ["expand", "replace", "remove", "source"]
        assert NOOP_BACKEND not in sibling["backend"].tolist()
        every_sibling = trace(sha("expand-sku-a-1:1"), index, all_records=True)
        assert NOOP_BACKEND not in every_sibling["backend"].tolist()

        family = derived(scene, index)
        assert family["step"].tolist().count("expand") == 4  # 2 made, 1 no-op, its reuse
