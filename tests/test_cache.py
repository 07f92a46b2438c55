"""The result cache: content keys, atomic JSON files, bounded size, safe concurrent writes."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from pathlib import Path

import pytest

from core.cache import ResultCache, cache_key


def test_key_depends_on_every_part_and_not_on_order() -> None:
    a = cache_key("scores", model="m@1", drop=[1, 2], n=10)
    assert a == cache_key("scores", n=10, drop=[1, 2], model="m@1")
    assert a != cache_key("scores", model="m@1", drop=[1, 3], n=10)
    assert a != cache_key("scores", model="m@2", drop=[1, 2], n=10)
    assert a != cache_key("importance", model="m@1", drop=[1, 2], n=10)


def test_roundtrip_keeps_infinities_and_leaves_no_temp_files(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    key = cache_key("x", a=1)
    assert cache.get(key) is None
    cache.put(key, {"logits": [[1.5, -math.inf]], "n": 3})
    assert cache.get(key) == {"logits": [[1.5, -math.inf]], "n": 3}
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"{key}.json"]
    json.loads(files[0].read_text())  # plain JSON, no pickle


def test_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path, max_bytes=3000)
    import os
    import time

    for i in range(3):
        cache.put(f"k{i}", {"data": "x" * 900})
        os.utime(tmp_path / f"k{i}.json", (time.time() - 100 + i, time.time() - 100 + i))
    cache.get("k0")  # k0 becomes the most recently used
    cache.put("k3", {"data": "x" * 900})
    assert cache.get("k1") is None
    assert cache.get("k0") is not None and cache.get("k3") is not None
    assert cache.info()["bytes"] <= 3000


def test_clear(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    cache.put("a", {"v": 1})
    cache.put("b", {"v": 2})
    assert cache.clear() == 2 and cache.info()["entries"] == 0


def _writer(root: str, value: int) -> None:
    cache = ResultCache(root)
    for _ in range(50):
        cache.put("same", {"value": value, "pad": "y" * 20000})


def test_two_processes_writing_the_same_key(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), v)) for v in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    value = ResultCache(tmp_path).get("same")
    assert value is not None and value["value"] in (1, 2) and len(value["pad"]) == 20000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00not utf-8", b"[1, 2, 3]", b"{}", b'{"logits": [[1.0]]',
                                     b"", b'"a string"', b'{"logits": "abc", "truncated": 0}', b"[" * 100_000])
def test_a_damaged_entry_is_a_miss_and_is_logged(tmp_path: Path, content: bytes, caplog) -> None:
    cache = ResultCache(tmp_path)
    (tmp_path / "k.json").write_bytes(content)
    with caplog.at_level("WARNING", logger="core.cache"):
        got = cache.get("k", ("logits", "truncated"), lambda v: len(v["logits"][0]) == 1 and v["logits"] != "abc")
    assert got is None
    assert "k.json" in caplog.text and "recomputing" in caplog.text


def test_a_check_that_raises_counts_as_damaged(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    cache.put("k", {"logits": 3})
    assert cache.get("k", ("logits",), lambda v: len(v["logits"]) > 0) is None
    cache.put("k", {"logits": [3]})
    assert cache.get("k", ("logits",), lambda v: len(v["logits"]) > 0) == {"logits": [3]}


def test_load_turns_what_its_parser_cannot_build_into_a_miss(tmp_path: Path, caplog) -> None:
    cache = ResultCache(tmp_path)
    cache.put("k", {"a": [1, 2]})
    assert cache.load("k", lambda d: sum(d["a"])) == 3
    with caplog.at_level("WARNING", logger="core.cache"):
        assert cache.load("k", lambda d: d["missing"]) is None
        assert cache.load("k", lambda d: int("x")) is None
    assert caplog.text.count("recomputing") == 2
    assert cache.load("absent", dict) is None
