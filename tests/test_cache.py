"""The result cache: stable keys, JSON values, and failures that degrade to a miss."""

from __future__ import annotations

import json

from localinfer.cache import ResultCache, cache_key


def test_key_is_canonical():
    assert cache_key(a=1, b={"x": [1, 2], "y": "z"}) == cache_key(b={"y": "z", "x": [1, 2]}, a=1)
    assert cache_key(a=1) != cache_key(a=2)
    assert cache_key(inputs=b"\x00\x01") != cache_key(inputs=b"\x00\x02")


def test_values_are_json_not_pickles(tmp_path):
    cache = ResultCache(tmp_path / "c")
    cache.set("k", [[{"label": "a", "score": 0.5}]])
    assert cache.get("k") == [[{"label": "a", "score": 0.5}]]
    assert json.loads(cache._open().get("k")) == [[{"label": "a", "score": 0.5}]]  # stored as JSON text


def test_corrupt_database_recreates_the_store(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"this is not sqlite" * 100)
    cache = ResultCache(directory)
    assert cache.get("k") is None
    cache.set("k", [1.0])
    assert cache.get("k") == [1.0]


def test_database_corrupted_while_open_degrades_to_a_miss(tmp_path):
    directory = tmp_path / "c"
    cache = ResultCache(directory)
    cache.set("k", [1.0])
    cache.close()
    (directory / "cache.db").write_bytes(b"garbage" * 1000)
    cache = ResultCache(directory)
    assert cache.get("k") is None
    cache.set("k", [2.0])
    assert cache.get("k") == [2.0]


def test_undecodable_value_is_a_miss(tmp_path):
    cache = ResultCache(tmp_path / "c")
    cache._open().set("k", "{not json")
    assert cache.get("k") is None


def test_size_is_bounded(tmp_path):
    cache = ResultCache(tmp_path / "c", size_limit=200_000)
    for i in range(400):
        cache.set(f"k{i}", ["x" * 2000])
    cache._open().cull()
    assert cache._open().volume() < 400 * 2000
