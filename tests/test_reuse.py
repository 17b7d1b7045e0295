"""The reuse index: lookups by fingerprint, concurrent writers, compaction, self-healing,
and reuse across batches through real materializations."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import fsspec
import pyarrow.parquet as pq
import pytest

from bria_dagster import BriaResource, PipelineSettings, ProductImagePipeline, cli
from bria_dagster.records.reuse import ReuseIndex, rebuild
from bria_dagster.records.schema import FAILED, OK, REUSED, canonical_json, reused_record
from bria_dagster.records.tables import (
    IMAGE_RECORD_SCHEMA,
    read_records,
    records_to_frame,
    update_table,
    write_table,
)
from tests.test_pipeline import CountingBackends, product, write_catalog

ASSET = "product_images__product_scenes"


def fingerprint(name: str, shard: str | None = None) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return digest if shard is None else shard + digest[2:]


def record(fp: str, variant: str = "scene", status: str = OK, **over) -> dict:
    sha = hashlib.sha256(f"{fp}/{variant}/{over.get('run_id', 'run-1')}".encode()).hexdigest()
    row = {name: None for name in IMAGE_RECORD_SCHEMA.names}
    row.update(
        record_id=uuid.uuid4().hex,
        partition="b1",
        sku="SKU-1",
        step="replace",
        variant=variant,
        status=status,
        image_sha256=None if status == FAILED else sha,
        image_uri=None if status == FAILED else f"/images/{sha}.png",
        content_type="image/png",
        root_source_uri="https://cdn.example/SKU-1.jpg",
        parameters=canonical_json({"prompt": "on oak"}),
        request_fingerprint=fp,
        cost_usd=0.023,
        duration_s=1.0,
        attempts=1,
        run_id="run-1",
        asset_key="product_images/product_scenes",
        code_version="1",
        created_at=datetime(2026, 11, 24, tzinfo=UTC),
        catalog_row="{}",
    )
    row.update(over)
    return row


def frame(*rows: dict):
    return records_to_frame(list(rows))


def shard_files(index: ReuseIndex, shard: str) -> list[str]:
    return list(index._files(shard))


# -- the index on its own -------------------------------------------------------------------


def test_lookup_after_add_gives_each_request_outputs_in_order(tmp_path):
    index = ReuseIndex(str(tmp_path), ASSET)
    two, one, failed = fingerprint("two"), fingerprint("one"), fingerprint("failed")
    added = index.add(
        frame(
            record(two, "scene#1"),
            record(two, "scene#0"),
            record(one, "cutout", status=REUSED, run_id="run-0"),
            record(failed, status=FAILED),
            record(None, "source"),
        )
    )
    assert added == 3
    found = index.lookup([two, one, failed, fingerprint("never"), None])
    assert set(found) == {two, one}
    assert [r["output"] for r in found[two]] == ["0", "1"]
    assert found[one][0]["run_id"] == "run-0"  # a reused row keeps its producer
    kept = found[two][0]
    assert kept["image_sha256"] and kept["content_type"] == "image/png"
    assert kept["parameters"] == canonical_json({"prompt": "on oak"})
    assert kept["request_fingerprint"] == two  # kept by the reused record
    assert "sku" not in kept and "catalog_row" not in kept  # the reusing job places the row


def test_the_newest_request_with_a_fingerprint_wins_and_keeps_its_outputs_together(tmp_path):
    index = ReuseIndex(str(tmp_path), ASSET)
    fp = fingerprint("x")
    index.add(frame(record(fp, "scene#0", run_id="old"), record(fp, "scene#1", run_id="old")))
    index.add(frame(record(fp, "scene#0", run_id="new")))  # one output only: a new request
    assert [r["run_id"] for r in index.lookup([fp])[fp]] == ["new"]


def test_a_lookup_reads_only_the_shards_it_needs(tmp_path, monkeypatch):
    index = ReuseIndex(str(tmp_path), ASSET)
    index.add(frame(*(record(fingerprint(str(i))) for i in range(300))))
    read: list[str] = []
    original = ReuseIndex._read

    def counting(self, path, wanted=None):
        read.append(path)
        return original(self, path, wanted)

    monkeypatch.setattr(ReuseIndex, "_read", counting)
    wanted = [fingerprint("7"), fingerprint("42")]
    assert set(index.lookup(wanted)) == set(wanted)
    assert sorted({Path(p).parent.name for p in read}) == sorted({f[:2] for f in wanted})


def test_compaction_merges_a_shard_and_keeps_every_entry(tmp_path):
    index = ReuseIndex(str(tmp_path), ASSET, compact_at=4)
    fps = [fingerprint(str(i), shard="ab") for i in range(30)]
    for i, fp in enumerate(fps):
        index.add(frame(record(fp, run_id=f"run-{i}")))
    index.add(frame(record(fps[0], run_id="rerun")))  # newer than the merged entry
    for _ in range(3):  # each lookup merges what is due
        found = index.lookup(fps)
        assert set(found) == set(fps)
    assert len(shard_files(index, "ab")) < 8
    assert found[fps[0]][0]["run_id"] == "rerun" and found[fps[5]][0]["run_id"] == "run-5"
    index.compact()
    assert len(shard_files(index, "ab")) == 1
    assert index.lookup(fps)[fps[0]][0]["run_id"] == "rerun"


def test_an_unreadable_index_file_costs_its_entries_only(tmp_path):
    index = ReuseIndex(str(tmp_path), ASSET)
    good, lost = fingerprint("good", shard="ab"), fingerprint("lost", shard="ab")
    index.add(frame(record(good)))
    index.add(frame(record(lost)))
    newest = shard_files(index, "ab")[0]
    Path(newest).write_bytes(b"torn by a crash")  # index files are written without fsync
    assert set(index.lookup([good, lost])) == {good}
    assert not Path(newest).exists()


def _add_many(base: str, worker: int, count: int) -> None:
    index = ReuseIndex(base, ASSET, compact_at=3)
    for i in range(count):
        index.add(frame(record(fingerprint(f"{worker}-{i}", shard="cd"), run_id=f"w{worker}")))
        index.lookup([fingerprint(f"{worker}-0", shard="cd")])  # merges while others write


def test_concurrent_writers_and_compacting_readers_lose_nothing(tmp_path):
    base = str(tmp_path)
    threads = [threading.Thread(target=_add_many, args=(base, w, 15)) for w in range(3)]
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=_add_many, args=(base, w, 15)) for w in (3, 4)]
    for worker in [*threads, *processes]:
        worker.start()
    for worker in [*threads, *processes]:
        worker.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes)
    wanted = [fingerprint(f"{w}-{i}", shard="cd") for w in range(5) for i in range(15)]
    found = ReuseIndex(base, ASSET).lookup(wanted)
    assert set(found) == set(wanted)


def test_tables_without_index_entries_are_indexed_before_a_lookup(tmp_path):
    """A table written by an older version (or whose entries were lost) is picked up
    through its mark; a rewritten table is indexed again."""
    base = str(tmp_path)
    path = f"{base}/tables/{ASSET}/b1.parquet"
    old = fingerprint("old")
    write_table(path, frame(record(old)))  # no index entries: written around the index
    index = ReuseIndex(base, ASSET)
    assert set(index.lookup([old])) == {old}
    assert index.sync() == 0  # marked: not read again

    new = fingerprint("new")
    write_table(path, frame(record(new), record(old, run_id="run-2")))
    index = ReuseIndex(base, ASSET)  # one object per step run: it syncs on its first lookup
    assert set(index.lookup([new, old])) == {new, old}
    assert index.get(old)[0]["run_id"] == "run-2"
    assert index.get(fingerprint("never")) is None


def test_a_partitions_own_table_answers_first_and_the_index_the_rest(tmp_path, monkeypatch):
    base = str(tmp_path)
    mine, elsewhere = fingerprint("mine"), fingerprint("elsewhere")
    write_table(
        f"{base}/tables/{ASSET}/b1.parquet",
        frame(record(mine, "scene#1"), record(mine, "scene#0"), record(None, "source")),
    )
    ReuseIndex(base, ASSET).add(frame(record(elsewhere, run_id="run-0")))
    shards: list[str] = []
    read = ReuseIndex._read_shard
    monkeypatch.setattr(
        ReuseIndex,
        "_read_shard",
        lambda self, shard, wanted: shards.append(shard) or read(self, shard, wanted),
    )
    index = ReuseIndex(base, ASSET, partition="b1")
    found = index.lookup([mine])
    assert [r["output"] for r in found[mine]] == ["0", "1"] and shards == []  # one table read
    assert "sku" not in found[mine][0]  # the same entries as the index's
    found = index.lookup([mine, elsewhere, fingerprint("never")])
    assert set(found) == {mine, elsewhere} and found[elsewhere][0]["run_id"] == "run-0"
    assert sorted(shards) == sorted({elsewhere[:2], fingerprint("never")[:2]})
    # Another batch finds b1's request through the index (b1's table indexed at a lookup).
    assert len(ReuseIndex(base, ASSET, partition="b2").get(mine)) == 2


def test_a_table_that_only_restates_the_stored_one_is_not_written(tmp_path):
    """Reused rows as they were made, failures met again: the stored table is kept."""
    path = f"{tmp_path}/tables/{ASSET}/b1.parquet"
    made = [record(fingerprint(sku), sku=sku, record_id=sku) for sku in ("A", "B")]
    restated = [reused_record(row, "run-2") for row in made]
    other = {**restated[1], "image_sha256": "f" * 64}
    failed = {**made[1], "status": FAILED, "run_id": "run-2", "image_sha256": None}
    again = {**failed, "run_id": "run-3", "created_at": datetime(2026, 12, 1, tzinfo=UTC)}
    for stored, rows, kept in [
        (made, restated, True),  # every row reused as made: nothing to write
        (restated, [reused_record(row, "run-3") for row in made], True),
        (made, [restated[0], other], False),  # another image
        (made, restated[:1], False),  # a row dropped
        (made, restated[::-1], False),  # another order
        (made, [restated[0], failed], False),  # a failure where there was an image
        ([made[0], failed], restated, False),  # made where it had failed
        ([made[0], failed], [restated[0], again], True),  # the same failure met again
        ([made[0], failed], [restated[0], {**again, "error_message": "other"}], False),
    ]:
        write_table(path, frame(*stored))
        stamp = Path(path).stat().st_mtime_ns
        assert update_table(path, frame(*rows)) is not kept
        assert (Path(path).stat().st_mtime_ns == stamp) is kept
    assert update_table(f"{tmp_path}/new.parquet", frame(*restated))  # nothing stored yet
    Path(path).write_bytes(b"not parquet")  # an unreadable table is written anew
    assert update_table(path, frame(*restated)) and len(read_records(path)) == 2


def test_memory_storage(tmp_path):
    base = f"memory://reuse-test-{uuid.uuid4().hex}"
    path = f"{base}/tables/{ASSET}/b1.parquet"
    fps = [fingerprint(str(i), shard="ef") for i in range(10)]
    write_table(path, frame(*(record(fp) for fp in fps[:5])))
    index = ReuseIndex(base, ASSET, compact_at=2)
    index.add_table(path)
    for fp in fps[5:]:
        index.add(frame(record(fp)))
    assert set(index.lookup(fps)) == set(fps)
    assert index.sync() == 0  # the table's mark holds on memory:// too
    assert fsspec.filesystem("memory").exists(base.removeprefix("memory://") + "/reuse/v1")
    assert rebuild(base) == {ASSET: 1}
    assert set(ReuseIndex(base, ASSET).lookup(fps)) == set(fps[:5])  # from the table only


def test_cli_rebuild(tmp_path, capsys):
    base = str(tmp_path)
    fp = fingerprint("x")
    write_table(f"{base}/tables/{ASSET}/b1.parquet", frame(record(fp)))
    assert cli.main(["reuse", "rebuild", "--base", base]) == 0
    assert capsys.readouterr().out == f"{ASSET}: 1 table(s) indexed\n"
    files = list((tmp_path / "reuse" / "v1" / ASSET / fp[:2]).glob("*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == 1


# -- through materializations ---------------------------------------------------------------


def run_batch(folder: Path, batch: str, instance: dg.DagsterInstance, storage: str):
    settings = PipelineSettings(catalog_dir=str(folder / "catalogs"), aspect_ratios=("1:1",))
    pipeline = ProductImagePipeline(settings=settings, storage=storage)
    if batch not in instance.get_dynamic_partitions(pipeline.partitions_def.name):
        instance.add_dynamic_partitions(pipeline.partitions_def.name, [batch])
    result = dg.materialize(
        pipeline.build_assets(),
        partition_key=batch,
        instance=instance,
        resources={
            "bria": BriaResource(backend="local", file_roots=[str(folder)]),
            pipeline.io_manager_key: pipeline.io_manager(),
        },
    )
    assert result.success
    return result


def batch_table(storage: str, asset: str, batch: str):
    with fsspec.open(f"{storage}/tables/product_images__{asset}/{batch}.parquet", "rb") as fh:
        return pq.read_table(fh).to_pandas()


@pytest.fixture
def two_batches(tmp_path: Path) -> Path:
    """b1 and b2 hold the same two products under other skus, b2 one more."""
    a, b, c = (product(tmp_path, s, i) for i, s in enumerate(("P1", "P2", "P3"), 1))
    write_catalog(tmp_path, [{"sku": "A", "image_url": a}, {"sku": "B", "image_url": b}], "b1")
    rows = [
        {"sku": "X", "image_url": a},
        {"sku": "Y", "image_url": b},
        {"sku": "Z", "image_url": c},
    ]
    write_catalog(tmp_path, rows, "b2")
    return tmp_path


def test_reuse_across_batches_and_an_unchanged_rerun_makes_no_calls(two_batches, monkeypatch):
    counter = CountingBackends(monkeypatch)
    storage, instance = str(two_batches / "data"), dg.DagsterInstance.ephemeral()
    first = run_batch(two_batches, "b1", instance, storage)
    assert len(counter.calls) == 6  # 2 products x (remove, replace, expand 1:1)

    counter.calls.clear()
    run_batch(two_batches, "b2", instance, storage)
    assert len(counter.calls) == 3  # only Z: X and Y are b1's images
    for asset in ("product_cutouts", "product_scenes", "product_expansions"):
        rows = batch_table(storage, asset, "b2")
        assert set(rows[rows.sku.isin(["X", "Y"])].status) == {REUSED}, asset
        assert set(rows[rows.sku.isin(["X", "Y"])].run_id) == {first.run_id}, asset
        assert rows.request_fingerprint.notna().all(), asset
        assert rows[rows.sku == "Z"].status.tolist() == [OK], asset

    counter.calls.clear()
    run_batch(two_batches, "b2", instance, storage)
    assert counter.calls == []


def test_a_lost_index_heals_from_the_tables_and_lost_images_are_made_again(
    two_batches, monkeypatch
):
    counter = CountingBackends(monkeypatch)
    storage, instance = str(two_batches / "data"), dg.DagsterInstance.ephemeral()

    def broken(self, path, records=None):
        raise OSError("object store unavailable")

    with monkeypatch.context() as patched:  # the IO manager cannot index: the run still works
        patched.setattr(ReuseIndex, "add_table", broken)
        run_batch(two_batches, "b1", instance, storage)
    assert not (two_batches / "data" / "reuse" / "v1" / "product_images__product_scenes").exists()

    counter.calls.clear()
    run_batch(two_batches, "b2", instance, storage)  # b1's unmarked tables indexed at lookup
    assert len(counter.calls) == 3  # only Z: X and Y are b1's images, found in the index

    # A re-run of a batch answers from the batch's own tables: no index needed.
    fsspec.filesystem("file").rm(str(two_batches / "data" / "reuse"), recursive=True)
    counter.calls.clear()
    run_batch(two_batches, "b1", instance, storage)
    assert counter.calls == []

    # An entry whose image left the store is not an answer: the request runs again.
    scenes = batch_table(storage, "product_scenes", "b1")
    for sha in scenes.image_sha256:
        for image in (two_batches / "data" / "images").rglob(f"{sha}.*"):
            image.unlink()
    counter.calls.clear()
    run_batch(two_batches, "b1", instance, storage)
    assert counter.calls == ["fal-ai/bria/background/replace"] * 2
    again = batch_table(storage, "product_scenes", "b1")
    assert set(again.status) == {OK}
    assert all(any((two_batches / "data" / "images").rglob(f"{s}.*")) for s in again.image_sha256)


@pytest.mark.parametrize("whole_file_bytes", [0, 1 << 16])
def test_a_large_shard_is_read_by_row_group(tmp_path, monkeypatch, whole_file_bytes):
    """A long history's shards are not read whole: a lookup reads the fingerprints of the
    row groups that can hold each one, and whole rows only where one is there."""
    from bria_dagster.records import reuse

    monkeypatch.setattr(reuse, "WHOLE_SHARD_BYTES", 0)
    monkeypatch.setattr(reuse, "WHOLE_FILE_BYTES", whole_file_bytes)
    monkeypatch.setattr(reuse, "ROW_GROUP", 4)
    fps = [fingerprint(str(i), shard="ab") for i in range(40)]
    rows = (record(fp, run_id=f"r{i}") for i, fp in enumerate(fps))
    ReuseIndex(str(tmp_path), ASSET).add(frame(*rows))
    index = ReuseIndex(str(tmp_path), ASSET)
    index.add(frame(record(fps[3], run_id="newer")))
    absent = fingerprint("absent", shard="ab")
    found = index.lookup([*fps[:10], absent])
    assert set(found) == set(fps[:10])
    assert found[fps[3]][0]["run_id"] == "newer" and found[fps[7]][0]["run_id"] == "r7"
    assert [index.get(fp)[0]["run_id"] for fp in fps[20:23]] == ["r20", "r21", "r22"]
    assert index.get(absent) is None
