"""The result cache, shared by the CLI and the app: content-keyed JSON files on disk.

* Keys are built here and only here (`cache_key`): a hash of the canonical JSON of everything that
  defines a result, plus the cache format version.
* Values are plain JSON (no pickle), written to a temporary file and moved into place with
  ``os.replace``, so a reader never sees half a file and two processes writing the same key at once
  both leave a complete file.
* The folder is bounded: after a write, least recently used entries go until it fits.
* Single flight: `ResultCache.single_flight` lets one thread compute a key while the others asking
  for it wait, then read what it stored (two app sessions toggling the same mask compute it once).
* A damaged entry is a miss, never a crash: a file that cannot be read, is not UTF-8 or JSON, is not
  an object, lacks a field the reader requires or fails the reader's check is logged once and
  treated as absent, so the result is recomputed and the entry overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .settings import cache_max_bytes, home

CACHE_VERSION = "1"
log = logging.getLogger(__name__)
T = TypeVar("T")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def cache_key(kind: str, **parts: Any) -> str:
    """The one place a cache key is made: ``kind`` plus every part that defines the result."""
    payload = json.dumps({"kind": kind, "version": CACHE_VERSION, **parts}, sort_keys=True,
                         default=_json_default, ensure_ascii=True)
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


def _encode_floats(obj: Any) -> Any:
    """JSON has no infinities: store them as strings and restore them on read."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, dict):
        return {k: _encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_floats(v) for v in obj]
    return obj


def _decode_floats(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _decode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_floats(v) for v in obj]
    return obj


_FLIGHTS: dict[tuple[str, str], threading.Lock] = {}
_FLIGHTS_LOCK = threading.Lock()


class ResultCache:
    def __init__(self, root: str | Path | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else home() / "results"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = cache_max_bytes() if max_bytes is None else max_bytes

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str, required: Collection[str] = (), check: Callable[[dict], bool] | None = None
            ) -> dict | None:
        """The entry stored under ``key``, or None when there is none or it is damaged.

        ``required`` names the fields a reader needs and ``check`` tests their shape; an entry that
        lacks one or fails the check is damaged (written by an older version, or corrupted).
        """
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as f:
                value = _decode_floats(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            return self._damaged(path, f"unreadable ({type(e).__name__})")
        if not isinstance(value, dict):
            return self._damaged(path, f"a JSON {type(value).__name__}, not an object")
        if missing := [k for k in required if k not in value]:
            return self._damaged(path, f"missing {', '.join(missing)}")
        try:
            ok = check is None or check(value)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            ok = False
        if not ok:
            return self._damaged(path, "not the expected shape")
        with contextlib.suppress(OSError):
            os.utime(path)  # marks it recently used
        return value

    def load(self, key: str, parse: Callable[[dict], T]) -> T | None:
        """The entry under ``key`` turned into a result by ``parse``, or None when absent or damaged.

        ``parse`` builds the result from the stored fields; an entry it cannot build from (a missing
        field, a wrong type or shape) is damaged: logged, and treated as absent.
        """
        value = self.get(key)
        if value is None:
            return None
        try:
            return parse(value)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            return self._damaged(self._path(key), f"not the expected shape ({type(e).__name__}: {e})")

    @contextlib.contextmanager
    def single_flight(self, key: str) -> Iterator[None]:
        """Hold ``key`` while computing it: another thread of this process entering with the same key waits
        until this one leaves, then finds the entry stored (check the cache again inside)."""
        with _FLIGHTS_LOCK:
            lock = _FLIGHTS.setdefault((str(self.root), key), threading.Lock())
        with lock:
            yield

    def _damaged(self, path: Path, why: str) -> None:
        log.warning("result cache entry %s is %s: recomputing it", path.name, why)
        return None

    def put(self, key: str, value: dict) -> None:
        data = json.dumps(_encode_floats(value), default=_json_default, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for p in self.root.glob("*.json"):
            if p.name.startswith(".tmp-"):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return out

    def _evict(self) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def info(self) -> dict[str, Any]:
        entries = self._entries()
        return {"path": str(self.root), "entries": len(entries),
                "bytes": sum(s for _, s, _ in entries), "max_bytes": self.max_bytes}

    def clear(self) -> int:
        entries = self._entries()
        for _, _, path in entries:
            path.unlink(missing_ok=True)
        return len(entries)
