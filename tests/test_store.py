"""ImageStore: content-addressed, stored once, atomic, local and fsspec."""

from __future__ import annotations

import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from bria_dagster.records.store import ImageStore


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> ImageStore:
    if request.param == "local":
        return ImageStore(tmp_path / "images")
    return ImageStore(f"memory://bria-test-{uuid.uuid4().hex}/images")


def test_put_is_content_addressed_and_stored_once(store: ImageStore):
    data = b"\x89PNG fake image bytes"
    first = store.put(data, "image/png")
    second = store.put(data, "image/png")
    assert first == second
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert first.uri.endswith(f"/sha256/{first.sha256[:2]}/{first.sha256}.png")
    assert store.get(first.sha256) == data
    assert store.get(first.uri) == data
    assert store.exists(first.sha256)
    files = store.fs.find(store.root)
    assert len(files) == 1


def test_exists_finds_an_image_whatever_content_type_is_guessed(store: ImageStore):
    jpeg = store.put(b"\xff\xd8\xff fake jpeg", "image/jpeg")
    assert store.exists(jpeg.sha256)
    assert store.exists(jpeg.sha256, "image/jpeg")
    assert store.exists(jpeg.sha256, "image/png")  # the hint only orders the lookups
    assert not store.exists("0" * 64, "image/jpeg")


def test_missing_image_is_a_clear_error(store: ImageStore):
    assert not store.exists("0" * 64)
    with pytest.raises(FileNotFoundError, match="never stored here"):
        store.get("0" * 64)


def test_memory_uri_names_protocol():
    store = ImageStore(f"memory://bria-{uuid.uuid4().hex}")
    assert store.put(b"x", "image/jpeg").uri.startswith("memory://")


def test_concurrent_puts_of_the_same_bytes(tmp_path):
    store = ImageStore(tmp_path)
    data = os.urandom(200_000)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.put(data, "image/png"), range(16)))
    assert len({r.uri for r in results}) == 1
    stored = [p for p in store.fs.find(store.root)]
    assert len(stored) == 1 and store.get(results[0].sha256) == data


def test_crash_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)
    data = b"y" * 1000
    real_fsync = os.fsync

    def crash(fd):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk vanished"):
        store.put(data, "image/png")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not store.exists(hashlib.sha256(data).hexdigest())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert store.put(data, "image/png").size == 1000
