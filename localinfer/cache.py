"""The result cache: JSON answers in a size-bounded diskcache store, keyed by model, weights and request."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("localinfer")


def _canonical_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"sha256": hashlib.sha256(bytes(value)).hexdigest()}
    raise TypeError(f"cannot key a {type(value).__name__}")


def cache_key(**parts: Any) -> str:
    """A stable key: the SHA-256 of the parts' canonical JSON (sorted keys, media bytes hashed)."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=_canonical_default)).hexdigest()


class ResultCache:
    """JSON results on disk. Any failure to read or write degrades to a miss; it never fails a query."""

    def __init__(self, directory: Path, size_limit: int = 1 << 30) -> None:
        self.directory = Path(directory)
        self.size_limit = size_limit
        self._store: Any = None

    def _open(self) -> Any:
        if self._store is None:
            import diskcache

            try:
                self._store = diskcache.Cache(str(self.directory), size_limit=self.size_limit)
            except Exception as exc:  # a corrupt database: start afresh rather than fail every query
                log.warning("result cache at %s is unreadable (%s); recreating it", self.directory, exc)
                shutil.rmtree(self.directory, ignore_errors=True)
                self._store = diskcache.Cache(str(self.directory), size_limit=self.size_limit)
        return self._store

    def get(self, key: str) -> Any | None:
        try:
            raw = self._open().get(key)
            return None if raw is None else orjson.loads(raw)
        except Exception as exc:
            self._recover(exc, "read")
            return None

    def set(self, key: str, value: Any) -> None:
        try:
            # orjson: a 1000x384 embedding answer serialises in 20 ms, not the json module's 200 ms
            self._open().set(key, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
        except Exception as exc:
            self._recover(exc, "write")

    def _recover(self, exc: Exception, action: str) -> None:
        """A broken store is dropped so that the next call starts a fresh one; a bad value is a miss."""
        log.warning("result cache %s failed (%s: %s); recomputing", action, type(exc).__name__, exc)
        if isinstance(exc, sqlite3.DatabaseError):
            self.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                pass
            self._store = None
